package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/l7gate/l7gate/flow"
)

// TracePeer describes one side of a traced flow: a pod (Labels and
// Namespace), an address (CIDR: the ipcache decides its identity, so the
// address of a pod among the inputs is that pod), or an entity.
type TracePeer struct {
	Labels    map[string]string
	Namespace string
	Addr      netip.Addr
	Entity    string
	// Service ("namespace/name", destinations only) traces the flow to
	// each backend the Service's port (the request's DPort) resolves to,
	// as socket load balancing sends it.
	Service string
	// Family ("IPv4" or "IPv6", with Service only) picks the Service's
	// ClusterIP of that family, and so that family's backends; empty: its
	// first ClusterIP (IPv4 before IPv6).
	Family string
}

// TraceRequest is a flow (and optionally one L7 request) to trace.
type TraceRequest struct {
	Src, Dst TracePeer
	Protocol Protocol
	DPort    uint16
	HTTP     *HTTPRequest
	Kafka    *KafkaRequest
	// DNSName is a DNS query's name (rules.dns on a redirected port).
	DNSName string
	// DstFQDN: the destination is this DNS name, resolved through
	// Options.FQDNCache (Dst is ignored). An uncached name is traced as
	// world: toFQDNs select nothing until a DNS answer is seen.
	DstFQDN string
	// Options are the agent's compute options (zero: the defaults).
	Options Options
}

// TraceParty is how the trace resolved a side.
type TraceParty struct {
	Identity Identity `json:"identity"`
	Labels   []string `json:"labels"`
	// Endpoint: a local endpoint whose policy applies.
	Endpoint bool `json:"endpoint"`
}

// L7Trace is the L7 part of a direction's trace.
type L7Trace struct {
	Parser       string       `json:"parser"`
	Evaluated    bool         `json:"evaluated"`
	Verdict      Decision     `json:"verdict,omitempty"`
	DecidedBy    []Provenance `json:"decidedBy,omitempty"`
	DeniedTopics []string     `json:"deniedTopics,omitempty"`
	// Shadowed names the L7 rules for this peer that did not decide
	// because an allow without L7 rules (an L3-only allow, or an L4 allow
	// naming the port) lets the peer send any request here.
	Shadowed []Provenance `json:"shadowed,omitempty"`
	Note     string       `json:"note,omitempty"`
}

// DirectionTrace is the trace of the sender's egress or the receiver's
// ingress.
type DirectionTrace struct {
	// Applies is false when that side is not a local endpoint (world, a
	// CIDR, an entity): no policy of ours applies there.
	Applies   bool         `json:"applies"`
	Enforced  bool         `json:"enforced"`
	Verdict   Decision     `json:"verdict"`
	L4        Decision     `json:"l4"`
	L7        *L7Trace     `json:"l7,omitempty"`
	DecidedBy []Provenance `json:"decidedBy"`
}

// TraceResult is the outcome of Trace.
type TraceResult struct {
	Verdict     Decision       `json:"verdict"`
	Source      TraceParty     `json:"source"`
	Destination TraceParty     `json:"destination"`
	Protocol    Protocol       `json:"protocol"`
	DPort       uint16         `json:"dport"`
	Egress      DirectionTrace `json:"egress"`
	Ingress     DirectionTrace `json:"ingress"`
	DecidedBy   []Provenance   `json:"decidedBy"`
	FQDN        *FQDNTrace     `json:"fqdn,omitempty"`
	Warnings    []string       `json:"warnings,omitempty"`
	// Service: the destination was a Service; Destination, Egress and
	// Ingress are those of one backend (the first denied one, else the
	// first), Verdict is allowed only when every backend is.
	Service *ServiceTrace `json:"service,omitempty"`
}

// ServiceTrace is how a traced Service resolved.
type ServiceTrace struct {
	Service  string         `json:"service"`
	Frontend netip.AddrPort `json:"frontend"`
	State    string         `json:"state"`
	Backends []BackendTrace `json:"backends"`
	Note     string         `json:"note,omitempty"`
}

// BackendTrace is the verdict towards one backend of a traced Service.
type BackendTrace struct {
	Backend     netip.AddrPort `json:"backend"`
	Pod         string         `json:"pod,omitempty"`
	Destination TraceParty     `json:"destination"`
	Verdict     Decision       `json:"verdict"`
	DecidedBy   []Provenance   `json:"decidedBy"`
}

// FQDNTrace says how --dst-fqdn resolved.
type FQDNTrace struct {
	Name string `json:"name"`
	// IPs are the cached addresses (the trace used the first).
	IPs []netip.Addr `json:"ips,omitempty"`
	// Selectors are the toFQDNs selectors (policy: selector) matching
	// the name.
	Selectors []string `json:"selectors,omitempty"`
	Note      string   `json:"note"`
}

const (
	traceSrcName = "l7gate-trace-source"
	traceDstName = "l7gate-trace-destination"
)

// Trace evaluates a flow against the policies in objs: the sender's egress
// and the receiver's ingress, at L3/L4 and, when the request carries one,
// at L7.
func Trace(objs *Objects, req TraceRequest) (*TraceResult, error) {
	if req.Protocol == ProtoAny {
		req.Protocol = ProtoTCP
		if req.DNSName != "" {
			req.Protocol = ProtoUDP
		}
	}
	var fqdn *FQDNTrace
	if req.DstFQDN != "" {
		var err error
		if fqdn, err = traceFQDN(objs, &req); err != nil {
			return nil, err
		}
	}
	if req.Dst.Service != "" {
		return traceService(objs, req)
	}
	if req.DstFQDN == "" && req.Dst.Addr.IsValid() && req.Dst.Labels == nil && req.Dst.Entity == "" && req.Dst.Family == "" {
		return traceClusterIP(objs, req, fqdn)
	}
	return traceFlow(objs, req, fqdn)
}

// traceClusterIP traces a flow to an address: a Service's ClusterIP with
// one of its ports is traced as that Service (traceService, through the
// ClusterIP's family), as socket load balancing sends the connection to a
// backend; the result says so. A ClusterIP with a port the Service does
// not have is not load-balanced: traced as the address, with a note.
func traceClusterIP(objs *Objects, req TraceRequest, fqdn *FQDNTrace) (*TraceResult, error) {
	addr := req.Dst.Addr.Unmap()
	fronts, _ := ServiceFrontends(objs, "")
	var svc string
	var ports []string
	for _, f := range fronts {
		if f.Address.Addr() != addr || (svc != "" && f.Service != svc) {
			continue
		}
		svc = f.Service
		ports = append(ports, fmt.Sprintf("%d/%s", f.Address.Port(), f.Protocol))
		if f.Address.Port() == req.DPort && f.Protocol == req.Protocol {
			one := req
			one.Dst = TracePeer{Service: f.Service, Family: addressType(addr)}
			res, err := traceService(objs, one)
			if err != nil {
				return nil, err
			}
			res.Warnings = append(res.Warnings, fmt.Sprintf("%s is the ClusterIP of Service %s: traced to its backends, as socket load balancing sends a connection to %s (the same as --dst-service %s --family %s)",
				addr, f.Service, netip.AddrPortFrom(addr, req.DPort), f.Service, strings.ToLower(addressType(addr))))
			return res, nil
		}
	}
	res, err := traceFlow(objs, req, fqdn)
	if err != nil || svc == "" {
		return res, err
	}
	slices.Sort(ports)
	res.Warnings = append(res.Warnings, fmt.Sprintf("%s is the ClusterIP of Service %s, which has no port %d/%s (it has %s): not load-balanced, traced as the address itself",
		addr, svc, req.DPort, req.Protocol, strings.Join(slices.Compact(ports), ", ")))
	return res, nil
}

// traceFlow traces a flow between two resolved peers (no Service).
func traceFlow(objs *Objects, req TraceRequest, fqdn *FQDNTrace) (*TraceResult, error) {
	if req.Dst.Family != "" && req.Dst.Service == "" {
		return nil, errors.New("destination: a family is only given with a Service")
	}
	if req.Src.Service != "" || req.Src.Family != "" {
		return nil, errors.New("source: a Service (and its family) is only a destination")
	}
	work := *objs
	work.Pods = slices.Clone(objs.Pods)
	for _, side := range []struct {
		p    TracePeer
		name string
	}{{req.Src, traceSrcName}, {req.Dst, traceDstName}} {
		if err := side.p.validate(); err != nil {
			return nil, fmt.Errorf("%s: %w", side.name, err)
		}
		if side.p.Labels != nil {
			ns := side.p.Namespace
			if ns == "" {
				ns = "default"
			}
			work.Pods = append(work.Pods, Pod{Namespace: ns, Name: side.name, Labels: side.p.Labels, ServiceAccount: "default"})
		}
	}
	snap, err := ComputeWith(&work, NewIdentityAllocator(), req.Options)
	if err != nil {
		return nil, fmt.Errorf("compute: %w", err)
	}
	res := &TraceResult{Protocol: req.Protocol, DPort: req.DPort, Warnings: snap.Warnings, FQDN: fqdn}
	res.Source = resolveParty(snap, req.Src, traceSrcName)
	res.Destination = resolveParty(snap, req.Dst, traceDstName)

	res.Egress = traceDirection(snap, res.Source, Egress, res.Destination.Identity, &req)
	res.Ingress = traceDirection(snap, res.Destination, Ingress, res.Source.Identity, &req)
	res.combine()
	return res, nil
}

// combine sets the flow's verdict from its two directions: denied wins,
// then audit (a policy in audit mode would deny: forwarded), else allowed;
// DecidedBy names the rules behind the verdict that won.
func (res *TraceResult) combine() {
	res.Verdict = DecisionAllowed
	for _, d := range []*DirectionTrace{&res.Egress, &res.Ingress} {
		v := CombineDecisions(d.Verdict, DecisionAllowed)
		switch {
		case v == res.Verdict:
			res.DecidedBy = append(res.DecidedBy, d.DecidedBy...)
		case CombineDecisions(v, res.Verdict) == v:
			res.Verdict, res.DecidedBy = v, slices.Clone(d.DecidedBy)
		}
	}
	if res.DecidedBy == nil {
		res.DecidedBy = []Provenance{}
	}
}

func (p TracePeer) validate() error {
	n := 0
	if p.Labels != nil {
		n++
	}
	if p.Addr.IsValid() {
		n++
	}
	if p.Entity != "" {
		n++
		if _, ok := entityIdentity(p.Entity); !ok {
			return fmt.Errorf("unknown entity %q (want world, host, remote-node, kube-apiserver, init, health, unmanaged or ingress)", p.Entity)
		}
	}
	if n != 1 {
		return errors.New("give exactly one of labels, an address or an entity")
	}
	return nil
}

func resolveParty(snap *Snapshot, p TracePeer, name string) TraceParty {
	var id Identity
	switch {
	case p.Labels != nil:
		for _, ep := range snap.Endpoints {
			if ep.Name == name {
				id = ep.Identity
			}
		}
	case p.Addr.IsValid():
		id = snap.IdentityOf(p.Addr.Unmap())
	default:
		id, _ = entityIdentity(p.Entity)
	}
	return TraceParty{Identity: id, Labels: snap.Labels(id).Strings(), Endpoint: snap.Policy(id) != nil}
}

func traceDirection(snap *Snapshot, self TraceParty, dir Direction, peer Identity, req *TraceRequest) DirectionTrace {
	out := DirectionTrace{Verdict: DecisionAllowed, L4: DecisionAllowed, DecidedBy: []Provenance{}}
	pol := snap.Policy(self.Identity)
	if pol == nil {
		return out
	}
	out.Applies = true
	l4 := pol.Direction(dir).EvaluateL4(peer, req.Protocol, req.DPort)
	out.Enforced = l4.Enforced
	out.L4 = l4.Decision
	out.DecidedBy = append(out.DecidedBy, l4.DecidedBy...)
	switch l4.Decision {
	case DecisionDenied, DecisionAudit:
		out.Verdict = l4.Decision
		return out
	case DecisionAllowed:
		return out
	}
	// redirected: the L7 rule set decides
	l7 := &L7Trace{Parser: l4.Parser}
	out.L7 = l7
	if l4.L7 == nil {
		// cannot happen with a consistent IR; fail closed
		l7.Evaluated, l7.Verdict = true, DecisionDenied
		out.Verdict = DecisionDenied
		return out
	}
	switch {
	case l4.Parser == ParserHTTP && req.HTTP != nil:
		r, err := l4.L7.EvaluateHTTP(peer, req.HTTP)
		if err != nil {
			l7.Note = err.Error()
			l7.Evaluated, l7.Verdict = true, DecisionDenied
			out.Verdict = DecisionDenied
			return out
		}
		l7.Evaluated, l7.Verdict, l7.DecidedBy, l7.Shadowed = true, r.Decision, r.DecidedBy, r.Shadowed
	case l4.Parser == ParserDNS && req.DNSName != "":
		r := l4.L7.EvaluateDNS(peer, req.DNSName)
		l7.Evaluated, l7.Verdict, l7.DecidedBy, l7.Shadowed = true, r.Decision, r.DecidedBy, r.Shadowed
		if _, err := NormalizeDNSName(req.DNSName); err != nil {
			l7.Note = fmt.Sprintf("%q matches no DNS rule: %v", req.DNSName, err)
		}
	case l4.Parser == ParserKafka && req.Kafka != nil:
		r := l4.L7.EvaluateKafka(peer, req.Kafka)
		l7.Evaluated, l7.Verdict, l7.DecidedBy, l7.DeniedTopics, l7.Shadowed = true, r.Decision, r.DecidedBy, r.DeniedTopics, r.Shadowed
	default:
		l7.Note = fmt.Sprintf("L7 rules (%s) apply on this port; give a %s request to evaluate them", l4.Parser, l4.Parser)
		return out
	}
	if l7.Verdict == DecisionDenied && flow.AllAudit(l7.DecidedBy) {
		l7.Verdict = DecisionAudit
	}
	out.Verdict = l7.Verdict
	out.DecidedBy = l7.DecidedBy
	if len(l4.Audited) > 0 && out.Verdict != DecisionDenied {
		// audited at L4 by a deny rule in audit mode, and forwarded
		out.Verdict = DecisionAudit
		if l7.Verdict != DecisionAudit {
			out.DecidedBy = nil
		}
		out.DecidedBy = sortedProvenance(append(slices.Clone(out.DecidedBy), l4.Audited...))
	}
	return out
}

// traceFQDN resolves req.DstFQDN through the FQDN cache and sets req.Dst.
func traceFQDN(objs *Objects, req *TraceRequest) (*FQDNTrace, error) {
	name, err := NormalizeDNSName(req.DstFQDN)
	if err != nil {
		return nil, fmt.Errorf("--dst-fqdn %q: %w", req.DstFQDN, err)
	}
	t := &FQDNTrace{Name: name}
	for _, pol := range objs.Policies {
		for _, r := range pol.Rules {
			for _, s := range r.Allow[Egress] {
				for i := range s.Peers.FQDNs {
					if sel := &s.Peers.FQDNs[i]; sel.Matches(name) {
						t.Selectors = append(t.Selectors, pol.Name()+" "+s.Path+": "+sel.String())
					}
				}
			}
		}
	}
	slices.Sort(t.Selectors)
	t.Selectors = slices.Compact(t.Selectors)
	if req.Options.FQDNCache != nil {
		for _, n := range req.Options.FQDNCache.FQDNNames() {
			if nn, err := NormalizeDNSName(n.Name); err == nil && nn == name {
				t.IPs = append(t.IPs, n.IPs...)
			}
		}
	}
	slices.SortFunc(t.IPs, netip.Addr.Compare)
	t.IPs = slices.Compact(t.IPs)
	if len(t.IPs) == 0 {
		req.Dst = TracePeer{Entity: "world"}
		t.Note = "not in the FQDN cache: its addresses are world (or CIDR identities) to policy, and toFQDNs selectors select nothing until the DNS proxy sees an answer for it (fail closed)"
		return t, nil
	}
	req.Dst = TracePeer{Addr: t.IPs[0]}
	t.Note = fmt.Sprintf("from the FQDN cache given: %d address(es); traced to %s", len(t.IPs), t.IPs[0])
	return t, nil
}

// traceService traces a flow to a Service's port: to each backend socket
// load balancing may pick (ServiceFrontends without a node: every
// endpoint, also for internalTrafficPolicy Local).
// A dual-stack Service is traced through its ClusterIP of Dst.Family, by
// default its first one (IPv4 before IPv6); its IPv6 ClusterIP's backends
// are the same pods' IPv6 addresses, less any pod without one.
func traceService(objs *Objects, req TraceRequest) (*TraceResult, error) {
	ns, name, ok := strings.Cut(req.Dst.Service, "/")
	if !ok || ns == "" || name == "" {
		return nil, fmt.Errorf("destination service %q: want namespace/name", req.Dst.Service)
	}
	if req.Dst.Labels != nil || req.Dst.Addr.IsValid() || req.Dst.Entity != "" {
		return nil, errors.New("destination: give a Service or one of labels, an address or an entity")
	}
	if req.Dst.Family != "" && req.Dst.Family != "IPv4" && req.Dst.Family != "IPv6" {
		return nil, fmt.Errorf("destination service %s: family %q: want IPv4 or IPv6", req.Dst.Service, req.Dst.Family)
	}
	fronts, _ := ServiceFrontends(objs, "")
	var ports, others []string
	var f *ServiceFrontend
	for i := range fronts {
		if fronts[i].Service != req.Dst.Service {
			continue
		}
		if req.Dst.Family != "" && addressType(fronts[i].Address.Addr()) != req.Dst.Family {
			others = append(others, fronts[i].Address.Addr().String())
			continue
		}
		ports = append(ports, fmt.Sprintf("%d/%s", fronts[i].Address.Port(), fronts[i].Protocol))
		if fronts[i].Address.Port() == req.DPort && fronts[i].Protocol == req.Protocol && f == nil {
			f = &fronts[i]
		}
	}
	if f == nil {
		if len(ports) == 0 && len(others) > 0 {
			return nil, fmt.Errorf("service %s has no %s ClusterIP (it has %s)", req.Dst.Service, req.Dst.Family, strings.Join(slices.Compact(others), ", "))
		}
		if len(ports) == 0 {
			return nil, fmt.Errorf("service %s: not found, or without a load-balanced ClusterIP (TCP/UDP ports)", req.Dst.Service)
		}
		slices.Sort(ports)
		return nil, fmt.Errorf("service %s has no port %d/%s (it has %s)", req.Dst.Service, req.DPort, req.Protocol, strings.Join(slices.Compact(ports), ", "))
	}
	st := &ServiceTrace{Service: f.Service, Frontend: f.Address, State: f.State, Backends: []BackendTrace{}}
	if len(f.Backends) == 0 {
		st.Note = "no backends: connect() is refused (ECONNREFUSED)"
		return &TraceResult{Verdict: DecisionDenied, Protocol: req.Protocol, DPort: req.DPort, DecidedBy: []Provenance{}, Service: st}, nil
	}
	var first, denied *TraceResult
	for _, b := range f.Backends {
		one := req
		one.Dst = TracePeer{Addr: b.Address.Addr()}
		one.DPort = b.Address.Port()
		// A backend is traced as its address, never as a Service again.
		r, err := traceFlow(objs, one, nil)
		if err != nil {
			return nil, err
		}
		st.Backends = append(st.Backends, BackendTrace{Backend: b.Address, Pod: b.Pod, Destination: r.Destination, Verdict: r.Verdict, DecidedBy: r.DecidedBy})
		if first == nil {
			first = r
		}
		if denied == nil && r.Verdict == DecisionDenied {
			denied = r
		}
	}
	out := first
	if denied != nil {
		out = denied
		if len(st.Backends) > 1 && first.Verdict != DecisionDenied {
			st.Note = "some backends are denied: whether a connection passes depends on the backend it is given"
		}
	}
	out.Service = st
	return out, nil
}
