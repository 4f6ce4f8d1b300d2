package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// normalizer collects errors and warnings while turning one wire object
// into the model.
type normalizer struct {
	ref   ObjectRef
	errs  []error
	warns []Warning
	// namespace scope for selectors; "" for clusterwide policies.
	namespace string
}

func (n *normalizer) fail(err error) { n.errs = append(n.errs, err) }

func (n *normalizer) warn(p fieldPath, format string, args ...any) {
	n.warns = append(n.warns, Warning{Object: n.ref, Path: string(p), Message: fmt.Sprintf(format, args...)})
}

func normalizeCNP(w *wireCNP, ref ObjectRef, clusterwide bool) (*Policy, []Warning, []error) {
	n := &normalizer{ref: ref}
	kind := KindCNP
	if clusterwide {
		kind = KindCCNP
	} else {
		n.namespace = ref.Namespace
	}
	p := &Policy{Ref: ref, Kind: kind}
	if ref.Name == "" {
		n.fail(fieldPath("metadata.name").errorf("missing"))
	}
	if w.Spec == nil && len(w.Specs) == 0 {
		n.fail(fieldPath("spec").errorf("missing: a policy needs spec or specs"))
	}
	if w.Spec != nil {
		if r, ok := n.rule(w.Spec, "spec"); ok {
			p.Rules = append(p.Rules, r)
		}
	}
	for i, s := range w.Specs {
		if s == nil {
			n.fail(fieldPath("specs").index(i).errorf("must not be null"))
			continue
		}
		if r, ok := n.rule(s, fieldPath("specs").index(i)); ok {
			p.Rules = append(p.Rules, r)
		}
	}
	return p, n.warns, n.errs
}

func (n *normalizer) rule(w *wireRule, p fieldPath) (Rule, bool) {
	r := Rule{Path: string(p)}
	nerr := len(n.errs)
	switch {
	case w.NodeSelector != nil && w.EndpointSelector != nil:
		n.fail(p.errorf("endpointSelector and nodeSelector are mutually exclusive"))
		return r, false
	case w.NodeSelector != nil:
		if n.namespace != "" {
			n.fail(p.child("nodeSelector").errorf("only allowed in CiliumClusterwideNetworkPolicy"))
			return r, false
		}
		n.warn(p.child("nodeSelector"), "unsupported: host policies (nodeSelector) are not enforced by l7gate; this rule is ignored")
		return r, false
	case w.EndpointSelector == nil:
		n.fail(p.child("endpointSelector").errorf("missing"))
		return r, false
	}
	sel, err := compileSelector(w.EndpointSelector, "", SourceAny, p.child("endpointSelector"))
	if err != nil {
		n.fail(err)
	}
	if n.namespace != "" {
		sel = sel.withRequirement(namespaceRequirement(n.namespace))
	}
	r.Subject = sel
	if w.EnableDefaultDeny != nil {
		r.DefaultDeny[Ingress] = w.EnableDefaultDeny.Ingress
		r.DefaultDeny[Egress] = w.EnableDefaultDeny.Egress
	}
	for i, s := range w.Ingress {
		r.Allow[Ingress] = append(r.Allow[Ingress], n.section(ingressFields(&s), p.child("ingress").index(i), i, false))
	}
	for i, s := range w.IngressDeny {
		r.Deny[Ingress] = append(r.Deny[Ingress], n.section(ingressFields(&s), p.child("ingressDeny").index(i), i, true))
	}
	for i, s := range w.Egress {
		r.Allow[Egress] = append(r.Allow[Egress], n.section(egressFields(&s), p.child("egress").index(i), i, false))
	}
	for i, s := range w.EgressDeny {
		r.Deny[Egress] = append(r.Deny[Egress], n.section(egressFields(&s), p.child("egressDeny").index(i), i, true))
	}
	return r, len(n.errs) == nerr
}

// peerSelector scopes a fromEndpoints/toEndpoints selector as Cilium
// does: a selector that names neither the pod namespace nor a reserved
// label selects pods of the policy's namespace (of any namespace for a
// clusterwide policy). A selector about namespaces — the pod namespace or
// namespace labels, with any operator — selects pods only: world, CIDR and
// other reserved identities have no namespace, so a negative requirement
// (NotIn, DoesNotExist) must not select them.
func (n *normalizer) peerSelector(sel Selector) Selector {
	switch {
	case sel.hasSource(SourceReserved):
		return sel
	case !sel.hasKey(LabelPodNamespace) && n.namespace != "":
		return sel.withRequirement(namespaceRequirement(n.namespace))
	}
	return sel.withRequirement(podNamespaceExists())
}

// podNamespaceExists requires the pod namespace label: pods only.
func podNamespaceExists() Requirement {
	return Requirement{Source: SourceK8s, Key: LabelPodNamespace, Operator: OpExists}
}

// sectionFields is the direction-neutral view of an ingress or egress entry.
type sectionFields struct {
	prefix      string // "from" or "to"
	endpoints   []LabelSelector
	requires    []LabelSelector
	cidrs       []string
	cidrSets    []wireCIDRRule
	entities    []string
	fqdns       []wireDNSRule
	services    []wireToService
	unsupported []namedField // peer fields l7gate does not support
	toPorts     []wirePortRule
	icmps       []wireICMPRule
	auth        any
}

type namedField struct {
	name string
	val  any
}

func ingressFields(s *wireIngress) sectionFields {
	return sectionFields{prefix: "from", endpoints: s.FromEndpoints, requires: s.FromRequires, cidrs: s.FromCIDR,
		cidrSets: s.FromCIDRSet, entities: s.FromEntities,
		unsupported: []namedField{{"fromGroups", s.FromGroups}, {"fromNodes", s.FromNodes}},
		toPorts:     s.ToPorts, icmps: s.ICMPs, auth: s.Authentication}
}

func egressFields(s *wireEgress) sectionFields {
	return sectionFields{prefix: "to", endpoints: s.ToEndpoints, requires: s.ToRequires, cidrs: s.ToCIDR,
		cidrSets: s.ToCIDRSet, entities: s.ToEntities, fqdns: s.ToFQDNs,
		services:    s.ToServices,
		unsupported: []namedField{{"toGroups", s.ToGroups}, {"toNodes", s.ToNodes}},
		toPorts:     s.ToPorts, icmps: s.ICMPs, auth: s.Authentication}
}

// section normalises one ingress/egress(/Deny) entry. Unsupported fields
// never widen access: in allow sections they make the section allow nothing
// (or contribute no peers); in deny sections they widen the deny.
func (n *normalizer) section(f sectionFields, p fieldPath, index int, deny bool) Section {
	s := Section{Path: string(p), Index: index}
	hasL3 := false
	for i, ls := range f.endpoints {
		fp := p.child(f.prefix + "Endpoints").index(i)
		sel, err := compileSelector(&ls, "", SourceAny, fp)
		if err != nil {
			n.fail(err)
			continue
		}
		hasL3 = true
		s.Peers.Selectors = append(s.Peers.Selectors, n.peerSelector(sel))
	}
	for i, c := range f.cidrs {
		hasL3 = true
		pfx, err := parseCIDR(c)
		if err != nil {
			n.fail(p.child(f.prefix+"CIDR").index(i).errorf("%w", err))
			continue
		}
		s.Peers.CIDRs = append(s.Peers.CIDRs, CIDRSelector{Prefix: pfx})
	}
	for i, c := range f.cidrSets {
		hasL3 = true
		fp := p.child(f.prefix + "CIDRSet").index(i)
		if c.CIDRGroupRef != "" || c.CIDRGroupSelector != nil {
			if deny {
				n.warn(fp, "unsupported: CiliumCIDRGroup references are not resolved; this deny applies to every peer")
				s.Peers.Any = true
			} else {
				n.warn(fp, "unsupported: CiliumCIDRGroup references are not resolved; this entry selects no peer")
			}
			continue
		}
		sel, err := cidrSelector(c.CIDR, c.Except, fp)
		if err != nil {
			n.fail(err)
			continue
		}
		s.Peers.CIDRs = append(s.Peers.CIDRs, sel)
	}
	for i, e := range f.entities {
		hasL3 = true
		if !validEntity(e) {
			n.fail(p.child(f.prefix+"Entities").index(i).errorf("unknown entity %q (want one of all, cluster, world, host, remote-node, kube-apiserver, init, health, unmanaged, ingress)", e))
			continue
		}
		if e == "all" {
			s.Peers.Any = true
			continue
		}
		if !slices.Contains(s.Peers.Entities, e) {
			s.Peers.Entities = append(s.Peers.Entities, e)
		}
	}
	slices.Sort(s.Peers.Entities)
	for i, d := range f.fqdns {
		hasL3 = true
		fp := p.child("toFQDNs").index(i)
		if deny {
			// Cilium has no toFQDNs in deny rules; never narrower than
			// "every peer".
			n.warn(fp, "unsupported: toFQDNs in a deny rule; this deny applies to every peer")
			s.Peers.Any = true
			continue
		}
		sel, err := compileDNSRule(d, fp)
		if err != nil {
			n.fail(err)
			continue
		}
		s.Peers.FQDNs = append(s.Peers.FQDNs, sel)
	}
	for i, ts := range f.services {
		hasL3 = true
		if sel, ok := n.toService(ts, p.child("toServices").index(i)); ok {
			s.Peers.Services = append(s.Peers.Services, sel)
		}
	}
	for _, u := range f.unsupported {
		if isEmptyValue(u.val) {
			continue
		}
		hasL3 = true
		if deny {
			n.warn(p.child(u.name), "unsupported: %s is not enforced by l7gate; this deny applies to every peer", u.name)
			s.Peers.Any = true
		} else {
			n.warn(p.child(u.name), "unsupported: %s is not enforced by l7gate; it selects no peer", u.name)
		}
	}
	if len(f.requires) > 0 {
		if deny {
			n.warn(p.child(f.prefix+"Requires"), "unsupported: %sRequires is ignored; this deny applies without it", f.prefix)
		} else {
			n.warn(p.child(f.prefix+"Requires"), "unsupported: %sRequires is not enforced by l7gate; this rule allows nothing", f.prefix)
			s.Dropped = f.prefix + "Requires is not supported"
		}
	}
	if !isEmptyValue(f.auth) {
		if deny {
			n.fail(p.child("authentication").errorf("not allowed in deny rules"))
		} else {
			n.warn(p.child("authentication"), "unsupported: mutual authentication is not provided by l7gate; this rule allows nothing")
			s.Dropped = "authentication is not supported"
		}
	}
	if f.toPorts != nil || f.icmps != nil {
		s.Ports = []PortRule{}
	}
	for i, pr := range f.toPorts {
		if f.prefix == "from" && !deny && pr.Rules != nil && len(pr.Rules.DNS) > 0 {
			// As Cilium: DNS rules are egress-only (the DNS proxy sees a
			// pod's queries, not a DNS server's).
			n.fail(p.child("toPorts").index(i).child("rules.dns").errorf("DNS rules are not allowed on ingress"))
			continue
		}
		if r, ok := n.portRule(pr, p.child("toPorts").index(i), deny); ok {
			s.Ports = append(s.Ports, r)
		}
	}
	for i, ic := range f.icmps {
		fp := p.child("icmps").index(i)
		r := PortRule{Path: string(fp)}
		for j, fl := range ic.Fields {
			ffp := fp.child("fields").index(j)
			proto := ProtoICMP
			switch strings.ToLower(fl.Family) {
			case "", "ipv4":
			case "ipv6":
				proto = ProtoICMPv6
			default:
				n.fail(ffp.child("family").errorf("unknown family %q (want IPv4 or IPv6)", fl.Family))
				continue
			}
			t, err := parseICMPType(string(fl.Type), proto)
			if err != nil {
				n.fail(ffp.child("type").errorf("%w", err))
				continue
			}
			r.Ports = append(r.Ports, PortSpec{Protocol: proto, Port: uint16(t), EndPort: uint16(t)})
		}
		s.Ports = append(s.Ports, r)
	}
	if !hasL3 {
		// No peer field: with toPorts or icmps it is an L4-only rule that
		// applies to every peer; an entirely empty entry selects nothing
		// (Cilium's "ingress: [{}]" default-deny idiom).
		s.Peers.Any = s.Ports != nil
	}
	return s
}

func isEmptyValue(v any) bool {
	switch x := v.(type) {
	case nil:
		return true
	case []any:
		return len(x) == 0
	case map[string]any:
		return len(x) == 0
	}
	return false
}

func parseCIDR(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("invalid CIDR %q", s)
		}
		if p.Masked() != p {
			return netip.Prefix{}, fmt.Errorf("invalid CIDR %q: host bits set (did you mean %s?)", s, p.Masked())
		}
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("invalid CIDR %q", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func cidrSelector(cidr string, except []string, p fieldPath) (CIDRSelector, error) {
	if cidr == "" {
		return CIDRSelector{}, p.child("cidr").errorf("missing")
	}
	pfx, err := parseCIDR(cidr)
	if err != nil {
		return CIDRSelector{}, p.child("cidr").errorf("%w", err)
	}
	sel := CIDRSelector{Prefix: pfx}
	for i, e := range except {
		ep, err := parseCIDR(e)
		if err != nil {
			return sel, p.child("except").index(i).errorf("%w", err)
		}
		if ep.Addr().Is4() != pfx.Addr().Is4() || ep.Bits() < pfx.Bits() || !pfx.Contains(ep.Addr()) {
			return sel, p.child("except").index(i).errorf("%s is not inside %s", ep, pfx)
		}
		sel.Except = append(sel.Except, ep)
	}
	slices.SortFunc(sel.Except, func(a, b netip.Prefix) int { return comparePrefix(a, b) })
	sel.Except = slices.Compact(sel.Except)
	return sel, nil
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// validPortName checks an IANA service name as Kubernetes does for
// container port names.
func validPortName(s string) bool {
	if len(s) == 0 || len(s) > 15 || s[0] == '-' || s[len(s)-1] == '-' || strings.Contains(s, "--") {
		return false
	}
	letter := false
	for _, c := range s {
		switch {
		case c >= 'a' && c <= 'z':
			letter = true
		case c >= '0' && c <= '9', c == '-':
		default:
			return false
		}
	}
	return letter
}

func (n *normalizer) portRule(w wirePortRule, p fieldPath, deny bool) (PortRule, bool) {
	r := PortRule{Path: string(p)}
	if len(w.Ports) == 0 {
		n.fail(p.child("ports").errorf("at least one port is required"))
		return r, false
	}
	ok := true
	for i, pp := range w.Ports {
		spec, err := parsePortProtocol(string(pp.Port), pp.EndPort, pp.Protocol, p.child("ports").index(i))
		if err != nil {
			n.fail(err)
			ok = false
			continue
		}
		r.Ports = append(r.Ports, spec)
	}
	for _, f := range []namedField{{"terminatingTLS", w.TerminatingTLS}, {"originatingTLS", w.OriginatingTLS}, {"listener", w.Listener}} {
		if isEmptyValue(f.val) {
			continue
		}
		if deny {
			n.fail(p.child(f.name).errorf("not allowed in deny rules"))
			return r, false
		}
		n.warn(p.child(f.name), "unsupported: %s is not provided by l7gate; this port rule allows nothing", f.name)
		r.Dropped = f.name + " is not supported"
	}
	if len(w.ServerNames) > 0 {
		if deny {
			n.fail(p.child("serverNames").errorf("not allowed in deny rules"))
			return r, false
		}
		n.warn(p.child("serverNames"), "unsupported: TLS server name matching is not provided by l7gate; this port rule allows nothing")
		r.Dropped = "serverNames is not supported"
	}
	if w.Rules != nil {
		if deny {
			n.fail(p.child("rules").errorf("L7 rules are not allowed in deny rules"))
			return r, false
		}
		l7, good := n.l7Rules(w.Rules, p.child("rules"))
		if !good {
			return r, false
		}
		if l7 != nil {
			var extra []PortSpec
			for i := range r.Ports {
				ps := &r.Ports[i]
				pp := p.child("ports").index(i)
				if ps.Port == 0 && ps.Name == "" {
					n.fail(pp.child("port").errorf("L7 rules need a specific port, not all ports"))
					ok = false
				}
				if ps.EndPort != ps.Port && ps.Name == "" {
					n.fail(pp.child("endPort").errorf("L7 rules cannot apply to a port range"))
					ok = false
				}
				if l7.Parser == ParserDNS {
					// DNS runs over UDP and TCP: ANY means both.
					switch ps.Protocol {
					case ProtoTCP, ProtoUDP:
					case ProtoAny:
						ps.Protocol = ProtoUDP
						tcp := *ps
						tcp.Protocol = ProtoTCP
						extra = append(extra, tcp)
					default:
						n.fail(pp.child("protocol").errorf("DNS rules need UDP, TCP or ANY, not %s", ps.Protocol))
						ok = false
					}
					continue
				}
				switch ps.Protocol {
				case ProtoTCP:
				case ProtoAny:
					if w.Ports[i].Protocol != "" {
						n.warn(pp.child("protocol"), "L7 rules apply to TCP only; UDP and SCTP on this port are not allowed by this rule")
					}
					ps.Protocol = ProtoTCP
				default:
					n.fail(pp.child("protocol").errorf("L7 rules need TCP, not %s", ps.Protocol))
					ok = false
				}
			}
			r.Ports = append(r.Ports, extra...)
			r.L7 = l7
		}
	}
	return r, ok
}

func parsePortProtocol(port string, endPort int32, proto string, p fieldPath) (PortSpec, error) {
	var spec PortSpec
	pr, err := ParseProtocol(proto)
	if err != nil || pr == ProtoICMP || pr == ProtoICMPv6 {
		if err == nil {
			err = fmt.Errorf("use icmps for ICMP, not protocol %s", proto)
		}
		return spec, p.child("protocol").errorf("%w", err)
	}
	spec.Protocol = pr
	switch {
	case port == "":
	case port[0] >= '0' && port[0] <= '9':
		v, err := strconv.ParseUint(port, 10, 16)
		if err != nil {
			return spec, p.child("port").errorf("invalid port %q: want 0-65535 or a port name", port)
		}
		spec.Port = uint16(v)
	default:
		if !validPortName(port) {
			return spec, p.child("port").errorf("invalid port name %q: want 1-15 lowercase letters, digits and '-'", port)
		}
		spec.Name = port
	}
	spec.EndPort = spec.Port
	if endPort != 0 {
		switch {
		case spec.Name != "":
			return spec, p.child("endPort").errorf("not allowed with a named port")
		case spec.Port == 0:
			return spec, p.child("endPort").errorf("needs a non-zero port")
		case endPort < int32(spec.Port) || endPort > 65535:
			return spec, p.child("endPort").errorf("%d must be between port %d and 65535", endPort, spec.Port)
		}
		spec.EndPort = uint16(endPort)
	}
	return spec, nil
}

func (n *normalizer) l7Rules(w *wireL7Rules, p fieldPath) (*L7Rules, bool) {
	kinds := 0
	if len(w.HTTP) > 0 {
		kinds++
	}
	if len(w.Kafka) > 0 {
		kinds++
	}
	if len(w.DNS) > 0 {
		kinds++
	}
	if w.L7Proto != "" || len(w.L7) > 0 {
		kinds++
	}
	if kinds > 1 {
		n.fail(p.errorf("only one of http, kafka, dns or l7proto/l7 may be set"))
		return nil, false
	}
	switch {
	case len(w.HTTP) > 0:
		l7 := &L7Rules{Parser: ParserHTTP}
		ok := true
		for i, h := range w.HTTP {
			r, warns, err := compileHTTPRule(h, p.child("http").index(i))
			if err != nil {
				n.fail(err)
				ok = false
				continue
			}
			for _, wr := range warns {
				n.warn(wr.path, "%s", wr.msg)
			}
			l7.HTTP = append(l7.HTTP, r)
		}
		return l7, ok
	case len(w.Kafka) > 0:
		l7 := &L7Rules{Parser: ParserKafka}
		ok := true
		for i, k := range w.Kafka {
			r, err := compileKafkaRule(k, p.child("kafka").index(i))
			if err != nil {
				n.fail(err)
				ok = false
				continue
			}
			l7.Kafka = append(l7.Kafka, r)
		}
		return l7, ok
	case len(w.DNS) > 0:
		l7 := &L7Rules{Parser: ParserDNS}
		ok := true
		for i, d := range w.DNS {
			sel, err := compileDNSRule(d, p.child("dns").index(i))
			if err != nil {
				n.fail(err)
				ok = false
				continue
			}
			l7.DNS = append(l7.DNS, sel)
		}
		return l7, ok
	case w.L7Proto != "" || len(w.L7) > 0:
		if w.L7Proto == "" {
			n.fail(p.child("l7proto").errorf("missing: l7 rules need l7proto to name their parser"))
			return nil, false
		}
		if w.L7Proto == ParserHTTP || w.L7Proto == ParserKafka || w.L7Proto == ParserDNS {
			n.fail(p.child("l7proto").errorf("%q has its own rules field: use rules.%s", w.L7Proto, w.L7Proto))
			return nil, false
		}
		n.warn(p.child("l7proto"), "not enforced: l7gate's proxies parse http and kafka only; the datapath drops connections redirected to %q (fail closed)", w.L7Proto)
		l7 := &L7Rules{Parser: w.L7Proto, Generic: w.L7}
		if l7.Generic == nil {
			l7.Generic = []map[string]string{}
		}
		return l7, true
	}
	return nil, true
}

// parseICMPType accepts a number (0-255) or one of the names Cilium
// accepts for the family (CamelCase, exact).
func parseICMPType(s string, proto Protocol) (uint8, error) {
	if v, err := strconv.ParseUint(s, 10, 8); err == nil {
		return uint8(v), nil
	}
	names4 := map[string]uint8{"EchoReply": 0, "DestinationUnreachable": 3, "Redirect": 5, "Echo": 8, "EchoRequest": 8,
		"RouterAdvertisement": 9, "RouterSelection": 10, "TimeExceeded": 11, "ParameterProblem": 12, "Timestamp": 13,
		"TimestampReply": 14, "Photuris": 40, "ExtendedEchoRequest": 42, "ExtendedEchoReply": 43}
	names6 := map[string]uint8{"DestinationUnreachable": 1, "PacketTooBig": 2, "TimeExceeded": 3, "ParameterProblem": 4,
		"EchoRequest": 128, "EchoReply": 129, "MulticastListenerQuery": 130, "MulticastListenerReport": 131,
		"MulticastListenerDone": 132, "RouterSolicitation": 133, "RouterAdvertisement": 134, "NeighborSolicitation": 135,
		"NeighborAdvertisement": 136, "RedirectMessage": 137, "RouterRenumbering": 138, "ICMPNodeInformationQuery": 139,
		"ICMPNodeInformationResponse": 140, "InverseNeighborDiscoverySolicitation": 141,
		"InverseNeighborDiscoveryAdvertisement": 142, "HomeAgentAddressDiscoveryRequest": 144,
		"HomeAgentAddressDiscoveryReply": 145, "MobilePrefixSolicitation": 146, "MobilePrefixAdvertisement": 147,
		"DuplicateAddressRequestCodeSuffix": 157, "DuplicateAddressConfirmationCodeSuffix": 158,
		"ExtendedEchoRequest": 160, "ExtendedEchoReply": 161}
	names := names4
	if proto == ProtoICMPv6 {
		names = names6
	}
	if v, ok := names[s]; ok {
		return v, nil
	}
	return 0, fmt.Errorf("unknown ICMP type %q", s)
}

func normalizeNP(w *wireNP, ref ObjectRef) (*Policy, []Warning, []error) {
	n := &normalizer{ref: ref, namespace: ref.Namespace}
	p := &Policy{Ref: ref, Kind: KindNP}
	if ref.Name == "" {
		n.fail(fieldPath("metadata.name").errorf("missing"))
	}
	sp := fieldPath("spec")
	r := Rule{Path: "spec"}
	sel, err := compileSelector(w.Spec.PodSelector, "", SourceK8s, sp.child("podSelector"))
	if err != nil {
		n.fail(err)
	}
	r.Subject = sel.withRequirement(namespaceRequirement(ref.Namespace))
	types := w.Spec.PolicyTypes
	if len(types) == 0 {
		types = []string{"Ingress"}
		if len(w.Spec.Egress) > 0 {
			types = append(types, "Egress")
		}
	}
	yes := true
	for i, t := range types {
		switch t {
		case "Ingress":
			r.DefaultDeny[Ingress] = &yes
		case "Egress":
			r.DefaultDeny[Egress] = &yes
		default:
			n.fail(sp.child("policyTypes").index(i).errorf("unknown policy type %q (want Ingress or Egress)", t))
		}
	}
	if r.DefaultDeny[Ingress] == nil && len(w.Spec.Ingress) > 0 {
		n.warn(sp.child("ingress"), "ignored: policyTypes does not include Ingress")
	}
	if r.DefaultDeny[Egress] == nil && len(w.Spec.Egress) > 0 {
		n.warn(sp.child("egress"), "ignored: policyTypes does not include Egress")
	}
	if r.DefaultDeny[Ingress] != nil {
		for i, in := range w.Spec.Ingress {
			r.Allow[Ingress] = append(r.Allow[Ingress], n.npSection(in.From, in.Ports, sp.child("ingress").index(i), "from", i))
		}
	}
	if r.DefaultDeny[Egress] != nil {
		for i, eg := range w.Spec.Egress {
			r.Allow[Egress] = append(r.Allow[Egress], n.npSection(eg.To, eg.Ports, sp.child("egress").index(i), "to", i))
		}
	}
	p.Rules = []Rule{r}
	return p, n.warns, n.errs
}

func (n *normalizer) npSection(peers []wireNPPeer, ports []wireNPPort, p fieldPath, peerField string, index int) Section {
	s := Section{Path: string(p), Index: index}
	if len(peers) == 0 {
		s.Peers.Any = true
	}
	for i, peer := range peers {
		pp := p.child(peerField).index(i)
		if peer.IPBlock != nil {
			if peer.PodSelector != nil || peer.NamespaceSelector != nil {
				n.fail(pp.errorf("ipBlock cannot be combined with podSelector or namespaceSelector"))
				continue
			}
			sel, err := cidrSelector(peer.IPBlock.CIDR, peer.IPBlock.Except, pp.child("ipBlock"))
			if err != nil {
				n.fail(err)
				continue
			}
			s.Peers.CIDRs = append(s.Peers.CIDRs, sel)
			continue
		}
		if peer.PodSelector == nil && peer.NamespaceSelector == nil {
			n.fail(pp.errorf("one of podSelector, namespaceSelector or ipBlock is required"))
			continue
		}
		var sel Selector
		if peer.PodSelector != nil {
			ps, err := compileSelector(peer.PodSelector, "", SourceK8s, pp.child("podSelector"))
			if err != nil {
				n.fail(err)
				continue
			}
			sel = ps
		}
		if peer.NamespaceSelector != nil {
			ns, err := compileSelector(peer.NamespaceSelector, LabelNamespacePrefix, SourceK8s, pp.child("namespaceSelector"))
			if err != nil {
				n.fail(err)
				continue
			}
			// A namespaceSelector selects pods in namespaces: require the
			// namespace label, so world, CIDR and reserved identities are
			// never selected, whatever operators the selectors use.
			sel = sel.and(ns).withRequirement(podNamespaceExists())
		} else {
			sel = sel.withRequirement(namespaceRequirement(n.namespace))
		}
		s.Peers.Selectors = append(s.Peers.Selectors, sel)
	}
	if len(ports) > 0 {
		r := PortRule{Path: string(p.child("ports"))}
		for i, port := range ports {
			pp := p.child("ports").index(i)
			proto := "TCP"
			if port.Protocol != nil {
				proto = *port.Protocol
				if proto != "TCP" && proto != "UDP" && proto != "SCTP" {
					n.fail(pp.child("protocol").errorf("unknown protocol %q (want TCP, UDP or SCTP)", proto))
					continue
				}
			}
			var ps, end = "", int32(0)
			if port.Port != nil {
				ps = string(*port.Port)
			}
			if port.EndPort != nil {
				end = *port.EndPort
			}
			spec, err := parsePortProtocol(ps, end, proto, pp)
			if err != nil {
				n.fail(err)
				continue
			}
			r.Ports = append(r.Ports, spec)
		}
		s.Ports = []PortRule{r}
	}
	return s
}

func normalizePod(w *wirePod, ref ObjectRef) (*Pod, []error) {
	var errs []error
	p := &Pod{Ref: ref, Namespace: ref.Namespace, Name: ref.Name, Labels: w.Metadata.Labels, Annotations: w.Metadata.Annotations,
		ServiceAccount: w.Spec.ServiceAccountName, HostNetwork: w.Spec.HostNetwork, NodeName: w.Spec.NodeName, Phase: w.Status.Phase}
	if ref.Name == "" {
		errs = append(errs, fieldPath("metadata.name").errorf("missing"))
	}
	for _, k := range sortedKeys(p.Labels) {
		if err := validLabelKey(k); err != nil {
			errs = append(errs, fieldPath("metadata.labels").key(k).errorf("%w", err))
		}
	}
	if p.ServiceAccount == "" {
		p.ServiceAccount = w.Spec.ServiceAccount
	}
	if p.ServiceAccount == "" {
		p.ServiceAccount = "default"
	}
	addIP := func(s string, fp fieldPath) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			errs = append(errs, fp.errorf("invalid IP %q", s))
			return
		}
		a = a.Unmap()
		if !slices.Contains(p.IPs, a) {
			p.IPs = append(p.IPs, a)
		}
	}
	if w.Status.PodIP != "" {
		addIP(w.Status.PodIP, "status.podIP")
	}
	for i, ip := range w.Status.PodIPs {
		addIP(ip.IP, fieldPath("status.podIPs").index(i).child("ip"))
	}
	for ci, c := range w.Spec.Containers {
		for pi, cp := range c.Ports {
			if cp.Name == "" {
				continue
			}
			fp := fieldPath("spec.containers").index(ci).child("ports").index(pi)
			if !validPortName(cp.Name) {
				errs = append(errs, fp.child("name").errorf("invalid port name %q", cp.Name))
				continue
			}
			if cp.ContainerPort <= 0 || cp.ContainerPort > 65535 {
				errs = append(errs, fp.child("containerPort").errorf("invalid port %d", cp.ContainerPort))
				continue
			}
			proto := ProtoTCP
			if cp.Protocol != "" {
				pr, err := ParseProtocol(cp.Protocol)
				if err != nil || pr == ProtoAny {
					errs = append(errs, fp.child("protocol").errorf("unknown protocol %q", cp.Protocol))
					continue
				}
				proto = pr
			}
			p.NamedPorts = append(p.NamedPorts, NamedPort{Name: cp.Name, Port: uint16(cp.ContainerPort), Protocol: proto})
		}
	}
	slices.SortFunc(p.NamedPorts, func(a, b NamedPort) int {
		if c := strings.Compare(a.Name, b.Name); c != 0 {
			return c
		}
		return int(a.Port) - int(b.Port)
	})
	return p, errs
}

// compileDNSRule compiles one rules.dns or toFQDNs entry: exactly one of
// matchName and matchPattern.
func compileDNSRule(d wireDNSRule, p fieldPath) (DNSSelector, error) {
	switch {
	case d.MatchName != "" && d.MatchPattern != "":
		return DNSSelector{}, p.errorf("give matchName or matchPattern, not both")
	case d.MatchName != "":
		s, err := CompileDNSName(d.MatchName)
		if err != nil {
			return s, p.child("matchName").errorf("%w", err)
		}
		return s, nil
	case d.MatchPattern != "":
		s, err := CompileDNSPattern(d.MatchPattern)
		if err != nil {
			return s, p.child("matchPattern").errorf("%w", err)
		}
		return s, nil
	}
	return DNSSelector{}, p.errorf("give matchName or matchPattern")
}

// toService normalises one toServices entry as Cilium reads it: the
// selector wins when both forms are given; an empty namespace matches
// every namespace.
func (n *normalizer) toService(w wireToService, p fieldPath) (ServiceSelector, bool) {
	out := ServiceSelector{Path: string(p)}
	switch {
	case w.K8sServiceSelector != nil:
		if w.K8sService != nil {
			n.warn(p.child("k8sService"), "ignored: k8sServiceSelector is given too and wins (as in Cilium)")
		}
		sp := p.child("k8sServiceSelector")
		if w.K8sServiceSelector.Selector == nil {
			n.fail(sp.child("selector").errorf("missing"))
			return out, false
		}
		sel, err := compileSelector(w.K8sServiceSelector.Selector, "", SourceAny, sp.child("selector"))
		if err != nil {
			n.fail(err)
			return out, false
		}
		// Cilium matches Service labels whatever source a key names.
		for i := range sel.Requirements {
			sel.Requirements[i].Source = SourceAny
		}
		sel.normalize()
		out.Selector, out.Namespace = &sel, w.K8sServiceSelector.Namespace
	case w.K8sService != nil:
		if w.K8sService.ServiceName == "" {
			n.fail(p.child("k8sService").child("serviceName").errorf("missing"))
			return out, false
		}
		out.Name, out.Namespace = w.K8sService.ServiceName, w.K8sService.Namespace
	default:
		n.fail(p.errorf("empty: give k8sService or k8sServiceSelector"))
		return out, false
	}
	if out.Namespace == "" && n.namespace != "" {
		n.warn(p, "no namespace: selects matching Services in every namespace, not only %s (Cilium's rule)", n.namespace)
	}
	return out, true
}
