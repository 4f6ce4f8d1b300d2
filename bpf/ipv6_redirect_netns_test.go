package bpf

import (
	"context"
	"errors"
	"fmt"
	"net"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// listen6 opens a transparent (IPV6_TRANSPARENT) AF_INET6 listener in
// ns on addr: "[::1]:0" takes IPv6 only, "[::]:0" (no IPV6_V6ONLY) both
// families.
func listen6(t *testing.T, ns, addr string) *net.TCPListener {
	t.Helper()
	var l net.Listener
	mustInNS(t, ns, func() error {
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
			})
			return errors.Join(err, serr)
		}}
		lc.SetMultipathTCP(false)
		var err error
		l, err = lc.Listen(context.Background(), "tcp", addr)
		return err
	})
	t.Cleanup(func() { l.Close() })
	return l.(*net.TCPListener)
}

// TestPrivilegedIPv6RedirectToProxy: the redirect over IPv6 — IPv6 policy
// routing for the to-proxy mark (ip -6 rule + a local route), sk_lookup
// for IPv6 flows, transparent proxy listeners whose accepted sockets carry
// the original IPv6 destination — for an egress redirect (the mark alone)
// and an ingress redirect (turned around into the node). A proxy port has
// an IPv4 listener (127.0.0.1) and an IPv6 one ([::1]), or one dual-stack
// listener ([::]); a port with only an IPv4 listener drops IPv6 redirects.
func TestPrivilegedIPv6RedirectToProxy(t *testing.T) {
	requireRoot(t)
	tp := newTopology(t)
	ipCmd(t, "-n", tp.node, "-6", "rule", "add", "fwmark", "0x200/0xf00", "lookup", fmt.Sprint(ProxyRoutingTable))
	ipCmd(t, "-n", tp.node, "-6", "route", "add", "local", "::/0", "dev", "lo", "table", fmt.Sprint(ProxyRoutingTable))
	a := tp.addDualPod("a", "198.18.1.10", "2001:db8:1::a", 1, identA)
	b := tp.addDualPod("b", "198.18.1.11", "2001:db8:1::b", 2, identB)
	d := attachedDatapath(t, tp, a, b)
	evs := watchEvents(t, d)
	const egressPort, ingressPort, v4OnlyPort = 16001, 16002, 16003
	egress4 := listenTCP(t, tp.node, "127.0.0.1:0", true)
	egress6 := listen6(t, tp.node, "[::1]:0")
	seen4, seen6 := serveBanner(t, egress4, "egress-proxy-v4"), serveBanner(t, egress6, "egress-proxy-v6")
	ingress := listen6(t, tp.node, "[::]:0")
	serveBanner(t, ingress, "ingress-proxy")
	v4only := listenTCP(t, tp.node, "127.0.0.1:0", true)
	serveBanner(t, v4only, "v4-only-proxy")
	for _, r := range []struct {
		port uint16
		l    *net.TCPListener
	}{{egressPort, egress4}, {egressPort, egress6}, {ingressPort, ingress}, {v4OnlyPort, v4only}} {
		if err := d.RegisterProxyListener(r.port, r.l); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := d.SyncPolicy([]EndpointPolicy{
		{Endpoint: a.id, Egress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{
			{Peer: b.ident, Protocol: ProtoTCP, Port: 80, Verdict: VerdictRedirect, ProxyPort: egressPort, RuleID: 1},
			{Peer: b.ident, Protocol: ProtoTCP, Port: 81, Verdict: VerdictRedirect, ProxyPort: v4OnlyPort, RuleID: 2},
			{Peer: b.ident, Protocol: ProtoTCP, Port: 8080, Verdict: VerdictAllow, RuleID: 3},
			{Peer: b.ident, Protocol: ProtoTCP, Port: 8081, Verdict: VerdictAllow, RuleID: 4},
		}}},
		{Endpoint: b.id, Ingress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{
			{Peer: a.ident, Protocol: ProtoTCP, Port: 8080, Verdict: VerdictRedirect, ProxyPort: ingressPort, RuleID: 5},
			{Peer: a.ident, Protocol: ProtoTCP, Port: 8081, Verdict: VerdictAllow, RuleID: 6},
		}}},
	}); err != nil {
		t.Fatal(err)
	}
	serveBanner(t, listenTCP6(t, b.ns, "[2001:db8:1::b]:8081"), "server")

	wantBanner(t, a.ns, "[2001:db8:1::b]:8081", dialOpts{}, "server [2001:db8:1::b]:8081")
	wantBanner(t, a.ns, "[2001:db8:1::b]:80", dialOpts{}, "egress-proxy-v6 [2001:db8:1::b]:80")
	for range 2 { // the same 4-tuple again (TIME_WAIT at the proxy)
		wantBanner(t, a.ns, "[2001:db8:1::b]:80", dialOpts{localPort: 41000}, "egress-proxy-v6 [2001:db8:1::b]:80")
	}
	wantBanner(t, a.ns, "198.18.1.11:80", dialOpts{}, "egress-proxy-v4 198.18.1.11:80")
	wantBanner(t, a.ns, "[2001:db8:1::b]:8080", dialOpts{}, "ingress-proxy [2001:db8:1::b]:8080")
	wantBanner(t, a.ns, "198.18.1.11:8080", dialOpts{}, "ingress-proxy 198.18.1.11:8080")
	if n4, n6 := len(seen4.seen()), len(seen6.seen()); n4 != 1 || n6 != 3 {
		t.Errorf("egress proxy accepted %d IPv4 and %d IPv6 connections, want 1 and 3", n4, n6)
	}
	// A port with an IPv4 listener only: IPv4 is redirected, IPv6 dropped.
	wantBanner(t, a.ns, "198.18.1.11:81", dialOpts{}, "v4-only-proxy 198.18.1.11:81")
	wantBlocked(t, a.ns, "[2001:db8:1::b]:81", dialOpts{})
	evs.waitFor(t, 1, func(ev Event) bool {
		return ev.Dropped && ev.Reason == ReasonNoListener && ev.Dst.Addr() == b.ip6 && ev.Dst.Port() == 81
	})
	// No listener at all: the redirected IPv6 SYN is dropped, never passed.
	if err := d.UnregisterProxyListener(egressPort); err != nil {
		t.Fatal(err)
	}
	wantBlocked(t, a.ns, "[2001:db8:1::b]:80", dialOpts{})
	wantBlocked(t, a.ns, "198.18.1.11:80", dialOpts{})
}
