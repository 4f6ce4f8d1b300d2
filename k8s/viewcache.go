package k8s

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"reflect"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/l7gate/l7gate/policy"
)

// view is the source's objects as documents, each with what policy.Decode
// made of it, updated object by object: an update renders and decodes
// only the objects the informers reported changed. Rendering and decoding
// every document on every change cost each agent 2–4 s of CPU per change
// at 10k pods (make scale, before this); now a change costs what the
// changed objects cost plus one pass over the decoded results.
type view struct {
	docs map[objectKey]*viewEntry
	// order is docs sorted by kind, namespace and name.
	order []*viewEntry
	// byStore maps an informer object (informer, store key) to its
	// document's key.
	byStore map[storeKey]objectKey
	// liveIPs counts the live pods holding each IP; podIPs is what each
	// pod contributed. A pod being deleted loses the IPs a live pod holds.
	liveIPs map[string]int
	podIPs  map[objectKey][]string
	// deleting are the pods being deleted, rendered again on every update
	// (their documents depend on the other pods).
	deleting map[objectKey]storeKey
	// fastPods is the last assembled slice of the pods that decoded to
	// one Pod alone, reused until a pod changes (podsChanged).
	fastPods    []policy.Pod
	podsChanged bool
	// decoded counts documents decoded (tests).
	decoded int
}

// storeKey names an object in one of the source's informers.
type storeKey struct {
	informer int
	key      string
}

type viewEntry struct {
	key objectKey
	doc *viewDoc
}

type viewDoc struct {
	// sum is the document's SHA-256: it tells a changed document and
	// feeds the digest (the document itself is not kept).
	sum  [sha256.Size]byte
	info objectInfo
	// pod: the document decoded to exactly one Pod and nothing else (the
	// bulk of a cluster: kept alone, assembled without reflection);
	// otherwise objs.
	pod  *policy.Pod
	objs *policy.Objects
	errs []error
}

func newView() *view {
	return &view{docs: map[objectKey]*viewEntry{}, byStore: map[storeKey]objectKey{}, liveIPs: map[string]int{},
		podIPs: map[objectKey][]string{}, deleting: map[objectKey]storeKey{}}
}

func compareKeys(a, b objectKey) int {
	return cmp.Or(strings.Compare(a.Kind, b.Kind), strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
}

func compareEntry(e *viewEntry, k objectKey) int { return compareKeys(e.key, k) }

// put adds or replaces a document, decoding it only if it changed.
func (v *view) put(d document) {
	sum := sha256.Sum256(d.json)
	cur, ok := v.docs[d.key]
	if ok && cur.doc.sum == sum {
		cur.doc.info = d.info
		return
	}
	nd := &viewDoc{sum: sum, info: d.info}
	objs, errs := policy.DecodeObjects("", d.json)
	nd.errs = errs
	if onlyOnePod(objs) {
		nd.pod = &objs.Pods[0]
	} else {
		nd.objs = objs
	}
	v.decoded++
	if d.key.Kind == "Pod" || nd.pod != nil {
		v.podsChanged = true
	}
	if ok {
		cur.doc = nd
		return
	}
	e := &viewEntry{key: d.key, doc: nd}
	v.docs[d.key] = e
	i, _ := slices.BinarySearchFunc(v.order, d.key, compareEntry)
	v.order = slices.Insert(v.order, i, e)
}

func (v *view) remove(k objectKey) {
	e, ok := v.docs[k]
	if !ok {
		return
	}
	if e.doc.pod != nil {
		v.podsChanged = true
	}
	delete(v.docs, k)
	if i, found := slices.BinarySearchFunc(v.order, k, compareEntry); found {
		v.order = slices.Delete(v.order, i, i+1)
	}
}

// setLiveIPs records the IPs pod k holds while alive.
func (v *view) setLiveIPs(k objectKey, ips []string) {
	for _, ip := range v.podIPs[k] {
		if v.liveIPs[ip]--; v.liveIPs[ip] <= 0 {
			delete(v.liveIPs, ip)
		}
	}
	delete(v.podIPs, k)
	if len(ips) > 0 {
		v.podIPs[k] = ips
		for _, ip := range ips {
			v.liveIPs[ip]++
		}
	}
}

func (v *view) live(ip string) bool { return v.liveIPs[ip] > 0 }

// apply brings the view up to date with the informer objects in changed;
// get returns an object's current version (false: deleted).
func (v *view) apply(changed []storeKey, get func(storeKey) (any, bool)) error {
	var errs []error
	for _, sk := range changed {
		obj, ok := get(sk)
		if !ok {
			if k, had := v.byStore[sk]; had {
				v.remove(k)
				v.setLiveIPs(k, nil)
				delete(v.deleting, k)
				delete(v.byStore, sk)
			}
			continue
		}
		if c, ok := obj.(*cachedPod); ok {
			obj = c.pod()
		}
		if p, isPod := obj.(*corev1.Pod); isPod {
			k := objectKey{"Pod", p.Namespace, p.Name}
			v.setLiveIPs(k, liveIPs(p))
			if p.DeletionTimestamp != nil {
				v.deleting[k] = sk
				v.byStore[sk] = k
				continue // rendered below, once every pod's IPs are known
			}
			delete(v.deleting, k)
		}
		d, err := objectDocument(obj, v.live)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		v.put(d)
		v.byStore[sk] = d.key
	}
	for k, sk := range v.deleting {
		obj, ok := get(sk)
		if c, isCached := obj.(*cachedPod); isCached {
			obj = c.pod()
		}
		p, isPod := obj.(*corev1.Pod)
		if !ok || !isPod {
			continue
		}
		d, err := podDocument(p, v.live)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		v.put(d)
		v.byStore[sk] = k
	}
	return joinErrors(errs)
}

func joinErrors(errs []error) error {
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("render %d object(s): %w", len(errs), errs[0])
}

// objectDocument renders one informer object (a pod being deleted needs
// live: see podDocument).
func objectDocument(obj any, live func(ip string) bool) (document, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		return podDocument(o, live)
	case *corev1.Namespace:
		return namespaceDocument(o)
	case *corev1.Node:
		return nodeDocument(o)
	case *networkingv1.NetworkPolicy:
		return networkPolicyDocument(o)
	case *unstructured.Unstructured:
		return ciliumDocument(o)
	case *discoveryv1.EndpointSlice:
		return endpointSliceDocument(o)
	case *corev1.Service:
		return serviceDocument(o)
	}
	return document{}, fmt.Errorf("no document for %T", obj)
}

// objectsFields are the exported slice fields of policy.Objects that a
// view is assembled from (Summaries excepted: the agent does not use
// them, and their unexported index cannot be rebuilt here).
var objectsFields = func() []int {
	var out []int
	t := reflect.TypeFor[policy.Objects]()
	for i := range t.NumField() {
		f := t.Field(i)
		if f.IsExported() && f.Type.Kind() == reflect.Slice && f.Name != "Summaries" {
			out = append(out, i)
		}
	}
	return out
}()

// onlyOnePod reports whether objs holds one Pod and nothing else.
func onlyOnePod(objs *policy.Objects) bool {
	if len(objs.Pods) != 1 {
		return false
	}
	v := reflect.ValueOf(objs).Elem()
	n := 0
	for _, f := range objectsFields {
		n += v.Field(f).Len()
	}
	return n == 1
}

// assemble returns the view: the same objects, warnings and errors
// policy.Decode gives for all documents at once (without Summaries), the
// policies' infos, and a digest that changes exactly when a document does.
func (v *view) assemble() (*policy.Objects, []error, map[objectKey]objectInfo, string) {
	h := sha256.New()
	var errs []error
	out := &policy.Objects{}
	outV := reflect.ValueOf(out).Elem()
	var pods []policy.Pod
	if v.podsChanged || v.fastPods == nil {
		pods = make([]policy.Pod, 0, len(v.order))
	}
	infos := map[objectKey]objectInfo{}
	for _, e := range v.order {
		k, d := e.key, e.doc
		h.Write(d.sum[:])
		errs = append(errs, d.errs...)
		if isPolicyKind(k.Kind) {
			infos[k] = d.info
		}
		if d.pod != nil {
			if pods != nil {
				pods = append(pods, *d.pod)
			}
			continue
		}
		dv := reflect.ValueOf(d.objs).Elem()
		for _, f := range objectsFields {
			if src := dv.Field(f); src.Len() > 0 {
				dst := outV.Field(f)
				dst.Set(reflect.AppendSlice(dst, src))
			}
		}
	}
	if pods != nil {
		// Shared by the updates until a pod changes: no spare capacity a
		// consumer's append could write into.
		v.fastPods, v.podsChanged = slices.Clip(pods), false
	}
	pods = v.fastPods
	// Documents are sorted by kind, namespace and name, so each kind's
	// objects come out in policy.Decode's order (namespace, name), except
	// pods that took the general path, which need a sort.
	if len(out.Pods) > 0 {
		out.Pods = append(out.Pods, pods...)
		slices.SortStableFunc(out.Pods, func(a, b policy.Pod) int {
			return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
		})
	} else if len(pods) > 0 {
		out.Pods = pods
	}
	return out, errs, infos, hex.EncodeToString(h.Sum(nil))
}

// replace makes the view exactly docs (tests, and callers that render
// everything).
func (v *view) replace(docs []document) {
	keep := map[objectKey]bool{}
	for _, d := range docs {
		v.put(d)
		keep[d.key] = true
	}
	for _, e := range slices.Clone(v.order) {
		if !keep[e.key] {
			v.remove(e.key)
		}
	}
}
