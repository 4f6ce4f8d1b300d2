package bpf

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/l7gate/l7gate/internal/netns"
)

// upstreamSocket opens, in ns, what an egress proxy's transparent upstream
// connection is: a connected TCP socket whose local address is the pod's
// (here simply an address of the namespace's lo), carrying a from-proxy
// SO_MARK, to a listener on peer. It returns the ACK the peer would send
// to it (what tc_to_pod sees on its way into the pod).
func upstreamSocket(t *testing.T, ns string, pod, peer netip.Addr) pkt {
	t.Helper()
	var l net.Listener
	var c net.Conn
	mustInNS(t, ns, func() error {
		var lc net.ListenConfig
		lc.SetMultipathTCP(false)
		var err error
		l, err = lc.Listen(context.Background(), "tcp", netip.AddrPortFrom(peer, 0).String())
		if err != nil {
			return err
		}
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(pod, 0))}
		d.SetMultipathTCP(false)
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(ProxyMark(Egress, podID)))
			})
			return errors.Join(err, serr)
		}
		c, err = d.Dial("tcp", l.Addr().String())
		return err
	})
	t.Cleanup(func() { c.Close(); l.Close() })
	local := c.LocalAddr().(*net.TCPAddr).AddrPort()
	remote := c.RemoteAddr().(*net.TCPAddr).AddrPort()
	return pkt{src: remote.Addr().Unmap(), dst: local.Addr().Unmap(), sport: remote.Port(), dport: local.Port(), proto: ProtoTCP, tcpFlags: tcpACK}
}

// runIn runs prog on p in ns: BPF_PROG_TEST_RUN runs on the loopback of
// the caller's namespace, and bpf_sk_lookup_tcp (BPF_F_CURRENT_NETNS)
// looks there.
func runIn(t *testing.T, ns string, prog *ebpf.Program, p pkt) uint32 {
	t.Helper()
	var ret uint32
	mustInNS(t, ns, func() error {
		data := p.bytes()
		var err error
		ret, err = prog.Run(&ebpf.RunOptions{Data: data, DataOut: make([]byte, len(data)+256)})
		return err
	})
	return ret
}

// TestPrivilegedProxySocketLookupSkip: the datapath skips the socket
// lookup for an untracked ACK into a pod (to_proxy_socket) only while no
// proxy socket of the packet's family was ever registered, and a skipped
// lookup only drops: a proxy's upstream socket then gets nothing, and
// never does the pod get it past its policy. Once a socket of the family
// was registered, replies reach the proxy's upstream socket even after the
// listener is gone (a proxied connection outlives its redirect) and after
// the datapath is reopened; a proxy_families map created next to a
// sockmap that already holds sockets (an upgrade) looks too.
func TestPrivilegedProxySocketLookupSkip(t *testing.T) {
	requireRoot(t)
	topo := netns.NewT(t, netns.Config{Prefix: netns.RandomPrefix("l7pf"), NodeAddr: netip.MustParseAddr(nodeAddr)})
	ns := topo.Node
	for _, a := range []string{podIP.String() + "/32", peerIP.String() + "/32"} {
		ipCmd(t, "-n", ns, "addr", "add", a, "dev", "lo")
	}
	for _, a := range []string{podIP6.String() + "/128", peerIP6.String() + "/128"} {
		ipCmd(t, "-n", ns, "addr", "add", a, "dev", "lo", "nodad")
	}
	ack4 := upstreamSocket(t, ns, podIP, peerIP)
	ack6 := upstreamSocket(t, ns, podIP6, peerIP6)
	// The pod's ingress admits nothing: whatever is not handed to the
	// proxy's socket is dropped (default deny).
	pol := enforcedIngress(PolicyEntry{Peer: otherID, Protocol: ProtoTCP, Port: 1, Verdict: VerdictAllow, RuleID: 1})
	bpffs := mountBPFFS(t)
	d := fixtureAt(t, bpffs, pol)

	wantBoth := func(what string, want4, want6 uint32) {
		t.Helper()
		if got := runIn(t, ns, d.objs.TcToPod, ack4); got != want4 {
			t.Errorf("%s: IPv4 ACK to the upstream socket: ret %d, want %d", what, got, want4)
		}
		if got := runIn(t, ns, d.objs.TcToPod, ack6); got != want6 {
			t.Errorf("%s: IPv6 ACK to the upstream socket: ret %d, want %d", what, got, want6)
		}
	}
	wantBoth("no proxy socket ever registered", actShot, actShot)

	// An AF_INET listener serves IPv4 only: IPv6 is still skipped.
	l4 := listen(t)
	if err := d.RegisterProxyListener(testProxyPrt, l4); err != nil {
		t.Fatal(err)
	}
	wantBoth("an IPv4 proxy listener", actRedirect, actShot)

	// An IPv6-only listener ([::1]) serves IPv6; unregistered and closed,
	// the families stay: the upstream connections outlive it.
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	l6, err := lc.Listen(context.Background(), "tcp6", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := d.RegisterProxyListener(testProxyPrt+1, l6.(*net.TCPListener)); err != nil {
		t.Fatal(err)
	}
	wantBoth("an IPv6 proxy listener", actRedirect, actRedirect)
	if err := d.UnregisterProxyListener(testProxyPrt + 1); err != nil {
		t.Fatal(err)
	}
	l6.Close()
	wantBoth("the IPv6 listener gone", actRedirect, actRedirect)

	// A new datapath on the same pins (agent restart) keeps them.
	d.Close()
	d = fixtureAt(t, bpffs, pol)
	wantBoth("reopened", actRedirect, actRedirect)

	// A proxy_families map created while the sockmap holds a socket (the
	// IPv4 listener, still registered): both families are looked up.
	d.Close()
	if err := os.Remove(filepath.Join(bpffs, mapsDir, datapathMapProxyFamilies)); err != nil {
		t.Fatal(err)
	}
	d = fixtureAt(t, bpffs, pol)
	wantBoth("families map created next to a registered socket", actRedirect, actRedirect)

	// The same with an empty sockmap: nothing can be found, skipped.
	if err := d.UnregisterProxyListener(testProxyPrt); err != nil {
		t.Fatal(err)
	}
	d.Close()
	if err := os.Remove(filepath.Join(bpffs, mapsDir, datapathMapProxyFamilies)); err != nil {
		t.Fatal(err)
	}
	d = fixtureAt(t, bpffs, pol)
	wantBoth("families map created next to an empty sockmap", actShot, actShot)
}

// fixtureAt is fixture on a given bpffs (to reopen the same pins).
func fixtureAt(t *testing.T, bpffs string, pol EndpointPolicy) *Datapath {
	t.Helper()
	d := openTest(t, Config{BPFFSPath: bpffs})
	if _, err := d.SyncIPCache(fixtureIPCache()); err != nil {
		t.Fatal(err)
	}
	if err := d.objs.Endpoints.Update(uint32(testIfindex), &datapathEndpointInfo{Id: testEP, Ipv4: podIP.As4(), Ipv6: podIP6.As16()}, 0); err != nil {
		t.Fatal(err)
	}
	pol.Endpoint = testEP
	if _, err := d.SyncPolicy([]EndpointPolicy{pol}); err != nil {
		t.Fatal(err)
	}
	return d
}
