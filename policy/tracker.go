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
	mu   sync.Mutex
	last map[trackKey]tracked
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
func NewTracker() *Tracker { return &Tracker{last: map[trackKey]tracked{}} }

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
	next := make(map[trackKey]tracked, max(len(t.last), len(objs.Pods)+len(objs.Policies)))
	out := &Objects{
		Warnings:       slices.Clone(objs.Warnings),
		Summaries:      slices.Clone(objs.Summaries),
		summaryRefs:    slices.Clone(objs.summaryRefs),
		Namespaces:     sized[Namespace](len(objs.Namespaces)),
		Nodes:          sized[Node](len(objs.Nodes)),
		Services:       sized[Service](len(objs.Services)),
		EndpointSlices: sized[EndpointSlice](len(objs.EndpointSlices)),
		Pods:           sized[Pod](len(objs.Pods)),
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
	// One copy of every pod (not one allocation each): the tracker's
	// versions share nothing with the input or the output.
	pods := slices.Clone(objs.Pods)
	for i := range pods {
		out.Pods = append(out.Pods, pods[i])
		next[keyFor(pods[i].Ref)] = tracked{ref: pods[i].Ref, pod: &pods[i]}
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
	errs = slices.Clone(errs)
	kept := map[trackKey]bool{}
	fileKept := map[string][]ObjectRef{}
	for k, prev := range t.last {
		if _, valid := next[k]; valid {
			continue
		}
		ei, isInvalid := invalid[k]
		fi, fileBroken := brokenFiles[prev.ref.File]
		if !isInvalid && !fileBroken {
			continue // deleted
		}
		kept[k] = true
		next[k] = prev
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
	t.last = next
	out.sort()
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
