package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Maps gives typed read access to the datapath maps, for a running
// Datapath or, through OpenPinnedMaps, for tools reading the pins.
type Maps struct {
	ipcache, endpoints, epPolicy, policy, conntrack, ruleStats, proxyCgroups *ebpf.Map
}

func mapsFrom(m *datapathMaps) Maps {
	return Maps{
		ipcache:   m.Ipcache,
		endpoints: m.Endpoints,
		epPolicy:  m.EpPolicy,
		policy:    m.Policy,
		conntrack: m.Conntrack,
		ruleStats: m.RuleStats,

		proxyCgroups: m.ProxyCgroups,
	}
}

// PinnedMaps are the datapath maps opened read-only from their pins.
type PinnedMaps struct {
	Maps
}

// OpenPinnedMaps opens the maps pinned under bpffsPath by a Datapath.
func OpenPinnedMaps(bpffsPath string) (*PinnedMaps, error) {
	p := &PinnedMaps{}
	for _, m := range []struct {
		name string
		dst  **ebpf.Map
	}{
		{datapathMapIpcache, &p.ipcache},
		{datapathMapEndpoints, &p.endpoints},
		{datapathMapEpPolicy, &p.epPolicy},
		{datapathMapPolicy, &p.policy},
		{datapathMapConntrack, &p.conntrack},
		{datapathMapRuleStats, &p.ruleStats},
		{datapathMapProxyCgroups, &p.proxyCgroups},
	} {
		mp, err := ebpf.LoadPinnedMap(filepath.Join(bpffsPath, mapsDir, m.name), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("open pinned map %s: %w", m.name, err)
		}
		*m.dst = mp
	}
	return p, nil
}

// Close closes the map handles.
func (p *PinnedMaps) Close() error {
	var errs []error
	for _, m := range []*ebpf.Map{p.ipcache, p.endpoints, p.epPolicy, p.policy, p.conntrack, p.ruleStats, p.proxyCgroups} {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	return errors.Join(errs...)
}

// PolicyMapEntry is one compiled key of the policy map: the verdict a flow
// gets when this is the most specific key present for its peer (already
// combined with the less specific entries of the same peer).
type PolicyMapEntry struct {
	Endpoint  uint32    `json:"endpoint"`
	Direction Direction `json:"direction"`
	Peer      Identity  `json:"peer"`
	Protocol  uint8     `json:"protocol"`
	// Port/PrefixLen is a port prefix; PrefixLen 16 is a single port.
	Port      uint16  `json:"port"`
	PrefixLen uint8   `json:"prefixLen"`
	Verdict   Verdict `json:"verdict"`
	ProxyPort uint16  `json:"proxyPort,omitempty"`
	RuleID    uint32  `json:"ruleId"`
}

// EndpointDirection is the ep_policy entry of an endpoint and direction.
type EndpointDirection struct {
	Endpoint  uint32    `json:"endpoint"`
	Direction Direction `json:"direction"`
	Enforced  bool      `json:"enforced"`
	// Levels are bitmasks of present port prefix lengths (bit 17: any
	// protocol) for specific peers and for the wildcard peer, per protocol
	// class (TCP, UDP, SCTP, other).
	LevelsPeer [4]uint32 `json:"levelsPeer"`
	LevelsAny  [4]uint32 `json:"levelsAny"`
	// FailedClosed: the last sync could not write this direction's
	// policy, so it drops everything (SyncError).
	FailedClosed bool `json:"failedClosed,omitempty"`
	// Generation of the keys in force (0 or 1; see SyncPolicy).
	Generation uint32 `json:"generation"`
}

// ConntrackEntry is one flow as seen on one endpoint and direction.
type ConntrackEntry struct {
	Endpoint  uint32         `json:"endpoint"`
	Direction Direction      `json:"direction"`
	Protocol  uint8          `json:"protocol"`
	Src       netip.AddrPort `json:"src"`
	Dst       netip.AddrPort `json:"dst"`
	Peer      Identity       `json:"peer"`
	Verdict   Verdict        `json:"verdict"`
	ProxyPort uint16         `json:"proxyPort,omitempty"`
	RuleID    uint32         `json:"ruleId"`
	Revision  uint32         `json:"revision"`
	Flags     uint8          `json:"flags"`
	// Age and Idle are measured against CLOCK_MONOTONIC now.
	Age  time.Duration `json:"age"`
	Idle time.Duration `json:"idle"`
}

// Conntrack entry flags.
const (
	CTSeenReply = 1
	CTClosing   = 2
	CTFromProxy = 4 // from a proxy's upstream socket (trusted mark)
	CTDefault   = 8 // admitted by the default (no entry matched)
	// CTFromEgressProxy (with CTFromProxy): from the egress proxy, which
	// does not skip the destination's ingress redirect.
	CTFromEgressProxy = 16
)

// RuleCounter sums, over all CPUs, the packets a rule decided: the first
// packet of every flow it admitted (or redirected) and every packet it
// dropped. Later packets of established flows are not counted.
type RuleCounter struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// Policy lists the compiled policy map: the keys in force (of the
// generation each endpoint direction's ep_policy names; none of a
// direction that failed closed).
func (m Maps) Policy() ([]PolicyMapEntry, error) {
	meta, err := dumpMap[epPolicyKey, epPolicyValue](m.epPolicy)
	if err != nil {
		return nil, err
	}
	raw, err := dumpMap[policyKey, policyValue](m.policy)
	if err != nil {
		return nil, err
	}
	out := make([]PolicyMapEntry, 0, len(raw))
	for k, v := range raw {
		if mv, ok := meta[epPolicyKey{Endpoint: k.Endpoint, Dir: k.Dir}]; !ok || mv.Gen != uint32(k.Gen) || mv.Flags&epPolicyFailClosed != 0 {
			continue
		}
		out = append(out, PolicyMapEntry{
			Endpoint: k.Endpoint, Direction: Direction(k.Dir), Peer: Identity(k.Identity),
			Protocol: k.Proto, Port: htons(k.Port), PrefixLen: k.PortPlen,
			Verdict: Verdict(v.Verdict), ProxyPort: v.ProxyPort, RuleID: v.RuleId,
		})
	}
	return out, nil
}

// EndpointDirections lists the per-endpoint, per-direction policy settings.
func (m Maps) EndpointDirections() ([]EndpointDirection, error) {
	raw, err := dumpMap[epPolicyKey, epPolicyValue](m.epPolicy)
	if err != nil {
		return nil, err
	}
	out := make([]EndpointDirection, 0, len(raw))
	for k, v := range raw {
		out = append(out, EndpointDirection{
			Endpoint: k.Endpoint, Direction: Direction(k.Dir), Enforced: v.Flags&epPolicyEnforced != 0,
			LevelsPeer: v.LevelsPeer, LevelsAny: v.LevelsAny,
			FailedClosed: v.Flags&epPolicyFailClosed != 0, Generation: v.Gen,
		})
	}
	return out, nil
}

// IPCache lists the ipcache.
func (m Maps) IPCache() ([]IPCacheEntry, error) {
	raw, err := dumpMap[datapathIpcacheKey, datapathIpcacheValue](m.ipcache)
	if err != nil {
		return nil, err
	}
	out := make([]IPCacheEntry, 0, len(raw))
	for k, v := range raw {
		var a netip.Addr
		if k.Family == unix.AF_INET {
			a = netip.AddrFrom4([4]byte(k.Addr[:4]))
		} else {
			a = netip.AddrFrom16(k.Addr)
		}
		out = append(out, IPCacheEntry{Prefix: netip.PrefixFrom(a, int(k.Prefixlen)-32), Identity: Identity(v.Identity)})
	}
	return out, nil
}

// Endpoints lists the attached endpoints.
func (m Maps) Endpoints() ([]Endpoint, error) {
	raw, err := dumpMap[uint32, datapathEndpointInfo](m.endpoints)
	if err != nil {
		return nil, err
	}
	out := make([]Endpoint, 0, len(raw))
	for ifindex, v := range raw {
		ep := Endpoint{ID: v.Id, Ifindex: int(ifindex)}
		if v.Ipv4 != [4]byte{} {
			ep.IPv4 = netip.AddrFrom4(v.Ipv4)
		}
		if v.Ipv6 != [16]byte{} {
			ep.IPv6 = netip.AddrFrom16(v.Ipv6)
		}
		out = append(out, ep)
	}
	return out, nil
}

// Conntrack lists the conntrack table, including expired entries the LRU
// has not reclaimed yet.
func (m Maps) Conntrack() ([]ConntrackEntry, error) {
	raw, err := dumpMap[datapathCtKey, datapathCtValue](m.conntrack)
	if err != nil {
		return nil, err
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return nil, fmt.Errorf("clock: %w", err)
	}
	now := uint64(ts.Nano())
	out := make([]ConntrackEntry, 0, len(raw))
	for k, v := range raw {
		e := ConntrackEntry{
			Endpoint: k.Endpoint, Direction: Direction(k.Dir), Protocol: k.Proto,
			Src:  netip.AddrPortFrom(ctAddr(k.Family, k.Saddr), htons(k.Sport)),
			Dst:  netip.AddrPortFrom(ctAddr(k.Family, k.Daddr), htons(k.Dport)),
			Peer: Identity(v.PeerIdentity), Verdict: Verdict(v.Verdict), ProxyPort: v.ProxyPort,
			RuleID: v.RuleId, Revision: v.Revision, Flags: v.Flags,
		}
		if now > v.Created {
			e.Age = time.Duration(now - v.Created)
		}
		if now > v.LastSeen {
			e.Idle = time.Duration(now - v.LastSeen)
		}
		out = append(out, e)
	}
	return out, nil
}

func ctAddr(family uint8, a [16]byte) netip.Addr {
	if family == unix.AF_INET {
		return netip.AddrFrom4([4]byte(a[:4]))
	}
	return netip.AddrFrom16(a)
}

// RuleCounters returns the per-rule counters summed over CPUs; rule id 0
// counts packets no entry matched (default verdicts, malformed, …).
func (m Maps) RuleCounters() (map[uint32]RuleCounter, error) {
	out := make(map[uint32]RuleCounter)
	var k uint32
	var vs []datapathRuleStats
	it := m.ruleStats.Iterate()
	for it.Next(&k, &vs) {
		var c RuleCounter
		for _, v := range vs {
			c.Packets += v.Packets
			c.Bytes += v.Bytes
		}
		out[k] = c
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("dump rule counters: %w", err)
	}
	return out, nil
}
