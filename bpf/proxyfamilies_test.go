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
	return upstreamSocketWith(t, ns, pod, peer, nil)
}

// upstreamSocketWith is upstreamSocket that passes the upstream socket to
// got (if not nil).
func upstreamSocketWith(t *testing.T, ns string, pod, peer netip.Addr, got func(net.Conn)) pkt {
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
	if got != nil {
		got(c)
	}
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
// lookup for an untracked ACK into a pod (to_proxy_socket) while no proxy
// socket of the packet's family was ever registered, or no TCP flow of
// that family leaving the pod was ever redirected to a proxy
// (proxied_clients), and a skipped lookup only drops: a proxy's upstream
// socket then gets nothing, and never does the pod get it past its
// policy. Once both happened, replies reach the proxy's upstream socket
// even after the listener is gone (a proxied connection outlives its
// redirect) and after the datapath is reopened; a proxy_families map
// created next to a sockmap that already holds sockets (an upgrade) looks
// too, and so does a proxied_clients map created next to a served family
// (an upgrade from a datapath that did not record its redirects).
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
	// proxy's socket is dropped (default deny). Its egress to the peer's
	// port 80 goes to the IPv4 proxy port, 81 to the IPv6 one.
	pol := enforcedIngress(PolicyEntry{Peer: otherID, Protocol: ProtoTCP, Port: 1, Verdict: VerdictAllow, RuleID: 1})
	pol.Egress = DirectionPolicy{Enforced: true, Entries: []PolicyEntry{
		{Peer: peerID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictRedirect, ProxyPort: testProxyPrt, RuleID: 2},
		{Peer: peerID, Protocol: ProtoTCP, Port: 81, Verdict: VerdictRedirect, ProxyPort: testProxyPrt + 1, RuleID: 3},
	}}
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
	wantBoth("an IPv4 proxy listener, no flow of the pod redirected", actShot, actShot)
	redirectFrom(t, d, podIP, 80)
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
	wantBoth("an IPv6 proxy listener, no IPv6 flow of the pod redirected", actRedirect, actShot)
	redirectFrom(t, d, podIP6, 81)
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

	// A proxied_clients map created while both families are served:
	// every endpoint is recorded for both.
	d.Close()
	if err := os.Remove(filepath.Join(bpffs, mapsDir, datapathMapProxiedClients)); err != nil {
		t.Fatal(err)
	}
	d = fixtureAt(t, bpffs, pol) // the pinned endpoints map holds the pod
	wantBoth("proxied clients map created next to served families", actRedirect, actRedirect)

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

// redirectFrom sends a SYN from the pod (src, its IPv4 or IPv6 address) to
// the peer's port, which its egress policy redirects to a proxy.
func redirectFrom(t *testing.T, d *Datapath, src netip.Addr, port uint16) {
	t.Helper()
	dst := peerIP
	if src.Is6() {
		dst = peerIP6
	}
	r := d.fromPod(t, pkt{src: src, dst: dst, sport: 40000, dport: port, proto: ProtoTCP, tcpFlags: tcpSYN})
	if r.ret != actOK || r.mark&MarkMagicMask != MarkMagicToProxy {
		t.Fatalf("redirect from %s to port %d: ret %d mark %#x", src, port, r.ret, r.mark)
	}
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

// runOn is runIn on the veth with ifindex (in ns): the packet is seen as
// the endpoint registered there sends or receives it.
func runOn(t *testing.T, ns string, prog *ebpf.Program, p pkt, ifindex int) runResult {
	t.Helper()
	var res runResult
	mustInNS(t, ns, func() error {
		var out struct {
			skbCtx
			_ [192 - 68]byte
		}
		data := p.bytes()
		ret, err := prog.Run(&ebpf.RunOptions{Data: data, DataOut: make([]byte, len(data)+256),
			Context: skbCtx{Ifindex: uint32(ifindex)}, ContextOut: &out})
		res = runResult{ret: ret, mark: out.Mark}
		return err
	})
	return res
}

// TestPrivilegedProxiedClientForgedACK: the attacker's side of
// proxied_clients. A hostile pod on the node, whose own egress is
// redirected to the proxy, gets only itself recorded: sending from the
// proxied client's address is dropped at its veth (spoofed) and records
// nothing, so an ACK for the client's proxy upstream socket is not looked
// up and is dropped by the client's ingress policy, never passed. Once the
// client's own flow was redirected, that ACK reaches the proxy's socket,
// while ACKs the hostile pod sends to the client (its own address, the
// upstream socket's ports or others) find no socket and are dropped.
func TestPrivilegedProxiedClientForgedACK(t *testing.T) {
	requireRoot(t)
	topo := netns.NewT(t, netns.Config{Prefix: netns.RandomPrefix("l7fa"), NodeAddr: netip.MustParseAddr(nodeAddr)})
	ns := topo.Node
	for _, a := range []string{podIP.String() + "/32", peerIP.String() + "/32"} {
		ipCmd(t, "-n", ns, "addr", "add", a, "dev", "lo")
	}
	for _, a := range []string{podIP6.String() + "/128", peerIP6.String() + "/128"} {
		ipCmd(t, "-n", ns, "addr", "add", a, "dev", "lo", "nodad")
	}
	// The hostile pod's veth (its peer stays in the node namespace: tc
	// only needs the host side's ifindex).
	ipCmd(t, "-n", ns, "link", "add", "hostile0", "type", "veth", "peer", "name", "hostile1")
	ipCmd(t, "-n", ns, "link", "set", "hostile0", "up")
	var hostileIfindex int
	mustInNS(t, ns, func() error {
		ifi, err := net.InterfaceByName("hostile0")
		if err == nil {
			hostileIfindex = ifi.Index
		}
		return err
	})
	const hostileEP = testEP + 1
	acks := map[string]pkt{"IPv4": upstreamSocket(t, ns, podIP, peerIP), "IPv6": upstreamSocket(t, ns, podIP6, peerIP6)}

	redirect := func(port uint16, proxyPort uint16, rule uint32) PolicyEntry {
		return PolicyEntry{Peer: peerID, Protocol: ProtoTCP, Port: port, Verdict: VerdictRedirect, ProxyPort: proxyPort, RuleID: rule}
	}
	egress := DirectionPolicy{Enforced: true, Entries: []PolicyEntry{redirect(80, testProxyPrt, 2), redirect(81, testProxyPrt+1, 3)}}
	// The client admits nothing on ingress: what is not handed to the
	// proxy's socket is dropped.
	client := enforcedIngress(PolicyEntry{Peer: peerID, Protocol: ProtoTCP, Port: 1, Verdict: VerdictAllow, RuleID: 1})
	client.Egress = egress
	client.Endpoint = testEP
	d := fixtureAt(t, mountBPFFS(t), client)
	if err := d.objs.Endpoints.Update(uint32(hostileIfindex), &datapathEndpointInfo{Id: hostileEP, Ipv4: otherIP.As4(), Ipv6: otherIP6.As16()}, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := d.SyncPolicy([]EndpointPolicy{client, {Endpoint: hostileEP, Egress: egress}}); err != nil {
		t.Fatal(err)
	}
	if err := d.RegisterProxyListener(testProxyPrt, listen(t)); err != nil {
		t.Fatal(err)
	}
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	l6, err := lc.Listen(context.Background(), "tcp6", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l6.Close() })
	if err := d.RegisterProxyListener(testProxyPrt+1, l6.(*net.TCPListener)); err != nil {
		t.Fatal(err)
	}
	recorded := func(ep uint32, af uint32) bool {
		var v uint32
		return d.objs.ProxiedClients.Lookup(proxiedKey{Endpoint: ep, Family: af}, &v) == nil
	}
	fams := []struct {
		name    string
		af      uint32
		client  netip.Addr
		hostile netip.Addr
		peer    netip.Addr
		port    uint16
	}{
		{"IPv4", unix.AF_INET, podIP, otherIP, peerIP, 80},
		{"IPv6", unix.AF_INET6, podIP6, otherIP6, peerIP6, 81},
	}
	for _, f := range fams {
		// The hostile pod's own flow goes to the proxy: it alone is recorded.
		r := runOn(t, ns, d.objs.TcFromPod, pkt{src: f.hostile, dst: f.peer, sport: 40000, dport: f.port, proto: ProtoTCP, tcpFlags: tcpSYN}, hostileIfindex)
		if r.ret != actOK || r.mark&MarkMagicMask != MarkMagicToProxy {
			t.Fatalf("%s: the hostile pod's redirect: ret %d mark %#x", f.name, r.ret, r.mark)
		}
		// Its SYN from the client's address is spoofed: dropped, not recorded.
		r = runOn(t, ns, d.objs.TcFromPod, pkt{src: f.client, dst: f.peer, sport: 40001, dport: f.port, proto: ProtoTCP, tcpFlags: tcpSYN}, hostileIfindex)
		if r.ret != actShot {
			t.Errorf("%s: SYN from the client's address at the hostile pod's veth: ret %d, want %d", f.name, r.ret, actShot)
		}
		if !recorded(hostileEP, f.af) || recorded(testEP, f.af) {
			t.Errorf("%s: recorded hostile %v client %v, want true false", f.name, recorded(hostileEP, f.af), recorded(testEP, f.af))
		}
		// So the ACK for the client's upstream socket is not looked up: dropped.
		if got := runIn(t, ns, d.objs.TcToPod, acks[f.name]); got != actShot {
			t.Errorf("%s: ACK for the upstream socket of a client never redirected: ret %d, want %d", f.name, got, actShot)
		}
	}
	for _, f := range fams {
		redirectFrom(t, d, f.client, f.port)
		ack := acks[f.name]
		if got := runIn(t, ns, d.objs.TcToPod, ack); got != actRedirect {
			t.Errorf("%s: ACK for the proxied client's upstream socket: ret %d, want %d (to the proxy)", f.name, got, actRedirect)
		}
		// The hostile pod's ACKs to the proxied client, from its own
		// address: with the upstream socket's ports and with others.
		forged := ack
		forged.src = f.hostile
		other := forged
		other.sport, other.dport = 40000, 40000
		for what, p := range map[string]pkt{"the upstream socket's ports": forged, "other ports": other} {
			if got := runIn(t, ns, d.objs.TcToPod, p); got != actShot {
				t.Errorf("%s: the hostile pod's ACK to the proxied client, %s: ret %d, want %d", f.name, what, got, actShot)
			}
		}
	}
}
