package xds

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"net/netip"
	"slices"
	"strconv"

	"github.com/l7gate/l7gate/policy"
	l7gatev1 "github.com/l7gate/l7gate/proto/l7gatev1"
)

// The *FromProto functions rebuild policy values from the Go proxy's
// resources (the reverse of xds/translate), so the proxy evaluates with
// the policy package's own matchers without importing the translator.

// ErrInvalidResource: a resource received over xDS does not decode into
// policy values. The Go proxy NACKs it with the wrapped detail.
var ErrInvalidResource = errors.New("invalid resource")

// PolicyFromProto rebuilds a local endpoint and its policy from a
// NetworkPolicy. The proxy evaluates with the result:
// Direction(d).L7Set(proto, port).HTTPMatcher() / EvaluateKafka.
func PolicyFromProto(np *l7gatev1.NetworkPolicy) (policy.Endpoint, *policy.EndpointPolicy, error) {
	return PolicyFromProtoCached(np, nil)
}

// PolicyFromProtoCached is PolicyFromProto checking the HTTP rules'
// expressions with (and into) c.
func PolicyFromProtoCached(np *l7gatev1.NetworkPolicy, c *policy.HTTPMatcherCache) (policy.Endpoint, *policy.EndpointPolicy, error) {
	fail := func(format string, args ...any) (policy.Endpoint, *policy.EndpointPolicy, error) {
		return policy.Endpoint{}, nil, fmt.Errorf("network policy %q: %w: %s", np.GetName(), ErrInvalidResource, fmt.Sprintf(format, args...))
	}
	ep := policy.Endpoint{Namespace: np.GetNamespace(), Name: np.GetPod(), Identity: policy.Identity(np.GetEndpointIdentity())}
	for _, s := range np.GetEndpointIps() {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return fail("endpoint_ips: %v", err)
		}
		ep.IPs = append(ep.IPs, a)
	}
	if len(ep.IPs) == 0 {
		return fail("no endpoint_ips")
	}
	pol := &policy.EndpointPolicy{Identity: ep.Identity}
	var err error
	if pol.Ingress, err = directionFromProto(np.GetIngress(), c); err != nil {
		return fail("ingress: %v", err)
	}
	if pol.Egress, err = directionFromProto(np.GetEgress(), c); err != nil {
		return fail("egress: %v", err)
	}
	return ep, pol, nil
}

func directionFromProto(d *l7gatev1.DirectionPolicy, c *policy.HTTPMatcherCache) (policy.DirectionPolicy, error) {
	out := policy.DirectionPolicy{Enforced: d.GetEnforced()}
	for i, p := range d.GetDefaultDeny() {
		pp, err := provenanceFromProto(p)
		if err != nil {
			return out, fmt.Errorf("default_deny[%d]: %w", i, err)
		}
		out.DefaultDeny = append(out.DefaultDeny, pp)
	}
	for i, e := range d.GetEntries() {
		pe, err := entryFromProto(e)
		if err != nil {
			return out, fmt.Errorf("entries[%d]: %w", i, err)
		}
		out.Entries = append(out.Entries, pe)
	}
	for i, rs := range d.GetL7() {
		prs, err := ruleSetFromProto(rs, c)
		if err != nil {
			return out, fmt.Errorf("l7[%d]: %w", i, err)
		}
		out.L7 = append(out.L7, prs)
	}
	for i, r := range d.GetFqdnSelectors() {
		sel, err := dnsRuleFromProto(r)
		if err != nil {
			return out, fmt.Errorf("fqdn_selectors[%d]: %w", i, err)
		}
		out.FQDNSelectors = append(out.FQDNSelectors, sel)
	}
	return out, nil
}

// dnsRuleFromProto compiles a DNSRule (exactly one field set).
func dnsRuleFromProto(r *l7gatev1.DNSRule) (policy.DNSSelector, error) {
	switch name, pattern := r.GetMatchName(), r.GetMatchPattern(); {
	case name != "" && pattern != "":
		return policy.DNSSelector{}, errors.New("dns: match_name and match_pattern both set")
	case pattern != "":
		return policy.CompileDNSPattern(pattern)
	default:
		return policy.CompileDNSName(name)
	}
}

func entryFromProto(e *l7gatev1.Entry) (policy.Entry, error) {
	out := policy.Entry{Peer: policy.Identity(e.GetPeer()), Parser: e.GetParser()}
	var err error
	if out.Protocol, err = protocolFromProto(e.GetProtocol()); err != nil {
		return out, err
	}
	if out.Port, err = portFromProto(e.GetPort()); err != nil {
		return out, err
	}
	if out.EndPort, err = portFromProto(e.GetEndPort()); err != nil {
		return out, err
	}
	switch e.GetVerdict() {
	case l7gatev1.Verdict_VERDICT_ALLOW:
		out.Verdict = policy.VerdictAllow
	case l7gatev1.Verdict_VERDICT_DENY:
		out.Verdict = policy.VerdictDeny
	case l7gatev1.Verdict_VERDICT_REDIRECT:
		out.Verdict = policy.VerdictRedirect
	default:
		return out, fmt.Errorf("unknown verdict %v", e.GetVerdict())
	}
	for i, o := range e.GetOrigins() {
		p, err := provenanceFromProto(o)
		if err != nil {
			return out, fmt.Errorf("origins[%d]: %w", i, err)
		}
		out.Origins = append(out.Origins, p)
	}
	return out, nil
}

// RuleSetFromProto converts one L7 rule set.
func RuleSetFromProto(rs *l7gatev1.L7RuleSet) (policy.L7RuleSet, error) {
	return ruleSetFromProto(rs, nil)
}

func ruleSetFromProto(rs *l7gatev1.L7RuleSet, c *policy.HTTPMatcherCache) (policy.L7RuleSet, error) {
	out := policy.L7RuleSet{Parser: rs.GetParser()}
	var err error
	if out.Protocol, err = protocolFromProto(rs.GetProtocol()); err != nil {
		return out, err
	}
	if out.Port, err = portFromProto(rs.GetPort()); err != nil {
		return out, err
	}
	for i, r := range rs.GetRules() {
		pr, err := l7RuleFromProto(r)
		if err != nil {
			return out, fmt.Errorf("port %d rules[%d]: %w", out.Port, i, err)
		}
		out.Rules = append(out.Rules, pr)
	}
	if out.Parser == policy.ParserDNS {
		for i := range out.Rules {
			if r := &out.Rules[i]; r.DNS == nil && !r.AllowsAll() {
				return out, fmt.Errorf("port %d rules[%d]: not a DNS rule", out.Port, i)
			}
		}
	}
	if out.Parser == "http" {
		// Compile now so a bad regex is a NACK, not a failure on the
		// first request.
		if _, err := out.HTTPMatcherCached(c); err != nil {
			return out, fmt.Errorf("port %d: %w", out.Port, err)
		}
	}
	return out, nil
}

func l7RuleFromProto(r *l7gatev1.L7Rule) (policy.L7Rule, error) {
	out := policy.L7Rule{AnyPeer: r.GetAnyRemote()}
	for _, id := range r.GetRemoteIdentities() {
		out.Peers = append(out.Peers, policy.Identity(id))
	}
	if !slices.IsSorted(out.Peers) {
		return out, errors.New("remote_identities not sorted")
	}
	if out.AnyPeer && len(out.Peers) > 0 {
		return out, errors.New("any_remote with remote_identities")
	}
	var err error
	if out.Origin, err = provenanceFromProto(r.GetOrigin()); err != nil {
		return out, fmt.Errorf("origin: %w", err)
	}
	switch x := r.GetRule().(type) {
	case *l7gatev1.L7Rule_Http:
		h := &policy.HTTPRule{Method: x.Http.GetMethod(), Path: x.Http.GetPath(), Host: x.Http.GetHost(), Unsupported: x.Http.GetUnsupported()}
		for _, m := range x.Http.GetHeaders() {
			hm := policy.HeaderMatch{Name: m.GetName(), Value: m.GetValue(), Presence: m.GetPresence()}
			switch m.GetMismatch() {
			case l7gatev1.MismatchAction_MISMATCH_ACTION_UNSPECIFIED:
			case l7gatev1.MismatchAction_MISMATCH_ACTION_LOG:
				hm.Mismatch = policy.MismatchLog
			case l7gatev1.MismatchAction_MISMATCH_ACTION_ADD:
				hm.Mismatch = policy.MismatchAdd
			case l7gatev1.MismatchAction_MISMATCH_ACTION_DELETE:
				hm.Mismatch = policy.MismatchDelete
			case l7gatev1.MismatchAction_MISMATCH_ACTION_REPLACE:
				hm.Mismatch = policy.MismatchReplace
			default:
				return out, fmt.Errorf("header %q: unknown mismatch action %v", m.GetName(), m.GetMismatch())
			}
			h.Headers = append(h.Headers, hm)
		}
		out.HTTP = h
	case *l7gatev1.L7Rule_Kafka:
		k := &policy.KafkaRule{Role: x.Kafka.GetRole(), APIKey: x.Kafka.GetApiKey(), ClientID: x.Kafka.GetClientId(), Topic: x.Kafka.GetTopic()}
		for _, key := range x.Kafka.GetApiKeys() {
			if key < 0 || key > math.MaxInt16 {
				return out, fmt.Errorf("kafka api key %d out of range", key)
			}
			k.APIKeys = append(k.APIKeys, int16(key))
		}
		if x.Kafka.ApiVersion != nil {
			v := x.Kafka.GetApiVersion()
			if v < 0 || v > math.MaxInt16 {
				return out, fmt.Errorf("kafka api version %d out of range", v)
			}
			v16 := int16(v)
			k.APIVersion = &v16
		}
		out.Kafka = k
	case *l7gatev1.L7Rule_Generic:
		out.Generic = maps.Clone(x.Generic.GetFields())
	case *l7gatev1.L7Rule_Dns:
		// Compiled now: a bad selector is a NACK, not an allow.
		sel, err := dnsRuleFromProto(x.Dns)
		if err != nil {
			return out, fmt.Errorf("dns: %w", err)
		}
		out.DNS = &sel
	case nil:
	default:
		return out, fmt.Errorf("unknown rule type %T", x)
	}
	return out, nil
}

func provenanceFromProto(p *l7gatev1.Provenance) (policy.Provenance, error) {
	out := policy.Provenance{Policy: p.GetPolicy(), PolicyKind: policy.PolicyKind(p.GetPolicyKind()), Rule: int(p.GetRule()), Path: p.GetPath(), L7: p.GetL7(), Audit: p.GetAudit()}
	var err error
	if out.Direction, err = directionFromEnum(p.GetDirection()); err != nil {
		return out, err
	}
	switch p.GetKind() {
	case l7gatev1.RuleKind_RULE_KIND_ALLOW:
		out.Kind = policy.KindAllow
	case l7gatev1.RuleKind_RULE_KIND_DENY:
		out.Kind = policy.KindDeny
	case l7gatev1.RuleKind_RULE_KIND_DEFAULT_DENY:
		out.Kind = policy.KindDefaultDeny
	default:
		return out, fmt.Errorf("unknown rule kind %v", p.GetKind())
	}
	return out, nil
}

func directionFromEnum(d l7gatev1.Direction) (policy.Direction, error) {
	switch d {
	case l7gatev1.Direction_DIRECTION_INGRESS:
		return policy.Ingress, nil
	case l7gatev1.Direction_DIRECTION_EGRESS:
		return policy.Egress, nil
	}
	return 0, fmt.Errorf("unknown direction %v", d)
}

func protocolFromProto(p uint32) (policy.Protocol, error) {
	if p > math.MaxUint8 {
		return 0, fmt.Errorf("protocol %d out of range", p)
	}
	return policy.Protocol(p), nil
}

func portFromProto(p uint32) (uint16, error) {
	if p > math.MaxUint16 {
		return 0, fmt.Errorf("port %d out of range", p)
	}
	return uint16(p), nil
}

// MembershipFromProto returns the identity, labels and ipcache entries of
// an IdentityMembership.
func MembershipFromProto(m *l7gatev1.IdentityMembership) (policy.IdentityInfo, []policy.IPCacheEntry, error) {
	info := policy.IdentityInfo{ID: policy.Identity(m.GetIdentity()), Labels: slices.Clone(m.GetLabels())}
	if m.GetName() != strconv.FormatUint(uint64(m.GetIdentity()), 10) {
		return info, nil, fmt.Errorf("identity membership %q: %w: name does not match identity %d", m.GetName(), ErrInvalidResource, m.GetIdentity())
	}
	var out []policy.IPCacheEntry
	for _, s := range m.GetPrefixes() {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return info, nil, fmt.Errorf("identity membership %q: %w: %v", m.GetName(), ErrInvalidResource, err)
		}
		out = append(out, policy.IPCacheEntry{Prefix: p, Identity: info.ID})
	}
	return info, out, nil
}

// ListenerFromProto returns the proxy port assignment of a Listener.
func ListenerFromProto(l *l7gatev1.Listener) (ListenerSpec, error) {
	d, err := directionFromEnum(l.GetDirection())
	if err != nil {
		return ListenerSpec{}, fmt.Errorf("listener %q: %w: %v", l.GetName(), ErrInvalidResource, err)
	}
	port, err := portFromProto(l.GetProxyPort())
	if err != nil || port == 0 || l.GetParser() == "" {
		return ListenerSpec{}, fmt.Errorf("listener %q: %w: proxy port %d, parser %q", l.GetName(), ErrInvalidResource, l.GetProxyPort(), l.GetParser())
	}
	spec := ListenerSpec{Direction: d, Parser: l.GetParser(), ProxyPort: port}
	if spec.Name() != l.GetName() {
		return ListenerSpec{}, fmt.Errorf("listener %q: %w: name should be %q", l.GetName(), ErrInvalidResource, spec.Name())
	}
	return spec, nil
}

// ListenerSpec is one proxy port assignment (made by the redirect
// package): connections redirected in Direction for Parser go to
// ProxyPort. It is the Listener resource's content.
type ListenerSpec struct {
	Direction policy.Direction
	Parser    string
	ProxyPort uint16
}

// Name is the listener's resource name, "<direction>/<parser>".
func (l ListenerSpec) Name() string { return l.Direction.String() + "/" + l.Parser }
