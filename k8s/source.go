package k8s

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/source"
)

// SourceConfig configures a Source. Client and Dynamic are required.
type SourceConfig struct {
	Client  kubernetes.Interface
	Dynamic dynamic.Interface
	// Node is this node's name: its Node object is watched for checks
	// and logs. Endpoints of this node are found by pod IP, as in
	// standalone mode.
	Node string
	// Debounce gathers a burst of changes into one update (default 200ms).
	Debounce time.Duration
	// SyncWarning is how long to wait for the first list before warning,
	// and again between warnings (default 30s). The source never sends a
	// partial view: without the Cilium CRDs it waits, and the pinned
	// datapath keeps enforcing what it had.
	SyncWarning time.Duration
	Logger      *slog.Logger
}

// Source implements source.Source with informers.
type Source struct {
	cfg SourceConfig
	log *slog.Logger

	mu sync.Mutex
	// infos remembers, for the last few digests sent, each policy's UID
	// and generation, so a status names the generation a revision held.
	infos []digestInfo
	// view is the rendered and decoded objects (used by Run's goroutine
	// only).
	view *view
	// tracker keeps the last valid version of every object: an update
	// that fails to decode never loosens what is in force.
	tracker *policy.Tracker
}

type digestInfo struct {
	digest string
	infos  map[objectKey]objectInfo
}

// keepDigests bounds Source.infos.
const keepDigests = 8

// NewSource returns a Source.
func NewSource(cfg SourceConfig) (*Source, error) {
	if cfg.Client == nil || cfg.Dynamic == nil {
		return nil, errors.New("k8s source: client and dynamic client required")
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = 200 * time.Millisecond
	}
	if cfg.SyncWarning <= 0 {
		cfg.SyncWarning = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Source{cfg: cfg, log: cfg.Logger}, nil
}

// informerSet is the running informers of one Run.
type informerSet struct {
	pods, namespaces, netpols, nodes, cnps, ccnps cache.SharedIndexInformer
	services, endpointSlices                      cache.SharedIndexInformer
}

// Run implements source.Source. It sends the first update once every
// informer has listed, then one per change of the normalized content:
// resyncs, relists, status and metadata-only writes send nothing.
func (s *Source) Run(ctx context.Context, updates chan<- source.Update) error {
	ctx, cancel := context.WithCancel(ctx)
	changed := make(chan struct{}, 1)
	// dirty: the objects changed since the last update.
	var dirtyMu sync.Mutex
	dirty := map[storeKey]struct{}{}
	record := func(informer int, obj any) {
		key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
		if err != nil {
			return
		}
		dirtyMu.Lock()
		dirty[storeKey{informer, key}] = struct{}{}
		dirtyMu.Unlock()
		select {
		case changed <- struct{}{}:
		default:
		}
	}
	typed := informers.NewSharedInformerFactory(s.cfg.Client, 0)
	// All nodes: their addresses are the remote-node identity. Only the
	// addresses enter the digest, so heartbeats cause no update.
	nodeFactory := informers.NewSharedInformerFactory(s.cfg.Client, 0)
	dyn := dynamicinformer.NewDynamicSharedInformerFactory(s.cfg.Dynamic, 0)
	defer func() {
		cancel()
		typed.Shutdown()
		nodeFactory.Shutdown()
		dyn.Shutdown()
	}()
	inf := informerSet{
		pods:       typed.Core().V1().Pods().Informer(),
		namespaces: typed.Core().V1().Namespaces().Informer(),
		netpols:    typed.Networking().V1().NetworkPolicies().Informer(),
		nodes:      nodeFactory.Core().V1().Nodes().Informer(),
		cnps:       dyn.ForResource(CNPResource()).Informer(),
		ccnps:      dyn.ForResource(CCNPResource()).Informer(),
		services:   typed.Core().V1().Services().Informer(),
		// Every slice: a Service's backends (the default/kubernetes one is
		// also the kube-apiserver entity).
		endpointSlices: typed.Discovery().V1().EndpointSlices().Informer(),
	}
	named := []struct {
		name string
		inf  cache.SharedIndexInformer
	}{{"pods", inf.pods}, {"namespaces", inf.namespaces}, {"networkpolicies", inf.netpols}, {"nodes", inf.nodes},
		{"ciliumnetworkpolicies", inf.cnps}, {"ciliumclusterwidenetworkpolicies", inf.ccnps},
		{"services", inf.services}, {"endpointslices", inf.endpointSlices}}
	for i, n := range named {
		trim := trimManagedFields
		switch n.inf {
		case inf.pods:
			trim = trimPod
		case inf.endpointSlices:
			trim = trimEndpointSlice
		}
		if err := n.inf.SetTransform(trim); err != nil {
			return fmt.Errorf("informer %s: %w", n.name, err)
		}
		handler := cache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { record(i, o) },
			UpdateFunc: func(_, o any) { record(i, o) },
			DeleteFunc: func(o any) { record(i, o) },
		}
		if _, err := n.inf.AddEventHandler(handler); err != nil {
			return fmt.Errorf("informer %s: %w", n.name, err)
		}
	}
	typed.Start(ctx.Done())
	nodeFactory.Start(ctx.Done())
	dyn.Start(ctx.Done())

	// Wait for every first list; say which are missing meanwhile.
	for {
		wctx, wcancel := context.WithTimeout(ctx, s.cfg.SyncWarning)
		var synced []cache.InformerSynced
		for _, n := range named {
			synced = append(synced, n.inf.HasSynced)
		}
		ok := cache.WaitForCacheSync(wctx.Done(), synced...)
		wcancel()
		if ok {
			break
		}
		if ctx.Err() != nil {
			return nil
		}
		var missing []string
		for _, n := range named {
			if !n.inf.HasSynced() {
				missing = append(missing, n.name)
			}
		}
		s.log.Warn("kubernetes source still waiting for the first list; no policy update until then (are the cilium.io CRDs installed and RBAC granted?)",
			"resources", missing)
	}
	s.log.Info("kubernetes source synced", "pods", len(inf.pods.GetStore().ListKeys()),
		"ciliumnetworkpolicies", len(inf.cnps.GetStore().ListKeys()), "ciliumclusterwidenetworkpolicies", len(inf.ccnps.GetStore().ListKeys()))
	if _, ok, _ := inf.nodes.GetStore().GetByKey(s.cfg.Node); !ok {
		s.log.Warn("this node's Node object was not found; check --node", "node", s.cfg.Node)
	}

	get := func(sk storeKey) (any, bool) {
		o, ok, err := named[sk.informer].inf.GetStore().GetByKey(sk.key)
		return o, ok && err == nil
	}
	// The first view: every object.
	dirtyMu.Lock()
	for i, n := range named {
		for _, k := range n.inf.GetStore().ListKeys() {
			dirty[storeKey{i, k}] = struct{}{}
		}
	}
	dirtyMu.Unlock()
	if s.view == nil {
		s.view = newView()
	}
	last := ""
	for {
		dirtyMu.Lock()
		batch := make([]storeKey, 0, len(dirty))
		for k := range dirty {
			batch = append(batch, k)
		}
		clear(dirty)
		dirtyMu.Unlock()
		if err := s.view.apply(batch, get); err != nil {
			s.log.Error("kubernetes source: render objects", "error", err)
		} else {
			u := s.viewUpdate()
			if u.Digest != last {
				select {
				case updates <- u:
					last = u.Digest
					s.log.Debug("kubernetes source update", "digest", u.Digest, "policies", len(u.Objects.Policies),
						"pods", len(u.Objects.Pods), "errors", len(u.Errors))
				case <-ctx.Done():
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
		// Debounce: a rollout changes many pods at once.
		t := time.NewTimer(s.cfg.Debounce)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// update makes the view exactly docs and returns it (tests).
func (s *Source) update(docs []document) source.Update {
	if s.view == nil {
		s.view = newView()
	}
	s.view.replace(docs)
	return s.viewUpdate()
}

// viewUpdate returns the current view as an update, and remembers which
// policy generations its digest held. Only the objects that changed since
// the last update were rendered and decoded (see view). The digest is
// over the canonical documents, so an unchanged view has an unchanged
// digest. An object whose update fails to decode keeps its last valid
// version in force; a new invalid policy holds the endpoints it selects in
// default-deny (policy.Tracker); its error says which, and the status
// writer reports it Valid=False.
func (s *Source) viewUpdate() source.Update {
	objs, errs, infos, digest := s.view.assemble()
	s.mu.Lock()
	if s.tracker == nil {
		s.tracker = policy.NewTracker()
	}
	tracker := s.tracker
	s.mu.Unlock()
	// The view never modifies the pods it assembled (view.fastPods is
	// replaced, not changed): the tracker keeps them, not a copy.
	objs, errs = tracker.ApplyView(objs, errs)
	s.mu.Lock()
	if n := len(s.infos); n == 0 || s.infos[n-1].digest != digest {
		s.infos = append(s.infos, digestInfo{digest: digest, infos: infos})
		if len(s.infos) > keepDigests {
			s.infos = s.infos[len(s.infos)-keepDigests:]
		}
	}
	s.mu.Unlock()
	return source.Update{Objects: objs, Errors: errs, Digest: digest}
}

// objectInfo returns the UID and generation an object had in the view with
// this digest (false: unknown digest or object).
func (s *Source) objectInfo(digest string, k objectKey) (objectInfo, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := len(s.infos) - 1; i >= 0; i-- {
		if s.infos[i].digest == digest {
			in, ok := s.infos[i].infos[k]
			return in, ok
		}
	}
	return objectInfo{}, false
}
