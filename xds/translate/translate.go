// Package translate turns l7gate's policy IR into xDS resources and back.
// Everything here is a pure function of its arguments: the same input
// gives byte-identical resources (lists sorted, IR order kept where it
// carries meaning), so an unchanged policy causes no push.
//
// L7Proxy renders the resources of the l7gate Go proxy (node id
// "l7proxy~<node>"): a NetworkPolicy per local endpoint, an
// IdentityMembership per identity and a Listener per proxy port. The
// reverse (xds.PolicyFromProto and friends) lives in package xds, which
// the Go proxy imports instead of this one.
//
// Remote identity lists of L7 rules are kept as computed: a rule is sent
// with any_remote only when the IR says AnyPeer. Collapsing "the same
// peers the datapath redirects" to any would not be exactly equivalent
// for connections the proxy evaluates without a datapath redirect for that
// endpoint (its own upstream connections to a local pod), and the lists
// change only when an identity starts or stops matching a selector, not
// when pods come and go (that is IdentityMembership's job).
//
// With Input.Cache, a render hands back the message it rendered before
// for an endpoint or identity whose inputs did not change (see Cache), so
// the xDS server encodes and sends only what changed. Rendered messages
// may share sub-messages and are read-only.
package translate

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strconv"

	"github.com/l7gate/l7gate/policy"
	l7gatev1 "github.com/l7gate/l7gate/proto/l7gatev1"
	"github.com/l7gate/l7gate/xds"
	"google.golang.org/protobuf/proto"
)

// ErrMissingListener: a local endpoint redirects to a (direction, parser)
// that has no proxy port in Input.Listeners.
var ErrMissingListener = errors.New("no listener for redirect")

// ListenerSpec is one proxy port assignment; package xds owns it (the Go
// proxy reads it back with xds.ListenerFromProto).
type ListenerSpec = xds.ListenerSpec

// Input is everything the translation of one node needs.
type Input struct {
	// Node is the node name (consumers are "l7proxy~<Node>").
	Node     string
	Snapshot *policy.Snapshot
	// LocalEndpoints are the endpoints on Node; each gets a NetworkPolicy.
	LocalEndpoints []policy.Endpoint
	// Listeners are the proxy ports assigned on Node.
	Listeners []ListenerSpec
	// Cache, when set, keeps rendered resources between renders: an
	// endpoint or identity whose inputs did not change gets the very
	// message it got before (the xDS server then reuses its encoding and
	// version). The output is equal with or without it.
	Cache *Cache
}

// Resources are the Go proxy's resources, each list sorted by name
// (IdentityMembership by identity number).
type Resources struct {
	Policies   []*l7gatev1.NetworkPolicy
	Identities []*l7gatev1.IdentityMembership
	Listeners  []*l7gatev1.Listener
}

// ByType returns the resources keyed by type URL; every type is present,
// possibly with an empty list, so consumers learn that a set is empty.
func (r *Resources) ByType() map[string][]proto.Message {
	out := map[string][]proto.Message{
		xds.TypeNetworkPolicy:      {},
		xds.TypeIdentityMembership: {},
		xds.TypeListener:           {},
	}
	for _, p := range r.Policies {
		out[xds.TypeNetworkPolicy] = append(out[xds.TypeNetworkPolicy], p)
	}
	for _, m := range r.Identities {
		out[xds.TypeIdentityMembership] = append(out[xds.TypeIdentityMembership], m)
	}
	for _, l := range r.Listeners {
		out[xds.TypeListener] = append(out[xds.TypeListener], l)
	}
	return out
}

// L7ProxyResources adapts L7Proxy to the xDS server's producer signature.
func L7ProxyResources(_ string, in Input) (map[string][]proto.Message, error) {
	r, err := L7Proxy(in)
	if err != nil {
		return nil, err
	}
	return r.ByType(), nil
}

// RequiredListeners lists the (direction, parser) pairs the local
// endpoints redirect to, sorted; the caller assigns each a proxy port.
func RequiredListeners(snap *policy.Snapshot, local []policy.Endpoint) []ListenerSpec {
	var out []ListenerSpec
	for _, ep := range local {
		pol := snap.Policy(ep.Identity)
		if pol == nil {
			continue
		}
		for _, d := range []policy.Direction{policy.Ingress, policy.Egress} {
			for _, rs := range pol.Direction(d).L7 {
				out = append(out, ListenerSpec{Direction: d, Parser: rs.Parser})
			}
		}
	}
	slices.SortFunc(out, compareListener)
	return slices.CompactFunc(out, func(a, b ListenerSpec) bool { return compareListener(a, b) == 0 })
}

func compareListener(a, b ListenerSpec) int {
	return cmp.Or(cmp.Compare(a.Direction, b.Direction), cmp.Compare(a.Parser, b.Parser))
}

// L7Proxy renders the Go proxy's resources for in.Node.
func L7Proxy(in Input) (*Resources, error) {
	if in.Snapshot == nil {
		return nil, errors.New("translate: nil policy snapshot")
	}
	out := &Resources{}
	listeners := map[ListenerSpec]bool{}
	for _, l := range in.Listeners {
		key := ListenerSpec{Direction: l.Direction, Parser: l.Parser}
		if listeners[key] {
			return nil, fmt.Errorf("translate: listener %s assigned twice", l.Name())
		}
		if l.ProxyPort == 0 {
			return nil, fmt.Errorf("translate: listener %s: proxy port 0", l.Name())
		}
		listeners[key] = true
		out.Listeners = append(out.Listeners, &l7gatev1.Listener{
			Name: l.Name(), ProxyPort: uint32(l.ProxyPort), Direction: directionToProto(l.Direction), Parser: l.Parser,
		})
	}
	slices.SortFunc(out.Listeners, func(a, b *l7gatev1.Listener) int { return cmp.Compare(a.Name, b.Name) })

	r := in.Cache.begin()
	defer r.end()
	names := map[string]string{}
	for _, ep := range in.LocalEndpoints {
		if len(ep.IPs) == 0 {
			continue // the proxy finds policies by IP; nothing can reach it
		}
		pol := in.Snapshot.Policy(ep.Identity)
		if pol == nil {
			return nil, fmt.Errorf("translate: endpoint %s/%s: no policy for identity %d", ep.Namespace, ep.Name, ep.Identity)
		}
		np, err := r.networkPolicy(ep, pol)
		if err != nil {
			return nil, fmt.Errorf("translate: endpoint %s/%s: %w", ep.Namespace, ep.Name, err)
		}
		if other, dup := names[np.Name]; dup {
			return nil, fmt.Errorf("translate: endpoints %s and %s/%s share IP %s", other, ep.Namespace, ep.Name, np.Name)
		}
		names[np.Name] = ep.Namespace + "/" + ep.Name
		for _, d := range []policy.Direction{policy.Ingress, policy.Egress} {
			for _, rs := range pol.Direction(d).L7 {
				if !listeners[ListenerSpec{Direction: d, Parser: rs.Parser}] {
					return nil, fmt.Errorf("translate: endpoint %s/%s port %d: %w %s/%s", ep.Namespace, ep.Name, rs.Port, ErrMissingListener, d, rs.Parser)
				}
			}
		}
		out.Policies = append(out.Policies, np)
	}
	slices.SortFunc(out.Policies, func(a, b *l7gatev1.NetworkPolicy) int { return compareAddrNames(a.Name, b.Name) })
	out.Identities = r.identityMemberships(in.Snapshot)
	return out, nil
}

// compareAddrNames orders IP-named resources by address, not text.
func compareAddrNames(a, b string) int {
	x, errX := netip.ParseAddr(a)
	y, errY := netip.ParseAddr(b)
	if errX != nil || errY != nil {
		return cmp.Compare(a, b)
	}
	return x.Compare(y)
}

// membershipInput is what an identity's IdentityMembership is made of.
type membershipInput struct {
	labels   []string       // sorted
	prefixes []netip.Prefix // sorted, distinct
}

func (r *rendering) identityMemberships(snap *policy.Snapshot) []*l7gatev1.IdentityMembership {
	if r.c != nil && r.c.sameMembershipInput(snap) {
		r.memberships = r.c.memberships
		r.stats.MembershipsReused += len(r.c.lastMembers)
		r.stats.MembershipListsReused++
		return r.c.lastMembers
	}
	out := r.buildMemberships(snap)
	if r.c != nil {
		r.c.lastIdentities, r.c.lastIPCache, r.c.lastMembers = snap.Identities, snap.IPCache, out
	}
	return out
}

func (r *rendering) buildMemberships(snap *policy.Snapshot) []*l7gatev1.IdentityMembership {
	in := map[policy.Identity]*membershipInput{}
	get := func(id policy.Identity) *membershipInput {
		m := in[id]
		if m == nil {
			m = &membershipInput{}
			in[id] = m
		}
		return m
	}
	for _, info := range snap.Identities {
		get(info.ID).labels = slices.Sorted(slices.Values(info.Labels))
	}
	for _, e := range snap.IPCache {
		m := get(e.Identity)
		m.prefixes = append(m.prefixes, e.Prefix.Masked())
	}
	out := make([]*l7gatev1.IdentityMembership, 0, len(in))
	for id, m := range in {
		slices.SortFunc(m.prefixes, comparePrefix)
		m.prefixes = slices.Compact(m.prefixes)
		out = append(out, r.membership(id, m))
	}
	slices.SortFunc(out, func(a, b *l7gatev1.IdentityMembership) int { return cmp.Compare(a.Identity, b.Identity) })
	return out
}

func membership(id policy.Identity, in *membershipInput) *l7gatev1.IdentityMembership {
	m := &l7gatev1.IdentityMembership{Name: strconv.FormatUint(uint64(id), 10), Identity: uint32(id), Labels: in.labels}
	for _, p := range in.prefixes {
		m.Prefixes = append(m.Prefixes, p.String())
	}
	return m
}

func comparePrefix(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}

// PolicyName is the name of an endpoint's NetworkPolicy resource: its
// first IP (the proxy finds policies by IP). The endpoint must have one.
func PolicyName(ep policy.Endpoint) string { return ep.IPs[0].String() }

func directionPolicy(d *policy.DirectionPolicy) (*l7gatev1.DirectionPolicy, error) {
	out := &l7gatev1.DirectionPolicy{Enforced: d.Enforced}
	for _, p := range d.DefaultDeny {
		out.DefaultDeny = append(out.DefaultDeny, provenanceToProto(p))
	}
	for _, s := range d.FQDNSelectors {
		out.FqdnSelectors = append(out.FqdnSelectors, &l7gatev1.DNSRule{MatchName: s.MatchName, MatchPattern: s.MatchPattern})
	}
	for _, e := range d.Entries {
		v, err := verdictToProto(e.Verdict)
		if err != nil {
			return nil, err
		}
		pe := &l7gatev1.Entry{
			Peer: uint32(e.Peer), Protocol: uint32(e.Protocol), Port: uint32(e.Port), EndPort: uint32(e.EndPort),
			Verdict: v, Parser: e.Parser,
		}
		for _, o := range e.Origins {
			pe.Origins = append(pe.Origins, provenanceToProto(o))
		}
		out.Entries = append(out.Entries, pe)
	}
	for _, rs := range d.L7 {
		prs := &l7gatev1.L7RuleSet{Protocol: uint32(rs.Protocol), Port: uint32(rs.Port), Parser: rs.Parser}
		for i := range rs.Rules {
			r, err := l7RuleToProto(&rs.Rules[i])
			if err != nil {
				return nil, fmt.Errorf("port %d rule %d: %w", rs.Port, i, err)
			}
			prs.Rules = append(prs.Rules, r)
		}
		out.L7 = append(out.L7, prs)
	}
	return out, nil
}

func l7RuleToProto(r *policy.L7Rule) (*l7gatev1.L7Rule, error) {
	kinds := 0
	for _, set := range []bool{r.HTTP != nil, r.Kafka != nil, r.DNS != nil, r.Generic != nil} {
		if set {
			kinds++
		}
	}
	if kinds > 1 {
		return nil, errors.New("more than one of http, kafka, dns, generic")
	}
	out := &l7gatev1.L7Rule{AnyRemote: r.AnyPeer, Origin: provenanceToProto(r.Origin)}
	if !r.AnyPeer {
		peers := slices.Clone(r.Peers)
		slices.Sort(peers)
		for _, p := range slices.Compact(peers) {
			out.RemoteIdentities = append(out.RemoteIdentities, uint32(p))
		}
	}
	switch {
	case r.HTTP != nil:
		h := &l7gatev1.HTTPRule{Method: r.HTTP.Method, Path: r.HTTP.Path, Host: r.HTTP.Host, Unsupported: r.HTTP.Unsupported}
		for _, m := range r.HTTP.Headers {
			act, err := mismatchToProto(m.Mismatch)
			if err != nil {
				return nil, fmt.Errorf("header %q: %w", m.Name, err)
			}
			h.Headers = append(h.Headers, &l7gatev1.HeaderMatch{Name: m.Name, Value: m.Value, Presence: m.Presence, Mismatch: act})
		}
		out.Rule = &l7gatev1.L7Rule_Http{Http: h}
	case r.Kafka != nil:
		k := &l7gatev1.KafkaRule{Role: r.Kafka.Role, ApiKey: r.Kafka.APIKey, ClientId: r.Kafka.ClientID, Topic: r.Kafka.Topic}
		for _, key := range r.Kafka.APIKeys {
			k.ApiKeys = append(k.ApiKeys, int32(key))
		}
		if r.Kafka.APIVersion != nil {
			k.ApiVersion = proto.Int32(int32(*r.Kafka.APIVersion))
		}
		out.Rule = &l7gatev1.L7Rule_Kafka{Kafka: k}
	case r.DNS != nil:
		out.Rule = &l7gatev1.L7Rule_Dns{Dns: &l7gatev1.DNSRule{MatchName: r.DNS.MatchName, MatchPattern: r.DNS.MatchPattern}}
	case r.Generic != nil:
		out.Rule = &l7gatev1.L7Rule_Generic{Generic: &l7gatev1.GenericRule{Fields: maps.Clone(r.Generic)}}
	}
	return out, nil
}

func provenanceToProto(p policy.Provenance) *l7gatev1.Provenance {
	return &l7gatev1.Provenance{
		Policy: p.Policy, PolicyKind: string(p.PolicyKind), Direction: directionToProto(p.Direction),
		Rule: uint32(p.Rule), Path: p.Path, L7: p.L7, Kind: ruleKindToProto(p.Kind), Audit: p.Audit,
	}
}

func directionToProto(d policy.Direction) l7gatev1.Direction {
	if d == policy.Egress {
		return l7gatev1.Direction_DIRECTION_EGRESS
	}
	return l7gatev1.Direction_DIRECTION_INGRESS
}

func ruleKindToProto(k policy.RuleKind) l7gatev1.RuleKind {
	switch k {
	case policy.KindAllow:
		return l7gatev1.RuleKind_RULE_KIND_ALLOW
	case policy.KindDeny:
		return l7gatev1.RuleKind_RULE_KIND_DENY
	case policy.KindDefaultDeny:
		return l7gatev1.RuleKind_RULE_KIND_DEFAULT_DENY
	}
	return l7gatev1.RuleKind_RULE_KIND_UNSPECIFIED
}

func verdictToProto(v policy.Verdict) (l7gatev1.Verdict, error) {
	switch v {
	case policy.VerdictAllow:
		return l7gatev1.Verdict_VERDICT_ALLOW, nil
	case policy.VerdictDeny:
		return l7gatev1.Verdict_VERDICT_DENY, nil
	case policy.VerdictRedirect:
		return l7gatev1.Verdict_VERDICT_REDIRECT, nil
	}
	return 0, fmt.Errorf("unknown verdict %q", v)
}

func mismatchToProto(m string) (l7gatev1.MismatchAction, error) {
	switch m {
	case "":
		return l7gatev1.MismatchAction_MISMATCH_ACTION_UNSPECIFIED, nil
	case policy.MismatchLog:
		return l7gatev1.MismatchAction_MISMATCH_ACTION_LOG, nil
	case policy.MismatchAdd:
		return l7gatev1.MismatchAction_MISMATCH_ACTION_ADD, nil
	case policy.MismatchDelete:
		return l7gatev1.MismatchAction_MISMATCH_ACTION_DELETE, nil
	case policy.MismatchReplace:
		return l7gatev1.MismatchAction_MISMATCH_ACTION_REPLACE, nil
	}
	return 0, fmt.Errorf("unknown mismatch action %q", m)
}
