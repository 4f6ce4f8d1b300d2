package bpf

import (
	"net/netip"
	"slices"
	"testing"
)

func icmpType(t uint8) *uint8 { return &t }

func icmpPkt(src, dst netip.Addr, typ uint8, id uint16) pkt {
	return pkt{src: src, dst: dst, proto: ProtoICMP, icmpType: icmpType(typ), icmpID: id}
}

const (
	icmpEchoReply   = 0
	icmpUnreachable = 3
	icmpEcho        = 8
	icmpTimeExceed  = 11
	icmpTimestamp   = 13
)

// TestPrivilegedICMPPolicy: icmps entries (protocol ICMP, the type in the port
// field) are enforced per type; echo replies follow their request by
// identifier through conntrack; ICMPv6 entries match ICMPv6 only
// (ipv6_test.go).
func TestPrivilegedICMPPolicy(t *testing.T) {
	requireRoot(t)
	d := openTest(t, Config{})
	if err := d.objs.Endpoints.Update(uint32(testIfindex), &datapathEndpointInfo{Id: testEP, Ipv4: podIP.As4()}, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := d.SyncIPCache(fixtureIPCache()); err != nil {
		t.Fatal(err)
	}
	if _, err := d.SyncPolicy([]EndpointPolicy{{Endpoint: testEP,
		Egress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{
			{Peer: peerID, Protocol: ProtoICMP, Port: icmpEcho, EndPort: icmpEcho, Verdict: VerdictAllow, RuleID: 100},
			{Peer: peerID, Protocol: ProtoICMPv6, Port: 128, EndPort: 128, Verdict: VerdictAllow, RuleID: 101},
		}},
		Ingress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{
			{Peer: otherID, Protocol: ProtoICMP, Port: icmpEchoReply, Verdict: VerdictAllow, RuleID: 102},
		}},
	}}); err != nil {
		t.Fatal(err)
	}
	req := icmpPkt(podIP, peerIP, icmpEcho, 0x1234)
	wantRet(t, "echo request to an allowed peer", d.fromPod(t, req), actOK)
	wantRet(t, "its echo reply", d.toPod(t, icmpPkt(peerIP, podIP, icmpEchoReply, 0x1234)), actOK)
	wantRet(t, "an echo reply with another identifier", d.toPod(t, icmpPkt(peerIP, podIP, icmpEchoReply, 0x1235)), actShot)
	wantRet(t, "echo request to another peer", d.fromPod(t, icmpPkt(podIP, otherIP, icmpEcho, 0x1234)), actShot)
	wantRet(t, "timestamp request to the allowed peer", d.fromPod(t, icmpPkt(podIP, peerIP, icmpTimestamp, 0x1234)), actShot)
	wantRet(t, "echo request into the pod", d.toPod(t, icmpPkt(peerIP, podIP, icmpEcho, 0x1234)), actShot)
	// The reply direction is not a way in for other types.
	wantRet(t, "timestamp from the peer", d.toPod(t, icmpPkt(peerIP, podIP, icmpTimestamp, 0x1234)), actShot)
	wantRet(t, "echo request from the peer with the same id", d.toPod(t, icmpPkt(peerIP, podIP, icmpEcho, 0x1234)), actShot)
	// Type 0 (echo reply) is one type, not all of them.
	wantRet(t, "echo reply from other (type 0 allowed)", d.toPod(t, icmpPkt(otherIP, podIP, icmpEchoReply, 7)), actOK)
	wantRet(t, "echo request from other", d.toPod(t, icmpPkt(otherIP, podIP, icmpEcho, 7)), actShot)
	wantRet(t, "unreachable from other", d.toPod(t, icmpPkt(otherIP, podIP, icmpUnreachable, 0)), actShot)
	// The ICMPv6 entry (type 128) is in the map with protocol 58 and
	// admits no IPv4 ICMP of that type.
	wantRet(t, "IPv4 ICMP of type 128 to the peer", d.fromPod(t, icmpPkt(podIP, peerIP, 128, 0x1234)), actShot)
	entries, err := d.Policy()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(entries, func(e PolicyMapEntry) bool { return e.Protocol == ProtoICMPv6 && e.Port == 128 }) {
		t.Errorf("no ICMPv6 entry in %+v", entries)
	}
}

// TestPrivilegedICMPErrors: ICMP errors (unreachable, time exceeded, parameter
// problem) about a tracked flow pass as part of it; about anything else
// they are judged as ICMP of their type (usually dropped).
func TestPrivilegedICMPErrors(t *testing.T) {
	requireRoot(t)
	d := fixture(t, EndpointPolicy{
		Egress:  DirectionPolicy{Enforced: true, Entries: []PolicyEntry{{Peer: peerID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictAllow, RuleID: 110}}},
		Ingress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{{Peer: peerID, Protocol: ProtoUDP, Port: 53, Verdict: VerdictAllow, RuleID: 111}}},
	})
	out := egress(peerIP, ProtoTCP, 80)
	wantRet(t, "tcp syn", d.fromPod(t, out), actOK)
	errAbout := func(from netip.Addr, typ uint8, inner pkt) pkt {
		p := icmpPkt(from, podIP, typ, 0)
		p.inner = &inner
		return p
	}
	wantRet(t, "unreachable about the flow, from the peer", d.toPod(t, errAbout(peerIP, icmpUnreachable, out)), actOK)
	wantRet(t, "time exceeded about the flow, from a router", d.toPod(t, errAbout(worldIP, icmpTimeExceed, out)), actOK)
	other := out
	other.dport = 81
	wantRet(t, "unreachable about an unknown flow", d.toPod(t, errAbout(peerIP, icmpUnreachable, other)), actShot)
	spoofedInner := out
	spoofedInner.src = otherIP
	wantRet(t, "unreachable quoting someone else's packet", d.toPod(t, errAbout(peerIP, icmpUnreachable, spoofedInner)), actShot)

	// An inbound flow: the pod's own errors about it go out.
	in := ingress(peerIP, ProtoUDP, 53)
	wantRet(t, "udp in", d.toPod(t, in), actOK)
	podErr := icmpPkt(podIP, peerIP, icmpUnreachable, 0)
	podErr.inner = &pkt{src: peerIP, dst: podIP, sport: in.sport, dport: 53, proto: ProtoUDP}
	wantRet(t, "pod's port unreachable about the inbound flow", d.fromPod(t, podErr), actOK)
	podErr.inner.dport = 54
	wantRet(t, "pod's port unreachable about another flow", d.fromPod(t, podErr), actShot)

	// Revoked flow: its errors stop too.
	if _, err := d.SyncPolicy([]EndpointPolicy{{Endpoint: testEP, Egress: DirectionPolicy{Enforced: true}}}); err != nil {
		t.Fatal(err)
	}
	wantRet(t, "unreachable about a revoked flow", d.toPod(t, errAbout(peerIP, icmpUnreachable, out)), actShot)
}

// TestPrivilegedICMPFragments: later fragments of an allowed echo request follow it;
// of a denied one, they are dropped.
func TestPrivilegedICMPFragments(t *testing.T) {
	requireRoot(t)
	d := fixture(t, enforcedEgress(PolicyEntry{Peer: peerID, Protocol: ProtoICMP, Port: icmpEcho, Verdict: VerdictAllow, RuleID: 120}))
	first := icmpPkt(podIP, peerIP, icmpEcho, 9)
	first.ipID, first.moreFrags, first.payload = 300, true, 64
	wantRet(t, "first fragment", d.fromPod(t, first), actOK)
	later := first
	later.fragOff, later.moreFrags = 9, false
	wantRet(t, "later fragment", d.fromPod(t, later), actOK)
	denied := icmpPkt(podIP, peerIP, icmpTimestamp, 9)
	denied.ipID, denied.moreFrags, denied.payload = 301, true, 64
	wantRet(t, "first fragment, denied type", d.fromPod(t, denied), actShot)
	denied.fragOff, denied.moreFrags = 9, false
	wantRet(t, "later fragment, denied type", d.fromPod(t, denied), actShot)
}
