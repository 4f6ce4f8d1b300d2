package agent

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
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
	h := newHarness(t, map[string]int{"default/app": 20})
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
	return h, agentapi.NewFQDNClient(agentapi.StatusSocket(h.runDir))
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
