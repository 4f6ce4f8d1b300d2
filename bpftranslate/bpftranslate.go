// Package bpftranslate turns the policy IR of this node's endpoints into
// the eBPF datapath's map entries (package bpf's EndpointPolicy and
// IPCacheEntry). Like xds/translate and xds/envoytranslate it is pure and
// deterministic: the same snapshot, endpoints and redirect decisions give
// the same entries, in the same order, so an unchanged policy writes
// nothing (golden tests in testdata/).
//
// Where a redirect goes is decided by the caller (Redirect): the agent
// only hands out a proxy port whose listener the proxy has ACKed; any
// other redirect becomes a drop, so the datapath never sends a flow to a
// listener that is not there and never lets it through unchecked.
//
// Audit mode: a deny entry whose rules are all in audit mode (Provenance.
// Audit) gets the datapath's audit bit, and so does a default-deny whose
// rules all are (DirectionPolicy.AuditDefault); the datapath forwards what
// they would drop and reports it as audited.
//
// It imports policy, flow and bpf (for the entry types) only.
package bpftranslate

import (
	"hash/fnv"
	"net/netip"
	"slices"

	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/policy"
)

// LocalEndpoint is an endpoint of this node: a pod whose IP routes to a
// host-side veth here. Its ifindex is its datapath endpoint id.
type LocalEndpoint struct {
	policy.Endpoint
	Ifindex int    `json:"ifindex"`
	Device  string `json:"device"`
}

// Key is "namespace/name".
func (e LocalEndpoint) Key() string { return e.Namespace + "/" + e.Name }

// RuleID is the datapath's attribution id of a provenance: a stable hash
// (so an agent restart rewrites nothing), never 0.
func RuleID(p policy.Provenance) uint32 {
	h := fnv.New32a()
	h.Write([]byte(p.Policy + "|" + string(p.PolicyKind) + "|" + p.Path + "|" + string(p.Kind)))
	id := h.Sum32()
	if id == 0 {
		id = 1
	}
	return id
}

// Redirect returns the proxy port for redirects of ep in dir to parser,
// or ok=false: the redirect becomes a drop.
type Redirect func(ep LocalEndpoint, dir policy.Direction, parser string) (port uint16, ok bool)

// DroppedRedirect is a redirect that Policy turned into a drop.
type DroppedRedirect struct {
	Endpoint  LocalEndpoint
	Direction policy.Direction
	Parser    string
	// Origins are the rules behind the redirect.
	Origins []policy.Provenance
}

// Result is the datapath policy of the local endpoints.
type Result struct {
	// Policies has one entry per local endpoint with a policy, sorted by
	// endpoint id.
	Policies []bpf.EndpointPolicy
	// Rules names the policy rule behind each rule id in the entries.
	Rules map[uint32]policy.Provenance
	// Dropped lists the redirects that became drops, in endpoint order.
	Dropped []DroppedRedirect
}

// Policy turns the IR of the local endpoints into datapath entries.
// Redirects go to the port redirect gives, or become drops.
func Policy(snap *policy.Snapshot, local []LocalEndpoint, redirect Redirect) Result {
	out := Result{Rules: map[uint32]policy.Provenance{}}
	// Rule ids by provenance: entries share a few provenances, and the
	// hash is most of the translation's time at 1000 endpoints.
	ids := map[policy.Provenance]uint32{}
	ruleID := func(p policy.Provenance) uint32 {
		id, ok := ids[p]
		if !ok {
			id = RuleID(p)
			ids[p] = id
			out.Rules[id] = p
		}
		return id
	}
	// Endpoints whose identities share a computed direction policy (the
	// same entries) share its translation when it has no redirect (those
	// depend on the endpoint's proxy state).
	type shared struct {
		n  int
		bd bpf.DirectionPolicy
	}
	memo := map[*policy.Entry]shared{}
	for _, ep := range local {
		pol := snap.Policy(ep.Identity)
		if pol == nil {
			continue
		}
		bp := bpf.EndpointPolicy{Endpoint: uint32(ep.Ifindex)}
		for _, dir := range []policy.Direction{policy.Ingress, policy.Egress} {
			dp := pol.Direction(dir)
			// Audit mode: a deny (or default-deny) whose rules are all in
			// audit mode forwards and reports instead of dropping.
			bd := bpf.DirectionPolicy{Enforced: dp.Enforced, AuditDefault: dp.Enforced && flow.AllAudit(dp.DefaultDeny)}
			var first *policy.Entry
			if len(dp.Entries) > 0 {
				first = &dp.Entries[0]
			}
			if m, ok := memo[first]; ok && first != nil && m.n == len(dp.Entries) {
				bd.Entries = m.bd.Entries
				if dir == policy.Ingress {
					bp.Ingress = bd
				} else {
					bp.Egress = bd
				}
				continue
			}
			redirects := false
			dropped := map[string]int{} // parser → index in out.Dropped
			for _, e := range dp.Entries {
				be, _ := entry(e, ruleID)
				switch e.Verdict {
				case policy.VerdictRedirect:
					redirects = true
					port, ok := redirect(ep, dir, e.Parser)
					if ok && port != 0 {
						be.Verdict, be.ProxyPort = bpf.VerdictRedirect, port
						break
					}
					be.Verdict = bpf.VerdictDeny
					i, seen := dropped[e.Parser]
					if !seen {
						i = len(out.Dropped)
						dropped[e.Parser] = i
						out.Dropped = append(out.Dropped, DroppedRedirect{Endpoint: ep, Direction: dir, Parser: e.Parser})
					}
					out.Dropped[i].Origins = append(out.Dropped[i].Origins, e.Origins...)
				}
				bd.Entries = append(bd.Entries, be)
			}
			if first != nil && !redirects {
				memo[first] = shared{n: len(dp.Entries), bd: bd}
			}
			if dir == policy.Ingress {
				bp.Ingress = bd
			} else {
				bp.Egress = bd
			}
		}
		out.Policies = append(out.Policies, bp)
	}
	slices.SortFunc(out.Policies, func(a, b bpf.EndpointPolicy) int { return int(a.Endpoint) - int(b.Endpoint) })
	return out
}

// Entry translates one entry that needs no proxy port: allow, deny, or an
// unknown verdict as a deny (fail closed). ok is false for a redirect,
// which Policy completes (proxy port, or a drop).
func Entry(e policy.Entry) (be bpf.PolicyEntry, ok bool) { return entry(e, RuleID) }

func entry(e policy.Entry, ruleID func(policy.Provenance) uint32) (be bpf.PolicyEntry, ok bool) {
	be = bpf.PolicyEntry{Peer: bpf.Identity(e.Peer), Protocol: uint8(e.Protocol), Port: e.Port, EndPort: e.EndPort}
	if len(e.Origins) > 0 {
		be.RuleID = ruleID(e.Origins[0])
	}
	switch e.Verdict {
	case policy.VerdictAllow:
		be.Verdict = bpf.VerdictAllow
	case policy.VerdictDeny:
		be.Verdict, be.Audit = bpf.VerdictDeny, flow.AllAudit(e.Origins)
	case policy.VerdictRedirect:
		return be, false
	default:
		// A verdict this package does not know: drop (fail closed).
		be.Verdict = bpf.VerdictDeny
	}
	return be, true
}

// DenyAll is the policy of a direction that fails closed: enforced, and
// no entry allows anything.
func DenyAll() bpf.DirectionPolicy { return bpf.DirectionPolicy{Enforced: true} }

// IPCache is the snapshot's ipcache plus the node's own addresses as the
// host identity (also when a Node object lists them as remote-node for
// the other nodes). Both families: the datapath enforces IPv4 and IPv6
// (an IPv4-mapped IPv6 address is taken as the IPv4 address).
func IPCache(snap *policy.Snapshot, hostAddrs []netip.Addr) []bpf.IPCacheEntry {
	out := make([]bpf.IPCacheEntry, 0, len(snap.IPCache)+len(hostAddrs))
	seen := make(map[netip.Prefix]bool, len(snap.IPCache)+len(hostAddrs))
	for _, a := range hostAddrs {
		a = a.Unmap()
		p := netip.PrefixFrom(a, a.BitLen())
		if !a.IsValid() || seen[p] {
			continue
		}
		seen[p] = true
		out = append(out, bpf.IPCacheEntry{Prefix: p, Identity: bpf.Identity(policy.IdentityHost)})
	}
	for _, e := range snap.IPCache {
		if !e.Prefix.IsValid() || seen[e.Prefix] {
			continue
		}
		seen[e.Prefix] = true
		out = append(out, bpf.IPCacheEntry{Prefix: e.Prefix, Identity: bpf.Identity(e.Identity)})
	}
	return out
}
