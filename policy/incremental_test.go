package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// snapshotText is a snapshot's exported content and every identity's
// labels, for comparing two snapshots.
func snapshotText(t *testing.T, s *Snapshot) string {
	t.Helper()
	b, err := json.MarshalIndent(s, "", " ")
	if err != nil {
		t.Fatal(err)
	}
	out := string(b)
	for _, info := range s.Identities {
		out += fmt.Sprintf("\n%d %v", info.ID, s.Labels(info.ID))
		if p := s.Policy(info.ID); p != nil && p.Identity != info.ID {
			out += " policy of another identity"
		}
	}
	return out
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
