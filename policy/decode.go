package policy

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// Objects is what was decoded from a set of inputs: the valid objects,
// sorted, and warnings. Invalid objects are reported as errors by Decode
// and Load and are not included; they never prevent the others from
// loading.
type Objects struct {
	Namespaces []Namespace
	// Nodes: their addresses are the remote-node identity.
	Nodes []Node
	// APIServers: the default/kubernetes EndpointSlice, whose addresses
	// are the kube-apiserver entity.
	APIServers []APIServer
	Pods       []Pod
	Policies   []Policy
	// Services and EndpointSlices: socket load balancing and toServices.
	Services       []Service
	EndpointSlices []EndpointSlice
	Warnings       []Warning
	// Summaries has one line per loaded object, in input order (Decode,
	// Load, Merge; a Tracker's results have none: the agent never reads
	// them).
	Summaries []string
	// summaryRefs[i] is the object Summaries[i] describes.
	summaryRefs []ObjectRef
	// labelSets: the pods' label maps by content, during Decode
	// (internLabels).
	labelSets map[string]map[string]string
	// noSummaries: during DecodeObjects.
	noSummaries bool
	// strs: the pods' namespace names, during Decode (intern).
	strs map[string]string
}

// intern returns a string equal to s, the first such of this Decode call:
// the pods of one namespace share its name.
func (o *Objects) intern(s string) string {
	if o.strs == nil {
		return s
	}
	if have, ok := o.strs[s]; ok {
		return have
	}
	o.strs[s] = s
	return s
}

// internLabels returns a map equal to m, the first such map of this
// Decode call: pods with the same labels share one (read-only, as all
// decoded objects). A small map costs ~300 bytes: at 11k pods of 500
// label sets this was a sixth of the agent's heap per pod, and the pod
// memo compares shared maps by pointer.
func (o *Objects) internLabels(m map[string]string) map[string]string {
	if o.labelSets == nil || len(m) == 0 {
		return m
	}
	var b strings.Builder
	for _, k := range sortedKeys(m) {
		// length-prefixed: no two different maps give one key
		b.WriteString(strconv.Itoa(len(k)))
		b.WriteByte(':')
		b.WriteString(k)
		b.WriteString(strconv.Itoa(len(m[k])))
		b.WriteByte(':')
		b.WriteString(m[k])
	}
	if have, ok := o.labelSets[b.String()]; ok {
		return have
	}
	o.labelSets[b.String()] = m
	return m
}

func (o *Objects) summarize(ref ObjectRef, line string) {
	if o.noSummaries {
		return
	}
	o.Summaries = append(o.Summaries, line)
	o.summaryRefs = append(o.summaryRefs, ref)
}

// maxDocumentSize bounds a single YAML/JSON document.
const maxDocumentSize = 16 << 20

// Decode decodes a multi-document YAML or JSON stream. file names the
// source in messages. It returns every object it could load and one error
// per invalid object.
func Decode(file string, data []byte) (*Objects, []error) {
	return decode(file, data, false)
}

// DecodeObjects is Decode without Summaries: for sources, which keep what
// they decoded while it is in force (the folder source caches every
// file's objects) and never read summaries (one line and ref per pod
// was ~190 B of the agent's heap per pod, BenchmarkPodHeap).
func DecodeObjects(file string, data []byte) (*Objects, []error) {
	return decode(file, data, true)
}

func decode(file string, data []byte, noSummaries bool) (*Objects, []error) {
	out := &Objects{labelSets: map[string]map[string]string{}, noSummaries: noSummaries, strs: map[string]string{}}
	var errs []error
	for i, doc := range splitDocuments(data) {
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		errs = append(errs, out.decodeDocument(file, i, doc)...)
	}
	out.labelSets, out.noSummaries, out.strs = nil, false, nil
	errs = append(errs, out.dropDuplicates()...)
	out.sort()
	// Kept as long as the file is (the folder source's cache, and the
	// tracker shares its pods): no room to grow.
	if cap(out.Pods) > len(out.Pods)+len(out.Pods)/16 {
		out.Pods = slices.Clone(out.Pods)
	}
	return out, errs
}

// dropDuplicates reports objects defined twice in one input (the first
// definition is kept), as Merge does across inputs.
func (o *Objects) dropDuplicates() []error {
	var errs []error
	seen := map[string]bool{}
	dup := func(r ObjectRef) bool {
		k := r.Kind + "/" + r.Namespace + "/" + r.Name
		if seen[k] {
			errs = append(errs, &ObjectError{Object: r, Err: errors.New("duplicate object: already defined earlier in this input (that definition is kept)")})
			return true
		}
		seen[k] = true
		return false
	}
	o.Namespaces = slices.DeleteFunc(o.Namespaces, func(x Namespace) bool { return dup(x.Ref) })
	o.Nodes = slices.DeleteFunc(o.Nodes, func(x Node) bool { return dup(x.Ref) })
	o.Pods = slices.DeleteFunc(o.Pods, func(x Pod) bool { return dup(x.Ref) })
	o.Policies = slices.DeleteFunc(o.Policies, func(x Policy) bool { return dup(x.Ref) })
	o.Services = slices.DeleteFunc(o.Services, func(x Service) bool { return dup(x.Ref) })
	o.EndpointSlices = slices.DeleteFunc(o.EndpointSlices, func(x EndpointSlice) bool { return dup(x.Ref) })
	// The default/kubernetes slice is also an APIServer: the duplicate
	// check above is the slice's.
	apiSeen := map[ObjectRef]bool{}
	o.APIServers = slices.DeleteFunc(o.APIServers, func(x APIServer) bool {
		first := !apiSeen[x.Ref]
		apiSeen[x.Ref] = true
		return !first || !slices.ContainsFunc(o.EndpointSlices, func(es EndpointSlice) bool { return es.Ref == x.Ref })
	})
	return errs
}

// splitDocuments splits a YAML stream at "---" lines.
func splitDocuments(data []byte) [][]byte {
	var docs [][]byte
	var cur bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), maxDocumentSize)
	for sc.Scan() {
		line := sc.Bytes()
		if bytes.HasPrefix(line, []byte("---")) {
			rest := bytes.TrimSpace(line[3:])
			if len(rest) == 0 || rest[0] == '#' {
				docs = append(docs, bytes.Clone(cur.Bytes()))
				cur.Reset()
				continue
			}
		}
		cur.Write(line)
		cur.WriteByte('\n')
	}
	if sc.Err() != nil {
		// A line longer than the document limit: hand the rest over as one
		// document so the YAML parser reports it.
		return append(docs, data)
	}
	return append(docs, cur.Bytes())
}

func (o *Objects) decodeDocument(file string, docIndex int, doc []byte) []error {
	where := ObjectRef{File: file, Kind: "document", Name: fmt.Sprintf("#%d", docIndex+1)}
	if len(doc) > maxDocumentSize {
		return []error{&ObjectError{Object: where, Err: fmt.Errorf("document larger than %d bytes", maxDocumentSize)}}
	}
	js, err := yaml.YAMLToJSONStrict(doc)
	if err != nil {
		return []error{&ObjectError{Object: where, Err: fmt.Errorf("parse yaml: %w", err)}}
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return []error{&ObjectError{Object: where, Err: fmt.Errorf("parse: %w", err)}}
	}
	if v == nil {
		return nil
	}
	return o.decodeValue(file, where, v)
}

func (o *Objects) decodeValue(file string, where ObjectRef, v any) []error {
	m, ok := v.(map[string]any)
	if !ok {
		if l, isList := v.([]any); isList && len(l) > 0 {
			if r, ok := l[0].(map[string]any); ok && (r["endpointSelector"] != nil || r["nodeSelector"] != nil) {
				return []error{&ObjectError{Object: where, Err: errors.New("a list of Cilium rules (cilium-agent's `cilium policy import` format) is not a Kubernetes object: put the rules in a CiliumNetworkPolicy's specs")}}
			}
		}
		return []error{&ObjectError{Object: where, Err: fmt.Errorf("expected an object, got %s", describe(v))}}
	}
	var tm typeMeta
	var d structDecoder
	d.decode("", m, reflect.ValueOf(&tm).Elem())
	ref := ObjectRef{File: file, Kind: tm.Kind, Namespace: tm.Metadata.Namespace, Name: tm.Metadata.Name}
	if len(d.errs) > 0 {
		return []error{&ObjectError{Object: ref, Err: errors.Join(d.errs...)}}
	}
	if tm.Kind == "" {
		ref.Kind = where.Kind
		ref.Name = where.Name
		return []error{&ObjectError{Object: ref, Err: (fieldPath("kind")).errorf("missing")}}
	}
	if strings.HasSuffix(tm.Kind, "List") && tm.APIVersion == "v1" || tm.Kind == "List" {
		items, _ := m["items"].([]any)
		var errs []error
		for i, it := range items {
			w := ObjectRef{File: file, Kind: tm.Kind, Name: fmt.Sprintf("items[%d]", i)}
			errs = append(errs, o.decodeValue(file, w, it)...)
		}
		return errs
	}
	objErr := func(errs []error) []error {
		if len(errs) == 0 {
			return nil
		}
		return []error{&ObjectError{Object: ref, Err: errors.Join(errs...)}}
	}
	checkVersion := func(want ...string) []error {
		if tm.APIVersion == "" {
			// a key in the wrong case ("apiversion") is a typo, not a version
			for k := range m {
				if k != "apiVersion" && strings.EqualFold(k, "apiVersion") {
					return objErr([]error{fieldPath(k).errorf("unknown field (did you mean apiVersion? keys are case-sensitive)")})
				}
			}
		}
		if !slices.Contains(want, tm.APIVersion) {
			return objErr([]error{fieldPath("apiVersion").errorf("unsupported apiVersion %q for %s (want %s)", tm.APIVersion, tm.Kind, strings.Join(want, " or "))})
		}
		return nil
	}
	// An invalid policy is an error naming the field; the endpoints it
	// selects are held in default-deny where that can be worked out (see
	// failClosed).
	policyErr := func(kind PolicyKind, errs []error) []error {
		stub := failClosed(kind, ref, m)
		if stub == nil {
			return objErr(errs)
		}
		o.Policies = append(o.Policies, *stub)
		return []error{&ObjectError{Object: ref, Err: &InvalidObjectError{Err: errors.Join(errs...), Fallback: FallbackDefaultDeny, Directions: stub.stubDirections()}}}
	}
	switch tm.Kind {
	case string(KindCNP), string(KindCCNP):
		clusterwide := tm.Kind == string(KindCCNP)
		if clusterwide && ref.Namespace != "" {
			o.Warnings = append(o.Warnings, Warning{Object: ref, Path: "metadata.namespace", Message: "ignored: CiliumClusterwideNetworkPolicy is not namespaced"})
			ref.Namespace = ""
		}
		if !clusterwide && ref.Namespace == "" {
			ref.Namespace = "default"
		}
		kind := PolicyKind(tm.Kind)
		if e := checkVersion("cilium.io/v2"); e != nil {
			return policyErr(kind, []error{e[0].(*ObjectError).Err})
		}
		var w wireCNP
		d.decode("", m, reflect.ValueOf(&w).Elem())
		if len(d.errs) > 0 {
			return policyErr(kind, d.errs)
		}
		if w.Description != nil {
			o.Warnings = append(o.Warnings, Warning{Object: ref, Path: "description",
				Message: "ignored: not a field of " + tm.Kind + " (the API server drops it, or rejects the object under strict field validation); its place is spec.description"})
		}
		p, warns, errs := normalizeCNP(&w, ref, clusterwide)
		o.Warnings = append(o.Warnings, warns...)
		if len(errs) > 0 {
			return policyErr(kind, errs)
		}
		p.Audit = o.auditAnnotation(ref, tm.Metadata.Annotations)
		o.Policies = append(o.Policies, *p)
		o.summarize(p.Ref, summarizePolicy(p))
	case string(KindNP):
		if ref.Namespace == "" {
			ref.Namespace = "default"
		}
		if e := checkVersion("networking.k8s.io/v1"); e != nil {
			return policyErr(KindNP, []error{e[0].(*ObjectError).Err})
		}
		var w wireNP
		d.decode("", m, reflect.ValueOf(&w).Elem())
		if len(d.errs) > 0 {
			return policyErr(KindNP, d.errs)
		}
		p, warns, errs := normalizeNP(&w, ref)
		o.Warnings = append(o.Warnings, warns...)
		if len(errs) > 0 {
			return policyErr(KindNP, errs)
		}
		p.Audit = o.auditAnnotation(ref, tm.Metadata.Annotations)
		o.Policies = append(o.Policies, *p)
		o.summarize(p.Ref, summarizePolicy(p))
	case "Pod":
		// no string of its own per pod for its kind and namespace
		ref.Kind = "Pod"
		if ref.Namespace == "" {
			ref.Namespace = "default"
		}
		ref.Namespace = o.intern(ref.Namespace)
		if e := checkVersion("v1"); e != nil {
			return objErr([]error{e[0].(*ObjectError).Err})
		}
		var w wirePod
		d.decode("", m, reflect.ValueOf(&w).Elem())
		if len(d.errs) > 0 {
			return objErr(d.errs)
		}
		p, errs := normalizePod(&w, ref)
		if len(errs) > 0 {
			return objErr(errs)
		}
		p.Labels = o.internLabels(p.Labels)
		o.Pods = append(o.Pods, *p)
		if !o.noSummaries {
			ips := make([]string, len(p.IPs))
			for i, ip := range p.IPs {
				ips[i] = ip.String()
			}
			o.summarize(ref, fmt.Sprintf("%s: %s: %d label(s), IPs [%s]", file, ref, len(p.Labels), strings.Join(ips, " ")))
		}
	case "Node":
		if e := checkVersion("v1"); e != nil {
			return e
		}
		var w wireNode
		d.decode("", m, reflect.ValueOf(&w).Elem())
		if len(d.errs) > 0 {
			return objErr(d.errs)
		}
		ref.Namespace = ""
		n := Node{Ref: ref, Name: ref.Name}
		var errs []error
		if ref.Name == "" {
			errs = append(errs, fieldPath("metadata.name").errorf("missing"))
		}
		for i, a := range w.Status.Addresses {
			if a.Type != "InternalIP" && a.Type != "ExternalIP" {
				continue
			}
			ip, err := netip.ParseAddr(a.Address)
			if err != nil {
				errs = append(errs, fieldPath("status.addresses").index(i).child("address").errorf("invalid IP %q", a.Address))
				continue
			}
			n.IPs = append(n.IPs, ip.Unmap())
		}
		if len(errs) > 0 {
			return objErr(errs)
		}
		o.Nodes = append(o.Nodes, n)
		o.summarize(ref, fmt.Sprintf("%s: %s: %d address(es)", file, ref, len(n.IPs)))
	case "EndpointSlice":
		if ref.Namespace == "" {
			ref.Namespace = "default"
		}
		if e := checkVersion("discovery.k8s.io/v1"); e != nil {
			return e
		}
		var w wireEndpointSlice
		d.decode("", m, reflect.ValueOf(&w).Elem())
		if len(d.errs) > 0 {
			return objErr(d.errs)
		}
		es, errs := normalizeEndpointSlice(&w, ref)
		if len(errs) > 0 {
			return objErr(errs)
		}
		o.EndpointSlices = append(o.EndpointSlices, *es)
		n := 0
		for _, e := range es.Endpoints {
			n += len(e.Addresses)
		}
		line := fmt.Sprintf("%s: %s: service %s, %d address(es)", file, ref, es.Service, n)
		// The kubernetes Service's slice, which the API server itself
		// maintains, is also the kube-apiserver entity (only that one: other
		// slices may be written by anyone allowed to write EndpointSlices).
		if ref.Namespace == "default" && ref.Name == "kubernetes" && es.Service == "kubernetes" {
			a := APIServer{Ref: ref}
			for _, e := range es.Endpoints {
				if e.Ready {
					a.IPs = append(a.IPs, e.Addresses...)
				}
			}
			o.APIServers = append(o.APIServers, a)
			line = fmt.Sprintf("%s: %s: %d kube-apiserver address(es)", file, ref, len(a.IPs))
		}
		o.summarize(ref, line)
	case "Service":
		if ref.Namespace == "" {
			ref.Namespace = "default"
		}
		if e := checkVersion("v1"); e != nil {
			return objErr([]error{e[0].(*ObjectError).Err})
		}
		var w wireService
		d.decode("", m, reflect.ValueOf(&w).Elem())
		if len(d.errs) > 0 {
			return objErr(d.errs)
		}
		s, warns, errs := normalizeService(&w, ref)
		o.Warnings = append(o.Warnings, warns...)
		if len(errs) > 0 {
			return objErr(errs)
		}
		o.Services = append(o.Services, *s)
		o.summarize(ref, summarizeService(file, s))
	case "Namespace":
		if e := checkVersion("v1"); e != nil {
			return e
		}
		var errs []error
		if ref.Name == "" {
			errs = append(errs, fieldPath("metadata.name").errorf("missing"))
		}
		for k := range tm.Metadata.Labels {
			if err := validLabelKey(k); err != nil {
				errs = append(errs, fieldPath("metadata.labels").key(k).errorf("%w", err))
			}
		}
		if len(errs) > 0 {
			return objErr(errs)
		}
		ref.Namespace = ""
		o.Namespaces = append(o.Namespaces, Namespace{Ref: ref, Name: ref.Name, Labels: tm.Metadata.Labels,
			Audit: o.auditAnnotation(ref, tm.Metadata.Annotations)})
		o.summarize(ref, fmt.Sprintf("%s: %s: %d label(s)", file, ref, len(tm.Metadata.Labels)))
	default:
		o.Warnings = append(o.Warnings, Warning{Object: ref, Message: fmt.Sprintf("skipped: l7gate does not read kind %s (%s)", tm.Kind, tm.APIVersion)})
	}
	return nil
}

// auditAnnotation reads AuditAnnotation: "true" is audit mode, "false" or
// no annotation enforces, anything else enforces with a warning (fail
// closed: a typo never turns enforcement off).
func (o *Objects) auditAnnotation(ref ObjectRef, ann map[string]string) bool {
	v, ok := ann[AuditAnnotation]
	switch {
	case !ok || v == "false":
		return false
	case v == "true":
		return true
	}
	o.Warnings = append(o.Warnings, Warning{Object: ref, Path: "metadata.annotations." + AuditAnnotation,
		Message: fmt.Sprintf("%q is neither \"true\" nor \"false\": enforced, not audited", v)})
	return false
}

func summarizePolicy(p *Policy) string {
	var in, eg, ind, egd int
	for _, r := range p.Rules {
		in += len(r.Allow[Ingress])
		eg += len(r.Allow[Egress])
		ind += len(r.Deny[Ingress])
		egd += len(r.Deny[Egress])
	}
	s := fmt.Sprintf("%s: %s: %d rule(s): ingress %d, egress %d, ingressDeny %d, egressDeny %d", p.Ref.File, p.Ref, len(p.Rules), in, eg, ind, egd)
	if p.Audit {
		s += " (audit mode: " + AuditAnnotation + ")"
	}
	return s
}

func (o *Objects) sort() {
	sortStable(o.Pods, comparePods)
	o.sortExceptPods()
}

func comparePods(a, b Pod) int { return cmpStrings(a.Namespace, b.Namespace, a.Name, b.Name) }

// sortExceptPods is sort for every kind but the pods.
func (o *Objects) sortExceptPods() {
	sortStable(o.Namespaces, func(a, b Namespace) int { return strings.Compare(a.Name, b.Name) })
	sortStable(o.Nodes, func(a, b Node) int { return strings.Compare(a.Name, b.Name) })
	sortStable(o.APIServers, func(a, b APIServer) int {
		return cmpStrings(a.Ref.Namespace, b.Ref.Namespace, a.Ref.Name, b.Ref.Name)
	})
	sortStable(o.Policies, func(a, b Policy) int {
		return cmpStrings(string(a.Kind), string(b.Kind), a.Ref.Namespace, b.Ref.Namespace, a.Ref.Name, b.Ref.Name)
	})
	sortStable(o.Services, func(a, b Service) int {
		return cmpStrings(a.Namespace, b.Namespace, a.Name, b.Name)
	})
	sortStable(o.EndpointSlices, func(a, b EndpointSlice) int {
		return cmpStrings(a.Namespace, b.Namespace, a.Name, b.Name)
	})
}

// sortStable is slices.SortStableFunc, without its work on a sorted
// slice (a view's pods are sorted already but for what changed).
func sortStable[T any](s []T, cmp func(a, b T) int) {
	if !slices.IsSortedFunc(s, cmp) {
		slices.SortStableFunc(s, cmp)
	}
}

func cmpStrings(pairs ...string) int {
	for i := 0; i+1 < len(pairs); i += 2 {
		if c := strings.Compare(pairs[i], pairs[i+1]); c != 0 {
			return c
		}
	}
	return 0
}

// Merge adds other's objects. Objects with the same kind, namespace and
// name as one already present are errors (the first one stays).
func (o *Objects) Merge(other *Objects) []error {
	seen := map[mergeKey]ObjectRef{}
	key := func(r ObjectRef) mergeKey { return mergeKey{r.Kind, r.Namespace, r.Name} }
	for _, n := range o.Namespaces {
		seen[key(n.Ref)] = n.Ref
	}
	for _, n := range o.Nodes {
		seen[key(n.Ref)] = n.Ref
	}
	for _, s := range o.Services {
		seen[key(s.Ref)] = s.Ref
	}
	for _, es := range o.EndpointSlices {
		seen[key(es.Ref)] = es.Ref
	}
	for _, p := range o.Pods {
		seen[key(p.Ref)] = p.Ref
	}
	for _, p := range o.Policies {
		seen[key(p.Ref)] = p.Ref
	}
	errs := o.mergeInto(other, seen)
	o.sort()
	return errs
}

// mergeKey: objects with the same kind, namespace and name are duplicates.
type mergeKey struct{ kind, namespace, name string }

// MergeAll returns what merging parts one by one into empty Objects with
// Merge gives (the same objects in the same order; errs[i] are the errors
// Merge returns for parts[i]), with one duplicate index and one sort
// instead of one per part: the folder source merges its files' cached
// objects on every change.
func MergeAll(parts ...*Objects) (*Objects, [][]error) {
	out, errs, _ := mergeAllPods(parts, false)
	return out, errs
}

// mergeAllPods is MergeAll; podErrs[i] are part i's pods' duplicate
// errors. Where one part alone holds pods, sorted and each once (a
// folder's pods file), out.Pods is that part's very array: the caller
// never modifies it (Tracker.ApplyFiles keeps it). With share, where
// several parts hold pods that merging concatenates (each part's sorted,
// each named once by its Ref, the parts' in disjoint ranges: a folder's
// pods file and a few pods of another), out.Pods is one array of them
// and each such part's Pods becomes its range of it (equal pods, no spare
// room): the caller holds one copy of each pod, not its parts' and the
// merge's (216 B per pod, BenchmarkPodHeap with the bench's objects.yaml).
func mergeAllPods(parts []*Objects, share bool) (out *Objects, errs, podErrs [][]error) {
	order := podsPartsInOrder(parts)
	if order == nil || (len(order) > 1 && !share) {
		return mergeAllSkip(parts, nil)
	}
	skip := make([]podsPart, len(order))
	n := 0
	for j, i := range order {
		skip[j] = podsPart{index: i}
		n += len(parts[i].Pods)
	}
	out, errs, podErrs = mergeAllSkip(parts, skip)
	if len(order) == 1 {
		out.Pods = slices.Clip(parts[order[0]].Pods)
		return out, errs, podErrs
	}
	pods := make([]Pod, 0, n)
	for _, i := range order {
		pods = append(pods, parts[i].Pods...)
	}
	off := 0
	for _, i := range order {
		k := len(parts[i].Pods)
		parts[i].Pods = pods[off : off+k : off+k]
		off += k
	}
	out.Pods = pods
	return out, errs, podErrs
}

// podsPartsInOrder is the indexes of the parts holding pods, in the
// order whose concatenation of their pods is what merging them gives:
// each part's sorted and each named once by its Ref (decoded pods), the
// last of a part before the first of the next; nil when there is no such
// order (or no pods).
func podsPartsInOrder(parts []*Objects) []int {
	var order []int
	for i, p := range parts {
		if len(p.Pods) == 0 {
			continue
		}
		pods := p.Pods
		for j := range pods {
			q := &pods[j]
			if q.Ref.Kind != "Pod" || q.Ref.Namespace != q.Namespace || q.Ref.Name != q.Name {
				return nil
			}
			if j > 0 && comparePods(pods[j-1], *q) >= 0 {
				return nil
			}
		}
		order = append(order, i)
	}
	slices.SortFunc(order, func(a, b int) int { return comparePods(parts[a].Pods[0], parts[b].Pods[0]) })
	for k := 1; k < len(order); k++ {
		prev := parts[order[k-1]].Pods
		if comparePods(prev[len(prev)-1], parts[order[k]].Pods[0]) >= 0 {
			return nil
		}
	}
	return order
}

// mergeAll is MergeAll without the pods: memo gives each part's pods'
// duplicate errors (Tracker.ApplyFiles).
func mergeAll(parts []*Objects, memo []podsPart) (*Objects, [][]error) {
	out, errs, _ := mergeAllSkip(parts, memo)
	return out, errs
}

// mergeAllSkip merges parts; with skip non-nil the pods are left out and
// skip names the duplicate errors of each part's pods.
func mergeAllSkip(parts []*Objects, skip []podsPart) (*Objects, [][]error, [][]error) {
	skipPods := skip != nil
	out := &Objects{}
	var nNs, nNodes, nAPI, nPods, nPol, nSvc, nES, nSum int
	for _, p := range parts {
		nSum += len(p.Summaries)
		nNs += len(p.Namespaces)
		nNodes += len(p.Nodes)
		nAPI += len(p.APIServers)
		nPods += len(p.Pods)
		nPol += len(p.Policies)
		nSvc += len(p.Services)
		nES += len(p.EndpointSlices)
	}
	out.Namespaces = capped[Namespace](nNs)
	out.Nodes = capped[Node](nNodes)
	out.APIServers = capped[APIServer](nAPI)
	if skipPods {
		nPods = 0
	}
	out.Pods = capped[Pod](nPods)
	out.Policies = capped[Policy](nPol)
	out.Services = capped[Service](nSvc)
	out.EndpointSlices = capped[EndpointSlice](nES)
	out.Summaries, out.summaryRefs = capped[string](nSum), capped[ObjectRef](nSum)
	seen := make(map[mergeKey]ObjectRef, nNs+nNodes+nPods+nPol+nSvc+nES)
	errs := make([][]error, len(parts))
	podErrs := make([][]error, len(parts))
	for i, p := range parts {
		var given []error
		if skipPods {
			if j := slices.IndexFunc(skip, func(m podsPart) bool { return m.index == i }); j >= 0 {
				given = skip[j].errs
			}
		}
		errs[i], podErrs[i] = out.mergeParts(p, seen, skipPods, given)
	}
	if skipPods {
		out.sortExceptPods()
	} else {
		out.sort()
	}
	return out, errs, podErrs
}

// capped is an empty slice with room for n (nil for none, as Merge leaves
// kinds it never saw).
func capped[T any](n int) []T {
	if n == 0 {
		return nil
	}
	return make([]T, 0, n)
}

// mergeInto appends other's objects not in seen (and records them there);
// the caller sorts.
func (o *Objects) mergeInto(other *Objects, seen map[mergeKey]ObjectRef) []error {
	errs, _ := o.mergeParts(other, seen, false, nil)
	return errs
}

// mergeParts is mergeInto; podErrs are the duplicate errors of other's
// pods (a part of errs, in their place). With skipPods, other's pods are
// neither appended nor recorded in seen and the given podErrs stand in
// for theirs (Tracker.ApplyFiles: the pods are those of the previous
// merge, and a pod's duplicates are pods only: keys hold the kind).
func (o *Objects) mergeParts(other *Objects, seen map[mergeKey]ObjectRef, skipPods bool, givenPodErrs []error) (errs, podErrs []error) {
	key := func(r ObjectRef) mergeKey { return mergeKey{r.Kind, r.Namespace, r.Name} }
	dup := func(r ObjectRef) bool {
		if first, ok := seen[key(r)]; ok {
			errs = append(errs, &ObjectError{Object: r, Err: fmt.Errorf("duplicate object: already defined in %s (that definition is kept)", first.File)})
			return true
		}
		seen[key(r)] = r
		return false
	}
	for _, n := range other.Namespaces {
		if !dup(n.Ref) {
			o.Namespaces = append(o.Namespaces, n)
		}
	}
	for _, n := range other.Nodes {
		if !dup(n.Ref) {
			o.Nodes = append(o.Nodes, n)
		}
	}
	for _, s := range other.Services {
		if !dup(s.Ref) {
			o.Services = append(o.Services, s)
		}
	}
	for _, es := range other.EndpointSlices {
		if !dup(es.Ref) {
			o.EndpointSlices = append(o.EndpointSlices, es)
			// its kube-apiserver view, if it is default/kubernetes
			if i := slices.IndexFunc(other.APIServers, func(a APIServer) bool { return a.Ref == es.Ref }); i >= 0 {
				o.APIServers = append(o.APIServers, other.APIServers[i])
			}
		}
	}
	if skipPods {
		errs = append(errs, givenPodErrs...)
		podErrs = givenPodErrs
	} else {
		n := len(errs)
		for _, p := range other.Pods {
			if !dup(p.Ref) {
				o.Pods = append(o.Pods, p)
			}
		}
		podErrs = errs[n:len(errs):len(errs)]
	}
	for _, p := range other.Policies {
		if !dup(p.Ref) {
			o.Policies = append(o.Policies, p)
		}
	}
	o.Warnings = append(o.Warnings, other.Warnings...)
	if len(errs) == 0 {
		o.Summaries = append(o.Summaries, other.Summaries...)
		o.summaryRefs = append(o.summaryRefs, other.summaryRefs...)
	} else {
		for i, line := range other.Summaries {
			r := other.summaryRefs[i]
			if !slices.ContainsFunc(errs, func(e error) bool { oe, ok := e.(*ObjectError); return ok && oe.Object == r }) {
				o.summarize(r, line)
			}
		}
	}
	return errs, podErrs
}

// Load reads files and folders (recursively: *.yaml, *.yml, *.json) and
// decodes every object in them, in lexical path order.
func Load(paths ...string) (*Objects, []error) {
	return load(paths, false)
}

// LoadObjects is Load without Summaries (DecodeObjects).
func LoadObjects(paths ...string) (*Objects, []error) {
	return load(paths, true)
}

func load(paths []string, noSummaries bool) (*Objects, []error) {
	out := &Objects{}
	var errs []error
	for _, root := range paths {
		st, err := os.Stat(root)
		if err != nil {
			errs = append(errs, fmt.Errorf("read %s: %w", root, err))
			continue
		}
		files := []string{root}
		if st.IsDir() {
			if files, err = ListFiles(root); err != nil {
				errs = append(errs, fmt.Errorf("read %s: %w", root, err))
			}
		}
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				errs = append(errs, fmt.Errorf("read %s: %w", f, err))
				continue
			}
			objs, derrs := decode(f, data, noSummaries)
			errs = append(errs, derrs...)
			errs = append(errs, out.Merge(objs)...)
		}
	}
	return out, errs
}

// ListFiles lists the files Load reads in a folder: *.yaml, *.yml and
// *.json, recursively, skipping hidden folders, in lexical order.
func ListFiles(root string) ([]string, error) {
	var files []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != root && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			return nil
		}
		switch strings.ToLower(filepath.Ext(p)) {
		case ".yaml", ".yml", ".json":
			files = append(files, p)
		}
		return nil
	})
	slices.Sort(files)
	return files, err
}
