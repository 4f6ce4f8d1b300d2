package policy

import (
	"net/netip"
	"slices"
	"strings"

	"github.com/l7gate/l7gate/flow"
)

// RuleKind says how a rule decided (package flow owns it).
type RuleKind = flow.RuleKind

// Rule kinds in provenance.
const (
	KindAllow       = flow.KindAllow
	KindDeny        = flow.KindDeny
	KindDefaultDeny = flow.KindDefaultDeny
)

// Provenance names the rule behind an entry or verdict (package flow owns
// it: flow records carry it).
type Provenance = flow.Provenance

func compareProvenance(a, b Provenance) int {
	if c := cmpStrings(a.Policy, b.Policy, string(a.PolicyKind), string(b.PolicyKind), a.Path, b.Path, a.L7, b.L7, string(a.Kind), string(b.Kind)); c != 0 {
		return c
	}
	return int(a.Direction) - int(b.Direction)
}

// Verdict of a policy entry.
type Verdict string

// Entry verdicts.
const (
	VerdictAllow    Verdict = "allow"
	VerdictDeny     Verdict = "deny"
	VerdictRedirect Verdict = "redirect"
)

// Entry is one L3/L4 policy entry of an endpoint in one direction. Peer 0
// is any peer; Protocol 0 any protocol; Port 0 every port, otherwise the
// inclusive range [Port, EndPort]. Redirect entries are single TCP ports
// and name the L7 parser.
type Entry struct {
	Peer     Identity     `json:"peer"`
	Protocol Protocol     `json:"protocol"`
	Port     uint16       `json:"port,omitempty"`
	EndPort  uint16       `json:"endPort,omitempty"`
	Verdict  Verdict      `json:"verdict"`
	Parser   string       `json:"parser,omitempty"`
	Origins  []Provenance `json:"origins"`
}

// matches reports whether the entry covers (peer, proto, port).
func (e *Entry) matches(peer Identity, proto Protocol, port uint16) bool {
	if e.Peer != IdentityAny && e.Peer != peer {
		return false
	}
	if e.Protocol != ProtoAny && e.Protocol != proto {
		return false
	}
	if e.Protocol == ProtoICMP || e.Protocol == ProtoICMPv6 {
		// Port is one ICMP type; type 0 is EchoReply, not "every type"
		// (as the datapath stores it: bpf/compile.go).
		return port == e.Port
	}
	return e.Port == 0 || (port >= e.Port && port <= e.EndPort)
}

// L7Rule is one L7 rule of a redirected port: the peers it applies to and
// exactly one of HTTP, Kafka or Generic — or none, which allows every
// request (the port is also allowed at L4 without L7 rules for these
// peers).
type L7Rule struct {
	AnyPeer bool              `json:"anyPeer,omitempty"`
	Peers   []Identity        `json:"peers,omitempty"`
	HTTP    *HTTPRule         `json:"http,omitempty"`
	Kafka   *KafkaRule        `json:"kafka,omitempty"`
	Generic map[string]string `json:"generic,omitempty"`
	Origin  Provenance        `json:"origin"`
}

// AllowsAll reports whether the rule admits every request.
func (r *L7Rule) AllowsAll() bool { return r.HTTP == nil && r.Kafka == nil && r.Generic == nil }

// AppliesTo reports whether the rule applies to traffic from/to peer.
func (r *L7Rule) AppliesTo(peer Identity) bool {
	if r.AnyPeer {
		return true
	}
	_, ok := slices.BinarySearch(r.Peers, peer)
	return ok
}

// L7RuleSet is the allow-list of L7 rules on one redirected port: a
// request matching none of the rules that apply to its peer is denied.
type L7RuleSet struct {
	Protocol Protocol `json:"protocol"`
	Port     uint16   `json:"port"`
	Parser   string   `json:"parser"`
	Rules    []L7Rule `json:"rules"`
}

// DirectionPolicy is an endpoint's policy in one direction.
type DirectionPolicy struct {
	// Enforced: the endpoint is in default-deny mode in this direction.
	Enforced bool `json:"enforced"`
	// DefaultDeny lists the rules that put the endpoint in default-deny.
	DefaultDeny []Provenance `json:"defaultDeny,omitempty"`
	Entries     []Entry      `json:"entries,omitempty"`
	L7          []L7RuleSet  `json:"l7,omitempty"`
}

// EndpointPolicy is the policy of every endpoint with one identity.
type EndpointPolicy struct {
	Identity Identity        `json:"identity"`
	Ingress  DirectionPolicy `json:"ingress"`
	Egress   DirectionPolicy `json:"egress"`
}

// Direction returns the policy for d.
func (p *EndpointPolicy) Direction(d Direction) *DirectionPolicy {
	if d == Egress {
		return &p.Egress
	}
	return &p.Ingress
}

// L7Set returns the L7 rule set of a redirected port, or nil.
func (d *DirectionPolicy) L7Set(proto Protocol, port uint16) *L7RuleSet {
	for i := range d.L7 {
		if d.L7[i].Protocol == proto && d.L7[i].Port == port {
			return &d.L7[i]
		}
	}
	return nil
}

// IdentityInfo is an identity with its labels.
type IdentityInfo struct {
	ID     Identity `json:"id"`
	Labels []string `json:"labels"`
}

// Endpoint is a pod that l7gate enforces policy for.
type Endpoint struct {
	Namespace  string       `json:"namespace"`
	Name       string       `json:"name"`
	Identity   Identity     `json:"identity"`
	IPs        []netip.Addr `json:"ips"`
	NamedPorts []NamedPort  `json:"namedPorts,omitempty"`
	Node       string       `json:"node,omitempty"`
}

// IPCacheEntry maps an address prefix to the identity of what lives there.
type IPCacheEntry struct {
	Prefix   netip.Prefix `json:"prefix"`
	Identity Identity     `json:"identity"`
}

func sortEntries(es []Entry) {
	slices.SortFunc(es, func(a, b Entry) int {
		switch {
		case a.Peer != b.Peer:
			return cmpU(uint64(a.Peer), uint64(b.Peer))
		case a.Protocol != b.Protocol:
			return cmpU(uint64(a.Protocol), uint64(b.Protocol))
		case a.Port != b.Port:
			return cmpU(uint64(a.Port), uint64(b.Port))
		case a.EndPort != b.EndPort:
			return cmpU(uint64(a.EndPort), uint64(b.EndPort))
		case a.Verdict != b.Verdict:
			return strings.Compare(string(a.Verdict), string(b.Verdict))
		}
		return strings.Compare(a.Parser, b.Parser)
	})
}

func cmpU(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
