package agent

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/l7gate/l7gate/agentapi"
	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/policy"
	dnsproxy "github.com/l7gate/l7gate/proxy/dns"
)

const fqdnPolicy = `apiVersion: v1
kind: Pod
metadata: {name: app, namespace: default, labels: {app: app}}
status: {podIP: 198.18.30.10}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: app-fqdn, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: app}}
  egress:
  - toFQDNs:
    - matchPattern: "*.example.test"
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
`

// fqdnHarness runs the agent with an FQDN cache and the app's toFQDNs
// policy; it returns the client the DNS proxy uses.
func fqdnHarness(t testing.TB) (*harness, *agentapi.FQDNClient) {
	return fqdnHarnessWith(t, 0, dnsproxy.CacheConfig{MaxNames: 20000, MaxIPs: 20000})
}

func fqdnHarnessWith(t testing.TB, resync time.Duration, ccfg dnsproxy.CacheConfig) (*harness, *agentapi.FQDNClient) {
	return fqdnHarnessOn(t, resync, ccfg, nil)
}

// fqdnHarnessOn is fqdnHarnessWith writing to dp when set.
func fqdnHarnessOn(t testing.TB, resync time.Duration, ccfg dnsproxy.CacheConfig, dp Datapath) (*harness, *agentapi.FQDNClient) {
	h := newHarness(t, map[string]int{"default/app": 20})
	h.datapath = dp
	h.resync = resync
	cache, err := dnsproxy.NewCache(ccfg)
	if err != nil {
		t.Fatal(err)
	}
	h.fqdn = cache
	h.start()
	objs, errs := policy.Decode("fqdn.yaml", []byte(fqdnPolicy))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	h.sendObjects(objs)
	h.await("first revision", anyReport)
	return h, fqdnClient(t, h)
}

// fqdnClient returns the DNS proxy's client once the agent's API socket
// exists (the first revision can be reported before it is bound).
func fqdnClient(t testing.TB, h *harness) *agentapi.FQDNClient {
	t.Helper()
	sock := agentapi.StatusSocket(h.runDir)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		// Connectable, not only bound: the file exists between bind and
		// listen (a loaded clean-clone run got "connect: connection
		// refused" from the first Learn).
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return agentapi.NewFQDNClient(sock)
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent API socket %s not bound", sock)
		}
	}
}

// allows reports whether the datapath admits app → ip:80: an ipcache
// entry for ip and an egress allow for its identity.
func (d *fakeDatapath) allows(ip netip.Addr) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	var id bpf.Identity
	for _, e := range d.ipcache {
		if e.Prefix == netip.PrefixFrom(ip, 32) {
			id = e.Identity
		}
	}
	if id == 0 {
		return false
	}
	for _, p := range d.policy {
		if slices.ContainsFunc(p.Egress.Entries, func(e bpf.PolicyEntry) bool {
			return e.Peer == id && e.Port == 80 && e.Verdict == bpf.VerdictAllow
		}) {
			return true
		}
	}
	return false
}

// TestLearnFQDNReturnsOnceImplemented: the DNS proxy's report of an
// answer (POST /fqdn) returns only when the datapath has the ipcache
// entry and the policy entry for the answered address; a name no toFQDNs
// selector matches changes nothing; an answer already implemented
// returns at once.
func TestLearnFQDNReturnsOnceImplemented(t *testing.T) {
	h, fc := fqdnHarness(t)
	ip := netip.MustParseAddr("198.19.30.10")
	if h.dp.allows(ip) {
		t.Fatal("allowed before any DNS answer")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := fc.Learn(ctx, agentapi.FQDNAnswer{Name: "api.example.test.", IPs: []netip.Addr{ip}, TTLSeconds: 30}); err != nil {
		t.Fatal(err)
	}
	if !h.dp.allows(ip) {
		t.Fatalf("Learn returned, but the datapath does not admit %s: ipcache %v", ip, h.dp.ipcache)
	}
	start := time.Now()
	if err := fc.Learn(ctx, agentapi.FQDNAnswer{Name: "api.example.test", IPs: []netip.Addr{ip}, TTLSeconds: 30}); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("an implemented answer took %v", d)
	}
	other := netip.MustParseAddr("198.19.30.11")
	if err := fc.Learn(ctx, agentapi.FQDNAnswer{Name: "api.other.test", IPs: []netip.Addr{other}, TTLSeconds: 30}); err != nil {
		t.Fatal(err)
	}
	if h.dp.allows(other) {
		t.Error("a name no toFQDNs selector matches was admitted")
	}
	if err := fc.Learn(ctx, agentapi.FQDNAnswer{Name: "a..b", IPs: []netip.Addr{other}}); err == nil {
		t.Error("an invalid name was accepted")
	}
}

// BenchmarkLearnFQDN: time from the DNS proxy reporting an answer with a
// new address to the agent having recomputed and synced it (fake
// datapath: policy computation, translation and the xDS push, not the
// BPF map writes), with n names cached already.
func BenchmarkLearnFQDN(b *testing.B) {
	for _, n := range []int{0, 1000, 10000} {
		b.Run(fmt.Sprintf("cached=%d", n), func(b *testing.B) {
			h, fc := fqdnHarness(b)
			ctx := context.Background()
			for i := range n {
				h.fqdn.Insert(fmt.Sprintf("n%d.example.test", i), []netip.Addr{netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)})}, time.Hour)
			}
			// one learn that recomputes with the n names
			if err := fc.Learn(ctx, agentapi.FQDNAnswer{Name: "warm.example.test", IPs: []netip.Addr{netip.MustParseAddr("198.18.200.1")}, TTLSeconds: 3600}); err != nil {
				b.Fatal(err)
			}
			var lat []time.Duration
			b.ResetTimer()
			for i := range b.N {
				ip := netip.AddrFrom4([4]byte{198, 18, 201 + byte(i>>8%50), byte(i)})
				start := time.Now()
				if err := fc.Learn(ctx, agentapi.FQDNAnswer{Name: fmt.Sprintf("new%d.example.test", i), IPs: []netip.Addr{ip}, TTLSeconds: 3600}); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[(len(lat)-1)*99/100].Microseconds()), "p99-µs")
		})
	}
}

// ConntrackAddrs: the fake's tracked flows are the addresses set in ct.
func (d *fakeDatapath) ConntrackAddrs(time.Duration) (map[netip.Addr]bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[netip.Addr]bool{}
	for ip := range d.ct {
		out[ip] = true
	}
	return out, nil
}

func (d *fakeDatapath) setConntrack(ips ...netip.Addr) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ct = map[netip.Addr]bool{}
	for _, ip := range ips {
		d.ct[ip] = true
	}
}

// waitUntil polls cond (bounded).
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestFQDNExpiryKeepsAddressesInUse: after their TTL, cached addresses
// leave policy at the resync — except one a tracked connection still
// uses, which stays allowed until the connection is gone.
func TestFQDNExpiryKeepsAddressesInUse(t *testing.T) {
	h, fc := fqdnHarnessWith(t, 100*time.Millisecond, dnsproxy.CacheConfig{MinTTL: 500 * time.Millisecond})
	used, idle := netip.MustParseAddr("198.19.30.10"), netip.MustParseAddr("198.19.30.11")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for name, ip := range map[string]netip.Addr{"api.example.test": used, "www.example.test": idle} {
		if err := fc.Learn(ctx, agentapi.FQDNAnswer{Name: name, IPs: []netip.Addr{ip}}); err != nil {
			t.Fatal(err)
		}
	}
	if !h.dp.allows(used) || !h.dp.allows(idle) {
		t.Fatal("learned addresses not admitted")
	}
	h.dp.setConntrack(used, netip.MustParseAddr("198.18.30.10"))
	waitUntil(t, "the idle address expired", func() bool { return !h.dp.allows(idle) })
	if !h.dp.allows(used) {
		t.Fatal("the address a connection uses expired with the idle one")
	}
	time.Sleep(time.Second) // two TTLs: still kept while in use
	if !h.dp.allows(used) {
		t.Fatal("the address a connection uses expired later")
	}
	h.dp.setConntrack()
	waitUntil(t, "the address expired once no connection used it", func() bool { return !h.dp.allows(used) })
}

// UpdateIPCache and UpdatePolicy: the fake writes part of its maps, as
// bpf.Datapath does (the incremental FQDN path).
func (d *fakeDatapath) UpdateIPCache(upsert []bpf.IPCacheEntry, remove []netip.Prefix) (bpf.SyncStats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var st bpf.SyncStats
	d.ipcache = slices.DeleteFunc(d.ipcache, func(e bpf.IPCacheEntry) bool {
		if slices.Contains(remove, e.Prefix) || slices.ContainsFunc(upsert, func(u bpf.IPCacheEntry) bool { return u.Prefix == e.Prefix }) {
			st.Deleted++
			return true
		}
		return false
	})
	d.ipcache = append(d.ipcache, upsert...)
	st.Added = len(upsert)
	d.log = append(d.log, fmt.Sprintf("update ipcache +%d -%d", len(upsert), len(remove)))
	return st, nil
}

func (d *fakeDatapath) UpdatePolicy(subset []bpf.EndpointPolicy) (bpf.SyncStats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var ids []uint32
	var failed []bpf.FailedDirection
	for _, p := range subset {
		if d.reject != nil {
			if err := d.reject(p); err != nil {
				return bpf.SyncStats{}, fmt.Errorf("endpoint %d: %w", p.Endpoint, err)
			}
		}
		if d.partial != nil {
			for _, f := range d.partial(p) {
				failed = append(failed, f)
				dp := &p.Ingress
				if f.Direction == bpf.Egress {
					dp = &p.Egress
				}
				*dp = bpf.DirectionPolicy{Enforced: true} // drops everything
			}
		}
		d.policy[p.Endpoint] = p
		ids = append(ids, p.Endpoint)
	}
	d.log = append(d.log, fmt.Sprintf("update policy %v", ids))
	if len(failed) > 0 {
		return bpf.SyncStats{Updated: len(subset)}, &bpf.SyncError{Failed: failed}
	}
	return bpf.SyncStats{Updated: len(subset)}, nil
}

// UpdatePolicyPeers: the fake changes some peers of an endpoint
// direction, as bpf.Datapath does; it asks for the whole policy when it
// has none for the endpoint or rejects policies (reject, partial), so
// the agent's fallback to UpdatePolicy runs then.
func (d *fakeDatapath) UpdatePolicyPeers(endpoint uint32, dir bpf.Direction, peers []bpf.PeerPolicy) (bpf.SyncStats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p, ok := d.policy[endpoint]
	if !ok || d.reject != nil || d.partial != nil {
		return bpf.SyncStats{}, fmt.Errorf("fake: %w", bpf.ErrWholePolicyNeeded)
	}
	dp := &p.Ingress
	if dir == bpf.Egress {
		dp = &p.Egress
	}
	var ids []bpf.Identity
	es := slices.Clone(dp.Entries)
	for _, pp := range peers {
		ids = append(ids, pp.Peer)
		es = slices.DeleteFunc(es, func(e bpf.PolicyEntry) bool { return e.Peer == pp.Peer })
		for _, e := range pp.Entries {
			if e.Peer != pp.Peer {
				return bpf.SyncStats{}, fmt.Errorf("fake: entry of peer %d given for peer %d", e.Peer, pp.Peer)
			}
		}
		es = append(es, pp.Entries...)
	}
	slices.SortStableFunc(es, func(a, b bpf.PolicyEntry) int { return cmp.Compare(a.Peer, b.Peer) })
	dp.Entries = es
	d.policy[endpoint] = p
	d.log = append(d.log, fmt.Sprintf("update policy peers %d %s %v", endpoint, dir, ids))
	return bpf.SyncStats{Updated: len(peers)}, nil
}

// mapsText is the fake's maps in a canonical form.
func (d *fakeDatapath) mapsText() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	ipc := slices.Clone(d.ipcache)
	slices.SortFunc(ipc, func(a, b bpf.IPCacheEntry) int { return a.Prefix.Addr().Compare(b.Prefix.Addr()) })
	out := fmt.Sprintln(ipc)
	for _, id := range slices.Sorted(maps.Keys(d.policy)) {
		out += fmt.Sprintln(d.policy[id])
	}
	return out
}

func (d *fakeDatapath) countLog(prefix string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, l := range d.log {
		if strings.HasPrefix(l, prefix) {
			n++
		}
	}
	return n
}

const fqdnPolicyMany = `apiVersion: v1
kind: Pod
metadata: {name: app, namespace: default, labels: {app: app}}
status: {podIP: 198.18.30.10}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: default, labels: {app: other}}
status: {podIP: 198.18.30.11}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: app-fqdn, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: app}}
  egress:
  - toFQDNs:
    - matchPattern: "*.example.test"
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
  - toFQDNs:
    - matchName: "api.example.test"
    - matchPattern: "*.corp.test"
    toPorts:
    - ports: [{port: "443", protocol: TCP}]
  - toCIDR: [198.19.31.0/26]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: other-fqdn, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: other}}
  egress:
  - toFQDNs:
    - matchPattern: "*.corp.test"
  egressDeny:
  - toCIDR: [198.19.31.0/28]
`

// TestLearnFQDNIncrementalEqualsFullCompute: DNS answers learned through
// the agent's API (most of them on the incremental path: a few ipcache
// entries and the changed endpoints' policies written, no recompute) and
// expiries leave the datapath's maps exactly as a full recompute of the
// same cache writes them (a new source revision forces one).
func TestLearnFQDNIncrementalEqualsFullCompute(t *testing.T) {
	h := newHarness(t, map[string]int{"default/app": 20, "default/other": 21})
	cache, err := dnsproxy.NewCache(dnsproxy.CacheConfig{MaxNames: 1000, MaxIPs: 1000})
	if err != nil {
		t.Fatal(err)
	}
	h.fqdn = cache
	h.start()
	objs, errs := policy.Decode("fqdn.yaml", []byte(fqdnPolicyMany))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	h.sendObjects(objs)
	h.await("first revision", anyReport)
	fc := fqdnClient(t, h)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	names := []string{"a.example.test", "b.example.test", "api.example.test", "x.corp.test", "y.corp.test", "www.other.org"}
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 4 {
		for range 25 {
			var ips []netip.Addr
			for range 1 + rng.IntN(2) {
				ips = append(ips, netip.AddrFrom4([4]byte{198, 19, 31, byte(rng.IntN(80))}))
			}
			name := names[rng.IntN(len(names))]
			if err := fc.Learn(ctx, agentapi.FQDNAnswer{Name: name, IPs: ips, TTLSeconds: 3600}); err != nil {
				t.Fatal(err)
			}
			for _, ip := range ips {
				if strings.HasSuffix(name, ".example.test") && !h.dp.allows(ip) && !netip.MustParsePrefix("198.19.31.0/26").Contains(ip) {
					t.Fatalf("Learn(%s %v) returned, %s not admitted on port 80", name, ips, ip)
				}
			}
		}
		incremental, byPeers := h.dp.countLog("update policy"), h.dp.countLog("update policy peers")
		got := h.dp.mapsText()
		// A new revision of the same objects: a full compute with the
		// same cache.
		h.sendObjects(objs)
		h.await("recompute", anyReport)
		if want := h.dp.mapsText(); got != want {
			t.Fatalf("round %d: the incrementally written maps differ from a full recompute's:\n got %s\nwant %s", round, got, want)
		}
		t.Logf("round %d: %d incremental policy writes so far, %d of them by peers", round, incremental, byPeers)
		if round == 3 && (incremental < 10 || byPeers < 10) {
			t.Errorf("only %d incremental policy writes, %d by peers: the fast path is not exercised", incremental, byPeers)
		}
	}
}

// TestFQDNWithPeersEqualsMerge: random peer changes applied by withPeers
// (the entries in force the incremental FQDN path records) give what
// replacing the peers' entries and sorting gives, and never change an
// array below a length handed out before (readers of older copies).
func TestFQDNWithPeersEqualsMerge(t *testing.T) {
	f := newFQDNState()
	rng := rand.New(rand.NewPCG(3, 4))
	entriesOf := func(peer bpf.Identity) []bpf.PolicyEntry {
		es := []bpf.PolicyEntry{{Peer: peer, Protocol: bpf.ProtoTCP, Port: 80, Verdict: bpf.VerdictAllow, RuleID: uint32(peer)}}
		if peer%3 == 0 {
			es = append(es, bpf.PolicyEntry{Peer: peer, Protocol: bpf.ProtoTCP, Port: 443, Verdict: bpf.VerdictDeny, RuleID: 7})
		}
		return es
	}
	var cur []bpf.PolicyEntry
	for p := bpf.Identity(256); p < 300; p += 2 {
		cur = append(cur, entriesOf(p)...)
	}
	next := bpf.Identity(300)
	type handed struct{ s, copy []bpf.PolicyEntry }
	var out []handed
	appended := 0
	for step := range 2000 {
		present := map[bpf.Identity]bool{}
		for _, e := range cur {
			present[e.Peer] = true
		}
		changes := map[bpf.Identity][]bpf.PolicyEntry{}
		switch n := rng.IntN(10); {
		case n < 6: // new identities, numbered after every other
			for range 1 + rng.IntN(2) {
				changes[next] = entriesOf(next)
				next++
			}
		case n < 8 && len(present) > 0: // one goes
			ids := slices.Sorted(maps.Keys(present))
			changes[ids[rng.IntN(len(ids))]] = nil
		default: // one anywhere, new or replaced
			p := bpf.Identity(256 + rng.IntN(int(next)-256))
			es := entriesOf(p)
			es[0].RuleID = uint32(rng.IntN(9))
			changes[p] = es
		}
		var peers []bpf.PeerPolicy
		for _, p := range slices.Sorted(maps.Keys(changes)) {
			if changes[p] == nil && !present[p] {
				continue
			}
			peers = append(peers, bpf.PeerPolicy{Peer: p, Entries: changes[p]})
		}
		if len(peers) == 0 {
			continue
		}
		want := slices.DeleteFunc(slices.Clone(cur), func(e bpf.PolicyEntry) bool { _, ok := changes[e.Peer]; return ok })
		for _, pp := range peers {
			want = append(want, pp.Entries...)
		}
		slices.SortStableFunc(want, func(a, b bpf.PolicyEntry) int { return cmp.Compare(a.Peer, b.Peer) })
		got := f.withPeers(7, 1, cur, peers)
		if len(cur) > 0 && len(got) > 0 && &got[0] == &cur[0] {
			appended++
		}
		if !slices.Equal(got, want) {
			t.Fatalf("step %d: peers %v:\n got %v\nwant %v", step, peers, got, want)
		}
		for i, h := range out {
			if !slices.Equal(h.s, h.copy) {
				t.Fatalf("step %d: entries handed out at step %d changed", step, i)
			}
		}
		out = append(out, handed{got, slices.Clone(got)})
		if len(out) > 50 {
			out = out[1:]
		}
		cur = got
	}
	t.Logf("%d of 2000 changes appended in place", appended)
	if appended < 500 {
		t.Fatalf("only %d changes appended in place: the spare-room path is not exercised", appended)
	}
}
