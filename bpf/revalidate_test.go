package bpf

import (
	"net"
	"testing"
)

// TestPrivilegedRevalidationToRedirect: an established flow admitted under an L4
// allow is not passed unchecked once policy redirects it: its next packet
// is treated as new (redirected to the proxy, whose stack resets a
// mid-stream segment), and a reply that comes first is dropped. A changed
// proxy port is followed the same way; a redirect that becomes a plain
// allow keeps its proxy.
func TestPrivilegedRevalidationToRedirect(t *testing.T) {
	requireRoot(t)
	const otherProxyPort = testProxyPrt + 1
	allowOut := PolicyEntry{Peer: peerID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictAllow, RuleID: 90}
	allowIn := PolicyEntry{Peer: peerID, Protocol: ProtoTCP, Port: 8080, Verdict: VerdictAllow, RuleID: 91}
	redirectOut := PolicyEntry{Peer: peerID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictRedirect, ProxyPort: testProxyPrt, RuleID: 92}
	redirectIn := PolicyEntry{Peer: peerID, Protocol: ProtoTCP, Port: 8080, Verdict: VerdictRedirect, ProxyPort: testProxyPrt, RuleID: 93}
	pol := func(out, in PolicyEntry) []EndpointPolicy {
		return []EndpointPolicy{{Endpoint: testEP,
			Egress:  DirectionPolicy{Enforced: true, Entries: []PolicyEntry{out}},
			Ingress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{in}},
		}}
	}
	d := fixture(t, pol(allowOut, allowIn)[0])
	for _, port := range []uint16{testProxyPrt, otherProxyPort} {
		if err := d.RegisterProxyListener(port, listen(t)); err != nil {
			t.Fatal(err)
		}
	}
	evs := watchEvents(t, d)
	established := func(p pkt, send func(*testing.T, pkt) runResult) pkt {
		t.Helper()
		wantRet(t, "syn", send(t, p), actOK)
		p.tcpFlags = tcpACK
		wantRet(t, "established", send(t, p), actOK)
		return p
	}
	out1 := egress(peerIP, ProtoTCP, 80)
	out1.sport = 41001
	out1 = established(out1, d.fromPod)
	out2 := egress(peerIP, ProtoTCP, 80)
	out2.sport = 41002
	out2 = established(out2, d.fromPod)
	in1 := ingress(peerIP, ProtoTCP, 8080)
	in1 = established(in1, d.toPod)

	if _, err := d.SyncPolicy(pol(redirectOut, redirectIn)); err != nil {
		t.Fatal(err)
	}
	toProxy := ToProxyMark(testProxyPrt)
	if r := d.fromPod(t, out1); r.ret != actOK || r.mark != toProxy {
		t.Errorf("egress flow after redirect added: %+v, want mark %#x", r, toProxy)
	}
	if r := d.fromPod(t, out1); r.ret != actOK || r.mark != toProxy {
		t.Errorf("egress flow, next packet: %+v, want mark %#x", r, toProxy)
	}
	reply := out2.reply()
	wantRet(t, "reply of a flow now redirected", d.toPod(t, reply), actShot)
	evs.waitFor(t, 1, func(ev Event) bool { return ev.Dropped && ev.Reason == ReasonRevalidate && ev.Src.Port() == 80 })
	if r := d.fromPod(t, out2); r.ret != actOK || r.mark != toProxy {
		t.Errorf("egress flow after its reply was dropped: %+v, want mark %#x", r, toProxy)
	}
	if r := d.toPod(t, in1); r.ret != actRedirect || r.mark != TurnedAroundMark(testProxyPrt) {
		t.Errorf("ingress flow after redirect added: %+v, want redirect with mark %#x", r, TurnedAroundMark(testProxyPrt))
	}

	// Another proxy port.
	redirectOut.ProxyPort = otherProxyPort
	if _, err := d.SyncPolicy(pol(redirectOut, redirectIn)); err != nil {
		t.Fatal(err)
	}
	if r := d.fromPod(t, out1); r.mark != ToProxyMark(otherProxyPort) {
		t.Errorf("egress flow after the proxy port changed: %+v, want mark %#x", r, ToProxyMark(otherProxyPort))
	}
	// Back to a plain allow: the flow stays with its proxy.
	if _, err := d.SyncPolicy(pol(allowOut, allowIn)); err != nil {
		t.Fatal(err)
	}
	if r := d.fromPod(t, out1); r.mark != ToProxyMark(otherProxyPort) {
		t.Errorf("redirected flow after the redirect became an allow: %+v, want it kept at the proxy", r)
	}
	if r := d.toPod(t, in1); r.ret != actRedirect {
		t.Errorf("redirected ingress flow after the redirect became an allow: %+v", r)
	}
}

// TestPrivilegedRevalidationUDPRedirectToAllow: a UDP flow the policy
// redirected (a DNS proxy's rules.dns) follows the policy when the redirect
// becomes a plain allow: its next packet is not steered to the proxy port,
// which has no socket for it any more (the DNS proxy closes a port its
// rules no longer name). Kept, the flow's packets went on to the old proxy
// port and dropped for as long as the client reused its socket (each
// packet refreshed the entry). A TCP flow keeps its proxy: the proxy holds
// that connection's socket.
func TestPrivilegedRevalidationUDPRedirectToAllow(t *testing.T) {
	requireRoot(t)
	redirectDNS := PolicyEntry{Peer: peerID, Protocol: ProtoUDP, Port: 53, Verdict: VerdictRedirect, ProxyPort: testProxyPrt, RuleID: 95}
	allowDNS := PolicyEntry{Peer: peerID, Protocol: ProtoUDP, Port: 53, Verdict: VerdictAllow, RuleID: 96}
	redirectTCP := PolicyEntry{Peer: peerID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictRedirect, ProxyPort: testProxyPrt, RuleID: 97}
	allowTCP := PolicyEntry{Peer: peerID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictAllow, RuleID: 98}
	pol := func(es ...PolicyEntry) []EndpointPolicy {
		return []EndpointPolicy{{Endpoint: testEP, Egress: DirectionPolicy{Enforced: true, Entries: es}}}
	}
	d := fixture(t, pol(redirectDNS, redirectTCP)[0])
	if err := d.RegisterProxyListener(testProxyPrt, listen(t)); err != nil {
		t.Fatal(err)
	}
	udp, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	if err := d.RegisterProxyListener(testProxyPrt, udp); err != nil {
		t.Fatal(err)
	}
	toProxy := ToProxyMark(testProxyPrt)
	q := egress(peerIP, ProtoUDP, 53)
	if r := d.fromPod(t, q); r.ret != actOK || r.mark != toProxy {
		t.Fatalf("query under the redirect: ret %d mark %#x, want %d %#x", r.ret, r.mark, actOK, toProxy)
	}
	if r := d.fromPod(t, q); r.mark != toProxy {
		t.Fatalf("second query under the redirect: mark %#x, want %#x", r.mark, toProxy)
	}
	c := egress(peerIP, ProtoTCP, 80)
	if r := d.fromPod(t, c); r.mark != toProxy {
		t.Fatalf("tcp syn under the redirect: mark %#x, want %#x", r.mark, toProxy)
	}
	c.tcpFlags = tcpACK
	if _, err := d.SyncPolicy(pol(allowDNS, allowTCP)); err != nil {
		t.Fatal(err)
	}
	udp.Close() // the DNS proxy closes a port its rules no longer name
	r := d.fromPod(t, q)
	if r.ret != actOK || r.mark&MarkMagicMask == MarkMagicToProxy {
		t.Errorf("query after the redirect became an allow: ret %d mark %#x, want passed without a proxy mark", r.ret, r.mark)
	}
	if r := d.fromPod(t, c); r.mark != toProxy {
		t.Errorf("established tcp flow after the redirect became an allow: mark %#x, want it kept at its proxy %#x", r.mark, toProxy)
	}
	cts, err := d.Conntrack()
	if err != nil {
		t.Fatal(err)
	}
	for _, ct := range cts {
		if ct.Protocol == ProtoUDP && (ct.Verdict != VerdictAllow || ct.RuleID != 96) {
			t.Errorf("udp conntrack entry %+v, want the allow (rule 96)", ct)
		}
	}
}
