package agent

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l7gate/l7gate/agentapi"
	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/internal/testutil"
	dnsproxy "github.com/l7gate/l7gate/proxy/dns"
)

// unattachedDatapath is a real bpf.Datapath whose endpoints are not
// attached (the harness's pods have no veths): every map write is real.
type unattachedDatapath struct{ *bpf.Datapath }

func (unattachedDatapath) AttachEndpoint(bpf.Endpoint) error { return nil }
func (unattachedDatapath) DetachEndpoint(int) error          { return nil }

// openBPF opens a real datapath on a private bpf filesystem.
func openBPF(b *testing.B) *bpf.Datapath {
	b.Helper()
	testutil.RequirePrivileged(b, "loads BPF programs")
	dir := b.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		b.Fatalf("mount bpffs: %v", err)
	}
	b.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			b.Errorf("unmount bpffs: %v", err)
		}
	})
	d, err := bpf.Open(context.Background(), bpf.Config{BPFFSPath: dir, DisableEvents: true,
		MapSizes: bpf.MapSizes{Policy: 131072, IPCache: 65536}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.Close() })
	return d
}

// BenchmarkLearnFQDNRealDatapath is BenchmarkLearnFQDN writing to a real
// datapath (bpf maps, no veths): the time from the DNS proxy's POST /fqdn
// to its return (the ipcache entry and the endpoint's policy keys written
// and in force), and the agent's CPU per answer.
func BenchmarkLearnFQDNRealDatapath(b *testing.B) {
	for _, n := range []int{0, 1000, 10000} {
		b.Run(fmt.Sprintf("cached=%d", n), func(b *testing.B) {
			d := openBPF(b)
			h, fc := fqdnHarnessOn(b, 0, dnsproxy.CacheConfig{MaxNames: 20000, MaxIPs: 20000}, unattachedDatapath{d})
			ctx := context.Background()
			for i := range n {
				h.fqdn.Insert(fmt.Sprintf("n%d.example.test", i), []netip.Addr{netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)})}, time.Hour)
			}
			// one learn that recomputes with the n names
			if err := fc.Learn(ctx, agentapi.FQDNAnswer{Name: "warm.example.test", IPs: []netip.Addr{netip.MustParseAddr("198.18.200.1")}, TTLSeconds: 3600}); err != nil {
				b.Fatal(err)
			}
			var lat []time.Duration
			var last netip.Addr
			cpu0 := processCPU(b)
			b.ResetTimer()
			for i := range b.N {
				last = netip.AddrFrom4([4]byte{198, 18, 201 + byte(i>>8%50), byte(i)})
				start := time.Now()
				if err := fc.Learn(ctx, agentapi.FQDNAnswer{Name: fmt.Sprintf("new%d.example.test", i), IPs: []netip.Addr{last}, TTLSeconds: 3600}); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			b.ReportMetric(float64((processCPU(b)-cpu0).Microseconds())/1000/float64(b.N), "cpu-ms/op")
			// The last answer's address is in the real ipcache, with an
			// FQDN identity the endpoint's egress policy names.
			ipc, err := d.IPCache()
			if err != nil {
				b.Fatal(err)
			}
			i := slices.IndexFunc(ipc, func(e bpf.IPCacheEntry) bool { return e.Prefix == netip.PrefixFrom(last, 32) })
			if i < 0 {
				b.Fatalf("%s not in the ipcache after its answer was learnt", last)
			}
			pol, err := d.Policy()
			if err != nil {
				b.Fatal(err)
			}
			if !slices.ContainsFunc(pol, func(e bpf.PolicyMapEntry) bool {
				return e.Peer == ipc[i].Identity && e.Direction == bpf.Egress && e.Verdict == bpf.VerdictAllow
			}) {
				b.Fatalf("no egress allow for %s's identity %d in the policy map", last, ipc[i].Identity)
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[(len(lat)-1)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
}

// processCPU is the process's user+system CPU time.
func processCPU(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
