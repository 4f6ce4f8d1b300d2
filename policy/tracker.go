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
// concurrent use; its result shares no mutable state with its input.
type Tracker struct {
	mu sync.Mutex
	// last: every object's last valid version but the pods'; lastPods:
	// the pods' (kept apart so that ApplyFiles can keep them as they are).
	last, lastPods map[trackKey]tracked
	// podsOut: the pods lastPods points into, sorted as Apply's output
	// sorts them; the pods of the last output when podsClean.
	podsOut []Pod
	// podsClean: the last call kept no pod's earlier version (lastPods
	// holds exactly the pods of its input).
	podsClean bool
	// memo: the last ApplyFiles call's pods, when podsClean.
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
	return &Tracker{last: map[trackKey]tracked{}, lastPods: map[trackKey]tracked{}}
}

// ApplyFiles is Apply of MergeAll(parts...) with each part's own errors
// (partErrs[i]) followed by its duplicates, the errors in policy.Load's
// order: the folder source's view, one part per file. The caller must not
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
		return t.apply(objs, errs, true, true)
	}
	objs, merrs, podErrs := mergeAllPods(parts)
	errs := joinPartErrs(partErrs, merrs)
	out, errs := t.apply(objs, errs, false, true)
	t.memo = podsMemo{}
	if t.podsClean {
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
	if !t.memo.valid || !t.podsClean {
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
	return t.apply(objs, errs, false, false)
}

// apply is Apply; with samePods, objs holds no pods and stands for a view
// whose pods are those of the last call, which kept no earlier pod: the
// pods' output and tracked versions stay what they were (no pod of the
// last call is missing now, so none is kept or reported). With owned,
// objs and errs are the caller's own (a merge's result): their warnings,
// summaries and errors are taken over, not copied.
func (t *Tracker) apply(objs *Objects, errs []error, samePods, owned bool) (*Objects, []error) {
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
	out := &Objects{
		Warnings:       objs.Warnings,
		Summaries:      objs.Summaries,
		summaryRefs:    objs.summaryRefs,
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
	// One copy of every pod (not one allocation each), sorted as out is:
	// the tracker's versions share nothing with the input or the output.
	var nextPods map[trackKey]tracked
	var pods []Pod
	if samePods {
		nextPods, pods = t.lastPods, t.podsOut
		out.Pods = slices.Clone(pods)
	} else {
		nextPods = make(map[trackKey]tracked, max(len(t.lastPods), len(objs.Pods)))
		pods = slices.Clone(objs.Pods)
		slices.SortStableFunc(pods, comparePods)
		out.Pods = sized[Pod](len(objs.Pods))
		for i := range pods {
			out.Pods = append(out.Pods, pods[i])
			nextPods[keyFor(pods[i].Ref)] = tracked{ref: pods[i].Ref, pod: &pods[i]}
		}
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
		out.Warnings, out.Summaries, out.summaryRefs = slices.Clone(out.Warnings), slices.Clone(out.Summaries), slices.Clone(out.summaryRefs)
	}
	kept := map[trackKey]bool{}
	fileKept := map[string][]ObjectRef{}
	keptPods := 0
	keep := func(k trackKey, prev tracked) {
		if _, valid := next[k]; valid {
			return
		}
		if _, valid := nextPods[k]; valid {
			return
		}
		ei, isInvalid := invalid[k]
		fi, fileBroken := brokenFiles[prev.ref.File]
		if !isInvalid && !fileBroken {
			return // deleted
		}
		kept[k] = true
		if prev.pod != nil {
			nextPods[k] = prev
			keptPods++
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
	for k, prev := range t.last {
		keep(k, prev)
	}
	if !samePods {
		for k, prev := range t.lastPods {
			keep(k, prev)
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
	t.last, t.lastPods, t.podsOut = next, nextPods, pods
	t.podsClean = keptPods == 0
	if samePods {
		out.sortExceptPods() // as the last call sorted them
	} else {
		out.sort()
	}
	return out, errs
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
