package node

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/nftables"

	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/internal/netns"
)

// TestToProxyRule: the rule's selector is bpf's to-proxy mark under its
// magic mask, as DESIGN's redirect recipe writes it.
func TestToProxyRule(t *testing.T) {
	if got := ToProxyRule(); got != "0x200/0xf00" {
		t.Errorf("ToProxyRule() = %q, want 0x200/0xf00", got)
	}
}

// TestNoTrackRule: the notrack rule matches exactly the turned-around mark
// and still falls under the policy-routing rule's selector.
func TestNoTrackRule(t *testing.T) {
	want := "table ip l7gate { chain prerouting-raw { type filter hook prerouting priority raw; meta mark & 0xf01 == 0x201 counter notrack } }"
	if got := NoTrackRule(); got != want {
		t.Errorf("NoTrackRule() = %q, want %q", got, want)
	}
	for _, c := range []struct {
		mark    uint32
		notrack bool
	}{
		{bpf.TurnedAroundMark(15001), true},
		{bpf.TurnedAroundMark(0), true},
		{bpf.ToProxyMark(15001), false}, // egress redirect: tracked and DNATed once
		{bpf.ProxyMark(bpf.Ingress, 0x10001), false},
		{bpf.ProxyMark(bpf.Egress, 0x10001), false},
		{0x4000, false}, // kube-proxy's masquerade mark
	} {
		if got := c.mark&bpf.NoTrackMask == bpf.NoTrackValue; got != c.notrack {
			t.Errorf("mark %#x: notrack %v, want %v", c.mark, got, c.notrack)
		}
		if turned := c.mark&bpf.MarkMagicMask == bpf.MarkMagicToProxy; c.notrack && !turned {
			t.Errorf("mark %#x: notrack but not routed to the proxy", c.mark)
		}
	}
}

// TestPrivilegedNoTrackRule installs the rule in a fresh network namespace
// beside an iptables-nft raw table (as kube-proxy's iptables-nft leaves
// it): twice, leaving one rule whose counter keeps counting, and the other
// table untouched.
func TestPrivilegedNoTrackRule(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace")
	}
	b := make([]byte, 3)
	rand.Read(b)
	ns := "l7nt" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	if _, err := exec.LookPath("iptables-nft"); err == nil {
		if out, err := exec.Command("ip", "netns", "exec", ns, "iptables-nft", "-t", "raw", "-A", "PREROUTING", "-p", "udp", "--dport", "9", "-j", "CT", "--notrack").CombinedOutput(); err != nil {
			t.Fatalf("iptables-nft: %v %s", err, out)
		}
	}
	err := inNetNS(ns, func() error {
		for range 2 {
			if err := ensureNoTrack(); err != nil {
				return err
			}
		}
		c, err := nftables.New()
		if err != nil {
			return err
		}
		tables, err := c.ListTablesOfFamily(nftables.TableFamilyIPv4)
		if err != nil {
			return err
		}
		var names []string
		for _, tb := range tables {
			names = append(names, tb.Name)
		}
		t.Logf("ip tables: %v", names)
		tb := noTrackTable()
		rules, err := c.GetRules(tb, noTrackChain(tb))
		if err != nil {
			return err
		}
		if len(rules) != 1 {
			t.Errorf("%d rules in our chain after two installs, want 1", len(rules))
		}
		if _, err := NoTrackPackets(); err != nil {
			t.Errorf("counter: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ip", "netns", "exec", ns, "iptables-nft", "-t", "raw", "-S", "PREROUTING").CombinedOutput(); err == nil && !strings.Contains(string(out), "--notrack") {
		t.Errorf("iptables-nft's raw rule is gone:\n%s", out)
	}
}

// inNetNS runs f on an OS thread in namespace ns (netns.In); sockets
// made there stay in it.
func inNetNS(ns string, f func() error) error { return netns.In(ns, f) }

// TestPrivilegedSetupIPv6: Setup also gives IPv6 the redirect's node
// state — forwarding, the fwmark rule and the local route in the proxy
// table, the notrack rule in an ip6 table — idempotently (twice: one rule).
func TestPrivilegedSetupIPv6(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace")
	}
	b := make([]byte, 3)
	rand.Read(b)
	ns := "l7nt" + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v %s", err, out)
	}
	if err := inNetNS(ns, func() error {
		for range 2 {
			if err := Setup(t.Context()); err != nil {
				return err
			}
		}
		c, err := nftables.New()
		if err != nil {
			return err
		}
		tb := noTrackTableOf(nftables.TableFamilyIPv6)
		rules, err := c.GetRules(tb, noTrackChain(tb))
		if err != nil || len(rules) != 1 {
			t.Errorf("ip6 notrack rules: %d, %v; want 1", len(rules), err)
		}
		fwd, err := os.ReadFile("/proc/sys/net/ipv6/conf/all/forwarding")
		if err != nil || strings.TrimSpace(string(fwd)) != "1" {
			t.Errorf("ipv6 forwarding %q %v", fwd, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	rules, err := exec.Command("ip", "-n", ns, "-6", "rule", "show").CombinedOutput()
	if err != nil || strings.Count(string(rules), "fwmark 0x200/0xf00 lookup 2004") != 1 {
		t.Errorf("ip -6 rule: %v\n%s", err, rules)
	}
	routes, err := exec.Command("ip", "-n", ns, "-6", "route", "show", "table", "2004").CombinedOutput()
	if err != nil || !strings.Contains(string(routes), "local default dev lo") {
		t.Errorf("ip -6 route table 2004: %v\n%s", err, routes)
	}
}
