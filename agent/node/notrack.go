package node

import (
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"

	"github.com/l7gate/l7gate/bpf"
)

// The node's netfilter state for the redirect: nftables tables of our
// own (family ip, and ip6 where the node has IPv6), so it coexists with whatever else programs netfilter —
// kube-proxy through iptables-nft (tables raw, nat, filter) or
// iptables-legacy (xtables), firewalld, a CNI — without touching their
// tables or needing an iptables binary.
const (
	// NFTable is the nftables table (families ip and ip6) the agent owns.
	NFTable = "l7gate"
	// NFNoTrackChain is its raw-priority prerouting chain.
	NFNoTrackChain = "prerouting-raw"
	// noTrackComment tags the rule; a rule set without it (an older
	// version's) is replaced.
	noTrackComment = "l7gate: no conntrack for packets the datapath turned around to a proxy (v1)"
)

func noTrackTable() *nftables.Table { return noTrackTableOf(nftables.TableFamilyIPv4) }

func noTrackTableOf(f nftables.TableFamily) *nftables.Table {
	return &nftables.Table{Family: f, Name: NFTable}
}

// noTrackFamilies: ip, and ip6 unless IPv6 is disabled on the node.
func noTrackFamilies() []nftables.TableFamily {
	if !ipv6Enabled() {
		return []nftables.TableFamily{nftables.TableFamilyIPv4}
	}
	return []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6}
}

func noTrackChain(t *nftables.Table) *nftables.Chain {
	return &nftables.Chain{Name: NFNoTrackChain, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw}
}

// noTrackExprs is "meta mark & NoTrackMask == NoTrackValue counter
// notrack": the packets tc turned around into the node's stack (an ingress
// redirect, a reply to a proxy's upstream socket) skip conntrack on their
// second pass through PREROUTING. Their first pass was tracked (and NATed)
// as usual; tracking them again makes a second entry whose reply tuple
// clashes with a DNAT entry's (kube-proxy's ClusterIP), NAT remaps the
// port, and the proxy's answer never reaches the client. Redirects of
// traffic leaving a pod run before PREROUTING without the bit, so they are
// tracked (and kube-proxy's DNAT applies) once.
func noTrackExprs() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bpf.NoTrackMask), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(bpf.NoTrackValue)},
		&expr.Counter{},
		&expr.Notrack{},
	}
}

// NoTrackRule describes the rule in nft syntax (for docs and errors); the
// same rule is in a table of family ip6 on a node with IPv6.
func NoTrackRule() string {
	return fmt.Sprintf("table ip %s { chain %s { type filter hook prerouting priority raw; meta mark & %#x == %#x counter notrack } }",
		NFTable, NFNoTrackChain, bpf.NoTrackMask, bpf.NoTrackValue)
}

// ensureNoTrack installs the notrack rule in the network namespace of the
// calling thread. It is idempotent: a chain that already holds exactly our
// rule is left alone (its counter keeps counting); anything else in our
// chain is replaced in one atomic batch. Nothing removes it: like the
// policy-routing rule it is node state, needed as long as pinned
// redirects may turn packets around.
func ensureNoTrack() error {
	for _, f := range noTrackFamilies() {
		if err := ensureNoTrackOf(f); err != nil {
			return err
		}
	}
	return nil
}

func ensureNoTrackOf(f nftables.TableFamily) error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	t := noTrackTableOf(f)
	ch := noTrackChain(t)
	if rules, err := c.GetRules(t, ch); err == nil && len(rules) == 1 {
		if s, ok := userdata.GetString(rules[0].UserData, userdata.TypeComment); ok && s == noTrackComment {
			return nil
		}
	}
	c.AddTable(t)
	c.AddChain(ch)
	c.FlushChain(ch)
	c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: noTrackExprs(),
		UserData: userdata.AppendString(nil, userdata.TypeComment, noTrackComment)})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("install nftables rule %s: %w", NoTrackRule(), err)
	}
	return nil
}

// NoTrackPackets returns how many packets the notrack rules (IPv4 and,
// on a node with IPv6, IPv6) matched in the calling thread's network
// namespace (for status and tests).
func NoTrackPackets() (uint64, error) {
	var sum uint64
	for _, f := range noTrackFamilies() {
		n, err := noTrackPacketsOf(f)
		if err != nil {
			return 0, err
		}
		sum += n
	}
	return sum, nil
}

func noTrackPacketsOf(f nftables.TableFamily) (uint64, error) {
	c, err := nftables.New()
	if err != nil {
		return 0, fmt.Errorf("nftables: %w", err)
	}
	t := noTrackTableOf(f)
	rules, err := c.GetRules(t, noTrackChain(t))
	if err != nil {
		return 0, fmt.Errorf("list %s/%s: %w", NFTable, NFNoTrackChain, err)
	}
	for _, r := range rules {
		for _, e := range r.Exprs {
			if ctr, ok := e.(*expr.Counter); ok {
				return ctr.Packets, nil
			}
		}
	}
	return 0, errors.New("notrack rule not installed")
}
