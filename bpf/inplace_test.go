package bpf

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// policyChanger makes random policy changes of the kinds the agent
// writes: mostly a peer's entries added or removed (an FQDN address
// learnt or expired: same levels, so written in place), sometimes a
// value changed, a wildcard or new-level entry, an enforcement toggle, an
// endpoint dropped, an invalid entry (fail closed).
type policyChanger struct {
	r       *rand.Rand
	desired map[uint32]EndpointPolicy
}

// Peers used: 256..299; 300 carries invalid entries.
const (
	firstRandPeer = 256
	lastRandPeer  = 299
	invalidPeer   = 300
)

func (c *policyChanger) randomL4(e *PolicyEntry) {
	switch c.r.IntN(6) {
	case 0:
		e.Protocol = ProtoAny
	case 1:
		e.Protocol, e.Port = ProtoUDP, 53
	case 2:
		e.Protocol, e.Port, e.EndPort = ProtoTCP, 8080, 8083
	default:
		e.Protocol, e.Port = ProtoTCP, []uint16{80, 443}[c.r.IntN(2)]
	}
	e.Verdict = []Verdict{VerdictAllow, VerdictAllow, VerdictDeny, VerdictRedirect}[c.r.IntN(4)]
	if e.Verdict == VerdictRedirect {
		if e.Protocol == ProtoAny || e.EndPort != 0 {
			e.Verdict = VerdictAllow
		} else {
			e.ProxyPort = uint16(15000 + c.r.IntN(3))
		}
	}
	e.RuleID = uint32(1 + c.r.IntN(5))
}

func (c *policyChanger) dir(p *EndpointPolicy) *DirectionPolicy {
	if c.r.IntN(2) == 0 {
		return &p.Ingress
	}
	return &p.Egress
}

func peersOf(dp *DirectionPolicy) []Identity {
	set := map[Identity]bool{}
	for _, e := range dp.Entries {
		if e.Peer != IdentityAny {
			set[e.Peer] = true
		}
	}
	return slices.Sorted(maps.Keys(set))
}

// change mutates the policy of one of eps (one change, or two in one
// direction at times: a peer's and the wildcard's together) and returns
// it.
func (c *policyChanger) change(eps []uint32) EndpointPolicy {
	ep := eps[c.r.IntN(len(eps))]
	p := c.desired[ep]
	p.Endpoint = ep
	d := c.dir(&p)
	d.Entries = slices.Clone(d.Entries)
	for i := range 2 {
		if i == 1 && c.r.IntN(4) > 0 {
			break
		}
		if gone := c.mutate(d); gone {
			p = EndpointPolicy{Endpoint: ep}
			break
		}
	}
	// Keep the invalid entry rare: it goes at the next change.
	for _, dd := range []*DirectionPolicy{&p.Ingress, &p.Egress} {
		if dd != d {
			dd.Entries = slices.DeleteFunc(slices.Clone(dd.Entries), func(e PolicyEntry) bool { return e.Peer == invalidPeer })
		}
	}
	// Mostly sorted by peer, as the agent gives them (UpdatePolicy then
	// recompiles the changed peers only), at times not.
	if c.r.IntN(5) > 0 {
		slices.SortStableFunc(d.Entries, func(a, b PolicyEntry) int { return cmpU(uint32(a.Peer), uint32(b.Peer)) })
	}
	c.desired[ep] = p
	return p
}

// copyPeer gives a new peer the entries of one of peers.
func (c *policyChanger) copyPeer(d *DirectionPolicy, peers []Identity) {
	from := peers[c.r.IntN(len(peers))]
	to := Identity(firstRandPeer + c.r.IntN(lastRandPeer-firstRandPeer+1))
	if slices.Contains(peers, to) || from == invalidPeer {
		return
	}
	for _, e := range slices.Clone(d.Entries) {
		if e.Peer == from {
			e.Peer = to
			d.Entries = append(d.Entries, e)
		}
	}
}

// mutate changes d; true: the endpoint is gone instead.
func (c *policyChanger) mutate(d *DirectionPolicy) bool {
	peers := peersOf(d)
	switch n := c.r.IntN(100); {
	case n < 8: // a wildcard entry's verdict flips, and a new peer comes
		i := slices.IndexFunc(d.Entries, func(e PolicyEntry) bool { return e.Peer == IdentityAny && e.Verdict != VerdictRedirect })
		if i < 0 || len(peers) == 0 {
			break
		}
		d.Entries[i].Verdict = VerdictAllow + VerdictDeny - d.Entries[i].Verdict
		c.copyPeer(d, peers)
	case n < 40 && len(peers) > 0: // a new peer with another's entries
		c.copyPeer(d, peers)
	case n < 60 && len(peers) > 0: // a peer goes
		gone := peers[c.r.IntN(len(peers))]
		d.Entries = slices.DeleteFunc(d.Entries, func(e PolicyEntry) bool { return e.Peer == gone })
	case n < 72 && len(d.Entries) > 0: // one entry's verdict or rule changes
		i := c.r.IntN(len(d.Entries))
		if d.Entries[i].Verdict == VerdictRedirect || d.Entries[i].Peer == invalidPeer {
			break
		}
		d.Entries[i].Verdict = []Verdict{VerdictAllow, VerdictDeny}[c.r.IntN(2)]
		d.Entries[i].RuleID = uint32(1 + c.r.IntN(5))
	case n < 90: // a random entry, maybe of the wildcard, maybe a new level
		e := PolicyEntry{Peer: IdentityAny}
		if c.r.IntN(3) > 0 {
			e.Peer = Identity(firstRandPeer + c.r.IntN(lastRandPeer-firstRandPeer+1))
		}
		c.randomL4(&e)
		d.Entries = append(d.Entries, e)
		d.Enforced = true
	case n < 94:
		d.Enforced = !d.Enforced
	case n < 97: // the endpoint is gone (no policy)
		return true
	default: // an entry the datapath rejects: the direction fails closed
		d.Entries = append(d.Entries, PolicyEntry{Peer: invalidPeer, Protocol: ProtoTCP, Port: 9, Verdict: VerdictRedirect, RuleID: 9})
	}
	return false
}

func hasInvalid(p EndpointPolicy) bool {
	isInvalid := func(e PolicyEntry) bool { return validateEntry(e) != nil }
	return slices.ContainsFunc(p.Ingress.Entries, isInvalid) || slices.ContainsFunc(p.Egress.Entries, isInvalid)
}

func (c *policyChanger) all() []EndpointPolicy {
	out := make([]EndpointPolicy, 0, len(c.desired))
	for _, ep := range slices.Sorted(maps.Keys(c.desired)) {
		out = append(out, c.desired[ep])
	}
	return out
}

// policyState renders what the policy maps enforce: the keys in force and
// each direction's ep_policy value without its generation.
func policyState(t *testing.T, m Maps) string {
	t.Helper()
	es, err := m.Policy()
	if err != nil {
		t.Fatal(err)
	}
	dirs, err := m.EndpointDirections()
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, e := range es {
		lines = append(lines, fmt.Sprintf("%+v", e))
	}
	for _, d := range dirs {
		d.Generation = 0
		lines = append(lines, fmt.Sprintf("%+v", d))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// checkMirror: the Go-side mirror equals the maps, and the policy map
// holds no key beyond those in force.
func checkMirror(t *testing.T, d *Datapath, step int) {
	t.Helper()
	d.mu.Lock()
	pm := d.pm
	d.mu.Unlock()
	if pm == nil {
		return // dropped: the next sync reads the maps
	}
	meta, err := dumpMap[epPolicyKey, epPolicyValue](d.objs.EpPolicy)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := dumpMap[policyKey, policyValue](d.objs.Policy)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for g, md := range pm {
		if got, ok := meta[g]; !ok || got != md.meta {
			t.Fatalf("step %d: mirror has ep_policy %+v = %+v, map has %+v (present %v)", step, g, md.meta, got, ok)
		}
		for k, v := range md.keys {
			k.Gen = uint8(md.meta.Gen)
			if got, ok := raw[k]; !ok || got != v {
				t.Fatalf("step %d: mirror has key %+v = %+v, map has %+v (present %v)", step, k, v, got, ok)
			}
			n++
		}
	}
	for g, md := range pm {
		if md.src == nil {
			continue
		}
		keys := map[policyKey]policyValue{}
		for _, ps := range md.src.peers {
			for i, k := range ps.keys {
				keys[k] = ps.vals[i]
			}
		}
		if !maps.Equal(keys, md.keys) {
			t.Fatalf("step %d: %+v: the mirror's source compiles to\n%v\nthe keys are\n%v", step, g, keys, md.keys)
		}
		want := md.src.meta()
		want.Gen = md.meta.Gen
		if want != md.meta {
			t.Fatalf("step %d: %+v: the mirror's source gives ep_policy %+v, the map has %+v", step, g, want, md.meta)
		}
	}
	if len(meta) != len(pm) || len(raw) != n {
		t.Fatalf("step %d: maps hold %d ep_policy values and %d keys, mirror %d and %d", step, len(meta), len(raw), len(pm), n)
	}
}

// TestPrivilegedPartialUpdatesMatchWholeSync applies random sequences of
// UpdatePolicy calls (one endpoint each, most of them written in place)
// and, after each, compares the maps with those of a second datapath
// given the whole desired state by SyncPolicy, checks the Go-side mirror
// against the maps (no stale keys either), and that a whole SyncPolicy of
// the same state on the first datapath writes nothing.
func TestPrivilegedPartialUpdatesMatchWholeSync(t *testing.T) {
	for seed := range uint64(3) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			a := openTest(t, Config{DisableEvents: true})
			b := openTest(t, Config{DisableEvents: true})
			c := &policyChanger{r: rand.New(rand.NewPCG(seed, 7)), desired: map[uint32]EndpointPolicy{}}
			eps := []uint32{testEP, testEP + 1, testEP + 2}
			for _, ep := range eps {
				c.desired[ep] = EndpointPolicy{Endpoint: ep,
					Ingress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{{Peer: 256, Protocol: ProtoTCP, Port: 80, Verdict: VerdictAllow, RuleID: 1}}},
					Egress:  DirectionPolicy{Enforced: true, Entries: []PolicyEntry{{Peer: 257, Protocol: ProtoTCP, Port: 443, Verdict: VerdictAllow, RuleID: 2}}}}
			}
			if _, err := a.SyncPolicy(c.all()); err != nil {
				t.Fatal(err)
			}
			inPlace := 0
			for step := range 300 {
				before := map[epPolicyKey]mirrorDir{}
				a.mu.Lock()
				for g, md := range a.pm {
					c := *md
					c.keys = maps.Clone(md.keys)
					before[g] = c
				}
				a.mu.Unlock()
				p := c.change(eps)
				_, errA := a.UpdatePolicy([]EndpointPolicy{p})
				_, errB := b.SyncPolicy(c.all())
				if (errA == nil) == hasInvalid(p) {
					t.Fatalf("step %d: partial update: %v, invalid entry: %v", step, errA, hasInvalid(p))
				}
				if gotA, gotB := policyState(t, a.Maps), policyState(t, b.Maps); gotA != gotB {
					t.Fatalf("step %d (%+v): after the partial update:\n%s\nafter a whole sync:\n%s", step, p, gotA, gotB)
				}
				checkMirror(t, a, step)
				a.mu.Lock()
				for _, dir := range []Direction{Ingress, Egress} {
					g := epPolicyKey{Endpoint: p.Endpoint, Dir: uint8(dir)}
					old, now := before[g], a.pm.get(g)
					if old.present && now.present && now.meta == old.meta && old.meta.Flags&epPolicyFailClosed == 0 && !maps.Equal(old.keys, now.keys) {
						inPlace++
					}
				}
				a.mu.Unlock()
				if step%50 == 49 {
					st, err := a.SyncPolicy(c.all())
					if (err == nil) != (errB == nil) {
						t.Fatalf("step %d: whole sync after partial updates: %v, want error %v", step, err, errB)
					}
					if st.Added+st.Updated+st.Deleted != 0 {
						t.Fatalf("step %d: whole sync after partial updates wrote %s, want nothing", step, st)
					}
				}
			}
			// From scratch: a fresh datapath given the final state.
			fresh := openTest(t, Config{DisableEvents: true})
			_, _ = fresh.SyncPolicy(c.all())
			if gotA, want := policyState(t, a.Maps), policyState(t, fresh.Maps); gotA != want {
				t.Fatalf("final state:\n%s\nfrom scratch:\n%s", gotA, want)
			}
			t.Logf("%d of 300 updates written in place", inPlace)
			if inPlace < 60 {
				t.Fatalf("only %d updates written in place: the test does not exercise that path", inPlace)
			}
		})
	}
}

// probe is a flow from the pod whose verdict the in-place test follows.
type probe struct {
	dst   netip.Addr
	proto uint8
	port  uint16
}

// randPeerIP is the address the in-place test's ipcache gives peer id.
func randPeerIP(id Identity) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 18, 3, byte(id - firstRandPeer + 1)})
}

// TestPrivilegedInPlaceUpdateVerdicts runs packets through the real
// program (BPF_PROG_TEST_RUN) after every single map write of random
// policy updates of one endpoint's egress: each flow's verdict (return
// code and mark) must go from its verdict before the update to its
// verdict after it, once, never through a third value or back — the
// guarantee of the generation swap, kept by the in-place writes.
func TestPrivilegedInPlaceUpdateVerdicts(t *testing.T) {
	inPlaceVerdicts(t, func(d *Datapath, _, after EndpointPolicy) {
		_, _ = d.UpdatePolicy([]EndpointPolicy{after}) // a SyncError: failed closed, checked like any verdict
	})
}

// inPlaceVerdicts is TestPrivilegedInPlaceUpdateVerdicts with update
// writing each change (before: the policy in force).
func inPlaceVerdicts(t *testing.T, update func(d *Datapath, before, after EndpointPolicy)) {
	d := fixture(t, EndpointPolicy{})
	var ipc []IPCacheEntry
	for id := Identity(firstRandPeer); id <= lastRandPeer; id++ {
		ipc = append(ipc, IPCacheEntry{Prefix: netip.PrefixFrom(randPeerIP(id), 32), Identity: id})
	}
	if _, err := d.UpdateIPCache(ipc, nil); err != nil {
		t.Fatal(err)
	}
	// Redirects to a port without a proxy socket are drops: register
	// the proxy ports, so a redirect shows as its mark.
	for port := uint16(15000); port <= 15002; port++ {
		if err := d.RegisterProxyListener(port, listen(t)); err != nil {
			t.Fatal(err)
		}
		u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { u.Close() })
		if err := d.RegisterProxyListener(port, u); err != nil {
			t.Fatal(err)
		}
	}
	c := &policyChanger{r: rand.New(rand.NewPCG(11, 13)), desired: map[uint32]EndpointPolicy{}}
	c.desired[testEP] = EndpointPolicy{Endpoint: testEP, Egress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{
		{Peer: 256, Protocol: ProtoTCP, Port: 80, Verdict: VerdictAllow, RuleID: 1},
		{Peer: 256, Protocol: ProtoTCP, Port: 443, Verdict: VerdictRedirect, ProxyPort: 15000, RuleID: 2},
		{Peer: 257, Protocol: ProtoAny, Verdict: VerdictAllow, RuleID: 3},
		{Peer: 257, Protocol: ProtoTCP, Port: 8080, EndPort: 8083, Verdict: VerdictDeny, RuleID: 4},
		{Peer: 258, Protocol: ProtoAny, Verdict: VerdictAllow, RuleID: 3},
		{Peer: 258, Protocol: ProtoTCP, Port: 8080, EndPort: 8083, Verdict: VerdictDeny, RuleID: 4},
		{Peer: 258, Protocol: ProtoTCP, Port: 80, Verdict: VerdictRedirect, ProxyPort: 15001, RuleID: 5},
		{Peer: 259, Protocol: ProtoTCP, Verdict: VerdictAllow, RuleID: 5},
		{Peer: 259, Protocol: ProtoTCP, Port: 443, Verdict: VerdictDeny, RuleID: 5},
		{Peer: IdentityAny, Protocol: ProtoTCP, Port: 80, Verdict: VerdictAllow, RuleID: 6},
		{Peer: IdentityAny, Protocol: ProtoTCP, Port: 443, Verdict: VerdictAllow, RuleID: 6},
		{Peer: IdentityAny, Protocol: ProtoUDP, Port: 53, Verdict: VerdictAllow, RuleID: 6},
	}}}
	if _, err := d.SyncPolicy(c.all()); err != nil {
		t.Fatal(err)
	}
	sport := uint16(1024)
	verdicts := func(probes []probe) []runResult {
		out := make([]runResult, len(probes))
		for i, p := range probes {
			sport++
			if sport == 0 {
				sport = 1024
			}
			pk := egress(p.dst, p.proto, p.port)
			pk.sport = sport // a new flow: decided by policy, not conntrack
			out[i] = run(t, d.objs.TcFromPod, pk, 0)
		}
		return out
	}
	writes, inPlaceSteps := 0, 0
	// First the changes whose wrong order would show (in-place writes
	// least specific first, a peer's and the wildcard's keys together),
	// then random ones.
	flip80 := func(es []PolicyEntry) []PolicyEntry {
		es = slices.Clone(es)
		for i, e := range es {
			if e.Peer == IdentityAny && e.Protocol == ProtoTCP && e.Port == 80 {
				es[i].Verdict = VerdictAllow + VerdictDeny - e.Verdict
			}
		}
		return es
	}
	withPeer := func(es []PolicyEntry, from, to Identity) []PolicyEntry {
		for _, e := range slices.Clone(es) {
			if e.Peer == from {
				e.Peer = to
				es = append(es, e)
			}
		}
		return es
	}
	without := func(es []PolicyEntry, gone Identity) []PolicyEntry {
		return slices.DeleteFunc(slices.Clone(es), func(e PolicyEntry) bool { return e.Peer == gone })
	}
	script := []func([]PolicyEntry) []PolicyEntry{
		func(es []PolicyEntry) []PolicyEntry { return withPeer(es, 258, 260) }, // a new peer: most specific first
		func(es []PolicyEntry) []PolicyEntry { return without(es, 260) },       // and gone: least specific first
		func(es []PolicyEntry) []PolicyEntry { return withPeer(flip80(es), 258, 261) },
		func(es []PolicyEntry) []PolicyEntry { return without(flip80(es), 261) },
	}
	const steps = 400
	for step := range steps {
		before := c.desired[testEP]
		var p EndpointPolicy
		if step < len(script) {
			p = before
			p.Egress.Entries = script[step](before.Egress.Entries)
		} else {
			p = c.change([]uint32{testEP})
		}
		p.Ingress = DirectionPolicy{} // egress only: the probes leave the pod
		c.desired[testEP] = p
		// Probe the peers whose entries differ, two others and an
		// address outside the ipcache (world: the wildcard's).
		peers := map[Identity]bool{Identity(firstRandPeer + c.r.IntN(44)): true, Identity(firstRandPeer + c.r.IntN(44)): true}
		for _, e := range append(slices.Clone(before.Egress.Entries), p.Egress.Entries...) {
			if e.Peer != IdentityAny && e.Peer != invalidPeer {
				if !slices.Contains(before.Egress.Entries, e) || !slices.Contains(p.Egress.Entries, e) {
					peers[e.Peer] = true
				}
			}
		}
		var probes []probe
		for _, dst := range append([]netip.Addr{worldIP}, func() (out []netip.Addr) {
			for _, id := range slices.Sorted(maps.Keys(peers)) {
				out = append(out, randPeerIP(id))
			}
			return
		}()...) {
			for _, l4 := range []struct {
				proto uint8
				port  uint16
			}{{ProtoTCP, 80}, {ProtoTCP, 443}, {ProtoTCP, 8081}, {ProtoTCP, 22}, {ProtoUDP, 53}, {ProtoUDP, 80}} {
				probes = append(probes, probe{dst: dst, proto: l4.proto, port: l4.port})
			}
		}
		old := verdicts(probes)
		var seen [][]runResult
		d.policyWritten = func() { seen = append(seen, verdicts(probes)) }
		eg := epPolicyKey{Endpoint: testEP, Dir: uint8(Egress)}
		prev := d.pm.get(eg)
		prev.keys = maps.Clone(prev.keys)
		update(d, before, p)
		d.policyWritten = nil
		now := verdicts(probes)
		writes += len(seen)
		if md := d.pm.get(eg); prev.present && md.present && md.meta == prev.meta && prev.meta.Flags&epPolicyFailClosed == 0 && !maps.Equal(prev.keys, md.keys) {
			inPlaceSteps++
		}
		for i, pr := range probes {
			moved := false
			for w, vs := range seen {
				switch v := vs[i]; {
				case v == now[i] && v != old[i]:
					moved = true
				case v == old[i] && !moved:
				case v == old[i] && v == now[i]:
				default:
					t.Fatalf("step %d, write %d of %d: flow %+v: verdict %+v, before the update %+v, after %+v (moved already: %v)\nbefore: %+v\nafter: %+v",
						step, w+1, len(seen), pr, v, old[i], now[i], moved, before.Egress, p.Egress)
				}
			}
		}
	}
	t.Logf("%d writes checked, %d of %d updates in place", writes, inPlaceSteps, steps)
	if inPlaceSteps < 40 {
		t.Fatalf("only %d updates written in place: the test does not exercise that path", inPlaceSteps)
	}
}
