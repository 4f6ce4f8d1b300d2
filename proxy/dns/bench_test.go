package dnsproxy

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// latencies measures n serial queries over one UDP socket to addr.
func latencies(b *testing.B, addr netip.AddrPort, n int) []time.Duration {
	b.Helper()
	c := &mdns.Client{Timeout: 3 * time.Second}
	conn, err := c.Dial(addr.String())
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	q := new(mdns.Msg)
	q.SetQuestion("www.example.com.", mdns.TypeA)
	out := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		r, _, err := c.ExchangeWithConn(q, conn)
		if err != nil || r.Rcode != mdns.RcodeSuccess {
			b.Fatalf("query: %v %v", r, err)
		}
		out = append(out, time.Since(start))
	}
	slices.Sort(out)
	return out
}

func pct(d []time.Duration, p float64) float64 {
	return float64(d[int(float64(len(d)-1)*p)].Microseconds())
}

// BenchmarkDNSProxyLatency: serial UDP queries (dig-like: one at a time)
// straight to the server and through the proxy; reports p50/p99 of each
// and what the proxy adds. Each op is one query through the proxy.
func BenchmarkDNSProxyLatency(b *testing.B) {
	p := startProxy(&testing.T{}, nil)
	latencies(b, p.server, 200) // warm up
	latencies(b, p.addr, 200)
	direct := latencies(b, p.server, 2000)
	b.ResetTimer()
	via := latencies(b, p.addr, max(b.N, 200))
	b.StopTimer()
	b.ReportMetric(pct(direct, 0.5), "direct-p50-µs")
	b.ReportMetric(pct(direct, 0.99), "direct-p99-µs")
	b.ReportMetric(pct(via, 0.5), "proxy-p50-µs")
	b.ReportMetric(pct(via, 0.99), "proxy-p99-µs")
	b.ReportMetric(pct(via, 0.5)-pct(direct, 0.5), "added-p50-µs")
	b.ReportMetric(pct(via, 0.99)-pct(direct, 0.99), "added-p99-µs")
}

// BenchmarkDNSProxyQPS: concurrent UDP queries (GOMAXPROCS×4 clients),
// direct and through the proxy; reports queries/s.
func BenchmarkDNSProxyQPS(b *testing.B) {
	p := startProxy(&testing.T{}, nil)
	for _, tc := range []struct {
		name string
		addr netip.AddrPort
	}{{"direct", p.server}, {"proxy", p.addr}} {
		b.Run(tc.name, func(b *testing.B) {
			b.SetParallelism(4)
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				c := &mdns.Client{Timeout: 3 * time.Second}
				conn, err := c.Dial(tc.addr.String())
				if err != nil {
					b.Error(err)
					return
				}
				defer conn.Close()
				q := new(mdns.Msg)
				q.SetQuestion("www.example.com.", mdns.TypeA)
				for pb.Next() {
					if r, _, err := c.ExchangeWithConn(q, conn); err != nil || r.Rcode != mdns.RcodeSuccess {
						b.Errorf("query: %v %v", r, err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "queries/s")
		})
	}
}

// BenchmarkCacheInsert10k: inserting an answer (2 addresses) into a cache
// that holds 10k names, new names (evicting by expiry keeps it at 10k)
// and refreshes of known ones; and reading every name for policy.
func BenchmarkCacheInsert10k(b *testing.B) {
	const size = 10000
	fill := func() *Cache {
		c, _ := NewCache(CacheConfig{MaxNames: 2 * size})
		for i := range size {
			c.Insert("n"+strconv.Itoa(i)+".example.com", []netip.Addr{netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})}, time.Hour)
		}
		return c
	}
	ips := []netip.Addr{netip.MustParseAddr("198.19.0.1"), netip.MustParseAddr("198.19.0.2")}
	b.Run("refresh", func(b *testing.B) {
		c := fill()
		names := make([]string, size)
		for i := range names {
			names[i] = "n" + strconv.Itoa(i) + ".example.com."
		}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			c.Insert(names[i%size], ips, time.Hour)
			i++
		}
	})
	b.Run("new-name", func(b *testing.B) {
		c := fill()
		names := make([]string, 0, 1<<16)
		for i := range cap(names) {
			names = append(names, fmt.Sprintf("x%d.example.com.", i))
		}
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			if i%size == 0 && i > 0 {
				b.StopTimer()
				c = fill()
				b.StartTimer()
			}
			c.Insert(names[i%len(names)], ips, time.Hour)
			i++
		}
	})
	b.Run("names-for-policy", func(b *testing.B) {
		c := fill()
		b.ReportAllocs()
		for b.Loop() {
			if len(c.FQDNNames()) != size {
				b.Fatal("size")
			}
		}
	})
}

// BenchmarkDNSProxyKnownAnswer: concurrent UDP queries (GOMAXPROCS×4
// clients) for a name whose address the agent confirmed, through the
// proxy learning over the real agent API (Unix socket, POST /fqdn):
// "hold" holds every answer for the round trip (no fast path), "fast"
// releases known answers at once (refreshing once a second). Reports
// queries/s and round trips per 1000 queries.
func BenchmarkDNSProxyKnownAnswer(b *testing.B) {
	for _, tc := range []struct {
		name  string
		names int
	}{{"hold", -1}, {"fast", 0}} {
		b.Run(tc.name, func(b *testing.B) {
			s := startFast(&testing.T{}, func(c *Config) {
				c.Now, c.FastPathNames = time.Now, tc.names
			})
			defer s.agent.shutdown()
			trips0 := s.agent.trips.Load()
			b.SetParallelism(4)
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				c := &mdns.Client{Timeout: 3 * time.Second}
				conn, err := c.Dial(s.addr.String())
				if err != nil {
					b.Error(err)
					return
				}
				defer conn.Close()
				q := new(mdns.Msg)
				q.SetQuestion("www.example.com.", mdns.TypeA)
				for pb.Next() {
					if r, _, err := c.ExchangeWithConn(q, conn); err != nil || r.Rcode != mdns.RcodeSuccess {
						b.Errorf("query: %v %v", r, err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "queries/s")
			b.ReportMetric(float64(s.agent.trips.Load()-trips0)/float64(b.N)*1000, "round-trips/1000q")
		})
	}
}
