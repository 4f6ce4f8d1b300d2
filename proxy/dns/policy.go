package dnsproxy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	dnsmsg "github.com/l7gate/l7gate/parsers/dns"
	"github.com/l7gate/l7gate/policy"
)

// OriginalDst says where a query was headed before the datapath steered it
// to the proxy. local is the address the query arrived at (for a
// transparent listener, the original destination itself).
type OriginalDst interface {
	OriginalDst(proto policy.Protocol, client, local netip.AddrPort) (netip.AddrPort, error)
}

// FixedDst sends every query to one server (tests, a plain forwarder).
type FixedDst netip.AddrPort

// OriginalDst implements OriginalDst.
func (f FixedDst) OriginalDst(policy.Protocol, netip.AddrPort, netip.AddrPort) (netip.AddrPort, error) {
	return netip.AddrPort(f), nil
}

// LocalDst: the address a query arrived at is its original destination
// (transparent listeners: the datapath redirect keeps it).
type LocalDst struct{}

// OriginalDst implements OriginalDst.
func (LocalDst) OriginalDst(_ policy.Protocol, _, local netip.AddrPort) (netip.AddrPort, error) {
	if !local.IsValid() {
		return local, errors.New("no local address")
	}
	return local, nil
}

// Decider is what applies to one query: the client endpoint's and the
// server's identities and the DNS rules of the client's egress on the
// server's port.
type Decider struct {
	Client, Server policy.Identity
	Checker        *dnsmsg.Checker
}

// Policy finds what applies to a query; an error denies it (fail
// closed: no endpoint, no DNS rules on the port).
type Policy interface {
	Lookup(client netip.Addr, server netip.AddrPort, proto policy.Protocol) (Decider, error)
}

// SnapshotPolicy is a Policy over computed policy: each local endpoint's
// egress DNS rule sets, compiled once.
type SnapshotPolicy struct {
	identityOf func(netip.Addr) policy.Identity
	byIP       map[netip.Addr]policy.Identity
	checkers   map[checkerKey]*dnsmsg.Checker
	fqdn       []policy.DNSSelector
}

type checkerKey struct {
	id    policy.Identity
	proto policy.Protocol
	port  uint16
}

// PolicyEndpoint is what a Policy needs of one local endpoint: its
// identity and addresses, its egress L7 rule sets (those with parser dns
// are used) and its toFQDNs selectors.
type PolicyEndpoint struct {
	Identity      policy.Identity
	IPs           []netip.Addr
	Egress        []policy.L7RuleSet
	FQDNSelectors []policy.DNSSelector
}

// NewSnapshotPolicy compiles snap's DNS rule sets; a rule set that does
// not compile is an error (the caller keeps the previous policy, or none).
func NewSnapshotPolicy(snap *policy.Snapshot) (*SnapshotPolicy, error) {
	var eps []PolicyEndpoint
	for _, ep := range snap.Endpoints {
		pe := PolicyEndpoint{Identity: ep.Identity, IPs: ep.IPs}
		if pol := snap.Policy(ep.Identity); pol != nil {
			pe.Egress, pe.FQDNSelectors = pol.Egress.L7, pol.Egress.FQDNSelectors
		}
		eps = append(eps, pe)
	}
	return NewEndpointPolicy(eps, snap.IdentityOf)
}

// NewEndpointPolicy compiles the DNS rule sets of eps (the Go proxy's
// config from xDS); identityOf names a server's identity. A rule set or
// selector that does not compile is an error.
func NewEndpointPolicy(eps []PolicyEndpoint, identityOf func(netip.Addr) policy.Identity) (*SnapshotPolicy, error) {
	p := &SnapshotPolicy{identityOf: identityOf, byIP: map[netip.Addr]policy.Identity{}, checkers: map[checkerKey]*dnsmsg.Checker{}}
	for _, ep := range eps {
		for _, ip := range ep.IPs {
			p.byIP[ip.Unmap()] = ep.Identity
		}
		for _, s := range ep.FQDNSelectors {
			if !slices.ContainsFunc(p.fqdn, func(x policy.DNSSelector) bool { return x.Key() == s.Key() }) {
				c, err := s.Compile() // the IR may have come over the wire
				if err != nil {
					return nil, fmt.Errorf("identity %d toFQDNs %s: %w", ep.Identity, s.String(), err)
				}
				p.fqdn = append(p.fqdn, c)
			}
		}
		for i := range ep.Egress {
			rs := &ep.Egress[i]
			if rs.Parser != policy.ParserDNS {
				continue
			}
			k := checkerKey{ep.Identity, rs.Protocol, rs.Port}
			if _, done := p.checkers[k]; done {
				continue
			}
			c, err := dnsmsg.NewChecker(rs)
			if err != nil {
				return nil, fmt.Errorf("identity %d %s/%d: %w", ep.Identity, rs.Protocol, rs.Port, err)
			}
			p.checkers[k] = c
		}
	}
	return p, nil
}

// FQDNSelectors returns the toFQDNs selectors of every endpoint (for
// Proxy.SetFQDNSelectors), sorted by key.
func (p *SnapshotPolicy) FQDNSelectors() []policy.DNSSelector {
	out := slices.Clone(p.fqdn)
	slices.SortFunc(out, func(a, b policy.DNSSelector) int { return strings.Compare(a.Key(), b.Key()) })
	return out
}

// Lookup implements Policy.
func (p *SnapshotPolicy) Lookup(client netip.Addr, server netip.AddrPort, proto policy.Protocol) (Decider, error) {
	id, ok := p.byIP[client.Unmap()]
	if !ok {
		return Decider{}, fmt.Errorf("%s is not a local endpoint", client)
	}
	c := p.checkers[checkerKey{id, proto, server.Port()}]
	if c == nil {
		return Decider{}, fmt.Errorf("identity %d has no DNS rules on %s/%d", id, proto, server.Port())
	}
	return Decider{Client: id, Server: p.identityOf(server.Addr().Unmap()), Checker: c}, nil
}
