package proxy

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/l7gate/l7gate/policy"
)

// Config is everything the proxy enforces.
type Config struct {
	Version   string               `json:"version"`
	Listeners []Listener           `json:"listeners"`
	Endpoints []Endpoint           `json:"endpoints"`
	Members   []IdentityMembership `json:"identities"`
	// index: Members' address index, when ConfigFromXDS built it (or
	// reused the last config's: the memberships did not change). A
	// Config from ConfigFromXDS must not be modified.
	index *memberIndex
}

// Listener is one proxy port.
type Listener struct {
	Name      string           `json:"name"`
	Port      uint16           `json:"port"`
	Direction policy.Direction `json:"direction"`
	// Parser: "http" (HTTP/1.1, HTTP/2, gRPC), "kafka" or "dns" (UDP and
	// TCP on the port: the DNS proxy, package dnsproxy).
	Parser string `json:"parser"`
}

// Endpoint is a local endpoint's L7 policy.
type Endpoint struct {
	Identity policy.Identity    `json:"identity"`
	IPs      []netip.Addr       `json:"ips"`
	Ingress  []policy.L7RuleSet `json:"ingress,omitempty"`
	Egress   []policy.L7RuleSet `json:"egress,omitempty"`
	// FQDNSelectors are the endpoint's toFQDNs selectors: the DNS proxy
	// reports the answers for names they match (DNSOptions.Learn).
	FQDNSelectors []policy.DNSSelector `json:"fqdnSelectors,omitempty"`
}

// IdentityMembership lists the addresses of one identity.
type IdentityMembership struct {
	Identity policy.Identity `json:"identity"`
	Prefixes []netip.Prefix  `json:"prefixes"`
}

// compiled is a validated Config ready for lookups.
type compiled struct {
	cfg       *Config
	endpoints map[netip.Addr]*compiledEndpoint
	exact     map[netip.Addr]policy.Identity // host prefixes
	cidrs     []IdentityMembership           // other prefixes, longest first
}

type compiledEndpoint struct {
	identity policy.Identity
	sets     map[setKey]*compiledSet
}

type setKey struct {
	dir  policy.Direction
	port uint16
}

type compiledSet struct {
	rs   *policy.L7RuleSet
	http *policy.HTTPMatcher
	// headerActions: some rule has headerMatches mismatch actions, so
	// every matching rule is evaluated (MatchWithActions).
	headerActions bool
	// origins holds each rule's Origin: a request allowed by rule i is
	// decided by origins[i:i+1:i+1] (no allocation per request; the
	// capacity makes an append copy).
	origins []policy.Provenance
}

// compile validates cfg; its errors name the offending resource.
func compile(cfg *Config, mc *policy.HTTPMatcherCache) (*compiled, error) {
	c := &compiled{cfg: cfg, endpoints: map[netip.Addr]*compiledEndpoint{}}
	ports := map[uint16]string{}
	for _, l := range cfg.Listeners {
		if l.Port == 0 {
			return nil, fmt.Errorf("listener %q: port 0", l.Name)
		}
		if other, dup := ports[l.Port]; dup {
			return nil, fmt.Errorf("listener %q: port %d already used by listener %q", l.Name, l.Port, other)
		}
		ports[l.Port] = l.Name
		if l.Parser != policy.ParserHTTP && l.Parser != policy.ParserKafka && l.Parser != policy.ParserDNS {
			return nil, fmt.Errorf("listener %q: parser %q is not supported by the Go proxy (want http, kafka or dns)", l.Name, l.Parser)
		}
		if l.Parser == policy.ParserDNS && l.Direction != policy.Egress {
			return nil, fmt.Errorf("listener %q: dns is an egress parser", l.Name)
		}
	}
	for i := range cfg.Endpoints {
		ep := &cfg.Endpoints[i]
		ce := &compiledEndpoint{identity: ep.Identity, sets: map[setKey]*compiledSet{}}
		for _, d := range []struct {
			dir  policy.Direction
			sets []policy.L7RuleSet
		}{{policy.Ingress, ep.Ingress}, {policy.Egress, ep.Egress}} {
			for j := range d.sets {
				rs := &d.sets[j]
				cs := &compiledSet{rs: rs}
				if rs.Parser == policy.ParserHTTP {
					m, err := rs.HTTPMatcherCached(mc)
					if err != nil {
						return nil, fmt.Errorf("endpoint %d %s port %d: %w", ep.Identity, d.dir, rs.Port, err)
					}
					cs.http = m
					cs.headerActions = m.HasMismatchActions()
					cs.origins = make([]policy.Provenance, len(rs.Rules))
					for i := range rs.Rules {
						cs.origins[i] = rs.Rules[i].Origin
					}
				}
				ce.sets[setKey{d.dir, rs.Port}] = cs
			}
		}
		for _, ip := range ep.IPs {
			if _, dup := c.endpoints[ip]; dup {
				return nil, fmt.Errorf("endpoint %d: IP %s belongs to two endpoints", ep.Identity, ip)
			}
			c.endpoints[ip] = ce
		}
	}
	idx := cfg.index
	if !idx.of(cfg.Members) {
		idx = newMemberIndex(cfg.Members)
	}
	c.exact, c.cidrs = idx.exact, idx.cidrs
	return c, nil
}

// memberIndex is the address index of a membership list (read-only once
// built: configs with the same memberships share it).
type memberIndex struct {
	members []IdentityMembership           // what it was built from
	exact   map[netip.Addr]policy.Identity // host prefixes
	cidrs   []IdentityMembership           // other prefixes, longest first
}

func newMemberIndex(members []IdentityMembership) *memberIndex {
	idx := &memberIndex{members: members, exact: map[netip.Addr]policy.Identity{}}
	for _, m := range members {
		for _, p := range m.Prefixes {
			if p.IsSingleIP() {
				idx.exact[p.Addr()] = m.Identity
				continue
			}
			idx.cidrs = append(idx.cidrs, IdentityMembership{Identity: m.Identity, Prefixes: []netip.Prefix{p}})
		}
	}
	slices.SortStableFunc(idx.cidrs, func(a, b IdentityMembership) int { return b.Prefixes[0].Bits() - a.Prefixes[0].Bits() })
	return idx
}

// of reports whether idx was built from exactly members (the same list,
// not a copy).
func (idx *memberIndex) of(members []IdentityMembership) bool {
	if idx == nil || len(idx.members) != len(members) {
		return false
	}
	return len(members) == 0 || &idx.members[0] == &members[0]
}

// identityOf maps an address to its identity (world when unknown).
func (c *compiled) identityOf(a netip.Addr) policy.Identity {
	if id, ok := c.exact[a]; ok {
		return id
	}
	for _, m := range c.cidrs {
		if m.Prefixes[0].Contains(a) {
			return m.Identity
		}
	}
	return policy.IdentityWorld
}

// lookup finds the rule set for a connection: the local endpoint is the
// destination on ingress and the source on egress; the peer is the other
// side.
func (c *compiled) lookup(dir policy.Direction, src, dst netip.AddrPort) (*compiledSet, policy.Identity, policy.Identity, error) {
	local, remote := dst.Addr(), src.Addr()
	if dir == policy.Egress {
		local, remote = src.Addr(), dst.Addr()
	}
	peer := c.identityOf(remote)
	ep, ok := c.endpoints[local]
	if !ok {
		return nil, peer, 0, fmt.Errorf("no local endpoint with IP %s", local)
	}
	set, ok := ep.sets[setKey{dir, dst.Port()}]
	if !ok {
		return nil, peer, ep.identity, fmt.Errorf("endpoint %d has no %s L7 policy on port %d", ep.identity, dir, dst.Port())
	}
	return set, peer, ep.identity, nil
}
