package k8s

import (
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/l7gate/l7gate/policy"
)

// CNPResource is CiliumNetworkPolicy's resource, read with the dynamic client.
func CNPResource() schema.GroupVersionResource {
	return schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}
}

// CCNPResource is CiliumClusterwideNetworkPolicy's resource.
func CCNPResource() schema.GroupVersionResource {
	return schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumclusterwidenetworkpolicies"}
}

// lastApplied is kubectl's copy of the whole object: never policy content.
const lastApplied = "kubectl.kubernetes.io/last-applied-configuration"

// document is one object as policy.Decode reads it: canonical JSON of the
// content that matters to policy (no resourceVersion, managedFields or
// status beyond a pod's IPs and phase), so the digest over documents only
// changes when policy input does.
type document struct {
	key  objectKey
	json []byte
	info objectInfo
}

// objectKey names an object the way policy.ObjectRef does.
type objectKey struct {
	Kind, Namespace, Name string
}

func keyOf(r policy.ObjectRef) objectKey {
	return objectKey{Kind: r.Kind, Namespace: r.Namespace, Name: r.Name}
}

// objectInfo is what the status writer needs to address an object.
type objectInfo struct {
	APIVersion string
	UID        types.UID
	Generation int64
}

type docMeta struct {
	Name        string            `json:"name"`
	Namespace   string            `json:"namespace,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type podDoc struct {
	APIVersion string  `json:"apiVersion"`
	Kind       string  `json:"kind"`
	Metadata   docMeta `json:"metadata"`
	Spec       struct {
		ServiceAccountName string         `json:"serviceAccountName,omitempty"`
		HostNetwork        bool           `json:"hostNetwork,omitempty"`
		NodeName           string         `json:"nodeName,omitempty"`
		Containers         []containerDoc `json:"containers,omitempty"`
	} `json:"spec"`
	Status struct {
		Phase  string  `json:"phase,omitempty"`
		PodIPs []podIP `json:"podIPs,omitempty"`
	} `json:"status"`
}

type containerDoc struct {
	Name  string                 `json:"name"`
	Ports []corev1.ContainerPort `json:"ports,omitempty"`
}

type podIP struct {
	IP string `json:"ip"`
}

// terminated reports whether a pod no longer runs anything: it is being
// deleted and every container it started has exited. Its IP may already
// belong to a new pod.
func terminated(p *corev1.Pod) bool {
	if p.DeletionTimestamp == nil {
		return false
	}
	if p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return true
	}
	if len(p.Status.ContainerStatuses) == 0 {
		return p.Status.PodIP == "" // never started
	}
	for _, c := range p.Status.ContainerStatuses {
		if c.State.Terminated == nil {
			return false
		}
	}
	return true
}

// podIPs lists a pod's IPs (status.podIPs, else status.podIP).
func podIPs(p *corev1.Pod) []string {
	var out []string
	for _, ip := range p.Status.PodIPs {
		out = append(out, ip.IP)
	}
	if len(out) == 0 && p.Status.PodIP != "" {
		out = append(out, p.Status.PodIP)
	}
	return out
}

// podDocuments renders pods. A pod that finished or terminated is given
// phase Succeeded/Failed (policy skips those); a terminating pod still
// running keeps its identity but loses any IP a live pod already claims,
// since the IP was handed on.
func podDocuments(pods []*corev1.Pod) ([]document, error) {
	live := map[string]bool{}
	for _, p := range pods {
		for _, ip := range liveIPs(p) {
			live[ip] = true
		}
	}
	out := make([]document, 0, len(pods))
	for _, p := range pods {
		d, err := podDocument(p, func(ip string) bool { return live[ip] })
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

// liveIPs are the IPs a pod holds while it lives (not being deleted, not
// finished, not on the host network).
func liveIPs(p *corev1.Pod) []string {
	if p.DeletionTimestamp == nil && !p.Spec.HostNetwork && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
		return podIPs(p)
	}
	return nil
}

// podDocument renders one pod; live tells whether a live pod holds an IP
// (asked only for a pod being deleted).
func podDocument(p *corev1.Pod, live func(ip string) bool) (document, error) {
	var d podDoc
	d.APIVersion, d.Kind = "v1", "Pod"
	d.Metadata = docMeta{Name: p.Name, Namespace: p.Namespace, Labels: p.Labels, Annotations: withoutLastApplied(p.Annotations)}
	d.Spec.ServiceAccountName = p.Spec.ServiceAccountName
	d.Spec.HostNetwork = p.Spec.HostNetwork
	d.Spec.NodeName = p.Spec.NodeName
	for _, c := range p.Spec.Containers {
		d.Spec.Containers = append(d.Spec.Containers, containerDoc{Name: c.Name, Ports: c.Ports})
	}
	d.Status.Phase = string(p.Status.Phase)
	switch {
	case d.Status.Phase == string(corev1.PodSucceeded) || d.Status.Phase == string(corev1.PodFailed):
	case terminated(p):
		d.Status.Phase = string(corev1.PodSucceeded)
	default:
		for _, ip := range podIPs(p) {
			if p.DeletionTimestamp != nil && live(ip) {
				continue
			}
			d.Status.PodIPs = append(d.Status.PodIPs, podIP{IP: ip})
		}
	}
	js, err := json.Marshal(&d)
	if err != nil {
		return document{}, fmt.Errorf("encode pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return document{key: objectKey{"Pod", p.Namespace, p.Name}, json: js, info: objectInfo{APIVersion: "v1", UID: p.UID}}, nil
}

func withoutLastApplied(m map[string]string) map[string]string {
	if _, ok := m[lastApplied]; !ok {
		return m
	}
	m = maps.Clone(m)
	delete(m, lastApplied)
	return m
}

// auditAnnotation keeps, of a Namespace's or a policy's annotations, only
// l7gate's audit-mode annotation (policy.AuditAnnotation): the only one
// policy reads there, so other annotations never change the digest.
// Removing it enforces the policy again at the next revision.
func auditAnnotation(ann map[string]string) map[string]string {
	v, ok := ann[policy.AuditAnnotation]
	if !ok {
		return nil
	}
	return map[string]string{policy.AuditAnnotation: v}
}

func namespaceDocument(ns *corev1.Namespace) (document, error) {
	js, err := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "Namespace",
		"metadata": docMeta{Name: ns.Name, Labels: ns.Labels, Annotations: auditAnnotation(ns.Annotations)}})
	if err != nil {
		return document{}, fmt.Errorf("encode namespace %s: %w", ns.Name, err)
	}
	return document{key: objectKey{"Namespace", "", ns.Name}, json: js, info: objectInfo{APIVersion: "v1", UID: ns.UID}}, nil
}

// nodeDocument keeps a Node's name and its internal and external
// addresses, sorted, so status heartbeats do not change the digest.
func nodeDocument(n *corev1.Node) (document, error) {
	type address struct {
		Type    string `json:"type"`
		Address string `json:"address"`
	}
	var addrs []address
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP || a.Type == corev1.NodeExternalIP {
			addrs = append(addrs, address{Type: string(a.Type), Address: a.Address})
		}
	}
	slices.SortFunc(addrs, func(x, y address) int { return strings.Compare(x.Type+x.Address, y.Type+y.Address) })
	js, err := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "Node",
		"metadata": docMeta{Name: n.Name}, "status": map[string]any{"addresses": addrs}})
	if err != nil {
		return document{}, fmt.Errorf("encode node %s: %w", n.Name, err)
	}
	return document{key: objectKey{"Node", "", n.Name}, json: js, info: objectInfo{APIVersion: "v1", UID: n.UID}}, nil
}

// endpointSliceDocument keeps what a Service's backends are made of:
// addresses, conditions, node names, Pod targets and ports, sorted, so the
// controller's rewrites (annotations, endpoint order) do not change the
// digest. The default/kubernetes slice is also the kube-apiserver entity.
func endpointSliceDocument(es *discoveryv1.EndpointSlice) (document, error) {
	type conditions struct {
		Ready       *bool `json:"ready,omitempty"`
		Serving     *bool `json:"serving,omitempty"`
		Terminating *bool `json:"terminating,omitempty"`
	}
	type targetRef struct {
		Kind      string `json:"kind"`
		Namespace string `json:"namespace,omitempty"`
		Name      string `json:"name"`
	}
	type endpoint struct {
		Addresses  []string   `json:"addresses"`
		Conditions conditions `json:"conditions"`
		NodeName   *string    `json:"nodeName,omitempty"`
		TargetRef  *targetRef `json:"targetRef,omitempty"`
	}
	type port struct {
		Name     *string `json:"name,omitempty"`
		Protocol *string `json:"protocol,omitempty"`
		Port     *int32  `json:"port,omitempty"`
	}
	eps := []endpoint{}
	for _, e := range es.Endpoints {
		ep := endpoint{Addresses: slices.Sorted(slices.Values(e.Addresses)), NodeName: e.NodeName,
			Conditions: conditions{Ready: e.Conditions.Ready, Serving: e.Conditions.Serving, Terminating: e.Conditions.Terminating}}
		if r := e.TargetRef; r != nil && r.Kind == "Pod" {
			ep.TargetRef = &targetRef{Kind: r.Kind, Namespace: r.Namespace, Name: r.Name}
		}
		eps = append(eps, ep)
	}
	slices.SortStableFunc(eps, func(a, b endpoint) int {
		return strings.Compare(strings.Join(a.Addresses, ","), strings.Join(b.Addresses, ","))
	})
	ports := []port{}
	for _, p := range es.Ports {
		pp := port{Name: p.Name, Port: p.Port}
		if p.Protocol != nil {
			proto := string(*p.Protocol)
			pp.Protocol = &proto
		}
		ports = append(ports, pp)
	}
	slices.SortStableFunc(ports, func(a, b port) int {
		return cmp.Or(cmp.Compare(deref(a.Name), deref(b.Name)), cmp.Compare(deref(a.Protocol), deref(b.Protocol)))
	})
	labels := map[string]string{}
	if n, ok := es.Labels[discoveryv1.LabelServiceName]; ok {
		labels[discoveryv1.LabelServiceName] = n
	}
	js, err := json.Marshal(map[string]any{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
		"metadata": docMeta{Name: es.Name, Namespace: es.Namespace, Labels: labels}, "addressType": es.AddressType,
		"endpoints": eps, "ports": ports})
	if err != nil {
		return document{}, fmt.Errorf("encode endpointslice %s/%s: %w", es.Namespace, es.Name, err)
	}
	return document{key: objectKey{"EndpointSlice", es.Namespace, es.Name}, json: js,
		info: objectInfo{APIVersion: "discovery.k8s.io/v1", UID: es.UID}}, nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// serviceDocument keeps the spec fields load balancing and toServices
// read, and the labels; not status (load-balancer ingress) or annotations.
func serviceDocument(svc *corev1.Service) (document, error) {
	type port struct {
		Name       string              `json:"name,omitempty"`
		Protocol   corev1.Protocol     `json:"protocol,omitempty"`
		Port       int32               `json:"port"`
		TargetPort *intstr.IntOrString `json:"targetPort,omitempty"`
	}
	sp := svc.Spec
	spec := map[string]any{"type": sp.Type}
	if len(sp.Selector) > 0 {
		spec["selector"] = sp.Selector
	}
	if len(sp.ClusterIPs) > 0 {
		spec["clusterIPs"] = sp.ClusterIPs
	} else if sp.ClusterIP != "" {
		spec["clusterIP"] = sp.ClusterIP
	}
	var ports []port
	for _, p := range sp.Ports {
		pp := port{Name: p.Name, Protocol: p.Protocol, Port: p.Port}
		if p.TargetPort.Type == intstr.String || p.TargetPort.IntVal != 0 {
			tp := p.TargetPort
			pp.TargetPort = &tp
		}
		ports = append(ports, pp)
	}
	if len(ports) > 0 {
		spec["ports"] = ports
	}
	if sp.SessionAffinity != "" {
		spec["sessionAffinity"] = sp.SessionAffinity
	}
	if c := sp.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
		spec["sessionAffinityConfig"] = map[string]any{"clientIP": map[string]any{"timeoutSeconds": *c.ClientIP.TimeoutSeconds}}
	}
	if sp.InternalTrafficPolicy != nil {
		spec["internalTrafficPolicy"] = *sp.InternalTrafficPolicy
	}
	js, err := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "Service",
		"metadata": docMeta{Name: svc.Name, Namespace: svc.Namespace, Labels: svc.Labels}, "spec": spec})
	if err != nil {
		return document{}, fmt.Errorf("encode service %s/%s: %w", svc.Namespace, svc.Name, err)
	}
	return document{key: objectKey{"Service", svc.Namespace, svc.Name}, json: js,
		info: objectInfo{APIVersion: "v1", UID: svc.UID}}, nil
}

// trimEndpointSlice keeps in the informer's cache only what
// endpointSliceDocument reads (a cluster has a slice or more per Service).
func trimEndpointSlice(obj any) (any, error) {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return obj, nil
	}
	t := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: es.Name, Namespace: es.Namespace, UID: es.UID,
		ResourceVersion: es.ResourceVersion, Labels: es.Labels}, AddressType: es.AddressType, Ports: es.Ports}
	for _, e := range es.Endpoints {
		t.Endpoints = append(t.Endpoints, discoveryv1.Endpoint{Addresses: e.Addresses, Conditions: e.Conditions, NodeName: e.NodeName, TargetRef: e.TargetRef})
	}
	return t, nil
}

func networkPolicyDocument(np *networkingv1.NetworkPolicy) (document, error) {
	js, err := json.Marshal(map[string]any{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
		"metadata": docMeta{Name: np.Name, Namespace: np.Namespace, Labels: np.Labels, Annotations: auditAnnotation(np.Annotations)}, "spec": np.Spec})
	if err != nil {
		return document{}, fmt.Errorf("encode networkpolicy %s/%s: %w", np.Namespace, np.Name, err)
	}
	return document{key: objectKey{"NetworkPolicy", np.Namespace, np.Name}, json: js,
		info: objectInfo{APIVersion: "networking.k8s.io/v1", UID: np.UID, Generation: np.Generation}}, nil
}

// ciliumDocument keeps every field but metadata noise and status, so a
// misspelt field still reaches the strict decoder.
func ciliumDocument(u *unstructured.Unstructured) (document, error) {
	m := map[string]any{}
	for k, v := range u.Object {
		switch k {
		case "metadata", "status":
		default:
			m[k] = v
		}
	}
	m["metadata"] = docMeta{Name: u.GetName(), Namespace: u.GetNamespace(), Labels: u.GetLabels(), Annotations: auditAnnotation(u.GetAnnotations())}
	js, err := json.Marshal(m)
	if err != nil {
		return document{}, fmt.Errorf("encode %s %s/%s: %w", u.GetKind(), u.GetNamespace(), u.GetName(), err)
	}
	ns := u.GetNamespace()
	if u.GetKind() == string(policy.KindCNP) && ns == "" {
		ns = "default"
	}
	return document{key: objectKey{u.GetKind(), ns, u.GetName()}, json: js,
		info: objectInfo{APIVersion: u.GetAPIVersion(), UID: u.GetUID(), Generation: u.GetGeneration()}}, nil
}

// trimPod keeps in the informer's cache only what podDocuments reads, as
// a cachedPod: pods are the bulk of a cluster's objects, and a *corev1.Pod
// is 1.1 KB before any field is set.
func trimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	t := &cachedPod{ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace, UID: p.UID,
		ResourceVersion: p.ResourceVersion, Labels: p.Labels, Annotations: withoutLastApplied(p.Annotations),
		DeletionTimestamp: p.DeletionTimestamp},
		serviceAccount: p.Spec.ServiceAccountName, hostNetwork: p.Spec.HostNetwork, nodeName: p.Spec.NodeName,
		phase: p.Status.Phase, podIP: p.Status.PodIP, podIPs: p.Status.PodIPs}
	for _, c := range p.Spec.Containers {
		t.containers = append(t.containers, containerDoc{Name: c.Name, Ports: c.Ports})
	}
	for _, c := range p.Status.ContainerStatuses {
		t.statuses = append(t.statuses, containerState{name: c.Name, exited: c.State.Terminated != nil,
			exitCode: exitCode(c.State.Terminated)})
	}
	return t, nil
}

func exitCode(t *corev1.ContainerStateTerminated) int32 {
	if t == nil {
		return 0
	}
	return t.ExitCode
}

// cachedPod is what the informer keeps of a pod (trimPod).
type cachedPod struct {
	metav1.ObjectMeta
	serviceAccount, nodeName string
	hostNetwork              bool
	containers               []containerDoc
	phase                    corev1.PodPhase
	podIP                    string
	podIPs                   []corev1.PodIP
	statuses                 []containerState
}

type containerState struct {
	name     string
	exited   bool
	exitCode int32
}

// pod is the trimmed pod as a *corev1.Pod, for podDocument.
func (c *cachedPod) pod() *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: c.ObjectMeta}
	p.Spec.ServiceAccountName, p.Spec.HostNetwork, p.Spec.NodeName = c.serviceAccount, c.hostNetwork, c.nodeName
	for _, ct := range c.containers {
		p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: ct.Name, Ports: ct.Ports})
	}
	p.Status.Phase, p.Status.PodIP, p.Status.PodIPs = c.phase, c.podIP, c.podIPs
	for _, st := range c.statuses {
		cs := corev1.ContainerStatus{Name: st.name}
		if st.exited {
			cs.State.Terminated = &corev1.ContainerStateTerminated{ExitCode: st.exitCode}
		}
		p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, cs)
	}
	return p
}

// trimManagedFields drops managedFields from cached objects.
func trimManagedFields(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	return obj, nil
}

func sortDocuments(docs []document) {
	slices.SortFunc(docs, func(a, b document) int {
		for _, c := range [][2]string{{a.key.Kind, b.key.Kind}, {a.key.Namespace, b.key.Namespace}, {a.key.Name, b.key.Name}} {
			if c[0] != c[1] {
				if c[0] < c[1] {
					return -1
				}
				return 1
			}
		}
		return 0
	})
}
