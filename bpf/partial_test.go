package bpf

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestPrivilegedUpdatePolicyAndIPCache: UpdatePolicy rewrites one
// endpoint's policy and leaves the others' as they are; UpdateIPCache
// adds and removes single entries. Together they leave the maps exactly
// as SyncPolicy and SyncIPCache of the whole state do, and the datapath
// enforces the change (an FQDN address allowed, then revoked).
func TestPrivilegedUpdatePolicyAndIPCache(t *testing.T) {
	d := fixture(t, EndpointPolicy{})
	fqdnID := FirstCIDRIdentity | 9
	base := EndpointPolicy{Endpoint: testEP, Egress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{
		{Peer: peerID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictAllow, RuleID: 1}}}}
	other := EndpointPolicy{Endpoint: testEP + 1, Ingress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{
		{Peer: otherID, Protocol: ProtoUDP, Port: 53, Verdict: VerdictAllow, RuleID: 2}}}}
	if _, err := d.SyncPolicy([]EndpointPolicy{base, other}); err != nil {
		t.Fatal(err)
	}
	withFQDN := base
	withFQDN.Egress.Entries = append(slices.Clone(base.Egress.Entries), PolicyEntry{Peer: fqdnID, Protocol: ProtoTCP, Port: 443, Verdict: VerdictAllow, RuleID: 1})
	state := func() string {
		t.Helper()
		es, err := d.Policy()
		if err != nil {
			t.Fatal(err)
		}
		ipc, err := d.IPCache()
		if err != nil {
			t.Fatal(err)
		}
		var lines []string
		for _, e := range es {
			lines = append(lines, fmt.Sprint(e))
		}
		for _, e := range ipc {
			lines = append(lines, fmt.Sprint(e))
		}
		slices.Sort(lines)
		return strings.Join(lines, "\n")
	}
	wantRet(t, "before: fqdn address", d.fromPod(t, egress(worldIP, ProtoTCP, 443)), actShot)

	// add: the endpoint's policy first, then the address
	if _, err := d.UpdatePolicy([]EndpointPolicy{withFQDN}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.UpdateIPCache([]IPCacheEntry{{Prefix: netip.PrefixFrom(worldIP, 32), Identity: fqdnID}}, nil); err != nil {
		t.Fatal(err)
	}
	wantRet(t, "added: fqdn address", d.fromPod(t, egress(worldIP, ProtoTCP, 443)), actOK)
	wantRet(t, "added: old allow kept", d.fromPod(t, egress(peerIP, ProtoTCP, 80)), actOK)
	got := state()
	if _, err := d.SyncIPCache(append(fixtureIPCache(), IPCacheEntry{Prefix: netip.PrefixFrom(worldIP, 32), Identity: fqdnID})); err != nil {
		t.Fatal(err)
	}
	if _, err := d.SyncPolicy([]EndpointPolicy{withFQDN, other}); err != nil {
		t.Fatal(err)
	}
	if want := state(); got != want {
		t.Fatalf("after the partial updates:\n%s\nafter a whole sync:\n%s", got, want)
	}

	// remove: the address first, then the entries
	if _, err := d.UpdateIPCache(nil, []netip.Prefix{netip.PrefixFrom(worldIP, 32)}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.UpdatePolicy([]EndpointPolicy{base}); err != nil {
		t.Fatal(err)
	}
	wantRet(t, "removed: fqdn address", d.fromPod(t, egress(worldIP, ProtoTCP, 443)), actShot)
	got = state()
	if _, err := d.SyncIPCache(fixtureIPCache()); err != nil {
		t.Fatal(err)
	}
	if _, err := d.SyncPolicy([]EndpointPolicy{base, other}); err != nil {
		t.Fatal(err)
	}
	if want := state(); got != want {
		t.Fatalf("after the partial removals:\n%s\nafter a whole sync:\n%s", got, want)
	}
}

// BenchmarkFQDNAddressWrite: what the agent's incremental FQDN path writes
// for one new address — the new identity's entries with UpdatePolicyPeers
// (peers) or one endpoint's policy (n allow entries, plus the new
// identity's) with UpdatePolicy (update), and one ipcache entry with
// UpdateIPCache — against SyncPolicy + SyncIPCache of the same state
// (the whole-map path), at n = 1k and 10k FQDN identities.
func BenchmarkFQDNAddressWrite(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		for _, mode := range []string{"peers", "update", "sync"} {
			b.Run(fmt.Sprintf("identities=%d/%s", n, mode), func(b *testing.B) {
				d := openTest(b, Config{DisableEvents: true, MapSizes: MapSizes{Policy: 131072, IPCache: 65536}})
				pol := EndpointPolicy{Endpoint: testEP, Egress: DirectionPolicy{Enforced: true}}
				var ipc []IPCacheEntry
				add := func(i int) IPCacheEntry {
					id := FirstCIDRIdentity | Identity(16+i)
					pol.Egress.Entries = append(pol.Egress.Entries, PolicyEntry{Peer: id, Protocol: ProtoTCP, Port: 443, Verdict: VerdictAllow, RuleID: 1})
					e := IPCacheEntry{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)}), 32), Identity: id}
					ipc = append(ipc, e)
					return e
				}
				for i := range n {
					add(i)
				}
				if _, err := d.SyncIPCache(ipc); err != nil {
					b.Fatal(err)
				}
				if _, err := d.SyncPolicy([]EndpointPolicy{pol}); err != nil {
					b.Fatal(err)
				}
				var lat []time.Duration
				cpu0 := cpuTime()
				b.ResetTimer()
				for i := range b.N {
					e := add(n + i)
					start := time.Now()
					switch mode {
					case "peers":
						if _, err := d.UpdatePolicyPeers(testEP, Egress, []PeerPolicy{{Peer: e.Identity, Entries: pol.Egress.Entries[len(pol.Egress.Entries)-1:]}}); err != nil {
							b.Fatal(err)
						}
						if _, err := d.UpdateIPCache([]IPCacheEntry{e}, nil); err != nil {
							b.Fatal(err)
						}
					case "update":
						if _, err := d.UpdatePolicy([]EndpointPolicy{pol}); err != nil {
							b.Fatal(err)
						}
						if _, err := d.UpdateIPCache([]IPCacheEntry{e}, nil); err != nil {
							b.Fatal(err)
						}
					default:
						if _, err := d.SyncPolicy([]EndpointPolicy{pol}); err != nil {
							b.Fatal(err)
						}
						if _, err := d.SyncIPCache(ipc); err != nil {
							b.Fatal(err)
						}
					}
					lat = append(lat, time.Since(start))
				}
				b.StopTimer()
				b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/1000/float64(b.N), "cpu-ms/op")
				slices.Sort(lat)
				b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
				b.ReportMetric(float64(lat[(len(lat)-1)*99/100].Microseconds())/1000, "p99-ms")
			})
		}
	}
}
