package bpf

import (
	"net"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestPrivilegedIPv6Pods: real dual-stack pods behind veths with the
// datapath attached. Neighbour discovery resolves the gateway although
// both directions of both pods are enforced; TCP over IPv6 is allowed or
// denied by the same identity-based policy as over IPv4; ICMPv6 echo
// follows the icmps rules of family IPv6.
func TestPrivilegedIPv6Pods(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("ping"); err != nil {
		t.Skip("needs ping (iputils-ping, hack/install-deps.sh)")
	}
	tp := newTopology(t)
	a := tp.addDualPod("a", "198.18.1.10", "2001:db8:1::a", 1, identA)
	b := tp.addDualPod("b", "198.18.1.11", "2001:db8:1::b", 2, identB)
	d := attachedDatapath(t, tp, a, b)
	evs := watchEvents(t, d)
	tcp := func(port uint16, rule uint32, peer Identity) PolicyEntry {
		return PolicyEntry{Peer: peer, Protocol: ProtoTCP, Port: port, Verdict: VerdictAllow, RuleID: rule}
	}
	echo6 := func(peer Identity, rule uint32) PolicyEntry {
		return PolicyEntry{Peer: peer, Protocol: ProtoICMPv6, Port: icmp6Echo, Verdict: VerdictAllow, RuleID: rule}
	}
	sync := func(bIngress ...PolicyEntry) {
		t.Helper()
		if _, err := d.SyncPolicy([]EndpointPolicy{
			{Endpoint: a.id, Egress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{tcp(7000, 1, b.ident), tcp(7001, 2, b.ident), echo6(b.ident, 3)}},
				Ingress: DirectionPolicy{Enforced: true}},
			{Endpoint: b.id, Ingress: DirectionPolicy{Enforced: true, Entries: bIngress},
				Egress: DirectionPolicy{Enforced: true}},
		}); err != nil {
			t.Fatal(err)
		}
	}
	sync(tcp(7000, 4, a.ident), echo6(a.ident, 5))
	for _, port := range []string{"7000", "7001"} {
		serveBanner(t, listenTCP6(t, b.ns, "[2001:db8:1::b]:"+port), "b"+port)
	}

	got, err := dialRead6(a.ns, "[2001:db8:1::b]:7000", 5*time.Second)
	if err != nil || !strings.HasPrefix(got, "b7000 [2001:db8:1::b]:7000") {
		t.Errorf("a -> b [IPv6]:7000 (allowed both ways): %q %v", got, err)
	}
	if got, err := dialRead6(a.ns, "[2001:db8:1::b]:7001", time.Second); err == nil {
		t.Errorf("a -> b [IPv6]:7001 (not allowed by b's ingress) answered %q", got)
	}
	if got, err := dialRead6(b.ns, "[2001:db8:1::a]:7000", time.Second); err == nil {
		t.Errorf("b -> a (b's egress enforced, empty) answered %q", got)
	}
	evs.waitFor(t, 1, func(ev Event) bool {
		return ev.Dropped && ev.Reason == ReasonDefault && ev.Endpoint == b.id && ev.Direction == Ingress &&
			ev.Dst.Port() == 7001 && ev.Src.Addr() == a.ip6 && ev.SrcIdentity == a.ident
	})
	// Both pods resolved their gateway by neighbour discovery.
	for _, p := range []*testPod{a, b} {
		out, err := exec.Command("ip", "-n", p.ns, "-6", "neigh", "show", nodeAddr6, "dev", "eth0").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "lladdr") {
			t.Errorf("%s: no neighbour entry for the gateway: %q %v", p.name, out, err)
		}
	}

	if ok, out := ping6(a.ns, "2001:db8:1::b", 3); !ok {
		t.Errorf("ping -6 a -> b with EchoRequest allowed both ways failed:\n%s", out)
	}
	if ok, out := ping6(b.ns, "2001:db8:1::a", 1); ok {
		t.Errorf("ping -6 b -> a (not allowed) succeeded:\n%s", out)
	}
	sync(tcp(7000, 4, a.ident))
	if ok, out := ping6(a.ns, "2001:db8:1::b", 1); ok {
		t.Errorf("ping -6 a -> b without b's ingress echo rule succeeded:\n%s", out)
	}
	evs.waitFor(t, 1, func(ev Event) bool {
		return ev.Dropped && ev.Protocol == ProtoICMPv6 && ev.Endpoint == b.id && ev.Reason == ReasonDefault
	})
	// IPv4 between the same pods still follows its own flows.
	serveBanner(t, listenTCP(t, b.ns, "198.18.1.11:7000", false), "b4")
	if got, err := dialRead(a.ns, "198.18.1.11:7000", dialOpts{}); err != nil || !strings.HasPrefix(got, "b4") {
		t.Errorf("a -> b IPv4:7000: %q %v", got, err)
	}
}

func ping6(ns, addr string, count int) (bool, string) {
	out, err := exec.Command("ip", "netns", "exec", ns, "ping", "-6", "-n", "-c", strconv.Itoa(count), "-i", "0.2", "-W", "1", addr).CombinedOutput()
	return err == nil, string(out)
}

func listenTCP6(t *testing.T, ns, addr string) *net.TCPListener {
	t.Helper()
	var l net.Listener
	mustInNS(t, ns, func() error {
		lc := net.ListenConfig{}
		lc.SetMultipathTCP(false)
		var err error
		l, err = lc.Listen(t.Context(), "tcp6", addr)
		return err
	})
	return l.(*net.TCPListener)
}

// dialRead6 connects over IPv6 from ns and reads the banner.
func dialRead6(ns, addr string, timeout time.Duration) (string, error) {
	var c net.Conn
	if err := inNS(ns, func() error {
		var err error
		c, err = net.DialTimeout("tcp6", addr, timeout)
		return err
	}); err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 256)
	n, err := c.Read(buf)
	return strings.TrimSpace(string(buf[:n])), err
}
