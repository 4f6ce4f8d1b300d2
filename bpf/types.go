package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/l7gate/l7gate/flow"
)

// Identity is a numeric security identity; package flow owns the type and
// the reserved numbers (Cilium's). IdentityAny is the wildcard peer of a
// policy entry and never the identity of a real peer.
type Identity = flow.Identity

// Reserved identities (flow's).
const (
	IdentityAny           = flow.IdentityAny
	IdentityHost          = flow.IdentityHost
	IdentityWorld         = flow.IdentityWorld
	IdentityUnmanaged     = flow.IdentityUnmanaged
	IdentityHealth        = flow.IdentityHealth
	IdentityInit          = flow.IdentityInit
	IdentityRemoteNode    = flow.IdentityRemoteNode
	IdentityKubeAPIServer = flow.IdentityKubeAPIServer
	// FirstClusterIdentity is the first identity allocated for pods.
	FirstClusterIdentity = flow.FirstClusterIdentity
	// FirstCIDRIdentity is the first node-local CIDR identity.
	FirstCIDRIdentity = flow.FirstCIDRIdentity
)

// Direction is relative to the endpoint: Ingress is traffic arriving at the
// pod, Egress is traffic leaving it.
type Direction uint8

const (
	Ingress Direction = 0
	Egress  Direction = 1
)

func (d Direction) String() string {
	switch d {
	case Ingress:
		return "ingress"
	case Egress:
		return "egress"
	}
	return fmt.Sprintf("direction(%d)", uint8(d))
}

// Verdict of a policy entry. Larger values win when entries combine:
// deny beats redirect beats allow.
type Verdict uint8

const (
	VerdictNone     Verdict = 0 // no entry matched
	VerdictAllow    Verdict = 1
	VerdictRedirect Verdict = 2
	VerdictDeny     Verdict = 3
)

func (v Verdict) String() string {
	switch v {
	case VerdictNone:
		return "none"
	case VerdictAllow:
		return "allow"
	case VerdictRedirect:
		return "redirect"
	case VerdictDeny:
		return "deny"
	}
	return fmt.Sprintf("verdict(%d)", uint8(v))
}

// IP protocol numbers used by policy entries; ProtoAny matches every protocol.
const (
	ProtoAny  uint8 = 0
	ProtoICMP uint8 = 1
	ProtoTCP  uint8 = 6
	ProtoUDP  uint8 = 17
	ProtoSCTP uint8 = 132
	// ProtoICMPv6 entries match ICMPv6 messages (IPv6 only) by type.
	ProtoICMPv6 uint8 = 58
)

// PolicyEntry is one L3/L4 policy entry of an endpoint in one direction.
type PolicyEntry struct {
	// Peer is the remote identity; IdentityAny matches every peer.
	Peer Identity
	// Protocol is ProtoAny or an IP protocol number.
	Protocol uint8
	// Port and EndPort give the destination port range [Port, EndPort];
	// Port 0 means all ports, EndPort 0 means just Port. For ProtoICMP and
	// ProtoICMPv6, Port is one ICMP type (0 is echo reply, not all types)
	// and EndPort is 0 or Port.
	Port, EndPort uint16
	Verdict       Verdict
	// ProxyPort is the proxy's listener port for VerdictRedirect.
	ProxyPort uint16
	// RuleID attributes the entry's verdicts in counters and events.
	RuleID uint32
	// Audit (deny entries only): the rule is in audit mode: the flow is
	// forwarded as the other entries decide and reported as audited.
	Audit bool
}

// DirectionPolicy is an endpoint's policy in one direction.
type DirectionPolicy struct {
	// Enforced makes the direction default-deny.
	Enforced bool
	// AuditDefault (with Enforced): the default-deny is in audit mode:
	// what no entry matches is forwarded and reported as audited.
	AuditDefault bool
	Entries      []PolicyEntry
}

// EndpointPolicy is the whole L3/L4 policy of one endpoint.
type EndpointPolicy struct {
	Endpoint uint32
	Ingress  DirectionPolicy
	Egress   DirectionPolicy
}

// IPCacheEntry maps a prefix to the identity of the addresses in it.
type IPCacheEntry struct {
	Prefix   netip.Prefix
	Identity Identity
}

// Endpoint is a local pod as the datapath sees it: the host side of its veth.
type Endpoint struct {
	ID      uint32
	Ifindex int
	// IPv4, when set, is the only IPv4 source address the pod may send
	// from (anti-spoofing). IPv6 is the only IPv6 source address it may
	// send from; without it the pod sends no IPv6 but neighbour discovery
	// (from link-local addresses).
	IPv4, IPv6 netip.Addr
}

// SyncStats counts what a Sync wrote.
type SyncStats struct {
	Added, Updated, Deleted, Unchanged int
}

func (s SyncStats) String() string {
	return fmt.Sprintf("added=%d updated=%d deleted=%d unchanged=%d", s.Added, s.Updated, s.Deleted, s.Unchanged)
}

// MapSizes sets the capacity of the datapath maps; zero fields take the
// defaults. Changing a size of an existing pinned map is an error
// (ErrIncompatiblePin): remove the pins to resize. Ipcache and endpoint
// overflows are errors (ErrMapFull) before anything is written; an
// endpoint direction whose policy does not fit fails closed (SyncPolicy);
// conntrack and fragments evict least recently used entries; counters of
// rule ids beyond RuleStats are not kept; events beyond the ring buffer are
// counted as suppressed (EventStats).
type MapSizes struct {
	IPCache        uint32 // prefixes
	Endpoints      uint32 // attached veths
	EndpointPolicy uint32 // (endpoint, direction) pairs; default max(8192, 2×Endpoints)
	Policy         uint32 // compiled policy keys
	Conntrack      uint32 // flows, per direction and endpoint (LRU)
	Fragments      uint32 // datagrams in flight as fragments, per family (LRU)
	ProxySockets   uint32 // proxy listener ports
	ProxyUpstreams uint32 // recorded proxy upstream sockets (a full map turns the pre-filter off)
	RuleStats      uint32 // distinct rule ids with counters
	EventsBytes    uint32 // ring buffer size, a power of two
}

// defaultMapSizes are the sizes used for zero MapSizes fields.
func defaultMapSizes() MapSizes {
	return MapSizes{
		IPCache:        65536,
		Endpoints:      4096,
		EndpointPolicy: 8192,
		Policy:         262144,
		Conntrack:      262144,
		Fragments:      8192,
		ProxySockets:   1024,
		ProxyUpstreams: 65536,
		RuleStats:      65536,
		EventsBytes:    1 << 20,
	}
}

// CTTimeouts bound how long an idle conntrack entry stays valid.
type CTTimeouts struct {
	TCP        time.Duration // established TCP
	TCPSyn     time.Duration // TCP not yet answered
	TCPClosing time.Duration // after FIN or RST
	Other      time.Duration // UDP, SCTP, ICMP, …
}

func defaultCTTimeouts() CTTimeouts {
	return CTTimeouts{
		TCP:        6 * time.Hour,
		TCPSyn:     60 * time.Second,
		TCPClosing: 10 * time.Second,
		Other:      60 * time.Second,
	}
}

// Errors returned (wrapped) by this package.
var (
	ErrMapFull         = errors.New("map full")
	ErrInvalidEntry    = errors.New("invalid policy entry")
	ErrIncompatiblePin = errors.New("pinned map incompatible with this version")
	ErrNodeSetup       = errors.New("node setup incomplete")
)

// MarshalText renders the direction by name (JSON, logs).
func (d Direction) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// MarshalText renders the verdict by name (JSON, logs).
func (v Verdict) MarshalText() ([]byte, error) { return []byte(v.String()), nil }

// UnmarshalText parses a direction name.
func (d *Direction) UnmarshalText(b []byte) error {
	for _, c := range []Direction{Ingress, Egress} {
		if c.String() == string(b) {
			*d = c
			return nil
		}
	}
	return fmt.Errorf("unknown direction %q", b)
}

// UnmarshalText parses a verdict name.
func (v *Verdict) UnmarshalText(b []byte) error {
	for _, c := range []Verdict{VerdictNone, VerdictAllow, VerdictRedirect, VerdictDeny} {
		if c.String() == string(b) {
			*v = c
			return nil
		}
	}
	return fmt.Errorf("unknown verdict %q", b)
}
