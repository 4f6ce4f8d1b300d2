package policy

import (
	"errors"
	"slices"
	"sync"
)

// Tracker keeps the last valid version of every object a source delivered,
// so that an update that fails to decode never removes or loosens what was
// in force (fail closed):
//
//   - an object whose update is invalid keeps its last valid version in
//     force (its error says so; a status writer reports Valid=False);
//   - a new object that is invalid gets what Decode made of it: the
//     fail-closed stand-in that holds the endpoints it selects in
//     default-deny, or nothing when it cannot be confined;
//   - when a whole file no longer parses, the objects it held keep their
//     last valid versions;
//   - an object that is gone from the input (deleted) is forgotten.
//
// Sources call Apply with every complete view they decode (the folder
// source after Load, the Kubernetes source after Decode). Apply is safe for
// concurrent use. Its result's Pods are read-only: they are the tracker's
// own versions (and, with ApplyFiles and ApplyView, the input's), shared
// without spare capacity, so an append copies but a Pod changed in place
// would change what the tracker keeps in force (no caller does: the
// agent's compute, DeriveEndpointSlices, the status writer and the
// sources only read them). The rest of the result is its own.
type Tracker struct {
	mu sync.Mutex
	// last: every object's last valid version but the pods'.
	last map[trackKey]tracked
	// pods: the pods' last valid versions, sorted as Apply's output
	// sorts them; never modified: the input's own pods where the caller
	// never modifies them (ApplyFiles' parts, ApplyView), else a copy. No
	// map entry per pod: that was ~250 B of heap per pod at 11k pods
	// (BenchmarkPodHeap); a pod is looked up (podIndex) only when an
	// update is invalid.
	pods []Pod
	// keptPods: the pods whose earlier version the last call kept in
	// force (a copy each); none when the last call kept none.
	keptPods map[trackKey]tracked
	// memo: the last ApplyFiles call's pods, when it kept no pod.
	memo podsMemo
}

// podsMemo identifies the pods of an ApplyFiles call's parts: per part
// holding pods, its index, its pods array and their duplicate errors.
type podsMemo struct {
	valid bool
	parts []podsPart
}

type podsPart struct {
	index int
	first *Pod // &Pods[0]: parts are not modified after the call (ApplyFiles)
	n     int
	errs  []error
}

type trackKey struct{ kind, namespace, name string }

// tracked is one object's last valid version (exactly one field is set,
// but for the default/kubernetes EndpointSlice: slice and api).
type tracked struct {
	ref   ObjectRef
	ns    *Namespace
	node  *Node
	api   *APIServer
	pod   *Pod
	pol   *Policy
	svc   *Service
	slice *EndpointSlice
}

// NewTracker returns a Tracker that has seen nothing.
func NewTracker() *Tracker {
	return &Tracker{last: map[trackKey]tracked{}}
}

// podsClean: the last call kept no pod's earlier version (pods holds
// exactly the pods of its input).
func (t *Tracker) podsClean() bool { return len(t.keptPods) == 0 }

// ApplyFiles is Apply of MergeAll(parts...) with each part's own errors
// (partErrs[i]) followed by its duplicates, the errors in policy.Load's
// order: the folder source's view, one part per file. Where several parts
// hold pods in disjoint ranges, the call makes their Pods ranges of one
// array of the merged pods (equal pods: one copy of each; see
// mergeAllPods). The caller must not
// modify a part after the call: a later call recognises a part's pods by
// their array and, when every part holds the very pods of the previous
// call, in the same places, and that call kept no earlier version of a
// pod, it takes the pods' output, tracked versions and duplicate errors
// from that call instead of merging and tracking them again (a policy
// change in a folder of 10k pods). The result equals Apply's
// (TestApplyFilesEqualsApply).
func (t *Tracker) ApplyFiles(parts []*Objects, partErrs [][]error) (*Objects, []error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.podsMemoHolds(parts) {
		objs, merrs := mergeAll(parts, t.memo.parts)
		errs := joinPartErrs(partErrs, merrs)
		return t.apply(objs, errs, true, true, true)
	}
	// The merged pods are a part's (never modified: see above) or the
	// merge's own: the tracker keeps them.
	objs, merrs, podErrs := mergeAllPods(parts, true)
	errs := joinPartErrs(partErrs, merrs)
	out, errs := t.apply(objs, errs, false, true, true)
	t.memo = podsMemo{}
	if t.podsClean() {
		t.memo.valid = true
		for i, p := range parts {
			if len(p.Pods) > 0 {
				t.memo.parts = append(t.memo.parts, podsPart{index: i, first: &p.Pods[0], n: len(p.Pods), errs: podErrs[i]})
			}
		}
	}
	return out, errs
}

// podsMemoHolds: every part holds the pods of the memo's call, in its
// place, and that call kept no earlier pod.
func (t *Tracker) podsMemoHolds(parts []*Objects) bool {
	if !t.memo.valid || !t.podsClean() {
		return false
	}
	j := 0
	for i, p := range parts {
		if len(p.Pods) == 0 {
			continue
		}
		if j >= len(t.memo.parts) {
			return false
		}
		m := t.memo.parts[j]
		if m.index != i || m.first != &p.Pods[0] || m.n != len(p.Pods) {
			return false
		}
		j++
	}
	return j == len(t.memo.parts)
}

func joinPartErrs(partErrs, merrs [][]error) []error {
	var errs []error
	for i := range merrs {
		if i < len(partErrs) {
			errs = append(errs, partErrs[i]...)
		}
		errs = append(errs, merrs[i]...)
	}
	return errs
}

func keyFor(r ObjectRef) trackKey {
	k := trackKey{kind: r.Kind, namespace: r.Namespace, name: r.Name}
	switch r.Kind {
	case "Namespace", "Node", string(KindCCNP):
		k.namespace = ""
	}
	return k
}

// Apply returns the objects to enforce for one decoded view (objs, errs)
// and the errors, each saying what stands in for an invalid object.
func (t *Tracker) Apply(objs *Objects, errs []error) (*Objects, []error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.memo = podsMemo{}
	return t.apply(objs, errs, false, false, false)
}

// ApplyView is Apply for a caller that never modifies objs.Pods after
// the call (the Kubernetes source's view): the tracker keeps the pods as
// they are, when sorted, instead of a copy (~220 B per pod). The result
// is Apply's.
func (t *Tracker) ApplyView(objs *Objects, errs []error) (*Objects, []error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.memo = podsMemo{}
	return t.apply(objs, errs, false, false, true)
}

// apply is Apply; with samePods, objs holds no pods and stands for a view
// whose pods are those of the last call, which kept no earlier pod: the
// pods' output and tracked versions stay what they were (no pod of the
// last call is missing now, so none is kept or reported). With owned,
// objs and errs are the caller's own (a merge's result): their warnings
// and errors are taken over, not copied. With keepPods, objs.Pods is
// never modified after the call: the tracker keeps it rather than a copy
// when it is sorted.
func (t *Tracker) apply(objs *Objects, errs []error, samePods, owned, keepPods bool) (*Objects, []error) {
	if objs == nil {
		objs = &Objects{}
	}
	invalid := map[trackKey]int{}   // key → index in errs
	brokenFiles := map[string]int{} // file → index in errs
	for i, err := range errs {
		var oe *ObjectError
		if !errors.As(err, &oe) {
			continue
		}
		if oe.Object.Kind == "document" {
			if oe.Object.File != "" {
				brokenFiles[oe.Object.File] = i
			}
			continue
		}
		if oe.Object.Name != "" && oe.Object.Kind != "" {
			invalid[keyFor(oe.Object)] = i
		}
	}
	// Sized up front: a 10k-pod view grew both step by step on every
	// update (BenchmarkTrackerApply).
	next := make(map[trackKey]tracked, max(len(t.last), len(objs.Policies)))
	// No summaries: the agent never reads them (Decode's and Load's
	// results have them); one line and ref per pod was ~80 B of the
	// agent's heap per pod.
	out := &Objects{
		Warnings:       objs.Warnings,
		Namespaces:     sized[Namespace](len(objs.Namespaces)),
		Nodes:          sized[Node](len(objs.Nodes)),
		Services:       sized[Service](len(objs.Services)),
		EndpointSlices: sized[EndpointSlice](len(objs.EndpointSlices)),
		Policies:       sized[Policy](len(objs.Policies)),
	}
	for i := range objs.Namespaces {
		n := objs.Namespaces[i]
		out.Namespaces = append(out.Namespaces, n)
		next[keyFor(n.Ref)] = tracked{ref: n.Ref, ns: &n}
	}
	for i := range objs.Nodes {
		n := objs.Nodes[i]
		out.Nodes = append(out.Nodes, n)
		next[keyFor(n.Ref)] = tracked{ref: n.Ref, node: &n}
	}
	for i := range objs.Services {
		sv := objs.Services[i]
		out.Services = append(out.Services, sv)
		next[keyFor(sv.Ref)] = tracked{ref: sv.Ref, svc: &sv}
	}
	for i := range objs.EndpointSlices {
		es := objs.EndpointSlices[i]
		out.EndpointSlices = append(out.EndpointSlices, es)
		next[keyFor(es.Ref)] = tracked{ref: es.Ref, slice: &es}
	}
	for i := range objs.APIServers {
		a := objs.APIServers[i]
		out.APIServers = append(out.APIServers, a)
		tr := next[keyFor(a.Ref)] // its EndpointSlice's entry
		tr.ref, tr.api = a.Ref, &a
		next[keyFor(a.Ref)] = tr
	}
	// The pods' versions, sorted as out is, never modified: the input's
	// when the caller keeps it unmodified, else a copy. The output shares
	// them (read-only; no room to append into): a copy of its own was
	// ~220 B of the agent's heap per pod.
	pods := t.pods
	if !samePods {
		pods = objs.Pods
		if !keepPods || !slices.IsSortedFunc(pods, comparePods) {
			pods = slices.Clone(pods)
			slices.SortStableFunc(pods, comparePods)
		}
	}
	if len(pods) > 0 {
		out.Pods = slices.Clip(pods)
	}
	stubs := map[trackKey]Policy{}
	for i := range objs.Policies {
		p := objs.Policies[i]
		if p.Invalid != "" {
			stubs[keyFor(p.Ref)] = p
			continue
		}
		out.Policies = append(out.Policies, p)
		next[keyFor(p.Ref)] = tracked{ref: p.Ref, pol: &p}
	}
	if !owned {
		errs = slices.Clone(errs)
		out.Warnings = slices.Clone(out.Warnings)
	}
	kept := map[trackKey]bool{}
	fileKept := map[string][]ObjectRef{}
	var keptPods map[trackKey]tracked
	var isPod func(trackKey) bool // built on first use
	keep := func(k trackKey, prev tracked) {
		ei, isInvalid := invalid[k]
		fi, fileBroken := brokenFiles[prev.ref.File]
		if !isInvalid && !fileBroken {
			return // valid, or deleted
		}
		if _, valid := next[k]; valid {
			return
		}
		if _, done := keptPods[k]; done {
			return
		}
		if isPod == nil {
			isPod = podIndex(pods)
		}
		if isPod(k) {
			return
		}
		kept[k] = true
		if prev.pod != nil {
			if keptPods == nil {
				keptPods = map[trackKey]tracked{}
			}
			p := *prev.pod // a copy: the array it is in is not kept
			prev.pod = &p
			keptPods[k] = prev
		} else {
			next[k] = prev
		}
		if prev.api != nil {
			out.APIServers = append(out.APIServers, *prev.api)
		}
		switch {
		case prev.ns != nil:
			out.Namespaces = append(out.Namespaces, *prev.ns)
		case prev.node != nil:
			out.Nodes = append(out.Nodes, *prev.node)
		case prev.svc != nil:
			out.Services = append(out.Services, *prev.svc)
		case prev.slice != nil:
			out.EndpointSlices = append(out.EndpointSlices, *prev.slice)
		case prev.pod != nil:
			out.Pods = append(out.Pods, *prev.pod)
		case prev.pol != nil:
			out.Policies = append(out.Policies, *prev.pol)
		}
		if isInvalid {
			errs[ei] = withFallback(errs[ei], FallbackLastValid, nil)
		} else {
			fileKept[prev.ref.File] = append(fileKept[prev.ref.File], prev.ref)
			_ = fi
		}
	}
	if len(invalid) > 0 || len(brokenFiles) > 0 {
		for k, prev := range t.last {
			keep(k, prev)
		}
		if !samePods {
			for i := range t.pods {
				keep(keyFor(t.pods[i].Ref), tracked{ref: t.pods[i].Ref, pod: &t.pods[i]})
			}
			for k, prev := range t.keptPods {
				keep(k, prev)
			}
		}
	}
	for file, refs := range fileKept {
		slices.SortFunc(refs, func(a, b ObjectRef) int { return cmpStrings(a.String(), b.String()) })
		i := brokenFiles[file]
		errs[i] = withFallback(errs[i], FallbackLastValid, refs)
	}
	for k, stub := range stubs {
		if !kept[k] {
			out.Policies = append(out.Policies, stub)
		}
	}
	t.last, t.pods, t.keptPods = next, pods, keptPods
	if samePods {
		out.sortExceptPods() // as the last call sorted them
	} else {
		out.sort()
	}
	return out, errs
}

// podIndex tells whether pods (sorted by comparePods) hold one with the
// key k: a binary search where every pod's Ref names it (decoded pods),
// else a map.
func podIndex(pods []Pod) func(k trackKey) bool {
	byRef := true
	for i := range pods {
		if r := &pods[i].Ref; r.Kind != "Pod" || r.Namespace != pods[i].Namespace || r.Name != pods[i].Name {
			byRef = false
			break
		}
	}
	if byRef {
		return func(k trackKey) bool {
			if k.kind != "Pod" {
				return false
			}
			_, found := slices.BinarySearchFunc(pods, k, func(p Pod, k trackKey) int {
				return cmpStrings(p.Namespace, k.namespace, p.Name, k.name)
			})
			return found
		}
	}
	keys := make(map[trackKey]bool, len(pods))
	for i := range pods {
		keys[keyFor(pods[i].Ref)] = true
	}
	return func(k trackKey) bool { return keys[k] }
}

// sized is an empty slice with room for n (nil for 0, as append leaves it).
func sized[T any](n int) []T {
	if n == 0 {
		return nil
	}
	return make([]T, 0, n)
}

// withFallback rewrites an ObjectError to say what stands in for it.
func withFallback(err error, fb Fallback, kept []ObjectRef) error {
	var oe *ObjectError
	if !errors.As(err, &oe) {
		return err
	}
	inner := oe.Err
	var ie *InvalidObjectError
	if errors.As(inner, &ie) {
		inner = ie.Err
	}
	return &ObjectError{Object: oe.Object, Err: &InvalidObjectError{Err: inner, Fallback: fb, Kept: kept}}
}
