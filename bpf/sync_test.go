package bpf

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
)

// TestPrivilegedSyncFailureFailsClosed: a sync that cannot be written whole (the
// policy map is too small) never leaves a revoked allow in force and never
// leaves new allows half-written: the endpoint direction it could not
// write fails closed, the others are synced, and the next sync that fits
// restores normal service.
func TestPrivilegedSyncFailureFailsClosed(t *testing.T) {
	requireRoot(t)
	const otherEP = testEP + 1
	d := openTest(t, Config{MapSizes: MapSizes{Policy: 8}})
	if err := d.objs.Endpoints.Update(uint32(testIfindex), &datapathEndpointInfo{Id: testEP, Ipv4: podIP.As4()}, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := d.SyncIPCache([]IPCacheEntry{
		{Prefix: netip.PrefixFrom(peerIP, 32), Identity: peerID},
		{Prefix: netip.PrefixFrom(otherIP, 32), Identity: otherID},
	}); err != nil {
		t.Fatal(err)
	}
	evs := watchEvents(t, d)
	revoked := PolicyEntry{Peer: peerID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictAllow, RuleID: 1}
	kept := PolicyEntry{Peer: otherID, Protocol: ProtoUDP, Port: 53, Verdict: VerdictAllow, RuleID: 2}
	otherPolicy := EndpointPolicy{Endpoint: otherEP, Ingress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{
		{Peer: peerID, Protocol: ProtoTCP, Port: 443, Verdict: VerdictAllow, RuleID: 3}}}}
	if _, err := d.SyncPolicy([]EndpointPolicy{
		{Endpoint: testEP, Egress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{revoked, kept}}},
		otherPolicy,
	}); err != nil {
		t.Fatal(err)
	}
	established := egress(peerIP, ProtoTCP, 80)
	wantRet(t, "allowed before", d.fromPod(t, established), actOK)
	established.tcpFlags = tcpACK

	// Revoke the allow and add more allows than the map holds.
	many := []PolicyEntry{kept}
	for i := range 20 {
		many = append(many, PolicyEntry{Peer: otherID, Protocol: ProtoTCP, Port: uint16(1000 + i), Verdict: VerdictAllow, RuleID: 10})
	}
	_, err := d.SyncPolicy([]EndpointPolicy{
		{Endpoint: testEP, Egress: DirectionPolicy{Enforced: true, Entries: many}},
		otherPolicy,
	})
	if !errors.Is(err, ErrMapFull) {
		t.Fatalf("sync: %v, want ErrMapFull", err)
	}
	var se *SyncError
	if !errors.As(err, &se) || len(se.Failed) != 1 || se.Failed[0].Endpoint != testEP || se.Failed[0].Direction != Egress {
		t.Errorf("sync error %v does not name exactly endpoint %d egress", err, testEP)
	}
	wantRet(t, "revoked allow, new flow", d.fromPod(t, egress(peerIP, ProtoTCP, 80)), actShot)
	wantRet(t, "revoked allow, established flow", d.fromPod(t, established), actShot)
	wantRet(t, "new allow", d.fromPod(t, egress(otherIP, ProtoTCP, 1000)), actShot)
	wantRet(t, "new allow, last", d.fromPod(t, egress(otherIP, ProtoTCP, 1019)), actShot)
	evs.waitFor(t, 3, dropReason(ReasonFailClosed))
	dirs, err := d.EndpointDirections()
	if err != nil {
		t.Fatal(err)
	}
	for _, ed := range dirs {
		if ed.Endpoint == testEP && !ed.FailedClosed {
			t.Errorf("endpoint %d %s not failed closed: %+v", ed.Endpoint, ed.Direction, ed)
		}
		if ed.Endpoint == otherEP && ed.FailedClosed {
			t.Errorf("unrelated endpoint %d failed closed", ed.Endpoint)
		}
	}
	// The other endpoint's policy is intact.
	entries, err := d.Policy()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(entries, func(e PolicyMapEntry) bool {
		return e.Endpoint == otherEP && e.Port == 443 && e.Verdict == VerdictAllow
	}) {
		t.Errorf("other endpoint's entry gone: %+v", entries)
	}

	// A sync that fits restores service.
	if _, err := d.SyncPolicy([]EndpointPolicy{
		{Endpoint: testEP, Egress: DirectionPolicy{Enforced: true, Entries: many[:4]}},
		otherPolicy,
	}); err != nil {
		t.Fatal(err)
	}
	wantRet(t, "after a sync that fits: kept allow", d.fromPod(t, egress(otherIP, ProtoUDP, 53)), actOK)
	wantRet(t, "after a sync that fits: new allow", d.fromPod(t, egress(otherIP, ProtoTCP, 1002)), actOK)
	wantRet(t, "after a sync that fits: revoked allow", d.fromPod(t, egress(peerIP, ProtoTCP, 80)), actShot)
}

// TestPrivilegedSyncGenerations: a change of an endpoint direction's
// levels flips its generation, one that keeps them is written in place,
// and either leaves only the keys in force; keys an interrupted sync left
// behind are removed by the next one.
func TestPrivilegedSyncGenerations(t *testing.T) {
	d := fixture(t, EndpointPolicy{})
	pol := func(port uint16) []EndpointPolicy {
		e := PolicyEntry{Peer: peerID, Protocol: ProtoTCP, Port: port, Verdict: VerdictAllow, RuleID: 1}
		if port == 80 {
			e.EndPort = 81 // another level than the single port 81
		}
		return []EndpointPolicy{{Endpoint: testEP, Egress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{e}}}}
	}
	gens := func() (uint32, int) {
		t.Helper()
		dirs, err := d.EndpointDirections()
		if err != nil || len(dirs) != 1 {
			t.Fatalf("ep_policy: %v %v", dirs, err)
		}
		raw, err := dumpMap[policyKey, policyValue](d.objs.Policy)
		if err != nil {
			t.Fatal(err)
		}
		return dirs[0].Generation, len(raw)
	}
	if _, err := d.SyncPolicy(pol(80)); err != nil {
		t.Fatal(err)
	}
	g1, n := gens()
	if _, err := d.SyncPolicy(pol(81)); err != nil {
		t.Fatal(err)
	}
	g2, n2 := gens()
	if g1 == g2 || n != 1 || n2 != 1 {
		t.Errorf("generation %d then %d with %d then %d keys; want a flip and one key", g1, g2, n, n2)
	}
	wantRet(t, "new port", d.fromPod(t, egress(peerIP, ProtoTCP, 81)), actOK)
	wantRet(t, "old port", d.fromPod(t, egress(peerIP, ProtoTCP, 80)), actShot)
	// Same levels (another single port, then back): in place.
	for _, port := range []uint16{82, 81} {
		if _, err := d.SyncPolicy(pol(port)); err != nil {
			t.Fatal(err)
		}
		if g, n := gens(); g != g2 || n != 1 {
			t.Errorf("port %d: generation %d with %d keys, want %d (in place) with 1", port, g, n, g2)
		}
	}
	// A leftover of the other generation (as after a crash mid-sync).
	leftover := policyKey{Endpoint: testEP, Identity: uint32(peerID), Dir: uint8(Egress), Proto: ProtoTCP, PortPlen: 16, Port: htons(80), Gen: uint8(1 - g2)}
	if err := d.objs.Policy.Put(leftover, policyValue{Verdict: uint8(VerdictAllow)}); err != nil {
		t.Fatal(err)
	}
	wantRet(t, "leftover is not in force", d.fromPod(t, egress(peerIP, ProtoTCP, 80)), actShot)
	if es, _ := d.Policy(); len(es) != 1 || es[0].Port != 81 {
		t.Errorf("policy listing shows %+v", es)
	}
	if _, err := d.SyncPolicy(pol(81)); err != nil {
		t.Fatal(err)
	}
	if g, n := gens(); g != g2 || n != 1 {
		t.Errorf("after resync: generation %d with %d keys, want %d with 1", g, n, g2)
	}
}
