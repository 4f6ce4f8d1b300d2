package policy

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Services
//
// Services and EndpointSlices come from both sources. The agent turns them
// into ServiceFrontends — one per ClusterIP, port and protocol — that its
// socket-level load balancer translates, so a pod's packets leave
// addressed to the backend pod and egress policy sees the real peer.
// toServices rules select through them (resolveToServices).

// Service is a decoded v1 Service: what socket load balancing and
// toServices need.
type Service struct {
	Ref       ObjectRef
	Namespace string
	Name      string
	Labels    map[string]string
	// Selector selects the pods behind the Service; nil for a Service
	// without a selector (its EndpointSlices are written by someone else).
	Selector map[string]string
	// Type is ClusterIP (default), NodePort, LoadBalancer or ExternalName.
	Type string
	// ClusterIPs are empty for a headless Service (clusterIP: None), an
	// ExternalName Service and one not allocated an address yet.
	ClusterIPs []netip.Addr
	Ports      []ServicePort
	// AffinityTimeout is positive for sessionAffinity: ClientIP.
	AffinityTimeout time.Duration
	// InternalTrafficLocal is internalTrafficPolicy: Local: a client is
	// only sent to endpoints on its own node.
	InternalTrafficLocal bool
}

// ServicePort is one port of a Service.
type ServicePort struct {
	Name     string   `json:"name,omitempty"`
	Protocol Protocol `json:"protocol"`
	Port     uint16   `json:"port"`
	// TargetPort (a number) or TargetPortName (a container port name) is
	// where the pods listen; only used to derive endpoints from pods.
	TargetPort     uint16 `json:"targetPort,omitempty"`
	TargetPortName string `json:"targetPortName,omitempty"`
}

// EndpointSlice is a decoded discovery.k8s.io/v1 EndpointSlice.
type EndpointSlice struct {
	Ref       ObjectRef
	Namespace string
	Name      string
	// Service is the kubernetes.io/service-name label: the Service whose
	// backends these are.
	Service     string
	AddressType string
	Ports       []EndpointPort
	Endpoints   []SliceEndpoint
	// Derived: made by l7gate from a Service's selector and the pods
	// (DeriveEndpointSlices), for sources with no EndpointSlice controller.
	Derived bool
}

// EndpointPort is one port of an EndpointSlice.
type EndpointPort struct {
	Name     string   `json:"name,omitempty"`
	Protocol Protocol `json:"protocol"`
	Port     uint16   `json:"port"`
}

// SliceEndpoint is one endpoint of an EndpointSlice, its conditions read
// as Kubernetes defines them (ready unset is ready; serving unset is
// ready's value; terminating unset is false).
type SliceEndpoint struct {
	Addresses   []netip.Addr
	Ready       bool
	Serving     bool
	Terminating bool
	NodeName    string
	// Pod is "namespace/name" when the targetRef is a Pod.
	Pod string
}

// LabelServiceName names an EndpointSlice's Service.
const LabelServiceName = "kubernetes.io/service-name"

// Service types.
const (
	ServiceTypeClusterIP    = "ClusterIP"
	ServiceTypeNodePort     = "NodePort"
	ServiceTypeLoadBalancer = "LoadBalancer"
	ServiceTypeExternalName = "ExternalName"
)

// defaultAffinityTimeout is Kubernetes' default for
// sessionAffinityConfig.clientIP.timeoutSeconds.
const defaultAffinityTimeout = 10800 * time.Second

// Wire forms (lenient: only what l7gate reads is decoded).

type wireService struct {
	APIVersion string          `json:"apiVersion"`
	Kind       string          `json:"kind"`
	Metadata   ObjectMeta      `json:"metadata"`
	Spec       wireServiceSpec `json:"spec"`
}

func (*wireService) lenient() {}

type wireServiceSpec struct {
	Type                  string                  `json:"type"`
	Selector              map[string]string       `json:"selector"`
	ClusterIP             string                  `json:"clusterIP"`
	ClusterIPs            []string                `json:"clusterIPs"`
	Ports                 []wireServicePort       `json:"ports"`
	SessionAffinity       string                  `json:"sessionAffinity"`
	SessionAffinityConfig *wireSessionAffinityCfg `json:"sessionAffinityConfig"`
	InternalTrafficPolicy string                  `json:"internalTrafficPolicy"`
}

func (*wireServiceSpec) lenient() {}

type wireServicePort struct {
	Name       string        `json:"name"`
	Protocol   string        `json:"protocol"`
	Port       int64         `json:"port"`
	TargetPort *scalarString `json:"targetPort"`
}

func (*wireServicePort) lenient() {}

type wireSessionAffinityCfg struct {
	ClientIP *struct {
		TimeoutSeconds *int64 `json:"timeoutSeconds"`
	} `json:"clientIP"`
}

func (*wireSessionAffinityCfg) lenient() {}

type wireEndpointPort struct {
	Name     *string `json:"name"`
	Protocol *string `json:"protocol"`
	Port     *int64  `json:"port"`
}

func (*wireEndpointPort) lenient() {}

type wireObjectReference struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

func (*wireObjectReference) lenient() {}

func normalizeService(w *wireService, ref ObjectRef) (*Service, []Warning, []error) {
	s := &Service{Ref: ref, Namespace: ref.Namespace, Name: ref.Name, Labels: w.Metadata.Labels, Type: w.Spec.Type}
	var errs []error
	var warns []Warning
	warn := func(p fieldPath, format string, args ...any) {
		warns = append(warns, Warning{Object: ref, Path: string(p), Message: fmt.Sprintf(format, args...)})
	}
	if ref.Name == "" {
		errs = append(errs, fieldPath("metadata.name").errorf("missing"))
	}
	switch s.Type {
	case "":
		s.Type = ServiceTypeClusterIP
	case ServiceTypeClusterIP, ServiceTypeNodePort, ServiceTypeLoadBalancer, ServiceTypeExternalName:
	default:
		errs = append(errs, fieldPath("spec.type").errorf("unknown type %q (want ClusterIP, NodePort, LoadBalancer or ExternalName)", s.Type))
	}
	if len(w.Spec.Selector) > 0 {
		s.Selector = w.Spec.Selector
		for k := range s.Selector {
			if err := validLabelKey(k); err != nil {
				errs = append(errs, fieldPath("spec.selector").key(k).errorf("%w", err))
			}
		}
	}
	ips := w.Spec.ClusterIPs
	if len(ips) == 0 && w.Spec.ClusterIP != "" {
		ips = []string{w.Spec.ClusterIP}
	}
	for i, ip := range ips {
		if ip == "None" || ip == "" {
			continue // headless
		}
		a, err := netip.ParseAddr(ip)
		if err != nil {
			errs = append(errs, fieldPath("spec.clusterIPs").index(i).errorf("invalid IP %q", ip))
			continue
		}
		// No API server allocates these; translating one would hijack
		// connections that are no Service's (0.0.0.0 and 127.0.0.1 are the
		// node itself).
		if u := a.Unmap(); u.IsUnspecified() || u.IsLoopback() || u.IsMulticast() || u.IsLinkLocalUnicast() || u == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
			errs = append(errs, fieldPath("spec.clusterIPs").index(i).errorf("%s is not a service address (unspecified, loopback, multicast, broadcast or link-local)", ip))
			continue
		}
		if s.Type != ServiceTypeExternalName {
			s.ClusterIPs = append(s.ClusterIPs, a.Unmap())
		}
	}
	for i, p := range w.Spec.Ports {
		fp := fieldPath("spec.ports").index(i)
		proto, err := ParseProtocol(p.Protocol)
		if p.Protocol == "" {
			proto, err = ProtoTCP, nil
		}
		if err != nil || proto == ProtoAny || proto == ProtoICMP || proto == ProtoICMPv6 {
			errs = append(errs, fp.child("protocol").errorf("unknown protocol %q (want TCP, UDP or SCTP)", p.Protocol))
			continue
		}
		if p.Port < 1 || p.Port > 65535 {
			errs = append(errs, fp.child("port").errorf("%d is not a port (1-65535)", p.Port))
			continue
		}
		sp := ServicePort{Name: p.Name, Protocol: proto, Port: uint16(p.Port), TargetPort: uint16(p.Port)}
		if p.TargetPort != nil {
			t := string(*p.TargetPort)
			if n, err := strconv.Atoi(t); err == nil {
				if n < 1 || n > 65535 {
					errs = append(errs, fp.child("targetPort").errorf("%d is not a port (1-65535)", n))
					continue
				}
				sp.TargetPort = uint16(n)
			} else {
				if !validPortName(t) {
					errs = append(errs, fp.child("targetPort").errorf("%q is neither a port number nor a port name", t))
					continue
				}
				sp.TargetPort, sp.TargetPortName = 0, t
			}
		}
		s.Ports = append(s.Ports, sp)
	}
	switch w.Spec.SessionAffinity {
	case "", "None":
	case "ClientIP":
		s.AffinityTimeout = defaultAffinityTimeout
		if c := w.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			secs := *c.ClientIP.TimeoutSeconds
			if secs < 1 || secs > 86400 {
				errs = append(errs, fieldPath("spec.sessionAffinityConfig.clientIP.timeoutSeconds").errorf("%d: want 1-86400", secs))
			} else {
				s.AffinityTimeout = time.Duration(secs) * time.Second
			}
		}
	default:
		errs = append(errs, fieldPath("spec.sessionAffinity").errorf("unknown %q (want None or ClientIP)", w.Spec.SessionAffinity))
	}
	switch w.Spec.InternalTrafficPolicy {
	case "", "Cluster":
	case "Local":
		s.InternalTrafficLocal = true
	default:
		errs = append(errs, fieldPath("spec.internalTrafficPolicy").errorf("unknown %q (want Cluster or Local)", w.Spec.InternalTrafficPolicy))
	}
	if len(errs) == 0 && s.Type != ServiceTypeExternalName && len(s.ClusterIPs) == 0 && w.Spec.ClusterIP != "None" && !slices.Contains(w.Spec.ClusterIPs, "None") {
		warn("spec.clusterIP", "no clusterIP: nothing to load-balance (the API server allocates one; give it in a folder source)")
	}
	return s, warns, errs
}

func normalizeEndpointSlice(w *wireEndpointSlice, ref ObjectRef) (*EndpointSlice, []error) {
	es := &EndpointSlice{Ref: ref, Namespace: ref.Namespace, Name: ref.Name, Service: w.Metadata.Labels[LabelServiceName], AddressType: w.AddressType}
	var errs []error
	if ref.Name == "" {
		errs = append(errs, fieldPath("metadata.name").errorf("missing"))
	}
	switch w.AddressType {
	case "IPv4", "IPv6", "FQDN":
	case "":
		es.AddressType = "IPv4"
	default:
		errs = append(errs, fieldPath("addressType").errorf("unknown %q (want IPv4, IPv6 or FQDN)", w.AddressType))
	}
	for i, p := range w.Ports {
		fp := fieldPath("ports").index(i)
		ep := EndpointPort{Protocol: ProtoTCP}
		if p.Name != nil {
			ep.Name = *p.Name
		}
		if p.Protocol != nil {
			proto, err := ParseProtocol(*p.Protocol)
			if err != nil || proto == ProtoAny {
				errs = append(errs, fp.child("protocol").errorf("unknown protocol %q", *p.Protocol))
				continue
			}
			ep.Protocol = proto
		}
		if p.Port != nil {
			if *p.Port < 1 || *p.Port > 65535 {
				errs = append(errs, fp.child("port").errorf("%d is not a port (1-65535)", *p.Port))
				continue
			}
			ep.Port = uint16(*p.Port)
		}
		es.Ports = append(es.Ports, ep)
	}
	for i, e := range w.Endpoints {
		fp := fieldPath("endpoints").index(i)
		se := SliceEndpoint{Ready: true}
		c := e.Conditions
		if c.Ready != nil {
			se.Ready = *c.Ready
		}
		se.Serving = se.Ready
		if c.Serving != nil {
			se.Serving = *c.Serving
		}
		if c.Terminating != nil {
			se.Terminating = *c.Terminating
		}
		if e.NodeName != nil {
			se.NodeName = *e.NodeName
		}
		if r := e.TargetRef; r != nil && r.Kind == "Pod" && r.Name != "" {
			ns := r.Namespace
			if ns == "" {
				ns = ref.Namespace
			}
			se.Pod = ns + "/" + r.Name
		}
		if es.AddressType == "FQDN" {
			es.Endpoints = append(es.Endpoints, se)
			continue
		}
		for j, s := range e.Addresses {
			ip, err := netip.ParseAddr(s)
			if err != nil {
				errs = append(errs, fp.child("addresses").index(j).errorf("invalid IP %q", s))
				continue
			}
			se.Addresses = append(se.Addresses, ip.Unmap())
		}
		es.Endpoints = append(es.Endpoints, se)
	}
	return es, errs
}

// ServiceFrontend is one ClusterIP, port and protocol of a Service and the
// backends connections to it go to on one node.
type ServiceFrontend struct {
	// Service is "namespace/name".
	Service  string         `json:"service"`
	PortName string         `json:"portName,omitempty"`
	Address  netip.AddrPort `json:"address"`
	Protocol Protocol       `json:"protocol"`
	// Backends: the ready endpoints or, when none is ready, the serving
	// terminating ones; with internalTrafficPolicy Local only this node's.
	// Empty: connections are refused.
	Backends []ServiceBackend `json:"backends"`
	// Affinity is the sessionAffinity ClientIP timeout (0: none).
	Affinity time.Duration `json:"affinity,omitempty"`
	// Local is internalTrafficPolicy: Local.
	Local bool `json:"local,omitempty"`
	// State says how the backends were chosen: "ready", "terminating"
	// (no ready endpoint: terminating ones serve), "no-backends" or
	// "no-local-backends" (both refuse connections).
	State string `json:"state"`
}

// ServiceBackend is one backend of a frontend.
type ServiceBackend struct {
	Address     netip.AddrPort `json:"address"`
	Node        string         `json:"node,omitempty"`
	Pod         string         `json:"pod,omitempty"`
	Terminating bool           `json:"terminating,omitempty"`
}

// Frontend states.
const (
	FrontendReady           = "ready"
	FrontendTerminating     = "terminating"
	FrontendNoBackends      = "no-backends"
	FrontendNoLocalBackends = "no-local-backends"
	// FrontendConflict: another Service has the same address, port and
	// protocol; this one is not load-balanced.
	FrontendConflict = "conflict"
)

// ServiceFrontends resolves every Service's ClusterIPs and ports to the
// backends a client on node would use, as kube-proxy chooses them: the
// endpoints of the Service's EndpointSlices with a port of the same name
// and protocol, ready ones, or the serving terminating ones when none is
// ready; with internalTrafficPolicy Local only endpoints on node (an empty
// node keeps every endpoint: tools without a node). Each ClusterIP, IPv4
// or IPv6, is a frontend whose backends are the endpoints of its own
// family's slices (addressType IPv4 or IPv6), as kube-proxy does for a
// dual-stack Service. TCP and UDP only: SCTP is left to kube-proxy (said
// in the returned notes). Sorted by address (IPv4 first), port and
// protocol.
func ServiceFrontends(objs *Objects, node string) ([]ServiceFrontend, []string) {
	byService := slicesByService(objs)
	var out []ServiceFrontend
	var notes []string
	for i := range objs.Services {
		s := &objs.Services[i]
		name := s.Namespace + "/" + s.Name
		for _, ip := range s.ClusterIPs {
			for _, p := range s.Ports {
				if p.Protocol != ProtoTCP && p.Protocol != ProtoUDP {
					notes = append(notes, fmt.Sprintf("service %s: port %d/%s is left to kube-proxy (socket load balancing covers TCP and UDP)", name, p.Port, p.Protocol))
					continue
				}
				f := ServiceFrontend{Service: name, PortName: p.Name, Address: netip.AddrPortFrom(ip, p.Port), Protocol: p.Protocol,
					Affinity: s.AffinityTimeout, Local: s.InternalTrafficLocal}
				f.Backends, f.State = backendsFor(byService[name], p, addressType(ip), s.InternalTrafficLocal, node)
				out = append(out, f)
			}
		}
	}
	sortFrontends(out)
	// Two Services with one ClusterIP and port (the API server never
	// allocates that; a folder may say it): the first by name keeps it.
	for i := 1; i < len(out); i++ {
		prev, cur := &out[i-1], &out[i]
		if cur.Address == prev.Address && cur.Protocol == prev.Protocol {
			notes = append(notes, fmt.Sprintf("service %s: %s/%s is also service %s's; not load-balanced", cur.Service, cur.Address, cur.Protocol, prev.Service))
			cur.Backends, cur.State = []ServiceBackend{}, FrontendConflict
		}
	}
	return out, notes
}

func sortFrontends(fs []ServiceFrontend) {
	slices.SortFunc(fs, func(a, b ServiceFrontend) int {
		return cmp.Or(a.Address.Compare(b.Address), cmp.Compare(a.Protocol, b.Protocol), strings.Compare(a.Service, b.Service))
	})
}

// slicesByService groups EndpointSlices by "namespace/service".
func slicesByService(objs *Objects) map[string][]*EndpointSlice {
	out := map[string][]*EndpointSlice{}
	for i := range objs.EndpointSlices {
		es := &objs.EndpointSlices[i]
		if es.Service == "" {
			continue
		}
		k := es.Namespace + "/" + es.Service
		out[k] = append(out[k], es)
	}
	return out
}

// addressType is the EndpointSlice addressType of an address's family
// (ClusterIPs are stored unmapped).
func addressType(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// backendsFor picks a service port's backends of one family ("IPv4" or
// "IPv6": the ClusterIP's) from its slices.
func backendsFor(ess []*EndpointSlice, p ServicePort, family string, local bool, node string) ([]ServiceBackend, string) {
	var ready, terminating []ServiceBackend
	for _, es := range ess {
		if es.AddressType != family {
			continue
		}
		var port uint16
		for _, ep := range es.Ports {
			if ep.Name == p.Name && ep.Protocol == p.Protocol && ep.Port != 0 {
				port = ep.Port
				break
			}
		}
		if port == 0 {
			continue
		}
		for _, e := range es.Endpoints {
			if local && node != "" && e.NodeName != node {
				continue
			}
			for _, a := range e.Addresses {
				if !a.IsValid() || a.Is4In6() || addressType(a) != family {
					continue // an address not of the slice's type
				}
				b := ServiceBackend{Address: netip.AddrPortFrom(a, port), Node: e.NodeName, Pod: e.Pod}
				switch {
				case e.Ready && !e.Terminating:
					ready = append(ready, b)
				case e.Serving && e.Terminating:
					b.Terminating = true
					terminating = append(terminating, b)
				}
			}
		}
	}
	dedupe := func(bs []ServiceBackend) []ServiceBackend {
		slices.SortFunc(bs, func(a, b ServiceBackend) int {
			return cmp.Or(a.Address.Compare(b.Address), strings.Compare(b.Pod, a.Pod)) // named pods first
		})
		return slices.CompactFunc(bs, func(a, b ServiceBackend) bool { return a.Address == b.Address })
	}
	switch {
	case len(ready) > 0:
		return dedupe(ready), FrontendReady
	case len(terminating) > 0:
		return dedupe(terminating), FrontendTerminating
	case local && node != "":
		return []ServiceBackend{}, FrontendNoLocalBackends
	}
	return []ServiceBackend{}, FrontendNoBackends
}

// serviceAddresses lists the addresses of a Service's endpoints that serve
// (ready, or serving while terminating), on any node: what a toServices
// rule for a Service without a selector allows, as Cilium turns them into
// CIDR rules.
func serviceAddresses(ess []*EndpointSlice) []netip.Addr {
	var out []netip.Addr
	for _, es := range ess {
		if es.AddressType != "IPv4" && es.AddressType != "IPv6" {
			continue
		}
		for _, e := range es.Endpoints {
			if !e.Ready && !e.Serving {
				continue
			}
			out = append(out, e.Addresses...)
		}
	}
	slices.SortFunc(out, func(a, b netip.Addr) int { return a.Compare(b) })
	return slices.Compact(out)
}

// DeriveEndpointSlices adds, for every Service with a selector that no
// EndpointSlice names, the slices Kubernetes' EndpointSlice controller
// would write: the Service's namespace's pods whose labels match the
// selector (not Succeeded or Failed, with an address of the slice's
// family), ready, with
// each port's targetPort (a name resolves against the pod's container
// ports; a pod without it is left out of that port). A folder source has
// no controller: Services there work from their selector alone. As the
// controller does, slices are per address family — one per family of the
// Service's ClusterIPs (IPv4 for a Service without any, e.g. headless) —
// named <service>-l7gate-<n> (IPv4) and <service>-l7gate6-<n> (IPv6), and
// marked Derived.
func (o *Objects) DeriveEndpointSlices() {
	named := map[string]bool{}
	for _, es := range o.EndpointSlices {
		named[es.Namespace+"/"+es.Service] = true
	}
	var add []EndpointSlice
	for i := range o.Services {
		s := &o.Services[i]
		if len(s.Selector) == 0 || named[s.Namespace+"/"+s.Name] || s.Type == ServiceTypeExternalName {
			continue
		}
		families := []string{}
		for _, ip := range s.ClusterIPs {
			if f := addressType(ip); !slices.Contains(families, f) {
				families = append(families, f)
			}
		}
		if len(families) == 0 {
			families = []string{"IPv4"}
		}
		slices.Sort(families) // IPv4 first
		for _, family := range families {
			add = append(add, derivedSlices(s, o.Pods, family)...)
		}
	}
	o.EndpointSlices = append(o.EndpointSlices, add...)
	o.sort()
}

// derivedSlices are the slices of one address family for Service s.
func derivedSlices(s *Service, pods []Pod, family string) []EndpointSlice {
	// Pods grouped by their resolved port list (one slice each).
	type group struct {
		ports []EndpointPort
		eps   []SliceEndpoint
	}
	var groups []*group
	for j := range pods {
		p := &pods[j]
		if p.Namespace != s.Namespace || p.Phase == "Succeeded" || p.Phase == "Failed" || !selectorMatches(s.Selector, p.Labels) {
			continue
		}
		var addrs []netip.Addr
		for _, ip := range p.IPs {
			if ip.IsValid() && !ip.Is4In6() && addressType(ip) == family {
				addrs = append(addrs, ip)
			}
		}
		if len(addrs) == 0 {
			continue
		}
		var ports []EndpointPort
		for _, sp := range s.Ports {
			port := sp.TargetPort
			if sp.TargetPortName != "" {
				port = 0
				for _, np := range p.NamedPorts {
					if np.Name == sp.TargetPortName && np.Protocol == sp.Protocol {
						port = np.Port
					}
				}
			}
			if port != 0 {
				ports = append(ports, EndpointPort{Name: sp.Name, Protocol: sp.Protocol, Port: port})
			}
		}
		ep := SliceEndpoint{Addresses: addrs, Ready: true, Serving: true, NodeName: p.NodeName, Pod: p.Namespace + "/" + p.Name}
		gi := slices.IndexFunc(groups, func(g *group) bool { return slices.Equal(g.ports, ports) })
		if gi < 0 {
			groups = append(groups, &group{ports: ports})
			gi = len(groups) - 1
		}
		groups[gi].eps = append(groups[gi].eps, ep)
	}
	infix := "l7gate"
	if family == "IPv6" {
		infix = "l7gate6"
	}
	var out []EndpointSlice
	for n, g := range groups {
		name := fmt.Sprintf("%s-%s-%d", s.Name, infix, n)
		out = append(out, EndpointSlice{Ref: ObjectRef{File: s.Ref.File, Kind: "EndpointSlice", Namespace: s.Namespace, Name: name},
			Namespace: s.Namespace, Name: name, Service: s.Name, AddressType: family, Ports: g.ports, Endpoints: g.eps, Derived: true})
	}
	return out
}

// selectorMatches is a Service selector (equality on every key) against
// pod labels.
func selectorMatches(sel, labels map[string]string) bool {
	for k, v := range sel {
		if lv, ok := labels[k]; !ok || lv != v {
			return false
		}
	}
	return true
}

func summarizeService(file string, s *Service) string {
	ips := make([]string, len(s.ClusterIPs))
	for i, ip := range s.ClusterIPs {
		ips[i] = ip.String()
	}
	ports := make([]string, len(s.Ports))
	for i, p := range s.Ports {
		ports[i] = fmt.Sprintf("%d/%s", p.Port, p.Protocol)
	}
	sel := "no selector"
	if len(s.Selector) > 0 {
		var kv []string
		for _, k := range slices.Sorted(maps.Keys(s.Selector)) {
			kv = append(kv, k+"="+s.Selector[k])
		}
		sel = "selector " + strings.Join(kv, ",")
	}
	ip := "no clusterIP"
	if len(ips) > 0 {
		ip = "clusterIP " + strings.Join(ips, ",")
	}
	return fmt.Sprintf("%s: %s: %s, ports [%s], %s", file, s.Ref, ip, strings.Join(ports, " "), sel)
}

// resolveToServices returns objs with every toServices entry resolved as
// Cilium resolves it (pkg/policy/k8s/service.go): each Service it matches
// adds, to the entry's section, the Service's selector as an endpoint
// selector scoped to the Service's namespace, or — for a Service without
// a selector — its endpoints' addresses as CIDRs (which, like every CIDR
// rule, never select pods). Deny sections are resolved too (Cilium leaves
// toServices in egressDeny unresolved, i.e. denying nothing; l7gate denies
// what the rule names). A toServices entry that matches no Service selects
// nothing (warning). objs is not modified: policies with toServices are
// copied.
func (c *computer) resolveToServices(objs *Objects) *Objects {
	var out *Objects
	byService := slicesByService(objs)
	for pi := range objs.Policies {
		pol := &objs.Policies[pi]
		if !policyHasServices(pol) {
			continue
		}
		if out == nil {
			cp := *objs
			cp.Policies = slices.Clone(objs.Policies)
			out = &cp
		}
		np := *pol
		np.Rules = slices.Clone(pol.Rules)
		for ri := range np.Rules {
			r := &np.Rules[ri]
			for _, lists := range []*[2][]Section{&r.Allow, &r.Deny} {
				for d := range lists {
					if !sectionsHaveServices(lists[d]) {
						continue
					}
					lists[d] = slices.Clone(lists[d])
					for si := range lists[d] {
						sec := &lists[d][si]
						if len(sec.Peers.Services) == 0 {
							continue
						}
						sec.Peers.Selectors = slices.Clone(sec.Peers.Selectors)
						sec.Peers.CIDRs = slices.Clone(sec.Peers.CIDRs)
						for _, ref := range sec.Peers.Services {
							matched := 0
							for i := range objs.Services {
								svc := &objs.Services[i]
								if !ref.Matches(svc) {
									continue
								}
								matched++
								if len(svc.Selector) > 0 {
									sec.Peers.Selectors = append(sec.Peers.Selectors, serviceEndpointSelector(svc))
									continue
								}
								for _, a := range serviceAddresses(byService[svc.Namespace+"/"+svc.Name]) {
									sec.Peers.CIDRs = append(sec.Peers.CIDRs, CIDRSelector{Prefix: netip.PrefixFrom(a, a.BitLen())})
								}
							}
							if matched == 0 {
								c.warnf("%s %s: toServices selects no Service (it allows or denies nothing until one exists)", pol.Name(), ref.Path)
							}
						}
					}
				}
			}
		}
		out.Policies[pi] = np
	}
	if out == nil {
		return objs
	}
	return out
}

func policyHasServices(p *Policy) bool {
	for _, r := range p.Rules {
		for d := range 2 {
			if sectionsHaveServices(r.Allow[d]) || sectionsHaveServices(r.Deny[d]) {
				return true
			}
		}
	}
	return false
}

func sectionsHaveServices(ss []Section) bool {
	return slices.ContainsFunc(ss, func(s Section) bool { return len(s.Peers.Services) > 0 })
}

// serviceEndpointSelector is the endpoint selector a Service's selector
// stands for: its labels (source k8s) in the Service's namespace.
func serviceEndpointSelector(svc *Service) Selector {
	var sel Selector
	for _, k := range slices.Sorted(maps.Keys(svc.Selector)) {
		_, key := parseLabelKey(k)
		sel.Requirements = append(sel.Requirements, Requirement{Source: SourceK8s, Key: key, Operator: OpIn, Values: []string{svc.Selector[k]}})
	}
	return sel.withRequirement(namespaceRequirement(svc.Namespace))
}
