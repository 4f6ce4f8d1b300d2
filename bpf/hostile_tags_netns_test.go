package bpf

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// attachedDatapath opens a datapath on a private bpffs, attaches it to the
// pods' veths and the node's sk_lookup, and syncs the topology's ipcache.
func attachedDatapath(t *testing.T, tp *topology, pods ...*testPod) *Datapath {
	t.Helper()
	d := openTest(t, Config{BPFFSPath: mountBPFFS(t)})
	for _, p := range pods {
		ifindex := tp.ifindex(p.hostDev)
		mustInNS(t, tp.node, func() error {
			return d.AttachEndpoint(Endpoint{ID: p.id, Ifindex: ifindex, IPv4: p.ip, IPv6: p.ip6})
		})
	}
	if err := d.AttachSocketLookup(filepath.Join("/var/run/netns", tp.node)); err != nil {
		t.Fatal(err)
	}
	if _, err := d.SyncIPCache(tp.ipcache()); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestPrivilegedHostileTaggedFrames: a pod with CAP_NET_RAW writes raw frames to
// its eth0: untagged, a single tag (VID 0 and 5), two VLAN-0 tags and QinQ,
// each from its own address and from an allowed pod's address, to a
// victim whose ingress admits only that allowed pod. Nothing may reach the
// victim; a control from the allowed pod and a marker the attacker's own
// egress allows, sent last on the same socket, do.
func TestPrivilegedHostileTaggedFrames(t *testing.T) {
	requireRoot(t)
	tp := newTopology(t)
	a := tp.addPod("a", "198.18.1.10", 1, identA)
	b := tp.addPod("b", "198.18.1.11", 2, identB)
	c := tp.addPod("c", "198.18.1.12", 3, Identity(1003))
	d := attachedDatapath(t, tp, a, b, c)
	evs := watchEvents(t, d)
	if _, err := d.SyncPolicy([]EndpointPolicy{{
		Endpoint: a.id,
		Egress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{
			{Peer: b.ident, Protocol: ProtoUDP, Port: 5001, Verdict: VerdictAllow, RuleID: 1},
		}},
	}, {
		Endpoint: b.id,
		Ingress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{
			{Peer: c.ident, Protocol: ProtoUDP, Port: 5000, Verdict: VerdictAllow, RuleID: 2},
			{Peer: a.ident, Protocol: ProtoUDP, Port: 5001, Verdict: VerdictAllow, RuleID: 3},
		}},
	}}); err != nil {
		t.Fatal(err)
	}
	victim := listenUDPSink(t, b.ns, "198.18.1.11:5000")
	marker := listenUDPSink(t, b.ns, "198.18.1.11:5001")

	dst, src := macOf(t, tp.node, a.hostDev), macOf(t, a.ns, "eth0")
	tagSets := []struct {
		name string
		tags []vlanTag
	}{
		{"untagged", nil},
		{"vid0", []vlanTag{{tpid8021Q, 0}}},
		{"vid5", []vlanTag{{tpid8021Q, 5}}},
		{"double-vid0", []vlanTag{{tpid8021Q, 0}, {tpid8021Q, 0}}},
		{"qinq-vid0", []vlanTag{{tpid8021AD, 0}, {tpid8021Q, 0}}},
		{"qinq-vid5", []vlanTag{{tpid8021AD, 5}, {tpid8021Q, 0}}},
	}
	var frames [][]byte
	for _, ts := range tagSets {
		for _, from := range []*testPod{a, c} {
			p := pkt{src: from.ip, dst: b.ip, sport: 40000, dport: 5000, proto: ProtoUDP, ipID: uint16(len(frames) + 1),
				data: []byte("attack " + ts.name + " from " + from.name)}
			frames = append(frames, ethFrame(dst, src, ts.tags, unix.ETH_P_IP, p.ipv4()))
		}
	}
	mk := pkt{src: a.ip, dst: b.ip, sport: 40001, dport: 5001, proto: ProtoUDP, ipID: 999, data: []byte("marker")}
	frames = append(frames, ethFrame(dst, src, nil, unix.ETH_P_IP, mk.ipv4()))
	if err := sendFrames(a.ns, "eth0", frames...); err != nil {
		t.Fatal(err)
	}
	if _, err := udpQueryOnce(c.ns, "198.18.1.11:5000", "control"); err != nil {
		t.Fatal(err)
	}
	if !marker.waitFor("marker") {
		t.Fatal("the attacker's allowed marker frame was not delivered")
	}
	if !victim.waitFor("control") {
		t.Fatal("the control datagram from the allowed pod was not delivered")
	}
	var leaked []string
	for _, g := range victim.received() {
		if strings.HasPrefix(g, "attack") {
			leaked = append(leaked, g)
		}
	}
	slices.Sort(leaked)
	if len(leaked) > 0 {
		t.Errorf("delivered to the victim: %q", leaked)
	}
	// Each frame was dropped by tc_from_pod with its reason: tagged ones
	// as vlan-tagged, untagged ones by egress policy or anti-spoofing.
	evs.waitFor(t, 10, func(ev Event) bool { return ev.Dropped && ev.Reason == ReasonVLAN && ev.Endpoint == a.id })
	evs.waitFor(t, 1, func(ev Event) bool { return ev.Dropped && ev.Reason == ReasonSpoofed && ev.Endpoint == a.id })
	evs.waitFor(t, 1, func(ev Event) bool {
		return ev.Dropped && ev.Reason == ReasonDefault && ev.Endpoint == a.id && ev.Dst.Port() == 5000
	})
}

// udpQueryOnce sends one datagram from ns to addr (no answer expected).
func udpQueryOnce(ns, addr, payload string) (int, error) {
	var n int
	err := inNS(ns, func() error {
		c, err := netDial("udp4", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		n, err = fmt.Fprint(c, payload)
		return err
	})
	return n, err
}
