package bpf

import (
	"context"
	"errors"
	"golang.org/x/sys/unix"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"
)

const (
	actOK       = 0
	actShot     = 2
	actRedirect = 7
)

// Fixture addresses (198.18.0.0/15 only).
var (
	podIP   = netip.MustParseAddr("198.18.1.10")
	peerIP  = netip.MustParseAddr("198.18.2.20")
	otherIP = netip.MustParseAddr("198.18.2.30")
	cidrIP  = netip.MustParseAddr("198.19.7.7")
	worldIP = netip.MustParseAddr("198.18.250.1") // not in the ipcache
	nodeIP  = netip.MustParseAddr("198.18.0.1")
)

// IPv6 fixture addresses (2001:db8::/32, documentation only): the same
// peers as the IPv4 ones, and a link-local address.
var (
	podIP6   = netip.MustParseAddr("2001:db8:1::10")
	peerIP6  = netip.MustParseAddr("2001:db8:2::20")
	otherIP6 = netip.MustParseAddr("2001:db8:2::30")
	cidrIP6  = netip.MustParseAddr("2001:db8:ff07::7")
	worldIP6 = netip.MustParseAddr("2001:db8:fa::1") // not in the ipcache
	nodeIP6  = netip.MustParseAddr("2001:db8::1")
	llIP6    = netip.MustParseAddr("fe80::10")
)

const (
	testEP       = 10
	podID        = Identity(1000)
	peerID       = Identity(2000)
	otherID      = Identity(3000)
	cidrID       = FirstCIDRIdentity | 1
	testIfindex  = 1 // BPF_PROG_TEST_RUN runs on lo unless told otherwise
	testProxyPrt = 15001
)

// fixture opens a datapath with the test ipcache and endpoint registered
// (on lo's ifindex, never attached) and the given endpoint policy.
func fixture(t *testing.T, pol EndpointPolicy) *Datapath {
	t.Helper()
	d := openTest(t, Config{})
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

func fixtureIPCache() []IPCacheEntry {
	return []IPCacheEntry{
		{Prefix: netip.PrefixFrom(podIP, 32), Identity: podID},
		{Prefix: netip.PrefixFrom(peerIP, 32), Identity: peerID},
		{Prefix: netip.PrefixFrom(otherIP, 32), Identity: otherID},
		{Prefix: netip.MustParsePrefix("198.19.0.0/16"), Identity: cidrID},
		{Prefix: netip.PrefixFrom(nodeIP, 32), Identity: IdentityHost},
		{Prefix: netip.PrefixFrom(podIP6, 128), Identity: podID},
		{Prefix: netip.PrefixFrom(peerIP6, 128), Identity: peerID},
		{Prefix: netip.PrefixFrom(otherIP6, 128), Identity: otherID},
		{Prefix: netip.MustParsePrefix("2001:db8:ff00::/40"), Identity: cidrID},
		{Prefix: netip.PrefixFrom(nodeIP6, 128), Identity: IdentityHost},
	}
}

// egress builds a packet from the pod; ingress one to it.
func egress(dst netip.Addr, proto uint8, dport uint16) pkt {
	return pkt{src: podIP, dst: dst, sport: 40000, dport: dport, proto: proto, tcpFlags: tcpSYN}
}

func ingress(src netip.Addr, proto uint8, dport uint16) pkt {
	return pkt{src: src, dst: podIP, sport: 40000, dport: dport, proto: proto, tcpFlags: tcpSYN}
}

func (d *Datapath) fromPod(t *testing.T, p pkt) runResult { return run(t, d.objs.TcFromPod, p, 0) }
func (d *Datapath) toPod(t *testing.T, p pkt) runResult   { return run(t, d.objs.TcToPod, p, 0) }

func wantRet(t *testing.T, what string, got runResult, want uint32) {
	t.Helper()
	if got.ret != want {
		t.Errorf("%s: ret %d, want %d", what, got.ret, want)
	}
}

func enforcedEgress(entries ...PolicyEntry) EndpointPolicy {
	return EndpointPolicy{Egress: DirectionPolicy{Enforced: true, Entries: entries}}
}

func enforcedIngress(entries ...PolicyEntry) EndpointPolicy {
	return EndpointPolicy{Ingress: DirectionPolicy{Enforced: true, Entries: entries}}
}

func TestPrivilegedPolicyVerdicts(t *testing.T) {
	requireRoot(t)
	tcp := ProtoTCP
	cases := []struct {
		name  string
		pol   EndpointPolicy
		pkts  []pkt
		wants []uint32
		rule  uint32 // rule expected to have counted the first packet
	}{{
		name:  "allow",
		pol:   enforcedEgress(PolicyEntry{Peer: peerID, Protocol: tcp, Port: 80, Verdict: VerdictAllow, RuleID: 7}),
		pkts:  []pkt{egress(peerIP, tcp, 80), egress(peerIP, tcp, 81), egress(otherIP, tcp, 80), egress(peerIP, ProtoUDP, 80)},
		wants: []uint32{actOK, actShot, actShot, actShot},
		rule:  7,
	}, {
		name:  "deny",
		pol:   EndpointPolicy{Egress: DirectionPolicy{Entries: []PolicyEntry{{Peer: peerID, Protocol: tcp, Port: 80, Verdict: VerdictDeny, RuleID: 8}}}},
		pkts:  []pkt{egress(peerIP, tcp, 80), egress(peerIP, tcp, 81), egress(otherIP, tcp, 80)},
		wants: []uint32{actShot, actOK, actOK},
		rule:  8,
	}, {
		name: "deny beats allow (specific deny, wildcard allow)",
		pol: enforcedEgress(
			PolicyEntry{Peer: IdentityAny, Verdict: VerdictAllow, RuleID: 1},
			PolicyEntry{Peer: peerID, Protocol: tcp, Port: 80, Verdict: VerdictDeny, RuleID: 2}),
		pkts:  []pkt{egress(peerIP, tcp, 80), egress(peerIP, tcp, 81), egress(otherIP, tcp, 80)},
		wants: []uint32{actShot, actOK, actOK},
		rule:  2,
	}, {
		name: "deny beats allow (broad deny, specific allow)",
		pol: enforcedEgress(
			PolicyEntry{Peer: peerID, Protocol: tcp, Port: 80, Verdict: VerdictAllow, RuleID: 1},
			PolicyEntry{Peer: IdentityAny, Protocol: tcp, Port: 1, EndPort: 1000, Verdict: VerdictDeny, RuleID: 3},
			PolicyEntry{Peer: otherID, Verdict: VerdictAllow, RuleID: 4},
			PolicyEntry{Peer: otherID, Protocol: ProtoAny, Verdict: VerdictDeny, RuleID: 5}),
		pkts:  []pkt{egress(peerIP, tcp, 80), egress(peerIP, tcp, 2000), egress(otherIP, ProtoUDP, 53)},
		wants: []uint32{actShot, actShot, actShot},
		rule:  3,
	}, {
		name:  "default deny",
		pol:   enforcedIngress(),
		pkts:  []pkt{ingress(peerIP, tcp, 80), egress(peerIP, tcp, 80)},
		wants: []uint32{actShot, actOK},
		rule:  0,
	}, {
		name:  "L4 wildcard",
		pol:   enforcedEgress(PolicyEntry{Peer: peerID, Verdict: VerdictAllow, RuleID: 9}),
		pkts:  []pkt{egress(peerIP, tcp, 80), egress(peerIP, ProtoUDP, 53), egress(peerIP, ProtoICMP, 0), egress(peerIP, ProtoSCTP, 9), egress(otherIP, tcp, 80)},
		wants: []uint32{actOK, actOK, actOK, actOK, actShot},
		rule:  9,
	}, {
		name:  "port wildcard with protocol any",
		pol:   enforcedEgress(PolicyEntry{Peer: peerID, Port: 53, Verdict: VerdictAllow, RuleID: 10}),
		pkts:  []pkt{egress(peerIP, ProtoUDP, 53), egress(peerIP, tcp, 53), egress(peerIP, tcp, 54), egress(peerIP, ProtoICMP, 0)},
		wants: []uint32{actOK, actOK, actShot, actShot},
		rule:  10,
	}, {
		name:  "port range",
		pol:   enforcedEgress(PolicyEntry{Peer: peerID, Protocol: tcp, Port: 8000, EndPort: 8080, Verdict: VerdictAllow, RuleID: 11}),
		pkts:  []pkt{egress(peerIP, tcp, 8000), egress(peerIP, tcp, 8041), egress(peerIP, tcp, 8080), egress(peerIP, tcp, 7999), egress(peerIP, tcp, 8081)},
		wants: []uint32{actOK, actOK, actOK, actShot, actShot},
		rule:  11,
	}, {
		name:  "CIDR peer",
		pol:   enforcedEgress(PolicyEntry{Peer: cidrID, Protocol: tcp, Port: 443, Verdict: VerdictAllow, RuleID: 12}),
		pkts:  []pkt{egress(cidrIP, tcp, 443), egress(worldIP, tcp, 443)},
		wants: []uint32{actOK, actShot},
		rule:  12,
	}, {
		name:  "world peer",
		pol:   enforcedIngress(PolicyEntry{Peer: IdentityWorld, Protocol: tcp, Port: 22, Verdict: VerdictAllow, RuleID: 13}),
		pkts:  []pkt{ingress(worldIP, tcp, 22), ingress(peerIP, tcp, 22)},
		wants: []uint32{actOK, actShot},
		rule:  13,
	}}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d := fixture(t, c.pol)
			for i, p := range c.pkts {
				var r runResult
				if p.src == podIP {
					r = d.fromPod(t, p)
				} else {
					r = d.toPod(t, p)
				}
				wantRet(t, "packet "+p.dst.String(), r, c.wants[i])
				if r.mark != 0 {
					t.Errorf("packet %d: mark %#x, want 0", i, r.mark)
				}
			}
			counters, err := d.RuleCounters()
			if err != nil {
				t.Fatal(err)
			}
			if counters[c.rule].Packets == 0 {
				t.Errorf("rule %d not counted: %v", c.rule, counters)
			}
		})
	}
}

// listen opens a loopback listener usable as a sockmap entry.
func listen(t *testing.T) *net.TCPListener {
	t.Helper()
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	l, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.(*net.TCPListener)
}

func TestPrivilegedRedirect(t *testing.T) {
	requireRoot(t)
	redirect := PolicyEntry{Peer: peerID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictRedirect, ProxyPort: testProxyPrt, RuleID: 20}
	pol := EndpointPolicy{
		Ingress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{redirect}},
		Egress:  DirectionPolicy{Enforced: true, Entries: []PolicyEntry{redirect}},
	}
	d := fixture(t, pol)
	if err := d.RegisterProxyListener(testProxyPrt, listen(t)); err != nil {
		t.Fatal(err)
	}
	wantMark := ToProxyMark(testProxyPrt)

	// Traffic leaving the pod: the mark alone steers it to the proxy.
	r := d.fromPod(t, egress(peerIP, ProtoTCP, 80))
	wantRet(t, "egress redirect", r, actOK)
	if r.mark != wantMark {
		t.Errorf("egress mark %#x, want %#x", r.mark, wantMark)
	}
	// The flow keeps its redirect.
	p := egress(peerIP, ProtoTCP, 80)
	p.tcpFlags = tcpACK
	if r := d.fromPod(t, p); r.mark != wantMark {
		t.Errorf("established egress mark %#x, want %#x", r.mark, wantMark)
	}
	// Traffic to the pod is turned around into the host stack, marked so
	// that netfilter does not track it a second time.
	r = d.toPod(t, ingress(peerIP, ProtoTCP, 80))
	wantRet(t, "ingress redirect", r, actRedirect)
	if want := TurnedAroundMark(testProxyPrt); r.mark != want || r.mark&NoTrackMask != NoTrackValue || r.mark&MarkMagicMask != MarkMagicToProxy {
		t.Errorf("ingress mark %#x, want %#x", r.mark, want)
	}
	if wantMark&NoTrackMask == NoTrackValue {
		t.Errorf("egress redirect mark %#x matches the notrack rule: netfilter would not DNAT it", wantMark)
	}
	// The same packet coming back in at the veth's ingress passes as is.
	r = run(t, d.objs.TcFromPod, ingress(peerIP, ProtoTCP, 80), TurnedAroundMark(testProxyPrt))
	wantRet(t, "looped redirect", r, actOK)

	cts, err := d.Conntrack()
	if err != nil {
		t.Fatal(err)
	}
	if len(cts) != 2 {
		t.Fatalf("conntrack has %d entries, want 2: %+v", len(cts), cts)
	}
	for _, ct := range cts {
		if ct.Verdict != VerdictRedirect || ct.ProxyPort != testProxyPrt || ct.RuleID != 20 {
			t.Errorf("conntrack entry %+v", ct)
		}
	}
}

func TestPrivilegedFailClosed(t *testing.T) {
	requireRoot(t)
	d := fixture(t, enforcedIngress(PolicyEntry{Peer: peerID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictRedirect, ProxyPort: testProxyPrt, RuleID: 21}))
	wantRet(t, "no listener", d.toPod(t, ingress(peerIP, ProtoTCP, 80)), actShot)

	l := listen(t)
	if err := d.RegisterProxyListener(testProxyPrt, l); err != nil {
		t.Fatal(err)
	}
	p := ingress(peerIP, ProtoTCP, 80)
	p.sport = 40001
	wantRet(t, "with listener", d.toPod(t, p), actRedirect)

	// Closing the listener takes it out of the sockmap.
	l.Close()
	p.sport = 40002
	wantRet(t, "listener closed", d.toPod(t, p), actShot)
}

func TestPrivilegedReplyOfEstablishedFlow(t *testing.T) {
	requireRoot(t)
	d := fixture(t, EndpointPolicy{
		Ingress: DirectionPolicy{Enforced: true},
		Egress:  DirectionPolicy{Enforced: true, Entries: []PolicyEntry{{Peer: peerID, Protocol: ProtoUDP, Port: 53, Verdict: VerdictAllow, RuleID: 30}}},
	})
	q := egress(peerIP, ProtoUDP, 53)
	wantRet(t, "query", d.fromPod(t, q), actOK)
	wantRet(t, "reply", d.toPod(t, q.reply()), actOK)
	unsolicited := q.reply()
	unsolicited.sport = 54
	wantRet(t, "unsolicited", d.toPod(t, unsolicited), actShot)
	// Replies of flows admitted on ingress pass on egress too.
	d2 := fixture(t, EndpointPolicy{
		Ingress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{{Peer: peerID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictAllow, RuleID: 31}}},
		Egress:  DirectionPolicy{Enforced: true},
	})
	in := ingress(peerIP, ProtoTCP, 80)
	wantRet(t, "inbound", d2.toPod(t, in), actOK)
	out := in.reply()
	out.tcpFlags = tcpSYN | tcpACK
	wantRet(t, "outbound reply", d2.fromPod(t, out), actOK)
	wantRet(t, "outbound new", d2.fromPod(t, egress(peerIP, ProtoTCP, 80)), actShot)
}

func TestPrivilegedConntrackExpiry(t *testing.T) {
	requireRoot(t)
	d := openTest(t, Config{CTTimeouts: CTTimeouts{Other: time.Millisecond}})
	if err := d.objs.Endpoints.Update(uint32(testIfindex), &datapathEndpointInfo{Id: testEP}, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := d.SyncIPCache([]IPCacheEntry{{Prefix: netip.PrefixFrom(peerIP, 32), Identity: peerID}}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.SyncPolicy([]EndpointPolicy{{Endpoint: testEP, Ingress: DirectionPolicy{Enforced: true},
		Egress: DirectionPolicy{Entries: []PolicyEntry{{Peer: peerID, Protocol: ProtoUDP, Port: 53, Verdict: VerdictAllow}}}}}); err != nil {
		t.Fatal(err)
	}
	q := egress(peerIP, ProtoUDP, 53)
	wantRet(t, "query", d.fromPod(t, q), actOK)
	time.Sleep(5 * time.Millisecond)
	wantRet(t, "reply after expiry", d.toPod(t, q.reply()), actShot)
}

func TestPrivilegedFromProxy(t *testing.T) {
	requireRoot(t)
	d := fixture(t, enforcedIngress(PolicyEntry{Peer: peerID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictRedirect, ProxyPort: testProxyPrt, RuleID: 40}))
	trustTestCgroup(t, d)
	// The ingress proxy connects from the node's address, marking the
	// original client's identity: allowed, and not redirected again.
	p := ingress(nodeIP, ProtoTCP, 80)
	mark := ProxyMark(Ingress, peerID)
	r := run(t, d.objs.TcToPod, p, mark)
	wantRet(t, "from proxy as peer", r, actOK)
	if r.mark != mark {
		t.Errorf("mark changed to %#x", r.mark)
	}
	// The pod's reply to the proxy passes.
	wantRet(t, "reply to proxy", d.fromPod(t, p.reply()), actOK)
	// A client whose identity the policy does not allow is dropped.
	p.sport++
	wantRet(t, "from proxy as other", run(t, d.objs.TcToPod, p, ProxyMark(Ingress, otherID)), actShot)
	// Large (CIDR) identities survive the mark.
	if got := MarkIdentity(ProxyMark(Egress, cidrID)); got != cidrID {
		t.Errorf("mark identity %d, want %d", got, cidrID)
	}
}

func TestPrivilegedSpoofedSource(t *testing.T) {
	requireRoot(t)
	d := fixture(t, EndpointPolicy{})
	wantRet(t, "own address", d.fromPod(t, egress(peerIP, ProtoTCP, 80)), actOK)
	spoofed := egress(peerIP, ProtoTCP, 80)
	spoofed.src = nodeIP
	wantRet(t, "node's address", d.fromPod(t, spoofed), actShot)
}

func TestPrivilegedNonIPAndFragments(t *testing.T) {
	requireRoot(t)
	d := fixture(t, enforcedEgress(PolicyEntry{Peer: peerID, Protocol: ProtoUDP, Port: 53, Verdict: VerdictAllow, RuleID: 50}))
	wantRet(t, "arp", runFrame(t, d.objs.TcFromPod, arpFrame(1, podIP, nodeIP), 0), actOK)
	wantRet(t, "ipv6", d.fromPod(t, pkt{etherType: 0x86DD}), actShot)

	first := egress(peerIP, ProtoUDP, 53)
	first.ipID, first.moreFrags, first.payload = 77, true, 64
	wantRet(t, "first fragment", d.fromPod(t, first), actOK)
	later := first
	later.fragOff, later.moreFrags = 9, false
	wantRet(t, "later fragment", d.fromPod(t, later), actOK)
	orphan := later
	orphan.ipID = 78
	wantRet(t, "orphan fragment", d.fromPod(t, orphan), actShot)

	denied := egress(peerIP, ProtoUDP, 54)
	denied.ipID, denied.moreFrags = 79, true
	wantRet(t, "first fragment denied", d.fromPod(t, denied), actShot)
	denied.fragOff, denied.moreFrags = 9, false
	wantRet(t, "later fragment denied", d.fromPod(t, denied), actShot)
}

func TestPrivilegedRevalidation(t *testing.T) {
	requireRoot(t)
	allow := PolicyEntry{Peer: peerID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictAllow, RuleID: 60}
	d := fixture(t, enforcedEgress(allow))
	p := egress(peerIP, ProtoTCP, 80)
	wantRet(t, "syn", d.fromPod(t, p), actOK)
	p.tcpFlags = tcpACK
	wantRet(t, "established", d.fromPod(t, p), actOK)
	// An unrelated change keeps the flow.
	other := PolicyEntry{Peer: otherID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictAllow, RuleID: 61}
	if _, err := d.SyncPolicy([]EndpointPolicy{{Endpoint: testEP, Egress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{allow, other}}}}); err != nil {
		t.Fatal(err)
	}
	wantRet(t, "after unrelated change", d.fromPod(t, p), actOK)
	// Removing the allow ends the flow on its next packet.
	if _, err := d.SyncPolicy([]EndpointPolicy{{Endpoint: testEP, Egress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{other}}}}); err != nil {
		t.Fatal(err)
	}
	wantRet(t, "after removal", d.fromPod(t, p), actShot)
	wantRet(t, "reply after removal", d.toPod(t, p.reply()), actOK) // ingress is not enforced

	// Reply-only traffic is re-checked too.
	q := egress(otherIP, ProtoTCP, 80)
	wantRet(t, "second flow", d.fromPod(t, q), actOK)
	r := q.reply()
	r.tcpFlags = tcpACK
	wantRet(t, "second flow reply", d.toPod(t, r), actOK)
	if _, err := d.SyncPolicy([]EndpointPolicy{{Endpoint: testEP, Egress: DirectionPolicy{Enforced: true}}}); err != nil {
		t.Fatal(err)
	}
	// Ingress is not enforced, but the reply belongs to an egress flow that
	// is no longer allowed.
	wantRet(t, "reply of revoked flow", d.toPod(t, r), actShot)
}

func TestPrivilegedEvents(t *testing.T) {
	requireRoot(t)
	d := fixture(t, enforcedIngress(PolicyEntry{Peer: peerID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictDeny, RuleID: 70}))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	evs, err := d.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wantRet(t, "denied", d.toPod(t, ingress(peerIP, ProtoTCP, 80)), actShot)
	select {
	case ev := <-evs:
		want := Event{
			Monotonic: ev.Monotonic, Endpoint: testEP, Ifindex: testIfindex, Direction: Ingress,
			SrcIdentity: peerID, DstIdentity: podID,
			Src: netip.AddrPortFrom(peerIP, 40000), Dst: netip.AddrPortFrom(podIP, 80),
			Protocol: ProtoTCP, Verdict: VerdictDeny, Reason: ReasonPolicy, Dropped: true, RuleID: 70,
		}
		if ev != want {
			t.Errorf("event\n got %+v\nwant %+v", ev, want)
		}
	case <-ctx.Done():
		t.Fatal("no event")
	}
	cancel()
	for range evs {
	}
}

func TestPrivilegedEventRateLimit(t *testing.T) {
	requireRoot(t)
	d := openTest(t, Config{EventsPerSecond: 1, EventBurst: 3})
	// The token bucket is per CPU: run every packet on one CPU, or a
	// migration between CPUs would grant a second burst.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var one, all unix.CPUSet
	if err := unix.SchedGetaffinity(0, &all); err != nil {
		t.Fatal(err)
	}
	for c := range 1024 {
		if all.IsSet(c) {
			one.Set(c)
			break
		}
	}
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		t.Fatal(err)
	}
	defer unix.SchedSetaffinity(0, &all)
	// No endpoint registered: every packet is dropped with an event attempt.
	for range 50 {
		wantRet(t, "unknown endpoint", run(t, d.objs.TcToPod, ingress(peerIP, ProtoTCP, 80), 0), actShot)
	}
	emitted, suppressed, err := d.EventStats()
	if err != nil {
		t.Fatal(err)
	}
	if emitted > 3+1 || emitted+suppressed != 50 {
		t.Errorf("emitted %d suppressed %d", emitted, suppressed)
	}
}

func TestPrivilegedSyncDiff(t *testing.T) {
	d := fixture(t, EndpointPolicy{})
	entries := []PolicyEntry{
		{Peer: peerID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictAllow, RuleID: 1},
		{Peer: peerID, Protocol: ProtoTCP, Port: 443, Verdict: VerdictAllow, RuleID: 2},
	}
	pol := func(es ...PolicyEntry) []EndpointPolicy {
		return []EndpointPolicy{{Endpoint: testEP, Egress: DirectionPolicy{Enforced: true, Entries: es}}}
	}
	st, err := d.SyncPolicy(pol(entries...))
	if err != nil {
		t.Fatal(err)
	}
	if st != (SyncStats{Added: 2}) {
		t.Errorf("first sync %v", st)
	}
	st, err = d.SyncPolicy(pol(entries...))
	if err != nil || st != (SyncStats{Unchanged: 2}) {
		t.Errorf("same sync %v %v", st, err)
	}
	changed := entries[1]
	changed.RuleID = 3
	st, err = d.SyncPolicy(pol(changed, PolicyEntry{Peer: otherID, Protocol: ProtoUDP, Verdict: VerdictAllow, RuleID: 4}))
	if err != nil || st != (SyncStats{Added: 1, Updated: 1, Deleted: 1}) {
		t.Errorf("changed sync %v %v", st, err)
	}
	st, err = d.SyncPolicy(nil)
	if err != nil || st != (SyncStats{Deleted: 2}) {
		t.Errorf("empty sync %v %v", st, err)
	}
	if eps, err := d.EndpointDirections(); err != nil || len(eps) != 0 {
		t.Errorf("ep_policy left: %v %v", eps, err)
	}
}

func TestPrivilegedMapFull(t *testing.T) {
	d := openTest(t, Config{MapSizes: MapSizes{Policy: 4}})
	var entries []PolicyEntry
	for i := range 5 {
		entries = append(entries, PolicyEntry{Peer: peerID, Protocol: ProtoTCP, Port: uint16(80 + i), Verdict: VerdictAllow})
	}
	_, err := d.SyncPolicy([]EndpointPolicy{{Endpoint: testEP, Egress: DirectionPolicy{Entries: entries}}})
	if !errors.Is(err, ErrMapFull) {
		t.Fatalf("got %v, want ErrMapFull", err)
	}
	if got, _ := d.Policy(); len(got) != 0 {
		t.Errorf("partial policy written: %v", got)
	}
}

// TestPrivilegedKernelMatchesReference runs random policies through the program and
// checks each new flow's fate against the contract, over IPv4 and IPv6
// (the same peers have an address of each family; ICMP is ICMPv6 in
// IPv6).
func TestPrivilegedKernelMatchesReference(t *testing.T) {
	requireRoot(t)
	d := fixture(t, EndpointPolicy{})
	if err := d.RegisterProxyListener(10000, listen(t)); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(3, 4))
	peers := map[Identity]netip.Addr{256: netip.MustParseAddr("198.18.3.1"), 257: netip.MustParseAddr("198.18.3.2"), IdentityWorld: worldIP}
	peers6 := map[Identity]netip.Addr{256: netip.MustParseAddr("2001:db8:3::1"), 257: netip.MustParseAddr("2001:db8:3::2"), IdentityWorld: worldIP6}
	var ipc []IPCacheEntry
	for id, a := range peers {
		if id != IdentityWorld {
			ipc = append(ipc, IPCacheEntry{Prefix: netip.PrefixFrom(a, 32), Identity: id},
				IPCacheEntry{Prefix: netip.PrefixFrom(peers6[id], 128), Identity: id})
		}
	}
	if _, err := d.SyncIPCache(ipc); err != nil {
		t.Fatal(err)
	}
	sport := uint16(1000)
	checked := map[bool]int{}
	for round := range 30 {
		dp := DirectionPolicy{Enforced: round%2 == 0}
		for range r.IntN(10) {
			dp.Entries = append(dp.Entries, randomEntry(r))
		}
		if _, err := d.SyncPolicy([]EndpointPolicy{{Endpoint: testEP, Egress: dp}}); err != nil {
			t.Fatal(err)
		}
		for range 80 {
			v6 := r.IntN(2) == 1
			peer := []Identity{256, 257, IdentityWorld}[r.IntN(3)]
			proto := []uint8{ProtoTCP, ProtoUDP, ProtoICMP}[r.IntN(3)]
			port := uint16(r.IntN(110))
			sport++
			p := egress(peers[peer], proto, port)
			if v6 {
				p = egress6(peers6[peer], proto, port)
			}
			p.sport = sport
			if proto == ProtoICMP {
				if v6 {
					proto = ProtoICMPv6
				}
				port = randomICMPType(r, proto)
				p.proto, p.icmpType, p.icmpID = proto, icmpType(uint8(port)), sport
			}
			got := d.fromPod(t, p)
			v, enforced := reference(dp, peer, proto, port)
			want := runResult{ret: actOK}
			switch {
			case v == VerdictDeny || (v == VerdictNone && enforced):
				want.ret = actShot
			case v == VerdictRedirect:
				want.mark = ToProxyMark(10000)
			}
			if proto == ProtoICMPv6 && port >= 130 && port <= 132 {
				// MLD from a pod is dropped whatever the policy (mld)
				want = runResult{ret: actShot}
			}
			if got != want {
				t.Fatalf("round %d ipv6 %v peer %d proto %d port %d: got %+v want %+v (verdict %v)\nentries %+v", round, v6, peer, proto, port, got, want, v, dp.Entries)
			}
			checked[v6]++
		}
	}
	t.Logf("packets checked: IPv4 %d, IPv6 %d", checked[false], checked[true])
}

func TestPrivilegedRevalidationAfterIdentityChange(t *testing.T) {
	requireRoot(t)
	d := fixture(t, enforcedEgress(PolicyEntry{Peer: peerID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictAllow, RuleID: 62}))
	p := egress(peerIP, ProtoTCP, 80)
	wantRet(t, "syn", d.fromPod(t, p), actOK)
	p.tcpFlags = tcpACK
	wantRet(t, "established", d.fromPod(t, p), actOK)
	// The peer's address now belongs to an identity the policy does not allow.
	if _, err := d.SyncIPCache([]IPCacheEntry{
		{Prefix: netip.PrefixFrom(podIP, 32), Identity: podID},
		{Prefix: netip.PrefixFrom(peerIP, 32), Identity: otherID},
	}); err != nil {
		t.Fatal(err)
	}
	wantRet(t, "after identity change", d.fromPod(t, p), actShot)
}
