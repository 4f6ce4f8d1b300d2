package bpf

import (
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
