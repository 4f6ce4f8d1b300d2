package bpf

import (
	"errors"
	"fmt"
	"slices"
	"sort"
)

// Policy map layout and lookup order
//
// The policy map is a hash keyed by {endpoint, peer identity, direction,
// protocol, port prefix length, port}. Port ranges are expanded to aligned
// port prefixes (as Cilium does for its LPM policy map); a protocol-wildcard
// entry with ports is expanded to TCP, UDP and SCTP; a protocol-wildcard
// entry without ports is stored at the "any protocol" level
// (proto 0, prefix 0, port 0). For each (endpoint, direction) the ep_policy
// map records which levels (port prefix lengths 0..16, and "any protocol")
// are present, per protocol class (TCP, UDP, SCTP, other), for specific
// peers and for the wildcard peer.
//
// For a new flow the program, for the specific peer and then for the
// wildcard peer, probes the present levels from the most specific (exact
// port) to the least (any protocol) and stops at the first hit; the two
// answers are combined, deny > redirect > allow. Each stored value is
// pre-combined here, in user space, over every entry of the same peer
// whose L4 prefix covers the key, so the most specific hit already is that
// peer's answer: deny wins regardless of specificity, then redirect, then
// allow. A packet therefore costs at most one hash lookup per present level
// and peer kind (typically 2–4), independent of the number of entries.
//
// Audit mode: a deny entry with Audit set is combined apart from the
// others; where it covers a key that the others do not deny, the stored
// value keeps their verdict (none, allow or redirect) with the audit flag
// and the audited rule's id. The program forwards such a flow (redirects
// it, for a redirect) and reports it with the audit flag; an enforced deny
// always wins. A direction with AuditDefault forwards and reports what its
// default-deny would drop.
//
// Ties: among entries of equal verdict the most specific one, then the
// lowest rule id, decides the rule id (and the proxy port of a redirect).
//
// ICMP (icmps rules): an entry with protocol ICMP names one ICMP type in
// Port (type 0 is echo reply, not "all types"; all of ICMP is a
// protocol-wildcard entry without ports, which covers every protocol).
// It is stored as an exact port of protocol ICMP, and the program looks an
// ICMP packet up with its type as the port. ICMPv6 entries are the same
// with protocol ICMPv6 (58), which only IPv6 packets carry (the program
// drops ICMPv6 in IPv4 and ICMP in IPv6, so a rule of one family never
// matches the other's messages).

const levelAnyProto = 17

type l4Key struct {
	proto uint8
	plen  uint8
	port  uint16
}

type candidate struct {
	verdict   Verdict
	proxyPort uint16
	ruleID    uint32
}

// better reports whether c should replace cur at the same specificity.
func (c candidate) better(cur candidate, sameLevel bool) bool {
	if c.verdict != cur.verdict {
		return c.verdict > cur.verdict
	}
	return sameLevel && c.ruleID < cur.ruleID
}

// policyKey and policyValue are the Go forms of the map's key and value.
type policyKey = datapathPolicyKey
type policyValue = datapathPolicyValue
type epPolicyKey = datapathEpPolicyKey
type epPolicyValue = datapathEpPolicy

const (
	epPolicyEnforced     = 1
	epPolicyAuditDefault = 4 // c/datapath.c EP_POLICY_F_AUDIT_DEFAULT
	policyFlagAudit      = 1 // c/datapath.c POLICY_F_AUDIT
)

func portMask(plen uint8) uint16 {
	if plen == 0 {
		return 0
	}
	return uint16(0xFFFF << (16 - plen))
}

// portPrefixes covers [lo, hi] with the fewest aligned prefixes.
func portPrefixes(lo, hi uint16) []l4Key {
	var out []l4Key
	start, end := uint32(lo), uint32(hi)
	for start <= end {
		size := uint32(1)
		plen := uint8(16)
		for plen > 0 {
			next := size << 1
			if start%next != 0 || start+next-1 > end {
				break
			}
			size = next
			plen--
		}
		out = append(out, l4Key{plen: plen, port: uint16(start)})
		start += size
	}
	return out
}

func validateEntry(e PolicyEntry) error {
	switch e.Verdict {
	case VerdictAllow, VerdictDeny:
	case VerdictRedirect:
		// UDP: the DNS proxy's redirects (its UDP socket, see doc.go).
		if (e.Protocol != ProtoTCP && e.Protocol != ProtoUDP) || e.Port == 0 || (e.EndPort != 0 && e.EndPort != e.Port) {
			return fmt.Errorf("%w: redirect needs a single tcp or udp port", ErrInvalidEntry)
		}
		if e.ProxyPort == 0 {
			return fmt.Errorf("%w: redirect without proxy port", ErrInvalidEntry)
		}
	default:
		return fmt.Errorf("%w: verdict %d", ErrInvalidEntry, e.Verdict)
	}
	if e.Port == 0 && e.EndPort != 0 {
		return fmt.Errorf("%w: end port without port", ErrInvalidEntry)
	}
	if e.EndPort != 0 && e.EndPort < e.Port {
		return fmt.Errorf("%w: end port %d below port %d", ErrInvalidEntry, e.EndPort, e.Port)
	}
	switch e.Protocol {
	case ProtoICMP, ProtoICMPv6:
		// Port is the ICMP type: one type per entry.
		if e.Port > 0xFF || (e.EndPort != 0 && e.EndPort != e.Port) {
			return fmt.Errorf("%w: icmp type %d-%d (one type of 0-255)", ErrInvalidEntry, e.Port, e.EndPort)
		}
	case ProtoAny, ProtoTCP, ProtoUDP, ProtoSCTP:
	default:
		if e.Port != 0 {
			return fmt.Errorf("%w: ports with protocol %d", ErrInvalidEntry, e.Protocol)
		}
	}
	return nil
}

// expand turns an entry into the L4 keys it covers. An ICMP entry is one
// type, stored as an exact port (the program looks ICMP and ICMPv6 up
// with its type).
func expand(e PolicyEntry) []l4Key {
	switch {
	case e.Protocol == ProtoAny && e.Port == 0:
		return []l4Key{{}}
	case e.Protocol == ProtoICMP, e.Protocol == ProtoICMPv6:
		return []l4Key{{proto: e.Protocol, plen: 16, port: e.Port}}
	}
	var ranges []l4Key
	if e.Port == 0 {
		ranges = []l4Key{{plen: 0}}
	} else {
		end := e.EndPort
		if end == 0 {
			end = e.Port
		}
		ranges = portPrefixes(e.Port, end)
	}
	protos := []uint8{e.Protocol}
	if e.Protocol == ProtoAny {
		protos = []uint8{ProtoTCP, ProtoUDP, ProtoSCTP}
	}
	out := make([]l4Key, 0, len(ranges)*len(protos))
	for _, p := range protos {
		for _, r := range ranges {
			out = append(out, l4Key{proto: p, plen: r.plen, port: r.port})
		}
	}
	return out
}

// compiledPolicy is the desired content of the policy and ep_policy maps,
// and the endpoint directions that could not be compiled (they fail
// closed).
type compiledPolicy struct {
	policy   map[policyKey]policyValue
	epPolicy map[epPolicyKey]epPolicyValue
	failed   map[epPolicyKey]error
}

// compilePolicy turns endpoint policies into map contents. It is pure, so
// the lookup semantics can be tested without a kernel. An endpoint
// direction with an invalid entry (or an endpoint listed twice: both its
// directions) is left out of the maps and listed in failed; the returned
// error joins those errors.
func compilePolicy(eps []EndpointPolicy) (compiledPolicy, error) {
	out := compiledPolicy{
		policy:   make(map[policyKey]policyValue),
		epPolicy: make(map[epPolicyKey]epPolicyValue),
		failed:   make(map[epPolicyKey]error),
	}
	count := make(map[uint32]int, len(eps))
	for _, ep := range eps {
		count[ep.Endpoint]++
	}
	for _, ep := range eps {
		for _, d := range []struct {
			dir Direction
			pol DirectionPolicy
		}{{Ingress, ep.Ingress}, {Egress, ep.Egress}} {
			key := epPolicyKey{Endpoint: ep.Endpoint, Dir: uint8(d.dir)}
			var err error
			switch {
			case ep.Endpoint == 0:
				err = fmt.Errorf("%w: endpoint id 0", ErrInvalidEntry)
			case count[ep.Endpoint] > 1:
				err = fmt.Errorf("%w: endpoint %d listed twice", ErrInvalidEntry, ep.Endpoint)
			default:
				err = compileDirection(ep.Endpoint, d.dir, d.pol, out)
			}
			if err != nil {
				out.failed[key] = fmt.Errorf("endpoint %d %s: %w", ep.Endpoint, d.dir, err)
			}
		}
	}
	var errs []error
	for _, k := range sortedKeys(out.failed) {
		errs = append(errs, out.failed[k])
	}
	return out, errors.Join(errs...)
}

func sortedKeys[V any](m map[epPolicyKey]V) []epPolicyKey {
	keys := make([]epPolicyKey, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].Endpoint != keys[j].Endpoint {
			return keys[i].Endpoint < keys[j].Endpoint
		}
		return keys[i].Dir < keys[j].Dir
	})
	return keys
}

func compileDirection(ep uint32, dir Direction, dp DirectionPolicy, out compiledPolicy) error {
	src, err := compileSource(ep, dir, dp)
	if err != nil || src == nil {
		return err
	}
	for _, ps := range src.peers {
		for i, k := range ps.keys {
			out.policy[k] = ps.vals[i]
		}
	}
	out.epPolicy[epPolicyKey{Endpoint: ep, Dir: uint8(dir)}] = src.meta()
	return nil
}

// dirSource is an endpoint direction's policy compiled peer by peer: the
// keys of one peer depend on that peer's entries only, the ep_policy
// value on the union of the peers' levels. A partial sync recompiles only
// the peers whose entries changed (sync.go).
type dirSource struct {
	flags uint32 // ep_policy flags
	peers map[Identity]*peerSource
	// counts: per protocol class and level, how many specific peers
	// have a key there (LevelsPeer is where the count is not zero).
	counts [4][levelAnyProto + 1]int32
}

// peerSource is one peer's entries (in the order given) and their keys.
type peerSource struct {
	entries []PolicyEntry
	keys    []policyKey // Gen 0
	vals    []policyValue
	levels  [4]uint32 // the levels its keys are at
	mark    uint64    // sync.go: seen by the plan of this epoch
}

// compileSource compiles a direction; nil (and no error) when it has no
// policy (not enforced, no entries).
func compileSource(ep uint32, dir Direction, dp DirectionPolicy) (*dirSource, error) {
	if !dp.Enforced && len(dp.Entries) == 0 {
		return nil, nil
	}
	// Validate everything before compiling anything.
	for _, e := range dp.Entries {
		if err := validateEntry(e); err != nil {
			return nil, err
		}
	}
	src := &dirSource{flags: directionFlags(dp), peers: make(map[Identity]*peerSource)}
	// The source keeps the entries: a copy, the caller's may change.
	for peer, es := range groupByPeer(slices.Clone(dp.Entries)) {
		src.add(peer, compilePeer(ep, dir, peer, es))
	}
	return src, nil
}

func directionFlags(dp DirectionPolicy) uint32 {
	var f uint32
	if dp.Enforced {
		f = epPolicyEnforced
		if dp.AuditDefault {
			f |= epPolicyAuditDefault
		}
	}
	return f
}

// groupByPeer splits entries by peer, each peer's in their order. Runs
// of one peer (entries sorted by peer, as the agent gives them) share the
// caller's array.
func groupByPeer(entries []PolicyEntry) map[Identity][]PolicyEntry {
	out := make(map[Identity][]PolicyEntry)
	for i := 0; i < len(entries); {
		j := i + 1
		for j < len(entries) && entries[j].Peer == entries[i].Peer {
			j++
		}
		peer := entries[i].Peer
		if prev, ok := out[peer]; ok {
			out[peer] = append(slices.Clip(prev), entries[i:j]...) // not sorted: a copy
		} else {
			out[peer] = entries[i:j:j]
		}
		i = j
	}
	return out
}

// add records a peer's compiled keys (replacing none: remove first).
func (s *dirSource) add(peer Identity, ps *peerSource) {
	s.peers[peer] = ps
	if peer != IdentityAny {
		addCounts(&s.counts, ps.levels, 1)
	}
}

// remove forgets a peer.
func (s *dirSource) remove(peer Identity) {
	ps, ok := s.peers[peer]
	if !ok {
		return
	}
	delete(s.peers, peer)
	if peer != IdentityAny {
		addCounts(&s.counts, ps.levels, -1)
	}
}

// meta is the direction's ep_policy value (generation 0).
func (s *dirSource) meta() epPolicyValue {
	var levelsAny [4]uint32
	if ps := s.peers[IdentityAny]; ps != nil {
		levelsAny = ps.levels
	}
	return levelsFrom(s.flags, &s.counts, levelsAny)
}

// compilePeer compiles one peer's (valid) entries: each key's value is
// pre-combined over the peer's entries covering it.
func compilePeer(ep uint32, dir Direction, peer Identity, entries []PolicyEntry) *peerSource {
	// Best candidate per exact key. Deny entries in audit mode are
	// combined on their own (audits): they never mask what the other
	// entries give, they only mark it.
	g := make(map[l4Key]candidate)
	var ag map[l4Key]candidate
	for _, e := range entries {
		all := g
		if e.Audit && e.Verdict == VerdictDeny {
			if ag == nil {
				ag = make(map[l4Key]candidate)
			}
			all = ag
		}
		c := candidate{verdict: e.Verdict, proxyPort: e.ProxyPort, ruleID: e.RuleID}
		for _, k := range expand(e) {
			if cur, ok := all[k]; !ok || c.better(cur, true) {
				all[k] = c
			}
		}
	}
	present := make(map[uint8]uint32) // proto -> port prefix lengths present
	keys := make(map[l4Key]bool, len(g)+len(ag))
	for _, m := range []map[l4Key]candidate{g, ag} {
		for k := range m {
			present[k.proto] |= 1 << k.plen
			keys[k] = true
		}
	}
	ps := &peerSource{entries: entries, keys: make([]policyKey, 0, len(keys)), vals: make([]policyValue, 0, len(keys))}
	for k := range keys {
		best := combine(g, k, present[k.proto])
		var flags uint8
		if best.verdict != VerdictDeny {
			if a := combine(ag, k, present[k.proto]); a.verdict == VerdictDeny {
				flags, best.ruleID = policyFlagAudit, a.ruleID
			}
		}
		if k.proto == ProtoAny {
			for pc := range ps.levels {
				ps.levels[pc] |= 1 << levelAnyProto
			}
		} else {
			ps.levels[protoClass(k.proto)] |= 1 << k.plen
		}
		ps.keys = append(ps.keys, policyKey{
			Endpoint: ep,
			Identity: uint32(peer),
			Dir:      uint8(dir),
			Proto:    k.proto,
			PortPlen: k.plen,
			Port:     htons(k.port),
		})
		ps.vals = append(ps.vals, policyValue{Verdict: uint8(best.verdict), Flags: flags, ProxyPort: best.proxyPort, RuleId: best.ruleID})
	}
	return ps
}

// combine folds every entry of the group whose L4 prefix covers k, from the
// most specific (k itself) to the least (any protocol); levels has a bit
// for each port prefix length present for k's protocol.
func combine(g map[l4Key]candidate, k l4Key, levels uint32) candidate {
	best := g[k]
	if k.proto != ProtoAny {
		for plen := int(k.plen) - 1; plen >= 0; plen-- {
			if levels&(1<<plen) == 0 {
				continue
			}
			a := l4Key{proto: k.proto, plen: uint8(plen), port: k.port & portMask(uint8(plen))}
			if c, ok := g[a]; ok && c.better(best, false) {
				best = c
			}
		}
		if c, ok := g[l4Key{}]; ok && c.better(best, false) {
			best = c
		}
	}
	return best
}

// protoClass indexes the per-protocol level masks (c/datapath.c).
func protoClass(proto uint8) int {
	switch proto {
	case ProtoTCP:
		return 0
	case ProtoUDP:
		return 1
	case ProtoSCTP:
		return 2
	}
	return 3
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
