package dnsproxy

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/l7gate/l7gate/flow"
)

// FuzzHandle runs the proxy's whole query path on arbitrary query bytes
// and an arbitrary upstream answer: never a panic; an answer is either the
// upstream's bytes (allowed, and then they parse as the query's response)
// or a packed denial/FORMERR/SERVFAIL; addresses are cached only for
// names the toFQDNs selectors match.
func FuzzHandle(f *testing.F) {
	q := new(mdns.Msg)
	q.SetQuestion("www.example.com.", mdns.TypeA)
	qb, _ := q.Pack()
	r := new(mdns.Msg)
	r.SetReply(q)
	a, _ := mdns.NewRR("www.example.com. 30 IN A 198.18.2.1")
	r.Answer = append(r.Answer, a)
	rb, _ := r.Pack()
	f.Add(qb, rb)
	f.Add(qb, []byte{0xC0, 0x0C})
	f.Add([]byte{0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xC0, 0x0C, 0, 1, 0, 1}, rb)
	server := netip.MustParseAddrPort(serverAddr + ":53")
	snap, sels := policyFor(f, 53)
	f.Fuzz(func(t *testing.T, query, answer []byte) {
		pol, err := NewSnapshotPolicy(snap)
		if err != nil {
			t.Fatal(err)
		}
		cache, _ := NewCache(CacheConfig{})
		var rec flow.Record
		p, err := New(Config{Policy: pol, OriginalDst: FixedDst(server), Cache: cache, AccessLog: func(r *flow.Record) { rec = *r }})
		if err != nil {
			t.Fatal(err)
		}
		p.SetFQDNSelectors(sels)
		ex := func(context.Context, *net.Dialer, netip.AddrPort, []byte, uint16) ([]byte, error) { return answer, nil }
		out := p.handle(context.Background(), 17, netip.MustParseAddrPort("127.0.0.1:5353"), server, query, ex)
		if out == nil {
			return
		}
		m := new(mdns.Msg)
		if err := m.Unpack(out); err != nil {
			t.Fatalf("answer does not parse: %v", err)
		}
		if rec.Verdict == flow.VerdictAllowed && m.Rcode == mdns.RcodeSuccess && len(rec.DNSIPs) > 0 {
			for _, n := range cache.FQDNNames() {
				if p.selectors.Load().Match(n.Name) < 0 {
					t.Fatalf("cached %q, which no selector matches", n.Name)
				}
			}
		}
	})
}

// FuzzHandleFastPath runs the query path twice on the same arbitrary
// query and upstream answer with a Learn that always succeeds: never a
// panic, and an answer released without Learn (the fast path) only ever
// carries addresses Learn was told for that name before.
func FuzzHandleFastPath(f *testing.F) {
	q := new(mdns.Msg)
	q.SetQuestion("www.example.com.", mdns.TypeA)
	qb, _ := q.Pack()
	r := new(mdns.Msg)
	r.SetReply(q)
	for _, s := range []string{"www.example.com. 30 IN A 198.18.2.1", "www.example.com. 0 IN A 198.18.2.2"} {
		a, _ := mdns.NewRR(s)
		r.Answer = append(r.Answer, a)
	}
	rb, _ := r.Pack()
	f.Add(qb, rb)
	f.Add(qb, []byte{0xC0, 0x0C})
	server := netip.MustParseAddrPort(serverAddr + ":53")
	snap, sels := policyFor(f, 53)
	f.Fuzz(func(t *testing.T, query, answer []byte) {
		pol, err := NewSnapshotPolicy(snap)
		if err != nil {
			t.Fatal(err)
		}
		learned := map[string][]netip.Addr{}
		var mu sync.Mutex
		var rec flow.Record
		p, err := New(Config{Policy: pol, OriginalDst: FixedDst(server), AccessLog: func(r *flow.Record) { rec = *r },
			Learn: func(_ context.Context, name string, ips []netip.Addr, _ time.Duration) error {
				mu.Lock()
				learned[name] = append(learned[name], ips...)
				mu.Unlock()
				return nil
			}})
		if err != nil {
			t.Fatal(err)
		}
		p.SetFQDNSelectors(sels)
		ex := func(context.Context, *net.Dialer, netip.AddrPort, []byte, uint16) ([]byte, error) { return answer, nil }
		for range 2 {
			known := p.Stats().Known
			p.handle(context.Background(), 17, netip.MustParseAddrPort("127.0.0.1:5353"), server, query, ex)
			if p.Stats().Known == known {
				continue
			}
			mu.Lock()
			for _, ip := range rec.DNSIPs {
				if !slices.Contains(learned[rec.DNSQuery], ip) {
					t.Fatalf("%s released at once with %s, never learned for it (learned %v)", rec.DNSQuery, ip, learned)
				}
			}
			mu.Unlock()
		}
	})
}
