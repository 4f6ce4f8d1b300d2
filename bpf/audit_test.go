package bpf

import (
	"context"
	"testing"
	"time"
)

// nextEvent waits for one datapath event.
func nextEvent(t *testing.T, evs <-chan Event) Event {
	t.Helper()
	select {
	case ev := <-evs:
		return ev
	case <-time.After(5 * time.Second):
		t.Fatal("no event")
	}
	return Event{}
}

// TestPrivilegedAudit: a deny entry in audit mode and an audited
// default-deny forward the flow and report it audited with the rule; an
// enforced deny still drops and beats an audited one; an audited deny does
// not mask a redirect.
func TestPrivilegedAudit(t *testing.T) {
	requireRoot(t)
	pol := enforcedIngress(
		PolicyEntry{Peer: peerID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictDeny, RuleID: 71, Audit: true},
		PolicyEntry{Peer: IdentityAny, Protocol: ProtoTCP, Port: 81, Verdict: VerdictDeny, RuleID: 72, Audit: true},
		PolicyEntry{Peer: peerID, Protocol: ProtoTCP, Port: 81, Verdict: VerdictDeny, RuleID: 73},
		PolicyEntry{Peer: peerID, Protocol: ProtoTCP, Port: 82, Verdict: VerdictAllow, RuleID: 74},
		PolicyEntry{Peer: IdentityAny, Protocol: ProtoAny, Verdict: VerdictDeny, RuleID: 75, Audit: true},
	)
	pol.Ingress.AuditDefault = true
	d := fixture(t, pol)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	evs, err := d.Events(ctx)
	if err != nil {
		t.Fatal(err)
	}
	check := func(name string, p pkt, wantAct uint32, wantAudit bool, wantRule uint32) {
		t.Helper()
		wantRet(t, name, d.toPod(t, p), wantAct)
		ev := nextEvent(t, evs)
		if ev.Audited != wantAudit || ev.RuleID != wantRule || ev.Dropped != (wantAct == actShot) {
			t.Errorf("%s: event %s, want audit=%v rule=%d", name, ev, wantAudit, wantRule)
		}
	}
	check("audited deny", ingress(peerIP, ProtoTCP, 80), actOK, true, 71)
	check("enforced deny beats audited", ingress(peerIP, ProtoTCP, 81), actShot, false, 73)
	check("audited wildcard deny", ingress(otherIP, ProtoTCP, 81), actOK, true, 72)
	check("allow with audited catch-all deny", ingress(peerIP, ProtoTCP, 82), actOK, true, 75)
	check("audited default-deny and deny", ingress(otherIP, ProtoUDP, 53), actOK, true, 75)

	// Audit off: the same flows are dropped, established ones too.
	pol = enforcedIngress(
		PolicyEntry{Peer: peerID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictDeny, RuleID: 71},
	)
	pol.Endpoint = testEP
	if _, err := d.SyncPolicy([]EndpointPolicy{pol}); err != nil {
		t.Fatal(err)
	}
	est := ingress(peerIP, ProtoTCP, 80)
	est.tcpFlags = tcpACK
	wantRet(t, "established flow after audit off", d.toPod(t, est), actShot)
	nextEvent(t, evs)
	check("deny enforced again", ingress(peerIP, ProtoTCP, 80), actShot, false, 71)
	check("default-deny enforced again", ingress(otherIP, ProtoTCP, 9), actShot, false, 0)

	// Default-deny only in audit, no entry: forwarded, rule 0, reason default.
	pol = enforcedIngress()
	pol.Ingress.AuditDefault = true
	pol.Endpoint = testEP
	if _, err := d.SyncPolicy([]EndpointPolicy{pol}); err != nil {
		t.Fatal(err)
	}
	wantRet(t, "audited default", d.toPod(t, ingress(otherIP, ProtoTCP, 99)), actOK)
	if ev := nextEvent(t, evs); !ev.Audited || ev.Reason != ReasonDefault || ev.Dropped {
		t.Errorf("audited default: event %s", ev)
	}
	// Redirect with an audited deny over it: still redirected, audited.
	pol = enforcedIngress(
		PolicyEntry{Peer: peerID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictRedirect, ProxyPort: testProxyPrt, RuleID: 76},
		PolicyEntry{Peer: peerID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictDeny, RuleID: 77, Audit: true},
	)
	pol.Endpoint = testEP
	vals, err := compilePolicy([]EndpointPolicy{pol})
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range vals.policy {
		if k.Identity != uint32(peerID) {
			continue
		}
		if v.Verdict != uint8(VerdictRedirect) || v.Flags != policyFlagAudit || v.RuleId != 77 || v.ProxyPort != testProxyPrt {
			t.Errorf("redirect under audited deny compiles to %+v", v)
		}
	}
}
