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
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
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
	// aggregateMaxDelay bounds how long a policy's status waits for the
	// nodes still to report before it shows the ones that did.
	aggregateMaxDelay = time.Second
	// aggregatePartialEvery spaces a policy's writes while nodes are
	// still to report: each write reaches every agent watching policies
	// (at N = 200 a change cost 5 merged writes, 4 of them partial; make
	// scale). A write once every node reported goes at once.
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
						a := &aggregator{dyn: w.cfg.Dynamic, log: w.log, nodesLimit: limit}
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
// Valid and Supported conditions of the current generation. It is the
// only writer of those fields while it leads, so its merge patches carry
// no resourceVersion and cannot conflict. It writes a policy when every
// node reported the policy's generation, or aggregateMaxDelay after its
// first unreported change, and only what changed.
type aggregator struct {
	dyn dynamic.Interface
	// nodesLimit: see aggregatePatchLimit (0: list every node).
	nodesLimit int
	log        interface {
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

// dirtyMark: since when a policy waits to be looked at, and a count of
// the changes seen meanwhile (a change during a pass keeps it dirty).
type dirtyMark struct {
	since   time.Time
	changes int
}

func (a *aggregator) markDirty(keys ...string) {
	a.mu.Lock()
	now := time.Now()
	for _, k := range keys {
		m, ok := a.dirty[k]
		if !ok {
			m.since = now
		}
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
	// Without the CRD there is nothing to merge (agents then write the
	// policies' status themselves).
	if _, err := a.dyn.Resource(PolicyNodeStatusResource()).List(ctx, metav1.ListOptions{Limit: 1}); err != nil {
		if isMissingAPI(err) {
			return errNoNodeStatusAPI
		}
		return fmt.Errorf("list policy node status: %w", err)
	}
	a.dirty = map[string]dirtyMark{}
	a.changed = make(chan struct{}, 1)
	f := dynamicinformer.NewDynamicSharedInformerFactory(a.dyn, 0)
	defer f.Shutdown()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	nodes := f.ForResource(PolicyNodeStatusResource()).Informer()
	cnps := f.ForResource(CNPResource()).Informer()
	ccnps := f.ForResource(CCNPResource()).Informer()
	a.lastPartial = map[string]time.Time{}
	a.waiting = map[string]int{}
	entryKeys := func(o any) []string {
		if u, ok := o.(*unstructured.Unstructured); ok {
			return slices.Collect(maps.Keys(a.reports.entries(u)))
		}
		return nil
	}
	if _, err := nodes.AddEventHandler(cache.ResourceEventHandlerFuncs{
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
	for _, inf := range []cache.SharedIndexInformer{nodes, cnps, ccnps} {
		if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
			return ctx.Err()
		}
	}
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
		waitOver := func(key string, mark dirtyMark) bool {
			return time.Since(mark.since) >= aggregateMaxDelay && time.Since(a.lastPartial[key]) >= aggregatePartialEvery
		}
		for key, mark := range dirty {
			if n, ok := a.waiting[key]; ok && n == mark.changes && !waitOver(key, mark) {
				delete(dirty, key) // still incomplete, nothing new
			}
		}
		if len(dirty) == 0 {
			continue
		}
		reports := map[string]map[string]nodePolicyStatus{} // node → entries
		var seen []*unstructured.Unstructured
		for _, o := range nodes.GetStore().List() {
			if u, ok := o.(*unstructured.Unstructured); ok {
				reports[u.GetName()] = a.reports.entries(u)
				seen = append(seen, u)
			}
		}
		a.reports.keep(seen)
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
			patch, complete, err := aggregatePatchLimit(u, key, reports, time.Now().UTC(), a.nodesLimit)
			if err != nil {
				a.log.Warn("policy status merge", "policy", key, "error", err)
				a.done(key, mark)
				continue
			}
			if patch == nil {
				a.done(key, mark)
				continue
			}
			if !complete && !waitOver(key, mark) {
				a.waiting[key] = mark.changes
				continue // wait for the other nodes, a little
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
	uid, rv := string(u.GetUID()), u.GetResourceVersion()
	c.mu.Lock()
	if r, ok := c.nodes[u.GetName()]; ok && rv != "" && r.rv == rv && r.uid == uid {
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
	if r, ok := c.nodes[u.GetName()]; !ok || r.uid != uid || newerRV(rv, r.rv) {
		c.nodes[u.GetName()] = cachedReport{uid: uid, rv: rv, entries: e}
	}
	c.mu.Unlock()
	return e
}

// keep forgets the nodes not among objs (their reports were deleted).
func (c *reportCache) keep(objs []*unstructured.Unstructured) {
	names := make(map[string]bool, len(objs))
	for _, u := range objs {
		names[u.GetName()] = true
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
func aggregatePatch(u *unstructured.Unstructured, key string, reports map[string]map[string]nodePolicyStatus, now time.Time) ([]byte, bool, error) {
	return aggregatePatchLimit(u, key, reports, now, 0)
}

// aggregatePatchLimit returns the merge patch taking policy u's status to
// what the nodes reported (nil: nothing to change), and whether every
// node reported the current generation. With more than limit nodes
// (limit > 0), status.nodes lists only the nodes with something to say —
// an error, or behind the current generation; at most limit of them,
// errors first — and the Implemented condition counts the nodes that
// implemented the generation:
// every agent watches the policies, so a status that grows with the
// cluster is received by every node on every change (make scale).
func aggregatePatchLimit(u *unstructured.Unstructured, key string, reports map[string]map[string]nodePolicyStatus, now time.Time, limit int) ([]byte, bool, error) {
	gen := u.GetGeneration()
	summarize := limit > 0 && len(reports) > limit
	want := map[string]nodeStatus{}
	complete := true
	for node, entries := range reports {
		e, ok := entries[key]
		if !ok || (e.UID != "" && e.UID != u.GetUID()) {
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
	listed := want
	if summarize {
		// At most limit nodes: those with an error first, then those
		// behind (right after a change that is every node), by name.
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
		listed = map[string]nodeStatus{}
		for _, node := range append(failing, behind...) {
			if len(listed) == limit {
				break
			}
			listed[node] = want[node]
		}
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
			nodesPatch[node] = nil // the node's report is gone (node deleted), or has nothing to say
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
	status := map[string]any{}
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
		conds, err := readConditions(u)
		if err != nil {
			return nil, false, err
		}
		wantConds := []condition{validCondition(errMsg, gen), supportedCondition(warnings, gen)}
		if summarize {
			wantConds = append(wantConds, implementedCondition(want, atGen, len(reports), complete, gen))
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

// implementedCondition counts, of nodes reporting, those that enforce
// generation gen (atGen: the nodes at gen) and those reporting an error.
func implementedCondition(want map[string]nodeStatus, atGen []string, nodes int, complete bool, gen int64) condition {
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
	c := condition{Type: ConditionImplemented, Status: "False", Reason: ReasonPending, Message: msg, ObservedGeneration: gen}
	if complete && enforcing == nodes {
		c.Status, c.Reason = "True", ReasonAllNodes
	}
	return c
}
