package agent

import (
	"hash/fnv"
	"net/netip"
	"slices"

	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/redirect"
)

// LocalEndpoint is an endpoint of this node: a pod whose IP routes to a
// host-side veth here.
type LocalEndpoint struct {
	policy.Endpoint
	Ifindex int    `json:"ifindex"`
	Device  string `json:"device"`
}

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

func portKey(dir policy.Direction, parser string) redirect.PortKey {
	return redirect.PortKey{Direction: dir.String(), Parser: parser}
}

// proxyParsers lists the parsers the Go proxy serves.
func proxyParser(parser string) bool {
	return parser == policy.ParserHTTP || parser == policy.ParserKafka
}

// datapathPolicy turns the IR of the local endpoints into datapath
// entries. Redirects point at the proxy port of (direction, parser); a
// redirect to a parser no proxy serves becomes a deny (fail closed).
func datapathPolicy(snap *policy.Snapshot, local []LocalEndpoint, ports map[redirect.PortKey]uint16) ([]bpf.EndpointPolicy, map[uint32]policy.Provenance, []string) {
	var out []bpf.EndpointPolicy
	rules := map[uint32]policy.Provenance{}
	var warnings []string
	for _, ep := range local {
		pol := snap.Policy(ep.Identity)
		if pol == nil {
			continue
		}
		bp := bpf.EndpointPolicy{Endpoint: uint32(ep.Ifindex)}
		for _, dir := range []policy.Direction{policy.Ingress, policy.Egress} {
			dp := pol.Direction(dir)
			bd := bpf.DirectionPolicy{Enforced: dp.Enforced}
			for _, e := range dp.Entries {
				be := bpf.PolicyEntry{Peer: bpf.Identity(e.Peer), Protocol: uint8(e.Protocol), Port: e.Port, EndPort: e.EndPort}
				if len(e.Origins) > 0 {
					be.RuleID = RuleID(e.Origins[0])
					rules[be.RuleID] = e.Origins[0]
				}
				switch e.Verdict {
				case policy.VerdictAllow:
					be.Verdict = bpf.VerdictAllow
				case policy.VerdictDeny:
					be.Verdict = bpf.VerdictDeny
				case policy.VerdictRedirect:
					port, ok := ports[portKey(dir, e.Parser)]
					if !ok || !proxyParser(e.Parser) {
						warnings = append(warnings, "endpoint "+ep.Namespace+"/"+ep.Name+": no proxy serves L7 parser "+e.Parser+"; that traffic is dropped")
						be.Verdict = bpf.VerdictDeny
						break
					}
					be.Verdict, be.ProxyPort = bpf.VerdictRedirect, port
				}
				bd.Entries = append(bd.Entries, be)
			}
			if dir == policy.Ingress {
				bp.Ingress = bd
			} else {
				bp.Egress = bd
			}
		}
		out = append(out, bp)
	}
	slices.SortFunc(out, func(a, b bpf.EndpointPolicy) int { return int(a.Endpoint) - int(b.Endpoint) })
	return out, rules, warnings
}

// datapathIPCache is the snapshot's ipcache plus the node's own addresses
// as the host identity.
func datapathIPCache(snap *policy.Snapshot, hostAddrs []netip.Addr) []bpf.IPCacheEntry {
	out := make([]bpf.IPCacheEntry, 0, len(snap.IPCache)+len(hostAddrs))
	seen := map[netip.Prefix]bool{}
	// The node's own addresses are the host, also when a Node object lists
	// them (as remote-node for the other nodes).
	for _, a := range hostAddrs {
		p := netip.PrefixFrom(a, a.BitLen())
		if !a.Is4() || seen[p] {
			continue
		}
		seen[p] = true
		out = append(out, bpf.IPCacheEntry{Prefix: p, Identity: bpf.Identity(policy.IdentityHost)})
	}
	for _, e := range snap.IPCache {
		if !e.Prefix.Addr().Is4() || seen[e.Prefix] {
			continue // the datapath enforces IPv4 for now
		}
		seen[e.Prefix] = true
		out = append(out, bpf.IPCacheEntry{Prefix: e.Prefix, Identity: bpf.Identity(e.Identity)})
	}
	return out
}
