package bpf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// sysctl sets /proc/sys/net/<key> inside network namespace ns.
func sysctl(t *testing.T, ns, key, value string) {
	t.Helper()
	mustInNS(t, ns, func() error { return os.WriteFile("/proc/sys/net/"+key, []byte(value), 0o644) })
}

// sendFramesProto writes frames to dev in ns with the given skb protocol
// (the AF_PACKET address's sll_protocol, which need not match the frame).
func sendFramesProto(ns, dev string, proto uint16, frames ...[]byte) error {
	return inNS(ns, func() error {
		ifc, err := net.InterfaceByName(dev)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		for _, f := range frames {
			if err := unix.Sendto(fd, f, 0, &unix.SockaddrLinklayer{Ifindex: ifc.Index, Protocol: htons(proto)}); err != nil {
				return err
			}
		}
		return nil
	})
}

// TestPrivilegedHostileFrames: raw frames a pod (CAP_NET_RAW) or a host
// process writes to a veth — truncated headers, a source route around the
// sender's egress policy, overlapping and out-of-order fragments, and a
// frame whose skb protocol disagrees with its ethertype — never reach the
// victim; an allowed datagram fragmented by the kernel, a marker and a
// control do.
func TestPrivilegedHostileFrames(t *testing.T) {
	requireRoot(t)
	tp := newTopology(t)
	a := tp.addPod("a", "198.18.1.10", 1, identA)
	b := tp.addPod("b", "198.18.1.11", 2, identB)
	c := tp.addPod("c", "198.18.1.12", 3, Identity(1003))
	// Hosts that accept source routes (Linux routers do by default, but
	// conf.all is off): the datapath must not depend on it.
	for _, ns := range []string{tp.node, b.ns} {
		sysctl(t, ns, "ipv4/conf/all/accept_source_route", "1")
	}
	d := attachedDatapath(t, tp, a, b, c)
	evs := watchEvents(t, d)
	if _, err := d.SyncPolicy([]EndpointPolicy{{
		Endpoint: a.id,
		Egress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{
			{Peer: IdentityHost, Protocol: ProtoUDP, Port: 5000, Verdict: VerdictAllow, RuleID: 1},
			{Peer: b.ident, Protocol: ProtoUDP, Port: 5001, Verdict: VerdictAllow, RuleID: 2},
		}},
	}, {
		Endpoint: b.id,
		Ingress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{
			{Peer: a.ident, Protocol: ProtoUDP, Port: 5000, Verdict: VerdictAllow, RuleID: 3},
			{Peer: a.ident, Protocol: ProtoUDP, Port: 5001, Verdict: VerdictAllow, RuleID: 4},
			{Peer: c.ident, Protocol: ProtoUDP, Port: 5000, Verdict: VerdictAllow, RuleID: 5},
		}},
	}}); err != nil {
		t.Fatal(err)
	}
	victim := listenUDPSink(t, b.ns, "198.18.1.11:5000")
	allowed := listenUDPSink(t, b.ns, "198.18.1.11:5001")
	dst, src := macOf(t, tp.node, a.hostDev), macOf(t, a.ns, "eth0")
	frame := func(p pkt) []byte { return ethFrame(dst, src, nil, unix.ETH_P_IP, p.ipv4()) }
	node := netip4(198, 18, 0, 1)
	b4 := b.ip.As4()

	// a's egress admits UDP 5000 only to the node; a source route through
	// the node would deliver it to b (whose ingress admits a on 5000).
	srcRoute := pkt{src: a.ip, dst: node, sport: 41000, dport: 5000, proto: ProtoUDP, ipID: 1,
		ipOpts: append([]byte{131, 7, 4}, b4[0], b4[1], b4[2], b4[3], 0), data: []byte("attack source-route")}
	// Fragments of datagrams to b:5000 (denied by a's egress).
	udpHdr := func(dport uint16, payload []byte) []byte {
		h := make([]byte, 8)
		binary.BigEndian.PutUint16(h, 41001)
		binary.BigEndian.PutUint16(h[2:], dport)
		binary.BigEndian.PutUint16(h[4:], uint16(8+len(payload)))
		return append(h, payload...)
	}
	fragment := func(id, off uint16, more bool, body []byte) []byte {
		p := pkt{src: a.ip, dst: b.ip, proto: ProtoUDP, ipID: id, fragOff: off, moreFrags: more}
		ip := p.ipv4()[:20]
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(body)))
		ip[10], ip[11] = 0, 0
		binary.BigEndian.PutUint16(ip[10:], ^checksum(ip))
		return ethFrame(dst, src, nil, unix.ETH_P_IP, append(ip, body...))
	}
	payload := bytes.Repeat([]byte("attack fragments "), 4) // 68 bytes: UDP header + 60 + 16
	whole := udpHdr(5000, payload)
	allowedFirst := udpHdr(5001, payload)
	frames := [][]byte{
		frame(srcRoute),
		// Truncated: an Ethernet header alone, an IPv4 header cut short.
		ethFrame(dst, src, nil, unix.ETH_P_IP, nil)[:14],
		frame(pkt{src: a.ip, dst: b.ip, sport: 1, dport: 5000, proto: ProtoUDP})[:14+12],
		// The later fragment first, then the first.
		fragment(2, 8, false, whole[64:]),
		fragment(2, 0, true, whole[:64]),
		// An allowed first fragment (to 5001), then an overlapping
		// "first" fragment to the denied port, then the rest (which
		// completes the allowed datagram, if anything).
		fragment(3, 0, true, allowedFirst[:64]),
		fragment(3, 0, true, whole[:64]),
		fragment(3, 8, false, whole[64:]),
		// A denied first fragment, then the rest.
		fragment(4, 0, true, whole[:64]),
		fragment(4, 8, false, whole[64:]),
	}
	for i, f := range frames {
		if err := sendFrames(a.ns, "eth0", f); err != nil {
			t.Fatalf("frame %d (%d bytes): %v", i, len(f), err)
		}
	}

	// Controls: a's own allowed datagram, fragmented by the kernel; c's
	// datagram to 5000; and, from the node, a frame to b whose skb
	// protocol says ARP (dropped) and the same frame as IPv4 (delivered).
	big := "control big " + strings.Repeat("x", 3000)
	if _, err := udpQueryOnce(a.ns, "198.18.1.11:5001", big); err != nil {
		t.Fatal(err)
	}
	if _, err := udpQueryOnce(c.ns, "198.18.1.11:5000", "control from c"); err != nil {
		t.Fatal(err)
	}
	bmac, hostB := macOf(t, b.ns, "eth0"), macOf(t, tp.node, b.hostDev)
	fromC := func(data string) []byte {
		return ethFrame(bmac, hostB, nil, unix.ETH_P_IP, pkt{src: c.ip, dst: b.ip, sport: 41002, dport: 5000, proto: ProtoUDP, ipID: 9, data: []byte(data)}.ipv4())
	}
	// A drop in tc egress fails the send with ENOBUFS.
	if err := sendFramesProto(tp.node, b.hostDev, unix.ETH_P_ARP, fromC("attack protocol mismatch")); err != nil && !errors.Is(err, unix.ENOBUFS) {
		t.Fatal(err)
	}
	if err := sendFramesProto(tp.node, b.hostDev, unix.ETH_P_IP, fromC("control injected")); err != nil {
		t.Fatal(err)
	}
	if !allowed.waitFor(big) {
		t.Error("the kernel-fragmented allowed datagram was not delivered")
	}
	for _, want := range []string{"control from c", "control injected"} {
		if !victim.waitFor(want) {
			t.Errorf("control %q not delivered", want)
		}
	}
	for _, got := range victim.received() {
		if strings.HasPrefix(got, "attack") {
			t.Errorf("delivered to the victim port: %.40q", got)
		}
	}
	for _, w := range []struct {
		reason Reason
		n      int
	}{{ReasonIPOptions, 1}, {ReasonMalformed, 2}, {ReasonFragment, 2}, {ReasonDefault, 2}, {ReasonEtherTypeMismatch, 1}} {
		evs.waitFor(t, w.n, func(ev Event) bool { return ev.Dropped && ev.Reason == w.reason })
	}
}
