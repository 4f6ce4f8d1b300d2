package bpf

import (
	"testing"

	"golang.org/x/sys/unix"
)

// TestPrivilegedHostileTaggedFramesProgTestRun: only untagged IPv4, IPv6 and ARP pass; any VLAN tag, VID 0 and stacked tags included, and any other
// ethertype are dropped with a named reason, in both directions, even
// when the IPv4 datagram inside would be allowed.
func TestPrivilegedHostileTaggedFramesProgTestRun(t *testing.T) {
	requireRoot(t)
	allow := PolicyEntry{Peer: peerID, Protocol: ProtoUDP, Port: 53, Verdict: VerdictAllow, RuleID: 80}
	d := fixture(t, EndpointPolicy{
		Egress:  DirectionPolicy{Enforced: true, Entries: []PolicyEntry{allow}},
		Ingress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{allow}},
	})
	evs := watchEvents(t, d)
	out := egress(peerIP, ProtoUDP, 53)
	in := ingress(peerIP, ProtoUDP, 53)
	spoofed := out
	spoofed.src = otherIP
	cases := []struct {
		name   string
		frame  []byte
		want   uint32
		reason Reason
	}{
		{"untagged", out.tagged(), actOK, 0},
		{"single tag VID 0", out.tagged(vlanTag{tpid8021Q, 0}), actShot, ReasonVLAN},
		{"single tag VID 5", out.tagged(vlanTag{tpid8021Q, 5}), actShot, ReasonVLAN},
		{"double VLAN 0", out.tagged(vlanTag{tpid8021Q, 0}, vlanTag{tpid8021Q, 0}), actShot, ReasonVLAN},
		{"QinQ 802.1ad", out.tagged(vlanTag{tpid8021AD, 7}, vlanTag{tpid8021Q, 0}), actShot, ReasonVLAN},
		{"QinQ 0x9100", out.tagged(vlanTag{tpidOld, 0}), actShot, ReasonVLAN},
		{"spoofed double VLAN 0", spoofed.tagged(vlanTag{tpid8021Q, 0}, vlanTag{tpid8021Q, 0}), actShot, ReasonVLAN},
		{"LLDP", ethFrame(testDstMAC, testSrcMAC, nil, 0x88cc, make([]byte, 40)), actShot, ReasonUnsupportedEtherType},
		{"802.3 length field", ethFrame(testDstMAC, testSrcMAC, nil, 46, make([]byte, 46)), actShot, ReasonUnsupportedEtherType},
		{"IPv6 of zeros", ethFrame(testDstMAC, testSrcMAC, nil, unix.ETH_P_IPV6, make([]byte, 40)), actShot, ReasonMalformed},
		{"tagged IPv6", ethFrame(testDstMAC, testSrcMAC, []vlanTag{{tpid8021Q, 0}}, unix.ETH_P_IPV6, egress6(peerIP6, ProtoUDP, 53).ipv6()), actShot, ReasonVLAN},
		{"double VLAN 0 IPv6", ethFrame(testDstMAC, testSrcMAC, []vlanTag{{tpid8021Q, 0}, {tpid8021Q, 0}}, unix.ETH_P_IPV6, egress6(peerIP6, ProtoUDP, 53).ipv6()), actShot, ReasonVLAN},
		{"untagged IPv6", ethFrame(testDstMAC, testSrcMAC, nil, unix.ETH_P_IPV6, egress6(peerIP6, ProtoUDP, 53).ipv6()), actOK, 0},
	}
	for _, dir := range []struct {
		name string
		run  func([]byte) runResult
	}{
		{"from pod", func(f []byte) runResult { return runFrame(t, d.objs.TcFromPod, f, 0) }},
		{"to pod", func(f []byte) runResult { return runFrame(t, d.objs.TcToPod, f, 0) }},
	} {
		for _, c := range cases {
			frame := c.frame
			if dir.name == "to pod" && c.name == "untagged" {
				frame = in.tagged()
			}
			if dir.name == "to pod" && c.name == "untagged IPv6" {
				frame = ethFrame(testDstMAC, testSrcMAC, nil, unix.ETH_P_IPV6, ingress6(peerIP6, ProtoUDP, 53).ipv6())
			}
			wantRet(t, dir.name+" "+c.name, dir.run(frame), c.want)
		}
	}
	for _, r := range []Reason{ReasonVLAN, ReasonUnsupportedEtherType, ReasonMalformed} {
		n := 0
		for _, c := range cases {
			if c.want == actShot && c.reason == r {
				n += 2
			}
		}
		evs.waitFor(t, n, dropReason(r))
	}
}

// TestPrivilegedHostileARPFromPod: a pod's ARP must name its own address as sender (or
// 0.0.0.0, an address probe); ARP towards the pod is the node's.
func TestPrivilegedHostileARPFromPod(t *testing.T) {
	requireRoot(t)
	d := fixture(t, enforcedEgress())
	evs := watchEvents(t, d)
	const request, reply = 1, 2
	zero := netip4(0, 0, 0, 0)
	wantRet(t, "request from own address", runFrame(t, d.objs.TcFromPod, arpFrame(request, podIP, nodeIP), 0), actOK)
	wantRet(t, "reply from own address", runFrame(t, d.objs.TcFromPod, arpFrame(reply, podIP, nodeIP), 0), actOK)
	wantRet(t, "probe", runFrame(t, d.objs.TcFromPod, arpFrame(request, zero, podIP), 0), actOK)
	wantRet(t, "spoofed request", runFrame(t, d.objs.TcFromPod, arpFrame(request, peerIP, nodeIP), 0), actShot)
	wantRet(t, "spoofed reply", runFrame(t, d.objs.TcFromPod, arpFrame(reply, nodeIP, nodeIP), 0), actShot)
	bad := arpFrame(request, podIP, nodeIP)
	bad[14+5] = 16 // protocol address length 16
	wantRet(t, "malformed", runFrame(t, d.objs.TcFromPod, bad, 0), actShot)
	wantRet(t, "to pod", runFrame(t, d.objs.TcToPod, arpFrame(request, nodeIP, podIP), 0), actOK)
	evs.waitFor(t, 2, dropReason(ReasonSpoofed))
	evs.waitFor(t, 1, dropReason(ReasonMalformed))
}
