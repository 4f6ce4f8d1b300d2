package bpf

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/l7gate/l7gate/internal/netns"
)

// upstreamFixture is TestPrivilegedProxiedClientForgedACK's node: a
// namespace whose lo holds the client pod's and the peer's addresses, the
// client (testEP, ingress admits nothing) and a hostile pod (its own
// veth), both with egress to the peer's ports 80 (IPv4 proxy port) and 81
// (IPv6 proxy port) redirected, and both listeners registered.
type upstreamFixture struct {
	ns             string
	d              *Datapath
	hostileIfindex int
}

func newUpstreamFixture(t *testing.T, prefix string) *upstreamFixture {
	t.Helper()
	requireRoot(t)
	topo := netns.NewT(t, netns.Config{Prefix: netns.RandomPrefix(prefix), NodeAddr: netip.MustParseAddr(nodeAddr)})
	ns := topo.Node
	for _, a := range []string{podIP.String() + "/32", peerIP.String() + "/32"} {
		ipCmd(t, "-n", ns, "addr", "add", a, "dev", "lo")
	}
	for _, a := range []string{podIP6.String() + "/128", peerIP6.String() + "/128"} {
		ipCmd(t, "-n", ns, "addr", "add", a, "dev", "lo", "nodad")
	}
	ipCmd(t, "-n", ns, "link", "add", "hostile0", "type", "veth", "peer", "name", "hostile1")
	ipCmd(t, "-n", ns, "link", "set", "hostile0", "up")
	fx := &upstreamFixture{ns: ns}
	mustInNS(t, ns, func() error {
		ifi, err := net.InterfaceByName("hostile0")
		if err == nil {
			fx.hostileIfindex = ifi.Index
		}
		return err
	})
	return fx
}

// open opens the datapath on bpffs (after the sockets the test opened
// first, as a proxy that kept running through an agent upgrade has).
func (fx *upstreamFixture) open(t *testing.T, bpffs string, sizes MapSizes) {
	t.Helper()
	redirect := func(port uint16, proxyPort uint16, rule uint32) PolicyEntry {
		return PolicyEntry{Peer: peerID, Protocol: ProtoTCP, Port: port, Verdict: VerdictRedirect, ProxyPort: proxyPort, RuleID: rule}
	}
	egress := DirectionPolicy{Enforced: true, Entries: []PolicyEntry{redirect(80, testProxyPrt, 2), redirect(81, testProxyPrt+1, 3)}}
	client := enforcedIngress(PolicyEntry{Peer: peerID, Protocol: ProtoTCP, Port: 1, Verdict: VerdictAllow, RuleID: 1})
	client.Egress = egress
	client.Endpoint = testEP
	d := openTest(t, Config{BPFFSPath: bpffs, MapSizes: sizes})
	t.Cleanup(func() {
		// The recorder's link goes with its pin (before the bpffs).
		os.Remove(filepath.Join(bpffs, linksDir, upstreamOpsPin))
		d.Close()
	})
	if _, err := d.SyncIPCache(fixtureIPCache()); err != nil {
		t.Fatal(err)
	}
	if err := d.objs.Endpoints.Update(uint32(testIfindex), &datapathEndpointInfo{Id: testEP, Ipv4: podIP.As4(), Ipv6: podIP6.As16()}, 0); err != nil {
		t.Fatal(err)
	}
	const hostileEP = testEP + 1
	if err := d.objs.Endpoints.Update(uint32(fx.hostileIfindex), &datapathEndpointInfo{Id: hostileEP, Ipv4: otherIP.As4(), Ipv6: otherIP6.As16()}, 0); err != nil {
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
	// The client's own flows went to the proxies: its upstream sockets'
	// replies are candidates for the socket lookup.
	redirectFrom(t, d, podIP, 80)
	redirectFrom(t, d, podIP6, 81)
	fx.d = d
}

func (fx *upstreamFixture) enable(t *testing.T) error {
	t.Helper()
	mnt, err := Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	return fx.d.EnableUpstreamFilter(filepath.Join(netns.Dir, fx.ns), mnt)
}

func (fx *upstreamFixture) active(t *testing.T) bool {
	t.Helper()
	on, err := fx.d.UpstreamFilterActive()
	if err != nil {
		t.Fatal(err)
	}
	return on
}

// upstreamValue is the proxy_upstreams value for the socket p answers
// (0: not recorded).
func (fx *upstreamFixture) upstreamValue(t *testing.T, p pkt) uint32 {
	t.Helper()
	k, ok := upstreamKey(net.IP(p.dst.AsSlice()), p.dport, net.IP(p.src.AsSlice()), p.sport)
	if !ok {
		t.Fatalf("no key for %+v", p)
	}
	var v uint32
	if err := fx.d.objs.ProxyUpstreams.Lookup(k, &v); err != nil {
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return 0
		}
		t.Fatal(err)
	}
	return v
}

// TestPrivilegedUpstreamFilter: the proxy upstream pre-filter. Off (a new
// datapath), tc looks every candidate up as before. EnableUpstreamFilter
// seeds the sockets that were connected before the recorder existed (a
// proxy that kept running through an agent upgrade): their replies still
// reach them with the filter on. Sockets connected afterwards are recorded
// at connect by the recorder and forgotten at close (RST). With the filter
// on, a socket whose 4-tuple is not recorded is not looked up (the filter
// decides, and fails closed: the pod's policy drops it), and the hostile
// pod's forged ACKs to the proxied client, with the recorded upstream
// port, are dropped. A reopened datapath (agent upgrade) keeps the
// recorder (its pin is updated in place) and the filter.
func TestPrivilegedUpstreamFilter(t *testing.T) {
	fx := newUpstreamFixture(t, "l7uf")
	ns := fx.ns
	before := map[string]pkt{"IPv4": upstreamSocket(t, ns, podIP, peerIP), "IPv6": upstreamSocket(t, ns, podIP6, peerIP6)}
	bpffs := mountBPFFS(t)
	fx.open(t, bpffs, MapSizes{})
	d := fx.d
	if fx.active(t) {
		t.Fatal("filter active on a new datapath, want off")
	}
	for name, p := range before {
		if got := runIn(t, ns, d.objs.TcToPod, p); got != actRedirect {
			t.Errorf("%s: filter off: ACK to an upstream socket: ret %d, want %d", name, got, actRedirect)
		}
	}
	if err := fx.enable(t); err != nil {
		t.Fatalf("enable: %v", err)
	}
	if !fx.active(t) {
		t.Fatal("filter not active after EnableUpstreamFilter")
	}
	fams := []struct {
		name            string
		client, hostile netip.Addr
		peer            netip.Addr
	}{
		{"IPv4", podIP, otherIP, peerIP},
		{"IPv6", podIP6, otherIP6, peerIP6},
	}
	for _, f := range fams {
		old := before[f.name]
		if v := fx.upstreamValue(t, old); v != upstreamSeeded {
			t.Errorf("%s: socket connected before the recorder: value %d, want %d (seeded)", f.name, v, upstreamSeeded)
		}
		if got := runIn(t, ns, d.objs.TcToPod, old); got != actRedirect {
			t.Errorf("%s: ACK to an upstream socket connected before the recorder: ret %d, want %d", f.name, got, actRedirect)
		}
		ack := upstreamSocket(t, ns, f.client, f.peer)
		if v := fx.upstreamValue(t, ack); v != upstreamRecorded {
			t.Errorf("%s: socket connected after the recorder: value %d, want %d (recorded at connect)", f.name, v, upstreamRecorded)
		}
		if got := runIn(t, ns, d.objs.TcToPod, ack); got != actRedirect {
			t.Errorf("%s: ACK to a recorded upstream socket: ret %d, want %d", f.name, got, actRedirect)
		}
		// The attacker: the hostile pod's ACKs to the proxied client from
		// its own address (spoofing is dropped at its veth), with the
		// recorded upstream socket's ports and with others.
		forged := ack
		forged.src = f.hostile
		other := forged
		other.sport, other.dport = 40000, 40000
		for what, p := range map[string]pkt{"the upstream socket's ports": forged, "other ports": other} {
			if got := runIn(t, ns, d.objs.TcToPod, p); got != actShot {
				t.Errorf("%s: the hostile pod's ACK to the proxied client, %s: ret %d, want %d", f.name, what, got, actShot)
			}
		}
		// The filter decides: a live proxy socket it does not know is not
		// looked up.
		unknown := upstreamSocket(t, ns, f.client, f.peer)
		k, _ := upstreamKey(net.IP(unknown.dst.AsSlice()), unknown.dport, net.IP(unknown.src.AsSlice()), unknown.sport)
		if err := d.objs.ProxyUpstreams.Delete(k); err != nil {
			t.Fatal(err)
		}
		if got := runIn(t, ns, d.objs.TcToPod, unknown); got != actShot {
			t.Errorf("%s: ACK to a proxy socket missing from the filter: ret %d, want %d (not looked up)", f.name, got, actShot)
		}
	}

	// A reopened datapath (agent upgrade) adopts the recorder's pinned
	// link and keeps the filter; new sockets are still recorded.
	d.Close()
	d2 := openTest(t, Config{BPFFSPath: bpffs})
	fx.d = d2
	if !fx.active(t) {
		t.Error("filter off after reopening, want kept")
	}
	if _, ok := d2.links[upstreamOpsPin]; !ok {
		t.Error("recorder link not adopted by the reopened datapath")
	}
	for _, f := range fams {
		ack := upstreamSocket(t, ns, f.client, f.peer)
		if v := fx.upstreamValue(t, ack); v != upstreamRecorded {
			t.Errorf("%s: reopened: socket connected: value %d, want %d", f.name, v, upstreamRecorded)
		}
		if got := runIn(t, ns, d2.objs.TcToPod, ack); got != actRedirect {
			t.Errorf("%s: reopened: ACK to a recorded upstream socket: ret %d, want %d", f.name, got, actRedirect)
		}
		if got := runIn(t, ns, d2.objs.TcToPod, before[f.name]); got != actRedirect {
			t.Errorf("%s: reopened: ACK to a seeded upstream socket: ret %d, want %d", f.name, got, actRedirect)
		}
	}

	// Closed with RST: forgotten.
	for _, f := range fams {
		ack, c := upstreamConn(t, ns, f.client, f.peer)
		if v := fx.upstreamValue(t, ack); v != upstreamRecorded {
			t.Fatalf("%s: value %d, want %d", f.name, v, upstreamRecorded)
		}
		c.(*net.TCPConn).SetLinger(0)
		c.Close()
		if v := fx.upstreamValue(t, ack); v != 0 {
			t.Errorf("%s: socket closed with RST: value %d, want 0 (forgotten)", f.name, v)
		}
	}
}

// upstreamConn is upstreamSocket that also returns the upstream socket.
func upstreamConn(t *testing.T, ns string, pod, peer netip.Addr) (pkt, net.Conn) {
	t.Helper()
	var c net.Conn
	p := upstreamSocketWith(t, ns, pod, peer, func(conn net.Conn) { c = conn })
	return p, c
}

// TestPrivilegedUpstreamFilterFull: a recorder that cannot record a socket
// (map full) turns the filter off by itself, so the socket's replies are
// looked up (and reach it) instead of being dropped; enabling again with
// more sockets to seed than the map holds fails and leaves it off.
func TestPrivilegedUpstreamFilterFull(t *testing.T) {
	const size = 8
	fx := newUpstreamFixture(t, "l7uo")
	ns := fx.ns
	// Seeded: 2 entries per connection (both ends live in ns).
	seeded := []pkt{upstreamSocket(t, ns, podIP, peerIP)}
	fx.open(t, mountBPFFS(t), MapSizes{ProxyUpstreams: size})
	d := fx.d
	if err := fx.enable(t); err != nil {
		t.Fatalf("enable: %v", err)
	}
	if !fx.active(t) {
		t.Fatal("filter not active after EnableUpstreamFilter")
	}
	// Sockets until the map is full (the recorder on the cgroup root may
	// also see other proxies' sockets on this machine: bounded loop).
	var acks []pkt
	for i := 0; i < size && fx.active(t); i++ {
		pod, peer := podIP, peerIP
		if i%2 == 1 {
			pod, peer = podIP6, peerIP6
		}
		acks = append(acks, upstreamSocket(t, ns, pod, peer))
	}
	if fx.active(t) {
		t.Fatalf("filter still active after %d sockets in a map of %d", len(acks), size)
	}
	last := acks[len(acks)-1]
	for i, p := range append(seeded, acks...) {
		if got := runIn(t, ns, d.objs.TcToPod, p); got != actRedirect {
			t.Errorf("socket %d after overflow: ACK ret %d, want %d (looked up)", i, got, actRedirect)
		}
	}
	// Every socket of ns to seed (2 per connection) does not fit.
	err := fx.enable(t)
	if !errors.Is(err, ErrMapFull) {
		t.Errorf("enable with %d connections in a map of %d: %v, want ErrMapFull", len(acks)+1, size, err)
	}
	if fx.active(t) {
		t.Error("filter active after a failed enable")
	}
	if got := runIn(t, ns, d.objs.TcToPod, last); got != actRedirect {
		t.Errorf("after a failed enable: ACK ret %d, want %d", got, actRedirect)
	}
	var on uint32
	if err := d.objs.UpstreamFilter.Lookup(uint32(upstreamFilterOn), &on); err != nil || on != 0 {
		t.Errorf("filter on = %d (%v) after a failed enable, want 0", on, err)
	}
}
