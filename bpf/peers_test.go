package bpf

import (
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
)

// peerChanges is what a caller of UpdatePolicyPeers gives for the change
// from before to after: the peers whose entries differ, each with its
// entries after (in their order there; none: gone). ok is false when the
// direction's flags change (UpdatePolicyPeers keeps them).
func peerChanges(before, after DirectionPolicy) (peers []PeerPolicy, ok bool) {
	if before.Enforced != after.Enforced || before.Enforced && before.AuditDefault != after.AuditDefault {
		return nil, false
	}
	group := func(es []PolicyEntry) map[Identity][]PolicyEntry {
		out := map[Identity][]PolicyEntry{}
		for _, e := range es {
			out[e.Peer] = append(out[e.Peer], e)
		}
		return out
	}
	b, a := group(before.Entries), group(after.Entries)
	ids := slices.Collect(maps.Keys(b))
	for id := range a {
		if _, ok := b[id]; !ok {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	for _, id := range ids {
		if !slices.Equal(b[id], a[id]) {
			peers = append(peers, PeerPolicy{Peer: id, Entries: a[id]})
		}
	}
	return peers, true
}

// updatePeers writes the change from before to after with
// UpdatePolicyPeers per direction, and with UpdatePolicy where the flags
// change or the datapath asks for the whole policy; it reports whether
// the peer path alone wrote the change, and the first error.
func updatePeers(d *Datapath, before, after EndpointPolicy) (bool, error) {
	var peers [2][]PeerPolicy
	for i, dd := range [][2]DirectionPolicy{{before.Ingress, after.Ingress}, {before.Egress, after.Egress}} {
		ps, ok := peerChanges(dd[0], dd[1])
		if !ok {
			_, err := d.UpdatePolicy([]EndpointPolicy{after})
			return false, err
		}
		peers[i] = ps
	}
	var first error
	for i, dir := range []Direction{Ingress, Egress} {
		if dp := []DirectionPolicy{after.Ingress, after.Egress}[i]; len(peers[i]) == 0 && !dp.Enforced && len(dp.Entries) == 0 {
			continue // no policy before or after
		}
		_, err := d.UpdatePolicyPeers(after.Endpoint, dir, peers[i])
		if errors.Is(err, ErrWholePolicyNeeded) {
			_, err = d.UpdatePolicy([]EndpointPolicy{after})
			return false, errors.Join(first, err)
		}
		if first == nil {
			first = err
		}
	}
	return true, first
}

// TestPrivilegedPeerUpdatesMatchWholeSync applies random sequences of
// policy changes through UpdatePolicyPeers (only the peers whose entries
// changed; UpdatePolicy where the flags change or the datapath asks for
// the whole policy) and, after each, compares the maps with those of a
// second datapath given the whole desired state by SyncPolicy, checks the
// Go-side mirror against the maps (no stale keys either), and that a
// whole SyncPolicy of the same state on the first datapath writes
// nothing.
func TestPrivilegedPeerUpdatesMatchWholeSync(t *testing.T) {
	for seed := range uint64(3) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			a := openTest(t, Config{DisableEvents: true})
			b := openTest(t, Config{DisableEvents: true})
			c := &policyChanger{r: rand.New(rand.NewPCG(seed, 17)), desired: map[uint32]EndpointPolicy{}}
			eps := []uint32{testEP, testEP + 1, testEP + 2}
			for _, ep := range eps {
				c.desired[ep] = EndpointPolicy{Endpoint: ep,
					Ingress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{{Peer: 256, Protocol: ProtoTCP, Port: 80, Verdict: VerdictAllow, RuleID: 1}}},
					Egress:  DirectionPolicy{Enforced: true, Entries: []PolicyEntry{{Peer: 257, Protocol: ProtoTCP, Port: 443, Verdict: VerdictAllow, RuleID: 2}}}}
			}
			if _, err := a.SyncPolicy(c.all()); err != nil {
				t.Fatal(err)
			}
			const steps = 300
			byPeers, inPlace, swapped := 0, 0, 0
			for step := range steps {
				before := map[epPolicyKey]mirrorDir{}
				a.mu.Lock()
				for g, md := range a.pm {
					c := *md
					c.keys = maps.Clone(md.keys)
					before[g] = c
				}
				a.mu.Unlock()
				var ep uint32
				prev := maps.Clone(c.desired)
				p := c.change(eps)
				ep = p.Endpoint
				peersOnly, errA := updatePeers(a, prev[ep], p)
				_, errB := b.SyncPolicy(c.all())
				if (errA == nil) == hasInvalid(p) {
					t.Fatalf("step %d: peer update: %v, invalid entry: %v", step, errA, hasInvalid(p))
				}
				if gotA, gotB := policyState(t, a.Maps), policyState(t, b.Maps); gotA != gotB {
					t.Fatalf("step %d (%+v, from %+v): after the peer update:\n%s\nafter a whole sync:\n%s", step, p, prev[ep], gotA, gotB)
				}
				checkMirror(t, a, step)
				if peersOnly {
					byPeers++
					a.mu.Lock()
					for _, dir := range []Direction{Ingress, Egress} {
						g := epPolicyKey{Endpoint: ep, Dir: uint8(dir)}
						old, now := before[g], a.pm.get(g)
						switch {
						case !old.present || !now.present || maps.Equal(old.keys, now.keys) || old.meta.Flags&epPolicyFailClosed != 0:
						case now.meta == old.meta:
							inPlace++
						default:
							swapped++
						}
					}
					a.mu.Unlock()
				}
				if step%50 == 49 {
					st, err := a.SyncPolicy(c.all())
					if (err == nil) != (errB == nil) {
						t.Fatalf("step %d: whole sync after peer updates: %v, want error %v", step, err, errB)
					}
					if st.Added+st.Updated+st.Deleted != 0 {
						t.Fatalf("step %d: whole sync after peer updates wrote %s, want nothing", step, st)
					}
				}
			}
			fresh := openTest(t, Config{DisableEvents: true})
			_, _ = fresh.SyncPolicy(c.all())
			if gotA, want := policyState(t, a.Maps), policyState(t, fresh.Maps); gotA != want {
				t.Fatalf("final state:\n%s\nfrom scratch:\n%s", gotA, want)
			}
			t.Logf("%d of %d changes by peers alone: %d directions written in place, %d by a generation swap", byPeers, steps, inPlace, swapped)
			if byPeers < steps/3 || inPlace < 60 || swapped < 5 {
				t.Fatalf("%d changes by peers, %d in place, %d swapped: the test does not exercise the peer path", byPeers, inPlace, swapped)
			}
		})
	}
}

// TestPrivilegedPeerUpdateVerdicts is TestPrivilegedInPlaceUpdateVerdicts
// writing each change with UpdatePolicyPeers: after every single map
// write, each probed flow's verdict in the real program is its verdict
// before the change or, once moved, after it.
func TestPrivilegedPeerUpdateVerdicts(t *testing.T) {
	byPeers, n := 0, 0
	inPlaceVerdicts(t, func(d *Datapath, before, after EndpointPolicy) {
		peersOnly, _ := updatePeers(d, before, after) // a SyncError: failed closed, checked like any verdict
		n++
		if peersOnly {
			byPeers++
		}
	})
	t.Logf("%d of %d changes by peers alone", byPeers, n)
	if byPeers < n/3 {
		t.Fatalf("only %d of %d changes by peers alone: the test does not exercise the peer path", byPeers, n)
	}
}

// TestPrivilegedPeerUpdateNeedsWholePolicy: UpdatePolicyPeers writes
// nothing and asks for the whole policy where the mirror does not know
// the direction peer by peer (a datapath just opened on the pins, a
// direction without policy, one that failed closed), and makes a
// direction fail closed for a peer list it rejects.
func TestPrivilegedPeerUpdateNeedsWholePolicy(t *testing.T) {
	d := fixture(t, EndpointPolicy{Egress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{
		{Peer: peerID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictAllow, RuleID: 1}}}})
	add := []PeerPolicy{{Peer: otherID, Entries: []PolicyEntry{{Peer: otherID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictAllow, RuleID: 1}}}}
	wantRet(t, "before", d.fromPod(t, egress(otherIP, ProtoTCP, 80)), actShot)

	// No ingress policy: nothing known to change.
	if _, err := d.UpdatePolicyPeers(testEP, Ingress, add); !errors.Is(err, ErrWholePolicyNeeded) {
		t.Fatalf("direction without policy: %v, want ErrWholePolicyNeeded", err)
	}
	wantRet(t, "nothing written", d.fromPod(t, egress(otherIP, ProtoTCP, 80)), actShot)

	if _, err := d.UpdatePolicyPeers(testEP, Egress, add); err != nil {
		t.Fatal(err)
	}
	wantRet(t, "peer added", d.fromPod(t, egress(otherIP, ProtoTCP, 80)), actOK)
	wantRet(t, "other peer kept", d.fromPod(t, egress(peerIP, ProtoTCP, 80)), actOK)

	// An entry naming another peer: rejected, the direction fails closed.
	bad := []PeerPolicy{{Peer: cidrID, Entries: []PolicyEntry{{Peer: otherID, Protocol: ProtoTCP, Port: 443, Verdict: VerdictAllow, RuleID: 1}}}}
	var se *SyncError
	if _, err := d.UpdatePolicyPeers(testEP, Egress, bad); !errors.As(err, &se) || !errors.Is(err, ErrInvalidEntry) {
		t.Fatalf("entry of another peer: %v, want a SyncError (invalid entry)", err)
	}
	wantRet(t, "failed closed", d.fromPod(t, egress(peerIP, ProtoTCP, 80)), actShot)
	if _, err := d.UpdatePolicyPeers(testEP, Egress, add); !errors.Is(err, ErrWholePolicyNeeded) {
		t.Fatalf("direction failed closed: %v, want ErrWholePolicyNeeded", err)
	}
	// A second Datapath on the same pins has no mirror yet, and d then sees another
	// writer: both need the whole policy.
	other, err := Open(t.Context(), d.cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { other.Close() })
	if _, err := other.UpdatePolicyPeers(testEP, Egress, add); !errors.Is(err, ErrWholePolicyNeeded) {
		t.Fatalf("fresh datapath: %v, want ErrWholePolicyNeeded", err)
	}
	if _, err := d.UpdatePolicyPeers(testEP, Egress, add); !errors.Is(err, ErrWholePolicyNeeded) {
		t.Fatalf("after another datapath wrote the pins: %v, want ErrWholePolicyNeeded", err)
	}
}
