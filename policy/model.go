package policy

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/l7gate/l7gate/flow"
)

// Protocol is an IP protocol number; ProtoAny (0) matches every protocol.
type Protocol uint8

// Protocols l7gate understands in policy.
const (
	ProtoAny    Protocol = 0
	ProtoICMP   Protocol = 1
	ProtoTCP    Protocol = 6
	ProtoUDP    Protocol = 17
	ProtoICMPv6 Protocol = 58
	ProtoSCTP   Protocol = 132
)

func (p Protocol) String() string {
	switch p {
	case ProtoAny:
		return "ANY"
	case ProtoICMP:
		return "ICMP"
	case ProtoTCP:
		return "TCP"
	case ProtoUDP:
		return "UDP"
	case ProtoICMPv6:
		return "ICMPv6"
	case ProtoSCTP:
		return "SCTP"
	}
	return fmt.Sprintf("proto-%d", uint8(p))
}

// MarshalText renders the protocol name.
func (p Protocol) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText parses a protocol name as MarshalText renders it.
func (p *Protocol) UnmarshalText(b []byte) error {
	v, err := ParseProtocol(string(b))
	if err != nil {
		var n uint8
		if _, serr := fmt.Sscanf(string(b), "proto-%d", &n); serr == nil {
			*p = Protocol(n)
			return nil
		}
		return err
	}
	*p = v
	return nil
}

// ParseProtocol parses TCP, UDP, SCTP, ANY (case-insensitive); "" is ANY.
func ParseProtocol(s string) (Protocol, error) {
	switch strings.ToUpper(s) {
	case "", "ANY":
		return ProtoAny, nil
	case "TCP":
		return ProtoTCP, nil
	case "UDP":
		return ProtoUDP, nil
	case "SCTP":
		return ProtoSCTP, nil
	case "ICMP":
		return ProtoICMP, nil
	case "ICMPV6":
		return ProtoICMPv6, nil
	}
	return 0, fmt.Errorf("unknown protocol %q (want TCP, UDP, SCTP or ANY)", s)
}

// Direction of traffic relative to the endpoint whose policy applies
// (package flow owns it).
type Direction = flow.Direction

// Directions.
const (
	Ingress = flow.Ingress
	Egress  = flow.Egress
)

// PolicyKind is the kind of object a rule came from (package flow owns it).
type PolicyKind = flow.PolicyKind

// Policy kinds.
const (
	KindCNP  = flow.KindCNP
	KindCCNP = flow.KindCCNP
	KindNP   = flow.KindNP
)

// AuditAnnotation puts a policy (CiliumNetworkPolicy,
// CiliumClusterwideNetworkPolicy, NetworkPolicy) or a Namespace in audit
// mode when its value is "true": what the policy (or any policy, for the
// endpoints of the namespace) would drop or deny is forwarded and recorded
// with verdict audit. Any other value enforces.
const AuditAnnotation = "l7gate.io/audit"

// Namespace is a decoded v1 Namespace.
type Namespace struct {
	Ref    ObjectRef
	Name   string
	Labels map[string]string
	// Audit: annotated with AuditAnnotation "true": every policy is in
	// audit mode for the namespace's endpoints.
	Audit bool
}

// Node is a decoded v1 Node: its InternalIP and ExternalIP addresses are
// the remote-node identity (the agent maps its own node's to host).
type Node struct {
	Ref  ObjectRef
	Name string
	IPs  []netip.Addr
}

// APIServer is the default/kubernetes EndpointSlice (discovery.k8s.io/v1):
// its endpoint addresses are the kube-apiserver entity.
type APIServer struct {
	Ref ObjectRef
	IPs []netip.Addr
}

// NamedPort is a container port with a name, for named-port resolution.
type NamedPort struct {
	Name     string   `json:"name"`
	Port     uint16   `json:"port"`
	Protocol Protocol `json:"protocol"`
}

// Pod is a decoded v1 Pod: the facts that make it an endpoint.
type Pod struct {
	Ref            ObjectRef
	Namespace      string
	Name           string
	Labels         map[string]string
	Annotations    map[string]string
	ServiceAccount string
	IPs            []netip.Addr
	NamedPorts     []NamedPort
	HostNetwork    bool
	NodeName       string
	Phase          string
}

// Policy is a validated, normalised CiliumNetworkPolicy,
// CiliumClusterwideNetworkPolicy or NetworkPolicy.
type Policy struct {
	Ref   ObjectRef
	Kind  PolicyKind
	Rules []Rule
	// Invalid is set on the fail-closed stand-in for a policy that failed
	// to decode (see failClosed): its rules only hold the endpoints they
	// select in default-deny. It says why the policy is invalid.
	Invalid string
	// Audit: annotated with AuditAnnotation "true". An invalid policy is
	// never in audit (it holds its endpoints in default-deny: fail closed).
	Audit bool
}

// Name is "namespace/name" for namespaced policies and "name" for
// clusterwide ones: the policy's name in provenance and messages.
func (p *Policy) Name() string {
	if p.Ref.Namespace == "" {
		return p.Ref.Name
	}
	return p.Ref.Namespace + "/" + p.Ref.Name
}

// Rule is one Cilium rule (a spec or one entry of specs), or the whole of a
// NetworkPolicy.
type Rule struct {
	Path    string   // "spec", "specs[1]"
	Subject Selector // endpoints the rule applies to, namespace already added
	// DefaultDeny is the explicit enableDefaultDeny setting per direction
	// (nil: default, which is deny when the rule has sections in that
	// direction).
	DefaultDeny [2]*bool
	Allow       [2][]Section // indexed by Direction
	Deny        [2][]Section
}

// Section is one entry of ingress/egress/ingressDeny/egressDeny.
type Section struct {
	Path  string // "spec.ingress[0]"
	Index int
	Peers Peers
	// Ports nil means every port and protocol.
	Ports []PortRule
	// Dropped, when set, says why the section allows nothing (unsupported
	// fields that would widen access if ignored).
	Dropped string
}

// Peers is the union of peer selectors of a section.
type Peers struct {
	// Any: no L3 restriction (no peer field given, or entity "all").
	Any       bool
	Selectors []Selector
	CIDRs     []CIDRSelector
	Entities  []string
	// FQDNs (toFQDNs): the addresses DNS answers gave names these select,
	// as FQDN identities (labels fqdn:<selector>; see Options.FQDNCache).
	FQDNs []DNSSelector
	// Services (toServices) are resolved against the Services when policy
	// is computed: a Service with a selector adds its selector (in its
	// namespace) to Selectors, one without adds its endpoints' addresses
	// to CIDRs, as Cilium does.
	Services []ServiceSelector
}

// ServiceSelector is one toServices entry: k8sService (Name) or
// k8sServiceSelector (Selector, over the Service's labels). An empty
// Namespace matches Services of every namespace (Cilium's rule, also in a
// namespaced policy).
type ServiceSelector struct {
	Path      string
	Name      string
	Namespace string
	Selector  *Selector
}

func (s ServiceSelector) sameAs(o ServiceSelector) bool {
	if s.Name != o.Name || s.Namespace != o.Namespace || (s.Selector == nil) != (o.Selector == nil) {
		return false
	}
	return s.Selector == nil || s.Selector.String() == o.Selector.String()
}

// Matches reports whether s selects the Service.
func (s ServiceSelector) Matches(svc *Service) bool {
	if s.Namespace != "" && s.Namespace != svc.Namespace {
		return false
	}
	if s.Selector == nil {
		return s.Name == svc.Name
	}
	ls := make(Labels, 0, len(svc.Labels))
	for k, v := range svc.Labels {
		_, key := parseLabelKey(k)
		ls = append(ls, Label{Source: SourceK8s, Key: key, Value: v})
	}
	return s.Selector.Matches(NewLabels(ls...))
}

// CIDRSelector selects the CIDR identities inside Prefix and outside Except.
type CIDRSelector struct {
	Prefix netip.Prefix
	Except []netip.Prefix
}

// PortRule is one entry of toPorts.
type PortRule struct {
	Path    string
	Ports   []PortSpec
	L7      *L7Rules
	Dropped string
}

// PortSpec is one port (or range) with its protocol. Port 0 means every
// port; Name is a named port still to be resolved.
type PortSpec struct {
	Protocol Protocol
	Port     uint16
	EndPort  uint16
	Name     string
}

// Parser names an L7 parser.
const (
	ParserHTTP  = "http"
	ParserKafka = "kafka"
	ParserDNS   = "dns"
)

// L7Rules are the L7 rules of one toPorts entry.
type L7Rules struct {
	Parser  string // "http", "kafka", "dns" or the l7proto name
	HTTP    []HTTPRule
	Kafka   []KafkaRule
	DNS     []DNSSelector
	Generic []map[string]string
}

// count is the number of L7 rules.
func (l *L7Rules) count() int { return len(l.HTTP) + len(l.Kafka) + len(l.DNS) + len(l.Generic) }
