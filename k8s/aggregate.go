package k8s

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"

	"github.com/l7gate/l7gate/policy"
)

// Defaults of the election of the agent that merges the nodes' status.
// Every other agent asks for the Lease once per retry period: one GET per
// agent per 15 s is the standing cost; a new leader takes over within
// 15 s of a graceful stop and 60 s of a crash. Enforcement never waits
// for it: only the policies' status does.
const (
	defaultLeaseName     = "l7gate-policy-status"
	defaultLeaseDuration = 45 * time.Second
	defaultRenewDeadline = 30 * time.Second
	defaultRetryPeriod   = 15 * time.Second
	// A policy's status is written once per settled batch of reports:
	// at once when every node reported its generation, else (a partial
	// write, naming the nodes still to report) when nothing about the
	// policy changed for aggregateQuiet — no node's report of it, no
	// spec or Node change — or aggregateMaxDelay after its first
	// unwritten change, whichever comes first. Each write reaches every
	// agent watching policies (≈15 KiB per agent and change at N = 200):
	// a fixed 1 s wait wrote 1.2-2.7 times per change at N = 200 while
	// reports were still arriving (make scale). A cluster whose nodes
	// all report (one node: its first report) is written at once.
	aggregateQuiet    = time.Second
	aggregateMaxDelay = 5 * time.Second
	// aggregatePartialEvery spaces a policy's partial writes: while
	// nodes are still to report, at most one per aggregatePartialEvery
	// (at N = 200 a change cost 5 merged writes, 4 of them partial; make
	// scale). The write once every node reported goes at once.
	aggregatePartialEvery = 3 * time.Second
	aggregateTick         = 50 * time.Millisecond
	aggregatorManager     = "l7gate-aggregator"
	// defaultStatusNodesLimit: with more nodes, a policy's status.nodes
	// lists only the nodes with an error or behind, and the Implemented
	// condition counts the rest (aggregatePatchLimit).
	defaultStatusNodesLimit = 32
)

// serviceAccountNamespace is where an in-cluster agent runs.
const serviceAccountNamespace = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

// leaseNamespace is the configured namespace, else the agent's own, else
// kube-system.
func leaseNamespace(configured string) string {
	if configured != "" {
		return configured
	}
	if b, err := os.ReadFile(serviceAccountNamespace); err == nil && strings.TrimSpace(string(b)) != "" {
		return strings.TrimSpace(string(b))
	}
	return "kube-system"
}

// runElected takes part in the election and, while this agent leads,
// merges the nodes' PolicyNodeStatus into the policies' status.
func (w *StatusWriter) runElected(ctx context.Context) {
	c := w.cfg.Election
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: cmp.Or(c.LeaseName, defaultLeaseName), Namespace: leaseNamespace(c.Namespace)},
		Client:     w.cfg.Client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: w.cfg.Node},
	}
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   cmp.Or(c.LeaseDuration, defaultLeaseDuration),
			RenewDeadline:   cmp.Or(c.RenewDeadline, defaultRenewDeadline),
			RetryPeriod:     cmp.Or(c.RetryPeriod, defaultRetryPeriod),
			ReleaseOnCancel: true,
			Name:            "l7gate policy status",
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(ctx context.Context) {
					w.log.Info("merging the nodes' policy status (elected)", "lease", lock.LeaseMeta.Namespace+"/"+lock.LeaseMeta.Name)
					for ctx.Err() == nil {
						limit := cmp.Or(c.StatusNodesLimit, defaultStatusNodesLimit)
						if limit < 0 {
							limit = 0 // every node
						}
						a := &aggregator{dyn: w.cfg.Dynamic, namespace: w.reportNamespace, log: w.log, nodesLimit: limit, nodeSelector: w.nodeSelector}
						err := a.run(ctx)
						if ctx.Err() != nil {
							return
						}
						w.log.Warn("policy status merge stopped; retrying in 30s", "error", err)
						select {
						case <-ctx.Done():
						case <-time.After(30 * time.Second):
						}
					}
				},
				OnStoppedLeading: func() {},
			},
		})
		if err != nil {
			w.log.Error("policy status election", "error", err)
			return
		}
		le.Run(ctx)
	}
}

// aggregator writes each Cilium policy's status from the PolicyNodeStatus
// of every node: status.nodes[node] as the node reported it, and the
// Valid and Supported conditions of the current generation. The nodes it
// counts are the Nodes that should run an agent (nodeSelector), and any
// other existing Node with a report: a node that has not reported is
// pending, never left out, and a report whose Node is gone counts for
// nothing (expectedNodes). It is the
// only writer of those fields while it leads, so its merge patches carry
// no resourceVersion and cannot conflict. It writes a policy when every
// node reported the policy's generation, or aggregateMaxDelay after its
// first unwritten change, or once its reports were quiet for
// aggregateQuiet (partialDue), and only what changed.
type aggregator struct {
	dyn dynamic.Interface
	// namespace of the nodes' report ConfigMaps.
	namespace string
	// nodesLimit: see aggregatePatchLimit (0: list every node).
	nodesLimit int
	// nodeSelector: the Nodes that should run an agent.
	nodeSelector labels.Selector
	log          interface {
		Warn(msg string, args ...any)
		Debug(msg string, args ...any)
	}

	// reports: each node's decoded PolicyNodeStatus, by resourceVersion.
	reports reportCache
	// lastPartial: when a policy's status was last written with nodes
	// still to report; waiting: the change count of a policy found
	// incomplete and left to wait (run's goroutine only). While nothing
	// changed and the wait is not over, the policy is not merged again:
	// merging 200 reports every 50 ms was the elected agent's main cost
	// (make scale).
	lastPartial map[string]time.Time
	waiting     map[string]int

	mu sync.Mutex
	// dirty: policies (policyStatusKey) to look at.
	dirty   map[string]dirtyMark
	changed chan struct{}
	// writes counts status writes (tests).
	writes int
}

// dirtyMark: since when a policy waits to be looked at, when it last
// changed, and a count of the changes seen meanwhile (a change during a
// pass keeps it dirty).
type dirtyMark struct {
	since, last time.Time
	changes     int
}

// partialDue reports whether a policy whose nodes have not all reported
// its generation is written now (with what they did report): its reports
// settled (nothing changed for aggregateQuiet) or waited
// aggregateMaxDelay, and its last partial write is aggregatePartialEvery
// old (lastPartial: zero if none).
func partialDue(now time.Time, mark dirtyMark, lastPartial time.Time) bool {
	if now.Sub(lastPartial) < aggregatePartialEvery {
		return false
	}
	return now.Sub(mark.last) >= aggregateQuiet || now.Sub(mark.since) >= aggregateMaxDelay
}

func (a *aggregator) markDirty(keys ...string) {
	a.mu.Lock()
	now := time.Now()
	for _, k := range keys {
		m, ok := a.dirty[k]
		if !ok {
			m.since = now
		}
		m.last = now
		m.changes++
		a.dirty[k] = m
	}
	a.mu.Unlock()
	select {
	case a.changed <- struct{}{}:
	default:
	}
}

func (a *aggregator) run(ctx context.Context) error {
	// The nodes' reports: ConfigMaps in their namespace (ReportNamespace;
	// not readable there: a clear error, and every node stays pending),
	// and the PolicyNodeStatus objects agents before them wrote (a cluster in
	// the middle of an upgrade; a newer agent deletes its node's on
	// start, and its ConfigMap wins over it meanwhile).
	if _, err := a.dyn.Resource(configMapResource).Namespace(a.namespace).List(ctx, metav1.ListOptions{Limit: 1, LabelSelector: reportLabel + "=" + reportLabelValue}); err != nil {
		if apierrors.IsForbidden(err) {
			return fmt.Errorf("list the nodes' policy status reports: the agent may not list configmaps in namespace %s (the chart's Role there; --status-namespace): %w", a.namespace, err)
		}
		return fmt.Errorf("list the nodes' policy status reports in namespace %s: %w", a.namespace, err)
	}
	legacy := true
	if _, err := a.dyn.Resource(PolicyNodeStatusResource()).List(ctx, metav1.ListOptions{Limit: 1}); err != nil {
		if !isMissingAPI(err) {
			return fmt.Errorf("list policy node status: %w", err)
		}
		legacy = false
	}
	a.dirty = map[string]dirtyMark{}
	a.changed = make(chan struct{}, 1)
	f := dynamicinformer.NewDynamicSharedInformerFactory(a.dyn, 0)
	defer f.Shutdown()
	rf := dynamicinformer.NewFilteredDynamicSharedInformerFactory(a.dyn, 0, a.namespace, func(o *metav1.ListOptions) {
		o.LabelSelector = reportLabel + "=" + reportLabelValue
	})
	defer rf.Shutdown()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	reportInformers := []cache.SharedIndexInformer{rf.ForResource(configMapResource).Informer()}
	if legacy {
		reportInformers = append(reportInformers, f.ForResource(PolicyNodeStatusResource()).Informer())
	}
	cnps := f.ForResource(CNPResource()).Informer()
	ccnps := f.ForResource(CCNPResource()).Informer()
	// The Node objects: which nodes should run an agent. Only names and
	// labels are kept (one watch, in the elected agent only).
	kubeNodes := f.ForResource(nodeResource).Informer()
	if err := kubeNodes.SetTransform(nodeMeta); err != nil {
		return err
	}
	a.lastPartial = map[string]time.Time{}
	a.waiting = map[string]int{}
	entryKeys := func(o any) []string {
		if u, ok := o.(*unstructured.Unstructured); ok {
			return slices.Collect(maps.Keys(a.reports.entries(u)))
		}
		return nil
	}
	reportHandler := cache.ResourceEventHandlerFuncs{
		AddFunc: func(o any) { a.markDirty(entryKeys(o)...) },
		UpdateFunc: func(oldObj, newObj any) {
			ou, _ := oldObj.(*unstructured.Unstructured)
			nu, _ := newObj.(*unstructured.Unstructured)
			if ou == nil || nu == nil {
				return
			}
			before, after := a.reports.entries(ou), a.reports.entries(nu)
			var keys []string
			for k, e := range after {
				if b, ok := before[k]; !ok || !reflect.DeepEqual(b, e) {
					keys = append(keys, k)
				}
			}
			for k := range before {
				if _, ok := after[k]; !ok {
					keys = append(keys, k)
				}
			}
			a.markDirty(keys...)
		},
		DeleteFunc: func(o any) {
			if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
				o = t.Obj
			}
			a.markDirty(entryKeys(o)...)
		},
	}
	for _, inf := range reportInformers {
		if _, err := inf.AddEventHandler(reportHandler); err != nil {
			return err
		}
	}
	// A node that comes, goes or moves in or out of the selector changes
	// every policy's count. Until every informer synced, each policy's own
	// add marks it (N nodes × P policies at start-up is not needed).
	var synced atomic.Bool
	allPolicies := func() {
		if !synced.Load() {
			return
		}
		var keys []string
		for _, inf := range []cache.SharedIndexInformer{cnps, ccnps} {
			for _, o := range inf.GetStore().List() {
				if u, ok := o.(*unstructured.Unstructured); ok {
					keys = append(keys, policyStatusKey(objectKey{Kind: u.GetKind(), Namespace: u.GetNamespace(), Name: u.GetName()}))
				}
			}
		}
		a.markDirty(keys...)
	}
	if _, err := kubeNodes.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { allPolicies() },
		UpdateFunc: func(oldObj, newObj any) {
			ou, _ := oldObj.(*unstructured.Unstructured)
			nu, _ := newObj.(*unstructured.Unstructured)
			if ou == nil || nu == nil || a.nodeSelector.Matches(labels.Set(ou.GetLabels())) != a.nodeSelector.Matches(labels.Set(nu.GetLabels())) {
				allPolicies()
			}
		},
		DeleteFunc: func(any) { allPolicies() },
	}); err != nil {
		return err
	}
	policyKey := func(o any) []string {
		if t, ok := o.(cache.DeletedFinalStateUnknown); ok {
			o = t.Obj
		}
		if u, ok := o.(*unstructured.Unstructured); ok {
			return []string{policyStatusKey(objectKey{Kind: u.GetKind(), Namespace: u.GetNamespace(), Name: u.GetName()})}
		}
		return nil
	}
	for _, inf := range []cache.SharedIndexInformer{cnps, ccnps} {
		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { a.markDirty(policyKey(o)...) },
			UpdateFunc: func(_, o any) { a.markDirty(policyKey(o)...) },
		}); err != nil {
			return err
		}
	}
	f.Start(ctx.Done())
	rf.Start(ctx.Done())
	for _, inf := range append([]cache.SharedIndexInformer{cnps, ccnps, kubeNodes}, reportInformers...) {
		if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
			return ctx.Err()
		}
	}
	// (Policies stay dirty from their adds until the loop below merges
	// them, reading the Nodes then: no node change is missed meanwhile.)
	synced.Store(true)
	tick := time.NewTicker(aggregateTick)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.changed:
		case <-tick.C:
		}
		a.mu.Lock()
		if len(a.dirty) == 0 {
			a.mu.Unlock()
			continue
		}
		dirty := maps.Clone(a.dirty)
		a.mu.Unlock()
		now := time.Now()
		for key, mark := range dirty {
			if n, ok := a.waiting[key]; ok && n == mark.changes && !partialDue(now, mark, a.lastPartial[key]) {
				delete(dirty, key) // still incomplete, nothing new
			}
		}
		if len(dirty) == 0 {
			continue
		}
		reports := map[string]map[string]nodePolicyStatus{} // node → entries
		var seen []*unstructured.Unstructured
		// Older agents' PolicyNodeStatus first: a node's ConfigMap wins.
		for i := len(reportInformers) - 1; i >= 0; i-- {
			for _, o := range reportInformers[i].GetStore().List() {
				if u, ok := o.(*unstructured.Unstructured); ok && reportNode(u) != "" {
					reports[reportNode(u)] = a.reports.entries(u)
					seen = append(seen, u)
				}
			}
		}
		a.reports.keep(seen)
		expected := a.expectedNodes(kubeNodes.GetStore().List(), reports)
		for key, mark := range dirty {
			k, ok := parsePolicyStatusKey(key)
			if !ok {
				a.done(key, mark)
				continue
			}
			inf, storeKey := ccnps, k.Name
			if k.Kind == string(policy.KindCNP) {
				inf, storeKey = cnps, k.Namespace+"/"+k.Name
			}
			o, exists, _ := inf.GetStore().GetByKey(storeKey)
			u, _ := o.(*unstructured.Unstructured)
			if !exists || u == nil {
				a.done(key, mark)
				continue
			}
			patch, complete, err := aggregatePatchLimit(u, key, reports, expected, time.Now().UTC(), a.nodesLimit)
			if err != nil {
				a.log.Warn("policy status merge", "policy", key, "error", err)
				a.done(key, mark)
				continue
			}
			if patch == nil {
				a.done(key, mark)
				continue
			}
			if !complete && !partialDue(now, mark, a.lastPartial[key]) {
				a.waiting[key] = mark.changes
				continue // wait for the other nodes while their reports arrive
			}
			delete(a.waiting, key)
			res := a.dyn.Resource(CCNPResource()).Patch
			if k.Kind == string(policy.KindCNP) {
				res = a.dyn.Resource(CNPResource()).Namespace(k.Namespace).Patch
			}
			_, err = res(ctx, k.Name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: aggregatorManager}, "status")
			if err != nil && !apierrors.IsNotFound(err) {
				a.log.Warn("policy status not written; retrying", "policy", key, "error", err)
				continue
			}
			if complete {
				delete(a.lastPartial, key)
			} else {
				a.lastPartial[key] = time.Now()
			}
			a.mu.Lock()
			a.writes++
			a.mu.Unlock()
			a.done(key, mark)
		}
	}
}

// nodeResource: the core Node objects.
var nodeResource = schema.GroupVersionResource{Version: "v1", Resource: "nodes"}

// nodeMeta keeps of a Node only what expectedNodes reads (name, labels):
// the elected agent holds every Node of the cluster.
func nodeMeta(o any) (any, error) {
	u, ok := o.(*unstructured.Unstructured)
	if !ok {
		return o, nil
	}
	m := &unstructured.Unstructured{Object: map[string]any{}}
	m.SetAPIVersion(u.GetAPIVersion())
	m.SetKind(u.GetKind())
	m.SetName(u.GetName())
	m.SetUID(u.GetUID())
	m.SetResourceVersion(u.GetResourceVersion())
	m.SetLabels(u.GetLabels())
	return m, nil
}

// expectedNodes is the set of nodes a policy's status counts: the Nodes
// the selector matches (those that should run an agent), and any other
// existing Node that has a report (an agent runs there). A report whose
// Node is gone is not among them: a deleted node counts for nothing,
// whatever its lingering PolicyNodeStatus says.
func (a *aggregator) expectedNodes(nodeObjs []any, reports map[string]map[string]nodePolicyStatus) map[string]bool {
	out := make(map[string]bool, len(nodeObjs))
	for _, o := range nodeObjs {
		u, ok := o.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		_, reported := reports[u.GetName()]
		if reported || a.nodeSelector.Matches(labels.Set(u.GetLabels())) {
			out[u.GetName()] = true
		}
	}
	return out
}

// reportCache keeps each node's decoded PolicyNodeStatus entries by the
// object's resourceVersion: the merge looks at every node's report on
// every pass while a policy waits, and decoding them all again was a
// tenth of the agents' CPU at N = 200 (make scale). Entries handed out
// are shared: callers do not modify them.
type reportCache struct {
	mu    sync.Mutex
	nodes map[string]cachedReport
}

type cachedReport struct {
	uid, rv string
	entries map[string]nodePolicyStatus
}

// entries is nodeStatusEntries(u), decoded once per resourceVersion.
func (c *reportCache) entries(u *unstructured.Unstructured) map[string]nodePolicyStatus {
	uid, rv, name := string(u.GetUID()), u.GetResourceVersion(), reportCacheKey(u)
	c.mu.Lock()
	if r, ok := c.nodes[name]; ok && rv != "" && r.rv == rv && r.uid == uid {
		c.mu.Unlock()
		return r.entries
	}
	c.mu.Unlock()
	e := nodeStatusEntries(u)
	if rv == "" {
		return e
	}
	c.mu.Lock()
	if c.nodes == nil {
		c.nodes = map[string]cachedReport{}
	}
	// The newest version wins (an informer's update handler asks for the
	// old one too; resourceVersions are compared by length, then text, as
	// etcd's are decimal).
	if r, ok := c.nodes[name]; !ok || r.uid != uid || newerRV(rv, r.rv) {
		c.nodes[name] = cachedReport{uid: uid, rv: rv, entries: e}
	}
	c.mu.Unlock()
	return e
}

// reportCacheKey names a report object in the cache (a ConfigMap and a
// PolicyNodeStatus may share a name).
func reportCacheKey(u *unstructured.Unstructured) string {
	return u.GetKind() + "/" + u.GetName()
}

// keep forgets the nodes not among objs (their reports were deleted).
func (c *reportCache) keep(objs []*unstructured.Unstructured) {
	names := make(map[string]bool, len(objs))
	for _, u := range objs {
		names[reportCacheKey(u)] = true
	}
	c.mu.Lock()
	for n := range c.nodes {
		if !names[n] {
			delete(c.nodes, n)
		}
	}
	c.mu.Unlock()
}

// newerRV: whether resourceVersion a is newer than b (both etcd's
// decimal revisions; anything else counts as newer, so it is decoded).
func newerRV(a, b string) bool {
	if len(a) != len(b) {
		return len(a) > len(b)
	}
	return a > b
}

// done drops key from dirty unless it changed again since mark.
func (a *aggregator) done(key string, mark dirtyMark) {
	delete(a.waiting, key)
	a.mu.Lock()
	if m, ok := a.dirty[key]; ok && m.changes == mark.changes {
		delete(a.dirty, key)
	}
	a.mu.Unlock()
}

// aggregatePatch is aggregatePatchLimit listing every node.
func aggregatePatch(u *unstructured.Unstructured, key string, reports map[string]map[string]nodePolicyStatus, nodes map[string]bool, now time.Time) ([]byte, bool, error) {
	return aggregatePatchLimit(u, key, reports, nodes, now, 0)
}

// Entries of status.nodes for a node that has not reported a policy: not
// ok, not enforcing, and no observedGeneration (so no condition takes it
// for a node's verdict on the policy).
const (
	pendingNoReport = "pending: no report from this node's agent yet (no PolicyNodeStatus)"
	pendingNoEntry  = "pending: this node's agent has not reported this policy yet"
	maxPendingNamed = 10
)

// aggregatePatchLimit returns the merge patch taking policy u's status to
// what the nodes reported (nil: nothing to change), and whether every
// node reported the current generation. nodes are the nodes to count
// (expectedNodes): a node among them without a report of the policy is
// pending — listed in status.nodes with a pending error, and named by
// the Implemented condition — and a report from a node not among them
// is ignored. With more than limit nodes (limit > 0), status.nodes lists
// only the nodes with something to say — an error, no report, or behind
// the current generation; at most limit of them, in that order — and the
// Implemented condition counts the nodes that implemented the
// generation: every agent watches the policies, so a status that grows
// with the cluster is received by every node on every change (make
// scale).
func aggregatePatchLimit(u *unstructured.Unstructured, key string, reports map[string]map[string]nodePolicyStatus, nodes map[string]bool, now time.Time, limit int) ([]byte, bool, error) {
	gen := u.GetGeneration()
	summarize := limit > 0 && len(nodes) > limit
	want := map[string]nodeStatus{}
	pending := map[string]nodeStatus{} // nodes without a report of this policy
	complete := true
	for node := range nodes {
		entries, reported := reports[node]
		if !reported {
			pending[node] = nodeStatus{Error: pendingNoReport}
			complete = false
			continue
		}
		e, ok := entries[key]
		if !ok || (e.UID != "" && e.UID != u.GetUID()) {
			pending[node] = nodeStatus{Error: pendingNoEntry}
			complete = false
			continue
		}
		if e.ObservedGeneration == 0 {
			e.ObservedGeneration = gen // reported without knowing it
		}
		if e.ObservedGeneration != gen {
			complete = false
		}
		want[node] = e.nodeStatus
	}
	current := map[string]nodeStatus{}
	if raw, ok, _ := unstructured.NestedMap(u.Object, "status", "nodes"); ok {
		for node, v := range raw {
			b, _ := json.Marshal(v)
			var ns nodeStatus
			if json.Unmarshal(b, &ns) == nil {
				current[node] = ns
			}
		}
	}
	listed := make(map[string]nodeStatus, len(want)+len(pending))
	if summarize {
		// At most limit nodes: those with an error first, then those
		// without a report, then those behind (right after a change that
		// is every node), by name.
		var failing, behind []string
		for node, ns := range want {
			switch {
			case !ns.OK || !ns.Enforcing:
				failing = append(failing, node)
			case ns.ObservedGeneration != gen:
				behind = append(behind, node)
			}
		}
		slices.Sort(failing)
		slices.Sort(behind)
		for _, node := range slices.Concat(failing, slices.Sorted(maps.Keys(pending)), behind) {
			if len(listed) == limit {
				break
			}
			if ns, ok := want[node]; ok {
				listed[node] = ns
			} else {
				listed[node] = pending[node]
			}
		}
	} else {
		maps.Copy(listed, want)
		maps.Copy(listed, pending)
	}
	nodesPatch := map[string]any{}
	for node, ns := range listed {
		if cur, ok := current[node]; !ok || !reflect.DeepEqual(cur, ns) {
			m, err := wholeEntry(ns, entryFields[1:])
			if err != nil {
				return nil, false, err
			}
			nodesPatch[node] = m
		}
	}
	for node := range current {
		if _, ok := listed[node]; !ok {
			nodesPatch[node] = nil // the node is gone, or has nothing to say
		}
	}
	// The conditions of the current generation, from the nodes that
	// implemented it (every node decodes a policy alike; sorted for a
	// stable message).
	var atGen []string
	for node, ns := range want {
		if ns.ObservedGeneration == gen {
			atGen = append(atGen, node)
		}
	}
	slices.Sort(atGen)
	var wantConds []condition
	if len(atGen) > 0 {
		errMsg := ""
		var warnings []string
		for _, node := range atGen {
			ns := want[node]
			if errMsg == "" && !ns.OK && !ns.Enforcing && ns.Error != "" {
				errMsg = ns.Error
			}
			if warnings == nil && len(ns.Warnings) > 0 {
				warnings = ns.Warnings
			}
		}
		wantConds = append(wantConds, validCondition(errMsg, gen), supportedCondition(warnings, gen))
	}
	if summarize {
		// Also before any node implemented the generation: the condition
		// of the previous one must not stand for it.
		wantConds = append(wantConds, implementedCondition(want, atGen, len(nodes), slices.Sorted(maps.Keys(pending)), complete, gen))
	}
	status := map[string]any{}
	if len(wantConds) > 0 {
		conds, err := readConditions(u)
		if err != nil {
			return nil, false, err
		}
		merged, changed := mergeConditions(conds, wantConds, now.Format(time.RFC3339))
		if changed {
			status["conditions"] = merged
		}
	}
	if len(nodesPatch) > 0 {
		status["nodes"] = nodesPatch
	}
	if len(status) == 0 {
		return nil, complete, nil
	}
	b, err := json.Marshal(map[string]any{"status": status})
	if err != nil {
		return nil, false, fmt.Errorf("encode status: %w", err)
	}
	return b, complete, nil
}

// implementedCondition counts, of the nodes to count (nodes of them),
// those that enforce generation gen (atGen: the nodes at gen) and those
// reporting an error, and names the nodes that have not reported the
// policy (pending, sorted; at most maxPendingNamed).
func implementedCondition(want map[string]nodeStatus, atGen []string, nodes int, pending []string, complete bool, gen int64) condition {
	enforcing, failing := 0, 0
	for _, node := range atGen {
		ns := want[node]
		if ns.Enforcing {
			enforcing++
		}
		if !ns.OK {
			failing++
		}
	}
	msg := fmt.Sprintf("%d of %d nodes implemented generation %d", enforcing, nodes, gen)
	switch failing {
	case 0:
	case 1:
		msg += "; 1 node reports an error (status.nodes)"
	default:
		msg += fmt.Sprintf("; %d nodes report errors (status.nodes)", failing)
	}
	if len(pending) > 0 {
		named := pending[:min(len(pending), maxPendingNamed)]
		if len(pending) == 1 {
			msg += "; 1 node has not reported: "
		} else {
			msg += fmt.Sprintf("; %d nodes have not reported: ", len(pending))
		}
		msg += strings.Join(named, ", ")
		if more := len(pending) - len(named); more > 0 {
			msg += fmt.Sprintf(" and %d more", more)
		}
	}
	c := condition{Type: ConditionImplemented, Status: "False", Reason: ReasonPending, Message: msg, ObservedGeneration: gen}
	if complete && len(pending) == 0 && enforcing == nodes {
		c.Status, c.Reason = "True", ReasonAllNodes
	}
	return c
}
