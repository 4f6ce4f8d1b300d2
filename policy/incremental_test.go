package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"testing"
	"unsafe"
)

// snapshotText is a snapshot's exported content and every identity's
// labels, for comparing two snapshots.
func snapshotText(t *testing.T, s *Snapshot) string {
	t.Helper()
	b, err := json.MarshalIndent(s, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	out.Write(b)
	for _, info := range s.Identities {
		fmt.Fprintf(&out, "\n%d %v", info.ID, s.Labels(info.ID))
		if p := s.Policy(info.ID); p != nil && p.Identity != info.ID {
			out.WriteString(" policy of another identity")
		}
	}
	return out.String()
}

func cacheOf(names map[string][]netip.Addr) StaticFQDNCache {
	var out StaticFQDNCache
	keys := make([]string, 0, len(names))
	for n := range names {
		keys = append(keys, n)
	}
	slices.Sort(keys)
	for _, n := range keys {
		out = append(out, FQDNName{Name: n, IPs: names[n]})
	}
	return out
}

// TestUpdateFQDNEqualsFullCompute: random sequences of DNS answers and
// expiries, applied with UpdateFQDN where it can, give exactly the
// snapshot a full ComputeWith gives for the same cache (ipcache,
// identities and labels, every entry and L7 rule with its provenance).
// Names match several selectors, addresses collide with policy CIDRs,
// except ranges, a deny and a pod; some rules have L7 rules.
func TestUpdateFQDNEqualsFullCompute(t *testing.T) {
	objs, errs := Load("testdata/incremental/fqdn.yaml")
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	namePool := []string{"api.example.test", "www.example.test", "a.example.test", "b.example.test", "c.example.test",
		"x.corp.test", "a.b.corp.test", "deep.a.b.corp.test", "other.org", "api.other.org"}
	var ipPool []netip.Addr
	for _, third := range []byte{0, 1, 2, 3, 4, 5} {
		for last := range byte(16) {
			ipPool = append(ipPool, netip.AddrFrom4([4]byte{198, 19, third, last}))
		}
	}
	for seed := range uint64(12) {
		// seeds 8 and up: a small entry budget, so policies reach it
		// (held in default-deny) and leave it again
		maxEntries := 0
		if seed >= 8 {
			maxEntries = 36 + 8*int(seed%2)
		}
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 7))
			alloc := NewIdentityAllocator()
			names := map[string][]netip.Addr{}
			full := func() *Snapshot {
				s, err := ComputeWith(objs, alloc, Options{FQDNCache: cacheOf(names), MaxEntries: maxEntries})
				if err != nil {
					t.Fatal(err)
				}
				return s
			}
			snap := full()
			// every snapshot of the chain, to check none changed later
			// (updates share arrays with the snapshots before them)
			type kept struct {
				s    *Snapshot
				text string
				step int
			}
			var chain []kept
			var fast, fallback, emptyDeltas, overflowed int
			for step := range 300 {
				name := namePool[rng.IntN(len(namePool))]
				var ips []netip.Addr
				if rng.IntN(4) > 0 {
					for range 1 + rng.IntN(3) {
						ips = append(ips, ipPool[rng.IntN(len(ipPool))])
					}
				}
				prev := snap
				prevText := snapshotText(t, prev)
				chain = append(chain, kept{prev, prevText, step})
				if strings.Contains(prevText, "entry-budget") {
					overflowed++
				}
				next, delta, err := snap.UpdateFQDN([]FQDNName{{Name: name, IPs: ips}})
				if len(ips) > 0 {
					names[name] = ips
				} else {
					delete(names, name)
				}
				if err != nil {
					if !errors.Is(err, ErrFullCompute) {
						t.Fatalf("step %d: %v", step, err)
					}
					fallback++
					if got := snapshotText(t, prev); got != prevText {
						t.Fatalf("step %d: a failed UpdateFQDN changed the snapshot", step)
					}
					snap = full()
					continue
				}
				fast++
				if delta.Empty() {
					emptyDeltas++
				}
				if got := snapshotText(t, prev); got != prevText {
					t.Fatalf("step %d: UpdateFQDN changed the snapshot it was given", step)
				}
				want := snapshotText(t, full())
				if got := snapshotText(t, next); got != want {
					t.Fatalf("step %d (%s → %v): incremental snapshot differs from a full compute:\n%s", step, name, ips, lineDiff(want, got))
				}
				for _, id := range delta.Changed {
					if next.Policy(id) == prev.Policy(id) {
						t.Fatalf("step %d: identity %d reported changed, policy is the same", step, id)
					}
				}
				snap = next
			}
			for _, k := range chain {
				if got := snapshotText(t, k.s); got != k.text {
					t.Fatalf("the snapshot before step %d changed later:\n%s", k.step, lineDiff(k.text, got))
				}
			}
			t.Logf("incremental %d (no-op %d), full compute %d, over budget %d", fast, emptyDeltas, fallback, overflowed)
			if maxEntries > 0 && overflowed == 0 {
				t.Error("no step reached the entry budget")
			}
			if fast-emptyDeltas < 30-20*min(maxEntries, 1) {
				t.Errorf("only %d of 300 steps changed the snapshot incrementally: the fast path is not exercised", fast-emptyDeltas)
			}
		})
	}
}

// lineDiff shows the first differing lines.
func lineDiff(want, got string) string {
	w, g := splitLines(want), splitLines(got)
	for i := range max(len(w), len(g)) {
		var a, b string
		if i < len(w) {
			a = w[i]
		}
		if i < len(g) {
			b = g[i]
		}
		if a != b {
			lo := max(0, i-3)
			return fmt.Sprintf("line %d:\n-want %q\n+got  %q\ncontext want %q", i, a, b, w[lo:min(len(w), i+3)])
		}
	}
	return ""
}

func splitLines(s string) []string {
	var out []string
	start := 0
	for i := range len(s) {
		if s[i] == '\n' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// TestUpdateFQDNSharesUnchangedEntries: new FQDN identities (numbered
// after every other) append to the entries and identities of the
// previous snapshot's arrays instead of copying them, and no snapshot of
// the chain sees a change: each is clipped to its length, so even an
// append by a reader of an older snapshot copies.
func TestUpdateFQDNSharesUnchangedEntries(t *testing.T) {
	objs, errs := Load("testdata/incremental/fqdn.yaml")
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	names := map[string][]netip.Addr{"n0.example.test": {netip.MustParseAddr("198.19.5.1")}}
	alloc := NewIdentityAllocator()
	snap, err := ComputeWith(objs, alloc, Options{FQDNCache: cacheOf(names)})
	if err != nil {
		t.Fatal(err)
	}
	var a Identity
	for _, ep := range snap.Endpoints {
		if ep.Name == "a" {
			a = ep.Identity
		}
	}
	chain := []*Snapshot{snap}
	texts := []string{snapshotText(t, snap)}
	for i := 1; i <= 4; i++ {
		next, delta, err := snap.UpdateFQDN([]FQDNName{{Name: fmt.Sprintf("n%d.example.test", i), IPs: []netip.Addr{netip.AddrFrom4([4]byte{198, 19, 5, byte(1 + i)})}}})
		if err != nil {
			t.Fatalf("update %d: %v", i, err)
		}
		if !slices.Contains(delta.Changed, a) {
			t.Fatalf("update %d: identity %d (pod a) not changed: %v", i, a, delta.Changed)
		}
		prevE, nextE := snap.Policy(a).Egress.Entries, next.Policy(a).Egress.Entries
		if len(nextE) <= len(prevE) {
			t.Fatalf("update %d: pod a's egress entries %d → %d", i, len(prevE), len(nextE))
		}
		if cap(nextE) != len(nextE) || cap(next.Identities) != len(next.Identities) || cap(next.IPCache) != len(next.IPCache) {
			t.Fatalf("update %d: a published slice has room past its length", i)
		}
		// the first update copies (the compute's arrays have no room);
		// later ones append in place
		if i > 1 {
			if unsafe.SliceData(nextE) != unsafe.SliceData(prevE) {
				t.Errorf("update %d: pod a's egress entries were copied, not appended", i)
			}
			if unsafe.SliceData(next.Identities) != unsafe.SliceData(snap.Identities) {
				t.Errorf("update %d: the identities were copied, not appended", i)
			}
			if unsafe.SliceData(next.IPCache) != unsafe.SliceData(snap.IPCache) {
				t.Errorf("update %d: the ipcache was copied, not appended (its new prefixes sort last)", i)
			}
		}
		// a reader appending to the previous snapshot's entries copies
		_ = append(prevE, Entry{Peer: IdentityWorld})
		chain, texts = append(chain, next), append(texts, snapshotText(t, next))
		snap = next
	}
	for i, s := range chain {
		if got := snapshotText(t, s); got != texts[i] {
			t.Fatalf("snapshot %d of the chain changed later:\n%s", i, lineDiff(texts[i], got))
		}
	}
	for i := 1; i <= 4; i++ {
		names[fmt.Sprintf("n%d.example.test", i)] = []netip.Addr{netip.AddrFrom4([4]byte{198, 19, 5, byte(1 + i)})}
	}
	full, err := ComputeWith(objs, alloc, Options{FQDNCache: cacheOf(names)})
	if err != nil {
		t.Fatal(err)
	}
	if want := snapshotText(t, full); texts[len(texts)-1] != want {
		t.Fatalf("the last snapshot differs from a full compute:\n%s", lineDiff(want, texts[len(texts)-1]))
	}
}

// TestAppendOrMergeNeverWritesVisibleElements: two appends to the same
// base (an array another result already grew) give two independent
// results; a merge that drops copies.
func TestAppendOrMergeNeverWritesVisibleElements(t *testing.T) {
	tails := map[*int][]int{}
	merge := func(base, add []int) func() []int {
		return func() []int { return mergeSorted(base, add, func(int) bool { return false }, cmpInt, true) }
	}
	base := appendOrMerge(tails, []int{1, 2}, []int{3}, false, cmpInt, merge([]int{1, 2}, []int{3}))
	r1 := appendOrMerge(tails, base, []int{4}, false, cmpInt, merge(base, []int{4}))
	r2 := appendOrMerge(tails, base, []int{5}, false, cmpInt, merge(base, []int{5}))
	if unsafe.SliceData(r1) != unsafe.SliceData(base) {
		t.Error("the first append copied")
	}
	if !slices.Equal(base, []int{1, 2, 3}) || !slices.Equal(r1, []int{1, 2, 3, 4}) || !slices.Equal(r2, []int{1, 2, 3, 5}) {
		t.Fatalf("base %v, r1 %v, r2 %v: want [1 2 3], [1 2 3 4], [1 2 3 5]", base, r1, r2)
	}
	r3 := appendOrMerge(tails, r1, []int{0}, false, cmpInt, merge(r1, []int{0}))
	if !slices.Equal(r3, []int{0, 1, 2, 3, 4}) || !slices.Equal(r1, []int{1, 2, 3, 4}) {
		t.Fatalf("a merge before the start: r1 %v, r3 %v", r1, r3)
	}
}

func cmpInt(a, b int) int { return a - b }

// TestMergeSortedRunsEqualsElementwise: the run-copying merge (no drops)
// gives what the element-wise merge gives, equal keys keeping base first.
func TestMergeSortedRunsEqualsElementwise(t *testing.T) {
	type kv struct{ k, from int }
	cmpKV := func(a, b kv) int { return a.k - b.k }
	rng := rand.New(rand.NewPCG(3, 9))
	for range 500 {
		var base, add []kv
		for range rng.IntN(20) {
			base = append(base, kv{rng.IntN(15), 0})
		}
		for range rng.IntN(6) {
			add = append(add, kv{rng.IntN(15), 1})
		}
		slices.SortStableFunc(base, cmpKV)
		slices.SortStableFunc(add, cmpKV)
		want := mergeSorted(base, add, func(kv) bool { return false }, cmpKV, false)
		if got := mergeSorted(base, add, nil, cmpKV, true); !slices.Equal(got, want) {
			t.Fatalf("merge %v + %v: got %v, want %v", base, add, got, want)
		}
	}
}

// TestUpdateFQDNAppendsIPCacheOutOfPrefixOrder: addresses that sort
// before others by prefix (lower than every cached one, among the pods',
// next to a pod's) still append the new FQDN identity's entry to the
// previous snapshot's ipcache array (the FQDN entries come last, by
// identity) and the result is exactly a full compute's, order included.
func TestUpdateFQDNAppendsIPCacheOutOfPrefixOrder(t *testing.T) {
	objs, errs := Load("testdata/incremental/fqdn.yaml")
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	names := map[string][]netip.Addr{"n0.example.test": {netip.MustParseAddr("198.19.5.200")}}
	alloc := NewIdentityAllocator()
	snap, err := ComputeWith(objs, alloc, Options{FQDNCache: cacheOf(names)})
	if err != nil {
		t.Fatal(err)
	}
	chain := []*Snapshot{snap}
	texts := []string{snapshotText(t, snap)}
	for i, ip := range []string{"198.19.5.100", "198.18.1.2", "198.19.4.9", "198.19.5.50", "198.18.40.200"} {
		name := fmt.Sprintf("m%d.example.test", i)
		next, delta, err := snap.UpdateFQDN([]FQDNName{{Name: name, IPs: []netip.Addr{netip.MustParseAddr(ip)}}})
		if err != nil {
			t.Fatalf("%s → %s: %v", name, ip, err)
		}
		if len(delta.Added) != 1 || len(next.IPCache) != len(snap.IPCache)+1 {
			t.Fatalf("%s → %s: added %v, ipcache %d → %d", name, ip, delta.Added, len(snap.IPCache), len(next.IPCache))
		}
		if cap(next.IPCache) != len(next.IPCache) {
			t.Fatalf("%s: the published ipcache has room past its length", name)
		}
		// the first update copies (the compute's array has no room)
		if i > 0 && unsafe.SliceData(next.IPCache) != unsafe.SliceData(snap.IPCache) {
			t.Errorf("%s → %s: the ipcache (%d entries) was copied, not appended", name, ip, len(snap.IPCache))
		}
		names[name] = []netip.Addr{netip.MustParseAddr(ip)}
		full, err := ComputeWith(objs, alloc, Options{FQDNCache: cacheOf(names)})
		if err != nil {
			t.Fatal(err)
		}
		if want, got := snapshotText(t, full), snapshotText(t, next); got != want {
			t.Fatalf("%s → %s: incremental snapshot differs from a full compute:\n%s", name, ip, lineDiff(want, got))
		}
		chain, texts = append(chain, next), append(texts, snapshotText(t, next))
		snap = next
	}
	for i, s := range chain {
		if got := snapshotText(t, s); got != texts[i] {
			t.Fatalf("snapshot %d of the chain changed later:\n%s", i, lineDiff(texts[i], got))
		}
	}
}

// TestComputeIPCacheOrder: the ipcache lists the entries of identities
// without fqdn: labels first, by prefix, then those of FQDN identities
// (a policy CIDR that is also a cached address included), by identity;
// one entry per prefix; every address resolves as before (IdentityOf).
func TestComputeIPCacheOrder(t *testing.T) {
	objs, errs := Load("testdata/incremental/fqdn.yaml")
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	names := map[string][]netip.Addr{
		"z.example.test":   {netip.MustParseAddr("198.19.9.1"), netip.MustParseAddr("198.18.0.1")},
		"api.example.test": {netip.MustParseAddr("198.19.3.3")},                                      // a policy's /32 too
		"x.corp.test":      {netip.MustParseAddr("198.19.0.20"), netip.MustParseAddr("198.18.40.2")}, // a pod's address too
	}
	snap, err := ComputeWith(objs, NewIdentityAllocator(), Options{FQDNCache: cacheOf(names)})
	if err != nil {
		t.Fatal(err)
	}
	isFQDN := func(id Identity) bool {
		return slices.ContainsFunc(snap.Labels(id), func(l Label) bool { return l.Source == SourceFQDN })
	}
	head := slices.IndexFunc(snap.IPCache, func(e IPCacheEntry) bool { return isFQDN(e.Identity) })
	if head < 0 {
		t.Fatalf("no FQDN entry in %v", snap.IPCache)
	}
	for i, e := range snap.IPCache {
		if isFQDN(e.Identity) != (i >= head) {
			t.Fatalf("entry %d %v: FQDN %v, but the FQDN entries start at %d", i, e, isFQDN(e.Identity), head)
		}
	}
	if !slices.IsSortedFunc(snap.IPCache[:head], func(a, b IPCacheEntry) int { return comparePrefix(a.Prefix, b.Prefix) }) {
		t.Errorf("the non-FQDN entries are not sorted by prefix: %v", snap.IPCache[:head])
	}
	if !slices.IsSortedFunc(snap.IPCache[head:], func(a, b IPCacheEntry) int { return int(a.Identity) - int(b.Identity) }) {
		t.Errorf("the FQDN entries are not sorted by identity: %v", snap.IPCache[head:])
	}
	if n := len(snap.IPCache) - head; n != 4 {
		t.Errorf("%d FQDN entries %v, want 4 (198.19.9.1, 198.18.0.1, 198.19.3.3, 198.19.0.20; the pod's address stays the pod's)", n, snap.IPCache[head:])
	}
	seen := map[netip.Prefix]bool{}
	for _, e := range snap.IPCache {
		if seen[e.Prefix] {
			t.Errorf("prefix %s listed twice", e.Prefix)
		}
		seen[e.Prefix] = true
	}
	for addr, want := range map[string]string{"198.18.40.2": "k8s:app=b", "198.19.3.3": "fqdn:", "198.18.0.1": "fqdn:", "198.19.0.7": "cidr:198.19.0.0/24", "198.19.0.9": "cidr:198.19.0.8/30"} {
		id := snap.IdentityOf(netip.MustParseAddr(addr))
		if !slices.ContainsFunc(snap.Labels(id).Strings(), func(l string) bool { return strings.HasPrefix(l, want) }) {
			t.Errorf("%s: identity %d %v, want a label %s…", addr, id, snap.Labels(id).Strings(), want)
		}
	}
}

// TestUpdateFQDNAllocatesPerAnswerNotPerName: the memory an UpdateFQDN
// allocates for one new address of a known selector does not grow with
// the number of cached names (nothing proportional to the ipcache, the
// identities or their labels is copied per answer): the bytes per
// update at 8000 cached names stay under twice those at 100 (measured
// over the same 400 answers after 600 others, addresses in descending
// order: each sorts before the previous one by prefix).
func TestUpdateFQDNAllocatesPerAnswerNotPerName(t *testing.T) {
	objs, errs := Load("testdata/incremental/fqdn.yaml")
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	perUpdate := func(n int) float64 {
		names := map[string][]netip.Addr{}
		for i := range n {
			names[fmt.Sprintf("n%d.example.test", i)] = []netip.Addr{netip.AddrFrom4([4]byte{198, 19, 128 + byte(i>>8), byte(i)})}
		}
		alloc := NewIdentityAllocator()
		snap, err := ComputeWith(objs, alloc, Options{FQDNCache: cacheOf(names)})
		if err != nil {
			t.Fatal(err)
		}
		update := func(i int) {
			// descending addresses: each sorts before the previous one
			ip := netip.AddrFrom4([4]byte{198, 19, 120 - byte(i>>8), 255 - byte(i)})
			name := fmt.Sprintf("new%d.example.test", i)
			next, _, err := snap.UpdateFQDN([]FQDNName{{Name: name, IPs: []netip.Addr{ip}}})
			if err != nil {
				t.Fatalf("%d names, update %d (%s): %v", n, i, ip, err)
			}
			names[name] = []netip.Addr{ip}
			snap = next
		}
		for i := range 600 {
			update(i)
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		for i := 600; i < 1000; i++ {
			update(i)
		}
		runtime.ReadMemStats(&after)
		// still exactly a full compute (the added identities' labels
		// were folded into one map on the way at 100 names)
		full, err := ComputeWith(objs, alloc, Options{FQDNCache: cacheOf(names)})
		if err != nil {
			t.Fatal(err)
		}
		if want, got := snapshotText(t, full), snapshotText(t, snap); got != want {
			t.Fatalf("%d names: 1000 updates differ from a full compute:\n%s", n, lineDiff(want, got))
		}
		return float64(after.TotalAlloc-before.TotalAlloc) / 400
	}
	small, large := perUpdate(100), perUpdate(8000)
	t.Logf("bytes per update: %.0f at 100 cached names, %.0f at 8000", small, large)
	if large > 2*small {
		t.Errorf("an update allocates %.0f bytes at 8000 cached names, %.0f at 100: something per name is copied per answer", large, small)
	}
}
