package agent

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/l7gate/l7gate/bpftranslate"
	"github.com/l7gate/l7gate/policy"
)

// TestIPCacheMemoEqualsTranslation: over random snapshots (the ipcache
// and the endpoints' addresses kept as the same slices, copied equal, or
// changed in one entry; node addresses changed), syncDatapath's memo
// tells exactly the pod addresses and the translated ipcache a
// translation from scratch gives, and is used.
func TestIPCacheMemoEqualsTranslation(t *testing.T) {
	rng := rand.New(rand.NewPCG(19, 14))
	addr := func() netip.Addr { return netip.AddrFrom4([4]byte{198, 19, byte(rng.IntN(2)), byte(rng.IntN(60))}) }
	snap := &policy.Snapshot{}
	for i := range 40 {
		snap.Endpoints = append(snap.Endpoints, policy.Endpoint{Name: "p" + string(rune('a'+i%26)), IPs: []netip.Addr{addr()}})
		snap.IPCache = append(snap.IPCache, policy.IPCacheEntry{Prefix: netip.PrefixFrom(addr(), 32), Identity: policy.Identity(256 + rng.IntN(8))})
	}
	hosts := []netip.Addr{netip.MustParseAddr("198.18.0.1")}
	var m ipcacheMemo
	kept := 0
	for step := range 400 {
		next := &policy.Snapshot{Endpoints: snap.Endpoints, IPCache: snap.IPCache}
		switch rng.IntN(8) {
		case 0: // equal copies
			next.Endpoints, next.IPCache = slices.Clone(snap.Endpoints), slices.Clone(snap.IPCache)
		case 1: // an endpoint's address changed
			next.Endpoints = slices.Clone(snap.Endpoints)
			next.Endpoints[rng.IntN(len(next.Endpoints))].IPs = []netip.Addr{addr()}
		case 2: // an endpoint gone
			next.Endpoints = slices.Delete(slices.Clone(snap.Endpoints), 0, 1)
		case 3: // an entry's identity changed
			next.IPCache = slices.Clone(snap.IPCache)
			next.IPCache[rng.IntN(len(next.IPCache))].Identity = policy.Identity(256 + rng.IntN(8))
		case 4: // an entry's prefix changed
			next.IPCache = slices.Clone(snap.IPCache)
			next.IPCache[rng.IntN(len(next.IPCache))].Prefix = netip.PrefixFrom(addr(), 32)
		case 5: // an entry added
			next.IPCache = append(slices.Clone(snap.IPCache), policy.IPCacheEntry{Prefix: netip.PrefixFrom(addr(), 32), Identity: 300})
		case 6: // the node's addresses
			hosts = []netip.Addr{netip.AddrFrom4([4]byte{198, 18, 0, byte(1 + rng.IntN(3))})}
			if rng.IntN(2) == 0 {
				hosts = append(hosts, addr()) // sometimes a pod's
			}
		}
		if len(next.Endpoints) < 10 {
			next.Endpoints = append(next.Endpoints, policy.Endpoint{Name: "new", IPs: []netip.Addr{addr()}})
		}
		snap = next
		prevIPC := m.ipc
		isPod := m.podAddr(snap)
		wantIPs := map[netip.Addr]bool{}
		for _, ep := range snap.Endpoints {
			for _, ip := range ep.IPs {
				wantIPs[ip] = true
			}
		}
		// every address the test uses, some twice (the second answer
		// remembered)
		for range 2 {
			for c := range 2 {
				for d := range 60 {
					a := netip.AddrFrom4([4]byte{198, 19, byte(c), byte(d)})
					if isPod(a) != wantIPs[a] {
						t.Fatalf("step %d: %s is a pod address: %v, want %v", step, a, isPod(a), wantIPs[a])
					}
				}
			}
		}
		got := m.translated(snap, slices.Clone(hosts))
		if want := bpftranslate.IPCache(snap, hosts); !slices.Equal(got, want) {
			t.Fatalf("step %d: translated ipcache differs from a translation from scratch:\n got %v\nwant %v", step, got, want)
		}
		if prevIPC != nil && &got[0] == &prevIPC[0] {
			kept++
		}
	}
	if kept < 50 {
		t.Fatalf("the translated ipcache was kept in only %d of 400 steps", kept)
	}
}
