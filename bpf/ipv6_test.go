package bpf

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// IPv6 packets of the fixture (the pod is podIP6).
func egress6(dst netip.Addr, proto uint8, dport uint16) pkt {
	return pkt{src: podIP6, dst: dst, sport: 40000, dport: dport, proto: proto, tcpFlags: tcpSYN}
}

func ingress6(src netip.Addr, proto uint8, dport uint16) pkt {
	return pkt{src: src, dst: podIP6, sport: 40000, dport: dport, proto: proto, tcpFlags: tcpSYN}
}

func icmp6Pkt(src, dst netip.Addr, typ uint8, id uint16) pkt {
	return pkt{src: src, dst: dst, proto: ProtoICMPv6, icmpType: icmpType(typ), icmpID: id}
}

// ICMPv6 types.
const (
	icmp6Unreachable = 1
	icmp6TooBig      = 2
	icmp6Echo        = 128
	icmp6EchoReply   = 129
	ndRS             = 133
	ndRA             = 134
	ndNS             = 135
	ndNA             = 136
	ndRedirect       = 137
)

// ndPkt is a neighbour discovery message with a target address (NS, NA,
// redirect) after its 4 reserved bytes.
func ndPkt(src, dst netip.Addr, typ uint8, target netip.Addr) pkt {
	p := icmp6Pkt(src, dst, typ, 0)
	if target.IsValid() {
		b := target.As16()
		p.data = b[:]
	}
	return p
}

func ethIPv6(p pkt) []byte { return ethFrame(testDstMAC, testSrcMAC, nil, unix.ETH_P_IPV6, p.ipv6()) }

// raw6 is p's frame with the IPv6 packet edited by f.
func raw6(p pkt, f func(ip []byte) []byte) []byte {
	return ethFrame(testDstMAC, testSrcMAC, nil, unix.ETH_P_IPV6, f(p.ipv6()))
}

// TestPrivilegedIPv6PolicyVerdicts: IPv6 flows get the same identity-based
// policy as IPv4 ones: ipcache lookups with family 6 (exact and CIDR
// prefixes, world for a miss), conntrack for replies, default deny.
func TestPrivilegedIPv6PolicyVerdicts(t *testing.T) {
	d := fixture(t, EndpointPolicy{
		Egress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{
			{Peer: peerID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictAllow, RuleID: 600},
			{Peer: cidrID, Protocol: ProtoUDP, Port: 53, Verdict: VerdictAllow, RuleID: 601},
			{Peer: IdentityWorld, Protocol: ProtoTCP, Port: 443, Verdict: VerdictAllow, RuleID: 602},
			{Peer: otherID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictDeny, RuleID: 603},
			{Peer: IdentityAny, Protocol: ProtoTCP, Port: 80, Verdict: VerdictAllow, RuleID: 604},
		}},
		Ingress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{
			{Peer: otherID, Protocol: ProtoTCP, Port: 8080, Verdict: VerdictAllow, RuleID: 605},
		}},
	})
	evs := watchEvents(t, d)
	out := egress6(peerIP6, ProtoTCP, 80)
	wantRet(t, "allowed tcp to the peer", d.fromPod(t, out), actOK)
	reply := out.reply()
	reply.tcpFlags = tcpSYN | tcpACK
	wantRet(t, "its reply", d.toPod(t, reply), actOK)
	wantRet(t, "another port to the peer", d.fromPod(t, egress6(peerIP6, ProtoTCP, 81)), actShot)
	wantRet(t, "udp 53 into the CIDR", d.fromPod(t, egress6(cidrIP6, ProtoUDP, 53)), actOK)
	wantRet(t, "udp 53 to the peer", d.fromPod(t, egress6(peerIP6, ProtoUDP, 53)), actShot)
	wantRet(t, "tcp 443 to the world", d.fromPod(t, egress6(worldIP6, ProtoTCP, 443)), actOK)
	wantRet(t, "tcp 443 to the peer (not world)", d.fromPod(t, egress6(peerIP6, ProtoTCP, 443)), actShot)
	wantRet(t, "deny beats the wildcard allow", d.fromPod(t, egress6(otherIP6, ProtoTCP, 80)), actShot)
	wantRet(t, "ingress allowed", d.toPod(t, ingress6(otherIP6, ProtoTCP, 8080)), actOK)
	wantRet(t, "ingress default deny", d.toPod(t, ingress6(peerIP6, ProtoTCP, 8080)), actShot)
	// The IPv4 address of the same peer is a flow of its own.
	wantRet(t, "IPv4 reply to an IPv6 flow", d.toPod(t, pkt{src: peerIP, dst: podIP, sport: 80, dport: 40000, proto: ProtoTCP, tcpFlags: tcpACK}), actShot)
	evs.waitFor(t, 1, func(ev Event) bool {
		return ev.Dropped && ev.Reason == ReasonPolicy && ev.RuleID == 603 && ev.Dst.Addr() == otherIP6 && ev.Src.Addr() == podIP6 && ev.DstIdentity == otherID
	})
	evs.waitFor(t, 1, func(ev Event) bool {
		return !ev.Dropped && ev.RuleID == 601 && ev.Dst.Addr() == cidrIP6 && ev.DstIdentity == cidrID
	})
	flows, err := d.ConntrackAddrs(1 << 62)
	if err != nil {
		t.Fatal(err)
	}
	if !flows[peerIP6] || !flows[podIP6] {
		t.Errorf("conntrack addresses %v lack the IPv6 flow", flows)
	}
}

// TestPrivilegedIPv6Redirect: an IPv6 flow to a redirected port gets the
// to-proxy mark when the port has an IPv6 listener; with only an IPv4 one
// (which cannot take IPv6) the redirect drops (no-listener), as it does
// without any listener.
func TestPrivilegedIPv6Redirect(t *testing.T) {
	d := fixture(t, enforcedEgress(
		PolicyEntry{Peer: peerID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictRedirect, ProxyPort: testProxyPrt, RuleID: 610},
		PolicyEntry{Peer: peerID, Protocol: ProtoTCP, Port: 81, Verdict: VerdictRedirect, ProxyPort: testProxyPrt + 1, RuleID: 611}))
	evs := watchEvents(t, d)
	if err := d.RegisterProxyListener(testProxyPrt, listen(t)); err != nil {
		t.Fatal(err)
	}
	wantRet(t, "IPv4 listener only", d.fromPod(t, egress6(peerIP6, ProtoTCP, 80)), actShot)
	evs.waitFor(t, 1, func(ev Event) bool { return ev.Dropped && ev.Reason == ReasonNoListener && ev.Dst.Addr() == peerIP6 })
	if got := d.fromPod(t, egress(peerIP, ProtoTCP, 80)); got != (runResult{ret: actOK, mark: ToProxyMark(testProxyPrt)}) {
		t.Errorf("IPv4 redirected syn: %+v", got)
	}
	var lc net.ListenConfig
	lc.SetMultipathTCP(false)
	l6, err := lc.Listen(t.Context(), "tcp6", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l6.Close() })
	if err := d.RegisterProxyListener(testProxyPrt, l6.(*net.TCPListener)); err != nil {
		t.Fatal(err)
	}
	p := egress6(peerIP6, ProtoTCP, 80)
	p.sport++
	if got := d.fromPod(t, p); got != (runResult{ret: actOK, mark: ToProxyMark(testProxyPrt)}) {
		t.Errorf("redirected syn: %+v", got)
	}
	p.tcpFlags = tcpACK
	if got := d.fromPod(t, p); got.mark != ToProxyMark(testProxyPrt) {
		t.Errorf("established redirected packet: %+v", got)
	}
	wantRet(t, "redirect without a listener", d.fromPod(t, egress6(peerIP6, ProtoTCP, 81)), actShot)
	// The IPv4 listener is still the port's IPv4 socket.
	p4 := egress(peerIP, ProtoTCP, 80)
	p4.sport++
	if got := d.fromPod(t, p4); got != (runResult{ret: actOK, mark: ToProxyMark(testProxyPrt)}) {
		t.Errorf("IPv4 redirected syn after the IPv6 registration: %+v", got)
	}
}

// TestPrivilegedIPv6ICMP: icmps entries with protocol ICMPv6 are enforced
// per type; echo replies follow their request by identifier; an IPv4 ICMP
// entry never admits ICMPv6 (nor the reverse); errors about a tracked
// flow pass as part of it.
func TestPrivilegedIPv6ICMP(t *testing.T) {
	d := fixture(t, EndpointPolicy{
		Egress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{
			{Peer: peerID, Protocol: ProtoICMPv6, Port: icmp6Echo, Verdict: VerdictAllow, RuleID: 620},
			{Peer: otherID, Protocol: ProtoICMP, Port: icmpEcho, Verdict: VerdictAllow, RuleID: 621},
			{Peer: peerID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictAllow, RuleID: 622},
		}},
		Ingress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{
			{Peer: otherID, Protocol: ProtoICMP, Port: icmpEchoReply, Verdict: VerdictAllow, RuleID: 623},
		}},
	})
	evs := watchEvents(t, d)
	wantRet(t, "echo request to the peer", d.fromPod(t, icmp6Pkt(podIP6, peerIP6, icmp6Echo, 0x77)), actOK)
	wantRet(t, "its echo reply", d.toPod(t, icmp6Pkt(peerIP6, podIP6, icmp6EchoReply, 0x77)), actOK)
	wantRet(t, "an echo reply with another id", d.toPod(t, icmp6Pkt(peerIP6, podIP6, icmp6EchoReply, 0x78)), actShot)
	wantRet(t, "echo request to other (only IPv4 echo allowed)", d.fromPod(t, icmp6Pkt(podIP6, otherIP6, icmp6Echo, 1)), actShot)
	wantRet(t, "IPv4 echo request to other", d.fromPod(t, icmpPkt(podIP, otherIP, icmpEcho, 1)), actOK)
	wantRet(t, "IPv4 echo to the peer (only ICMPv6 allowed)", d.fromPod(t, icmpPkt(podIP, peerIP, icmpEcho, 2)), actShot)
	// IPv6 carrying ICMP (for IPv4) of type 0, which the IPv4 rule allows.
	wrong := icmpPkt(otherIP6, podIP6, icmpEchoReply, 9)
	wantRet(t, "ICMP in IPv6", d.toPod(t, wrong), actShot)
	wrong4 := pkt{src: podIP, dst: peerIP, proto: ProtoICMPv6, icmpType: icmpType(icmp6Echo)}
	wantRet(t, "ICMPv6 in IPv4", runFrame(t, d.objs.TcFromPod, ethIPv4(wrong4), 0), actShot)
	evs.waitFor(t, 2, dropReason(ReasonWrongFamily))

	// Errors: packet too big about the allowed TCP flow passes into the pod.
	wantRet(t, "tcp to the peer", d.fromPod(t, egress6(peerIP6, ProtoTCP, 80)), actOK)
	tooBig := icmp6Pkt(peerIP6, podIP6, icmp6TooBig, 0)
	tooBig.inner = &pkt{src: podIP6, dst: peerIP6, proto: ProtoTCP, sport: 40000, dport: 80}
	wantRet(t, "packet too big about the flow", d.toPod(t, tooBig), actOK)
	other := tooBig
	other.inner = &pkt{src: podIP6, dst: peerIP6, proto: ProtoTCP, sport: 40001, dport: 80}
	wantRet(t, "packet too big about no flow", d.toPod(t, other), actShot)
	forged := tooBig
	forged.inner = &pkt{src: otherIP6, dst: peerIP6, proto: ProtoTCP, sport: 40000, dport: 80}
	wantRet(t, "packet too big quoting another source", d.toPod(t, forged), actShot)
	echoErr := icmp6Pkt(peerIP6, podIP6, icmp6Unreachable, 0)
	echoErr.inner = &pkt{src: podIP6, dst: peerIP6, proto: ProtoICMPv6, icmpType: icmpType(icmp6Echo), icmpID: 0x77}
	wantRet(t, "unreachable about the echo flow", d.toPod(t, echoErr), actOK)
}

// TestPrivilegedIPv6NeighbourDiscovery: ND passes without policy (the
// directions are enforced with no entries), from the pod's own or a
// link-local address, and never as a router.
func TestPrivilegedIPv6NeighbourDiscovery(t *testing.T) {
	d := fixture(t, EndpointPolicy{Egress: DirectionPolicy{Enforced: true}, Ingress: DirectionPolicy{Enforced: true}})
	evs := watchEvents(t, d)
	unspec := netip.IPv6Unspecified()
	solicited := netip.MustParseAddr("ff02::1:ff00:1")
	allRouters := netip.MustParseAddr("ff02::2")
	nodeLL := netip.MustParseAddr("fe80::1")
	cases := []hostileCase{
		{"NS from link-local", false, ethIPv6(ndPkt(llIP6, solicited, ndNS, nodeLL)), actOK, 0},
		{"NS from own address", false, ethIPv6(ndPkt(podIP6, solicited, ndNS, nodeIP6)), actOK, 0},
		{"NS for DAD from ::", false, ethIPv6(ndPkt(unspec, solicited, ndNS, podIP6)), actOK, 0},
		{"RS from link-local", false, ethIPv6(ndPkt(llIP6, allRouters, ndRS, netip.Addr{})), actOK, 0},
		{"NA for own address", false, ethIPv6(ndPkt(llIP6, nodeLL, ndNA, podIP6)), actOK, 0},
		{"NA for a link-local target", false, ethIPv6(ndPkt(llIP6, nodeLL, ndNA, llIP6)), actOK, 0},
		{"NA for the peer's address", false, ethIPv6(ndPkt(llIP6, nodeLL, ndNA, peerIP6)), actShot, ReasonSpoofed},
		{"NA for the node's address", false, ethIPv6(ndPkt(podIP6, nodeLL, ndNA, nodeIP6)), actShot, ReasonSpoofed},
		{"NA from ::", false, ethIPv6(ndPkt(unspec, nodeLL, ndNA, podIP6)), actShot, ReasonSpoofed},
		{"NS from the peer's address", false, ethIPv6(ndPkt(peerIP6, solicited, ndNS, nodeIP6)), actShot, ReasonSpoofed},
		{"RA from the pod", false, ethIPv6(ndPkt(llIP6, netip.MustParseAddr("ff02::1"), ndRA, netip.Addr{})), actShot, ReasonNDRouter},
		{"redirect from the pod", false, ethIPv6(ndPkt(llIP6, nodeLL, ndRedirect, nodeIP6)), actShot, ReasonNDRouter},
		{"NS with hop limit 64", false, ethIPv6(func() pkt { p := ndPkt(llIP6, solicited, ndNS, nodeLL); p.hopLimit = 64; return p }()), actShot, ReasonMalformed},
		{"NS with code 1", false, ethIPv6(func() pkt { p := ndPkt(llIP6, solicited, ndNS, nodeLL); p.icmpCode = 1; return p }()), actShot, ReasonMalformed},
		{"atomic fragment NS", false, ethIPv6(func() pkt {
			p := ndPkt(llIP6, solicited, ndNS, nodeLL)
			p.exts = []ext6{fragExt(0, false, 9)}
			return p
		}()), actShot, ReasonMalformed},
		{"NA with a cut target", false, ethIPv6(func() pkt { p := ndPkt(llIP6, nodeLL, ndNA, podIP6); p.data = p.data[:8]; return p }()), actShot, ReasonMalformed},
		{"echo from link-local (ND only)", false, ethIPv6(icmp6Pkt(llIP6, nodeLL, icmp6Echo, 1)), actShot, ReasonSpoofed},
		{"NS into the pod", true, ethIPv6(ndPkt(nodeLL, solicited, ndNS, podIP6)), actOK, 0},
		{"NA into the pod", true, ethIPv6(ndPkt(nodeLL, llIP6, ndNA, nodeLL)), actOK, 0},
		{"RA into the pod", true, ethIPv6(ndPkt(nodeLL, netip.MustParseAddr("ff02::1"), ndRA, netip.Addr{})), actOK, 0},
		{"redirect into the pod", true, ethIPv6(ndPkt(nodeLL, llIP6, ndRedirect, nodeIP6)), actShot, ReasonNDRouter},
		{"echo into the pod (policy)", true, ethIPv6(icmp6Pkt(peerIP6, podIP6, icmp6Echo, 1)), actShot, ReasonDefault},
	}
	runHostile(t, d, evs, cases)
}

// TestPrivilegedIPv6MLD: multicast listener discovery from a pod (every
// pod's kernel sends MLD reports from its link-local address to ff02::16
// when an interface comes up) is dropped with its own reason, mld, not as
// spoofing: the node is no multicast router, so nothing is lost, and the
// reports never leave the link (Cilium drops them too: source
// verification admits only the endpoint's own address, MLD is not ND).
// Whatever its source or destination, egress MLD is dropped; other
// ICMPv6 from a link-local address stays spoofed.
func TestPrivilegedIPv6MLD(t *testing.T) {
	d := fixture(t, EndpointPolicy{Egress: DirectionPolicy{Entries: []PolicyEntry{{Peer: IdentityAny, Verdict: VerdictAllow, RuleID: 650}}}})
	evs := watchEvents(t, d)
	mld := func(src, dst netip.Addr, typ uint8) pkt {
		p := icmp6Pkt(src, dst, typ, 0)
		p.hopLimit = 1
		p.exts = []ext6{optsExt(extHopByHop, 0)} // (RFC 3810 puts a router alert there)
		return p
	}
	mldv2 := netip.MustParseAddr("ff02::16")
	cases := []hostileCase{
		{"MLDv2 report from link-local", false, ethIPv6(mld(llIP6, mldv2, 143)), actShot, ReasonMLD},
		{"MLDv2 report from ::", false, ethIPv6(mld(netip.IPv6Unspecified(), mldv2, 143)), actShot, ReasonMLD},
		{"MLDv1 report from link-local", false, ethIPv6(mld(llIP6, netip.MustParseAddr("ff02::1:ff00:10"), 131)), actShot, ReasonMLD},
		{"MLD done from link-local", false, ethIPv6(mld(llIP6, netip.MustParseAddr("ff02::2"), 132)), actShot, ReasonMLD},
		{"MLD query from the pod", false, ethIPv6(mld(llIP6, netip.MustParseAddr("ff02::1"), 130)), actShot, ReasonMLD},
		{"MLD report from the own address", false, ethIPv6(mld(podIP6, mldv2, 143)), actShot, ReasonMLD},
		{"MLD report to a unicast address", false, ethIPv6(mld(llIP6, peerIP6, 143)), actShot, ReasonMLD},
		{"echo from link-local stays spoofed", false, ethIPv6(icmp6Pkt(llIP6, mldv2, icmp6Echo, 1)), actShot, ReasonSpoofed},
		{"control: echo from the own address", false, ethIPv6(icmp6Pkt(podIP6, peerIP6, icmp6Echo, 1)), actOK, 0},
	}
	runHostile(t, d, evs, cases)
}

// TestPrivilegedHostileIPv6Spoofing: a pod sends IPv6 only from its own
// address; one without an IPv6 address sends none but ND.
func TestPrivilegedHostileIPv6Spoofing(t *testing.T) {
	d := fixture(t, EndpointPolicy{Egress: DirectionPolicy{Entries: []PolicyEntry{{Peer: IdentityAny, Verdict: VerdictAllow, RuleID: 630}}}})
	evs := watchEvents(t, d)
	from := func(src netip.Addr) pkt { p := egress6(peerIP6, ProtoUDP, 53); p.src = src; return p }
	cases := []hostileCase{
		{"own address", false, ethIPv6(from(podIP6)), actOK, 0},
		{"another pod's address", false, ethIPv6(from(peerIP6)), actShot, ReasonSpoofed},
		{"the node's address", false, ethIPv6(from(nodeIP6)), actShot, ReasonSpoofed},
		{"link-local (not ND)", false, ethIPv6(from(llIP6)), actShot, ReasonSpoofed},
		{"unspecified", false, ethIPv6(from(netip.IPv6Unspecified())), actShot, ReasonSpoofed},
		{"IPv4-mapped own IPv4 address", false, ethIPv6(from(netip.AddrFrom16(podIP.As16()))), actShot, ReasonSpoofed},
		{"own address behind a spoofed fragment chain", false, ethIPv6(func() pkt { p := from(peerIP6); p.exts = []ext6{optsExt(extHopByHop, 0)}; return p }()), actShot, ReasonSpoofed},
	}
	runHostile(t, d, evs, cases)

	// An endpoint without an IPv6 address.
	if err := d.objs.Endpoints.Update(uint32(testIfindex), &datapathEndpointInfo{Id: testEP, Ipv4: podIP.As4()}, 0); err != nil {
		t.Fatal(err)
	}
	runHostile(t, d, evs, []hostileCase{
		{"IPv4-only endpoint: IPv4 passes", false, ethIPv4(egress(peerIP, ProtoUDP, 53)), actOK, 0},
		{"IPv4-only endpoint: IPv6 from the former address", false, ethIPv6(from(podIP6)), actShot, ReasonSpoofed},
		{"IPv4-only endpoint: NS from link-local", false, ethIPv6(ndPkt(llIP6, netip.MustParseAddr("ff02::1:ff00:1"), ndNS, netip.MustParseAddr("fe80::1"))), actOK, 0},
	})
}

// TestPrivilegedHostileIPv6ExtensionHeaders: the walk through extension
// headers is bounded and strict: policy applies behind the headers it
// understands, everything else is dropped with a named reason.
func TestPrivilegedHostileIPv6ExtensionHeaders(t *testing.T) {
	d := fixture(t, EndpointPolicy{
		Egress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{
			{Peer: peerID, Protocol: ProtoUDP, Port: 53, Verdict: VerdictAllow, RuleID: 640},
			{Peer: peerID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictAllow, RuleID: 641},
		}},
		Ingress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{
			{Peer: peerID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictAllow, RuleID: 642},
		}},
	})
	evs := watchEvents(t, d)
	sport := uint16(2000)
	udp := func(exts ...ext6) pkt {
		sport++
		p := egress6(peerIP6, ProtoUDP, 53)
		p.sport, p.exts = sport, exts
		return p
	}
	denied := func(exts ...ext6) pkt { p := udp(exts...); p.dport = 54; return p }
	hbh, dst := optsExt(extHopByHop, 0), optsExt(extDestOpts, 1)
	chain := func(n int) []ext6 {
		var e []ext6
		for range n {
			e = append(e, optsExt(extDestOpts, 0))
		}
		return e
	}
	cases := []hostileCase{
		{"control: allowed udp", false, ethIPv6(udp()), actOK, 0},
		{"hop-by-hop, dest options, AH, dest options", false, ethIPv6(udp(hbh, dst, ahExt(), optsExt(extDestOpts, 0))), actOK, 0},
		{"policy applies behind the headers", false, ethIPv6(denied(hbh, dst, ahExt())), actShot, ReasonDefault},
		{"8 extension headers (the bound)", false, ethIPv6(udp(chain(8)...)), actOK, 0},
		{"9 extension headers", false, ethIPv6(udp(chain(9)...)), actShot, ReasonIPv6ExtHeader},
		{"40 extension headers", false, ethIPv6(udp(chain(40)...)), actShot, ReasonIPv6ExtHeader},
		{"hop-by-hop not first", false, ethIPv6(udp(dst, hbh)), actShot, ReasonIPv6ExtHeader},
		{"Mobility header", false, ethIPv6(udp(ext6{typ: 135, b: make([]byte, 8)})), actShot, ReasonIPv6ExtHeader},
		{"HIP header", false, ethIPv6(udp(ext6{typ: 139, b: make([]byte, 8)})), actShot, ReasonIPv6ExtHeader},
		{"experimental header 253", false, ethIPv6(udp(ext6{typ: 253, b: make([]byte, 8)})), actShot, ReasonIPv6ExtHeader},
		{"routing header type 0, no segments left", false, ethIPv6(udp(routingExt(0, 0))), actShot, ReasonIPv6Routing},
		{"routing header type 0 into the pod", true, ethIPv6(func() pkt { p := ingress6(peerIP6, ProtoTCP, 80); p.exts = []ext6{routingExt(0, 1)}; return p }()), actShot, ReasonIPv6Routing},
		{"segment routing header with a segment left", false, ethIPv6(udp(routingExt(4, 1))), actShot, ReasonIPv6Routing},
		{"type 2 routing header, no segments left", false, ethIPv6(udp(routingExt(2, 0))), actOK, 0},
		{"two routing headers", false, ethIPv6(udp(routingExt(2, 0), routingExt(2, 0))), actShot, ReasonIPv6ExtHeader},
		{"two fragment headers", false, ethIPv6(udp(fragExt(0, false, 1), fragExt(0, false, 2))), actShot, ReasonIPv6ExtHeader},
		{"header beyond the packet", false, ethIPv6(func() pkt { p := udp(optsExt(extDestOpts, 4)); p.l4Len = 1; return p }()), actShot, ReasonMalformed},
		{"header length past the end", false, raw6(udp(dst), func(ip []byte) []byte { ip[40+1] = 200; return ip }), actShot, ReasonMalformed},
		{"payload length beyond the frame", false, raw6(udp(), func(ip []byte) []byte { binary.BigEndian.PutUint16(ip[4:], 1500); return ip }), actShot, ReasonMalformed},
		{"udp header in the frame's padding", false, raw6(udp(), func(ip []byte) []byte { binary.BigEndian.PutUint16(ip[4:], 4); return ip }), actShot, ReasonMalformed},
		{"version 4 behind the IPv6 ethertype", false, raw6(udp(), func(ip []byte) []byte { ip[0] = 0x40; return ip }), actShot, ReasonMalformed},
		{"tcp header cut", false, ethIPv6(func() pkt { p := egress6(peerIP6, ProtoTCP, 80); p.l4Len = 12; return p }()), actShot, ReasonMalformed},
		{"no next header (59) is a protocol: default deny", false, ethIPv6(func() pkt { p := udp(); p.lastNext = 59; return p }()), actShot, ReasonDefault},
	}
	runHostile(t, d, evs, cases)
}

// TestPrivilegedHostileIPv6Fragments: later fragments follow their
// datagram's admitted first fragment (by source, destination and
// identification), never overlap it, and a first fragment must carry the
// transport header.
func TestPrivilegedHostileIPv6Fragments(t *testing.T) {
	d := fixture(t, EndpointPolicy{
		Egress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{
			{Peer: peerID, Protocol: ProtoUDP, Port: 53, Verdict: VerdictAllow, RuleID: 650},
			{Peer: peerID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictAllow, RuleID: 651},
			{Peer: peerID, Protocol: ProtoICMPv6, Port: icmp6Echo, Verdict: VerdictAllow, RuleID: 652},
		}},
		Ingress: DirectionPolicy{Enforced: true},
	})
	evs := watchEvents(t, d)
	frag := func(p pkt, id uint16, off uint16, more bool) pkt {
		p.ipID, p.fragOff, p.moreFrags, p.payload = id, off, more, 32
		return p
	}
	udp := egress6(peerIP6, ProtoUDP, 53)
	tcp := egress6(peerIP6, ProtoTCP, 80)
	cases := []hostileCase{
		{"first udp fragment", false, ethIPv6(frag(udp, 700, 0, true)), actOK, 0},
		{"later udp fragment", false, ethIPv6(frag(udp, 700, 5, true)), actOK, 0},
		{"last udp fragment", false, ethIPv6(frag(udp, 700, 9, false)), actOK, 0},
		// The first fragment carried 8+32 bytes: offsets below 5 overlap it.
		{"fragment overlapping the first one's header", false, ethIPv6(frag(udp, 700, 1, false)), actShot, ReasonFragment},
		{"fragment overlapping the first one's data", false, ethIPv6(frag(udp, 700, 4, false)), actShot, ReasonFragment},
		{"later fragment before its first", false, ethIPv6(frag(udp, 701, 5, false)), actShot, ReasonFragment},
		{"later fragment with another source", false, ethIPv6(func() pkt { p := frag(udp, 700, 5, false); p.src = otherIP6; return p }()), actShot, ReasonFragment},
		{"later fragment to another destination", false, ethIPv6(func() pkt { p := frag(udp, 700, 5, false); p.dst = otherIP6; return p }()), actShot, ReasonFragment},
		{"denied first fragment", false, ethIPv6(frag(egress6(peerIP6, ProtoUDP, 54), 702, 0, true)), actShot, ReasonDefault},
		{"its later fragment", false, ethIPv6(frag(egress6(peerIP6, ProtoUDP, 54), 702, 5, false)), actShot, ReasonFragment},
		{"first tcp fragment", false, ethIPv6(frag(tcp, 703, 0, true)), actOK, 0},
		{"tcp fragment at offset 8 (rewrites flags)", false, ethIPv6(frag(tcp, 703, 1, true)), actShot, ReasonFragment},
		{"later tcp fragment", false, ethIPv6(frag(tcp, 703, 7, false)), actOK, 0},
		{"first fragment without the tcp header", false, ethIPv6(func() pkt { p := frag(tcp, 704, 0, true); p.l4Len = 8; p.payload = 0; return p }()), actShot, ReasonMalformed},
		{"its later fragment", false, ethIPv6(frag(tcp, 704, 1, false)), actShot, ReasonFragment},
		{"first fragment ending after its extension headers", false, func() []byte {
			// Destination options, then the fragment header, then nothing:
			// the udp header would be in a later fragment (RFC 7112).
			p := frag(udp, 705, 0, true)
			p.exts, p.payload = []ext6{optsExt(extDestOpts, 1)}, 0
			return raw6(p, func(b []byte) []byte {
				b = b[:40+16+8]
				binary.BigEndian.PutUint16(b[4:], 16+8)
				return b
			})
		}(), actShot, ReasonMalformed},
		{"atomic fragment is a whole datagram: allowed", false, ethIPv6(func() pkt { p := udp; p.exts = []ext6{fragExt(0, false, 706)}; return p }()), actOK, 0},
		{"atomic fragment is a whole datagram: denied", false, ethIPv6(func() pkt { p := egress6(peerIP6, ProtoUDP, 54); p.exts = []ext6{fragExt(0, false, 707)}; return p }()), actShot, ReasonDefault},
		{"first echo fragment", false, ethIPv6(frag(icmp6Pkt(podIP6, peerIP6, icmp6Echo, 5), 708, 0, true)), actOK, 0},
		{"later echo fragment", false, ethIPv6(frag(icmp6Pkt(podIP6, peerIP6, icmp6Echo, 5), 708, 5, false)), actOK, 0},
		{"fragment of an unknown datagram into the pod", true, ethIPv6(frag(ingress6(peerIP6, ProtoTCP, 80), 709, 6, false)), actShot, ReasonFragment},
		{"fragmented ICMP error into the pod: judged as ICMPv6", true, ethIPv6(func() pkt {
			p := icmp6Pkt(peerIP6, podIP6, icmp6TooBig, 0)
			p.inner = &pkt{src: podIP6, dst: peerIP6, proto: ProtoTCP, sport: 40000, dport: 80}
			p.moreFrags, p.ipID = true, 710
			return p
		}()), actShot, ReasonDefault},
	}
	runHostile(t, d, evs, cases)
}

// TestPrivilegedHostileIPv6NoCrash feeds every prefix of a set of IPv6
// frames to both programs: a truncated packet never passes.
func TestPrivilegedHostileIPv6NoCrash(t *testing.T) {
	d := fixture(t, EndpointPolicy{Egress: DirectionPolicy{Entries: []PolicyEntry{
		{Peer: IdentityAny, Verdict: VerdictAllow, RuleID: 660}}},
		Ingress: DirectionPolicy{Entries: []PolicyEntry{{Peer: IdentityAny, Verdict: VerdictAllow, RuleID: 661}}},
	})
	tooBig := icmp6Pkt(peerIP6, podIP6, icmp6TooBig, 0)
	tooBig.inner = &pkt{src: podIP6, dst: peerIP6, proto: ProtoTCP, sport: 1, dport: 80}
	withExts := egress6(peerIP6, ProtoTCP, 80)
	withExts.exts = []ext6{optsExt(extHopByHop, 0), routingExt(2, 0), ahExt(), optsExt(extDestOpts, 1)}
	frames := [][]byte{
		ethIPv6(egress6(peerIP6, ProtoTCP, 80)),
		ethIPv6(egress6(peerIP6, ProtoUDP, 53)),
		ethIPv6(egress6(peerIP6, ProtoSCTP, 9)),
		ethIPv6(icmp6Pkt(podIP6, peerIP6, icmp6Echo, 1)),
		ethIPv6(tooBig),
		ethIPv6(withExts),
		ethIPv6(ndPkt(llIP6, netip.MustParseAddr("fe80::1"), ndNA, llIP6)),
	}
	for i, f := range frames {
		for n := 14 + 40; n < len(f); n++ {
			// Cut the packet, keeping its payload length: it lies.
			cut := append([]byte{}, f[:n]...)
			for _, prog := range []struct {
				name string
				run  func([]byte) runResult
			}{
				{"from pod", func(b []byte) runResult { return runFrame(t, d.objs.TcFromPod, b, 0) }},
				{"to pod", func(b []byte) runResult { return runFrame(t, d.objs.TcToPod, b, 0) }},
			} {
				if r := prog.run(cut); r.ret == actOK {
					t.Errorf("frame %d cut at %d of %d bytes passed %s", i, n, len(f), prog.name)
				}
			}
		}
	}
}

// TestPrivilegedHostileIPv6ForgedProxyMark: over IPv6 too, a from-proxy
// mark is believed only from a registered proxy cgroup; otherwise the
// packet is judged by its source address (the node: host). A proxy that
// kept its client's IPv6 address gets the pod's replies steered to it.
func TestPrivilegedHostileIPv6ForgedProxyMark(t *testing.T) {
	d := fixture(t, enforcedIngress(
		PolicyEntry{Peer: peerID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictAllow, RuleID: 670},
		PolicyEntry{Peer: IdentityHost, Protocol: ProtoTCP, Port: 9000, Verdict: VerdictAllow, RuleID: 671},
	))
	evs := watchEvents(t, d)
	p := ingress6(nodeIP6, ProtoTCP, 80)
	forged := ProxyMark(Ingress, peerID)
	wantRet(t, "no proxy cgroup registered", run(t, d.objs.TcToPod, p, forged), actShot)
	ev := evs.waitFor(t, 1, dropReason(ReasonDefault))[0]
	if ev.SrcIdentity != IdentityHost || ev.FromProxy || !ev.UntrustedMark || ev.Src.Addr() != nodeIP6 {
		t.Errorf("drop event %+v: want host at %s, not from proxy, untrusted mark", ev, nodeIP6)
	}
	wantRet(t, "forged mark to a port host may reach", run(t, d.objs.TcToPod, ingress6(nodeIP6, ProtoTCP, 9000), forged), actOK)

	trustTestCgroup(t, d)
	p.sport++
	wantRet(t, "proxy cgroup", run(t, d.objs.TcToPod, p, forged), actOK)
	// The proxy kept the peer's IPv6 address: the pod's reply goes to it.
	kept := ingress6(peerIP6, ProtoTCP, 80)
	kept.sport = 41000
	wantRet(t, "kept-source proxy connection", run(t, d.objs.TcToPod, kept, forged), actOK)
	r := d.fromPod(t, pkt{src: podIP6, dst: peerIP6, sport: 80, dport: 41000, proto: ProtoTCP, tcpFlags: tcpSYN | tcpACK})
	if r.ret != actOK || r.mark != ToProxyMark(0) {
		t.Errorf("reply to the kept-source proxy: %+v, want passed with the to-proxy mark", r)
	}
}
