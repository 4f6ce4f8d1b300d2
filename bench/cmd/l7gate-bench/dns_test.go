package main

import (
	"net/netip"
	"strings"
	"testing"
)

// TestDNSEntryStats: answer → entry is each new name's latency minus the
// cached name's median, reported at nearest-rank p50/p99.
func TestDNSEntryStats(t *testing.T) {
	var newUs []float64
	for i := 1; i <= 100; i++ {
		newUs = append(newUs, float64(1000+i*10)) // 1010 … 2000
	}
	cached := []float64{300, 100, 200, 900} // median (200+300)/2 = 250
	st := entryStats(newUs, cached)
	if st.CachedP50us != 250 {
		t.Fatalf("cached median %v, want 250", st.CachedP50us)
	}
	if st.NewP50us != 1500 || st.NewP99us != 1990 {
		t.Fatalf("new p50/p99 %v/%v, want 1500/1990", st.NewP50us, st.NewP99us)
	}
	if st.EntryP50us != 1250 || st.EntryP99us != 1740 {
		t.Fatalf("entry p50/p99 %v/%v, want 1250/1740", st.EntryP50us, st.EntryP99us)
	}
	if st.CachedP99us != 900 {
		t.Fatalf("cached p99 %v, want 900", st.CachedP99us)
	}
}

// TestDNSGoals: the 10k-name goal is ≤ 5 ms p99, invalid (NO) after a hold
// timeout, n/a when the time budget stopped pre-learning short of 10k.
func TestDNSGoals(t *testing.T) {
	row := func(cached int, p99 float64) *dnsEntryRow {
		return &dnsEntryRow{TargetNames: 10000, CachedNames: cached, NewUs: []float64{1}, dnsEntryStats: dnsEntryStats{EntryP99us: p99}}
	}
	for _, tc := range []struct {
		name string
		d    *dnsResult
		met  string
		says string
	}{
		{"met", &dnsResult{Entry: []*dnsEntryRow{row(10000, 4999)}}, "yes", "5.00 ms"},
		{"missed", &dnsResult{Entry: []*dnsEntryRow{row(10300, 5001)}}, "NO", "5.00 ms"},
		{"hold timeout", &dnsResult{Entry: []*dnsEntryRow{row(10000, 100)}, Invalid: "1 answers were released after the hold timeout"}, "NO", "invalid"},
		{"short of 10k", &dnsResult{Entry: []*dnsEntryRow{row(6000, 100)}}, "n/a", "only 6000"},
		{"not run", nil, "n/a", "not measured"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []goal
			dnsGoals(tc.d, func(name, target, measured, met string) { got = append(got, goal{name, target, measured, met}) })
			var g *goal
			for i := range got {
				if strings.Contains(got[i].Name, "10k cached names") {
					g = &got[i]
				}
			}
			if g == nil || g.Met != tc.met || !strings.Contains(g.Measured, tc.says) || g.Target != "≤ 5 ms" {
				t.Fatalf("goals %+v, want the 10k row met=%s saying %q", got, tc.met, tc.says)
			}
		})
	}
}

// TestDNSAnswerAddr: names with an index get distinct addresses in
// 198.19.128.0/17; others hash into it.
func TestDNSAnswerAddr(t *testing.T) {
	pfx := netip.MustParsePrefix("198.19.128.0/17")
	seen := map[netip.Addr]string{}
	for _, n := range []string{"c0.bench.test.", "p1.bench.test.", "n2.bench.test.", "p32767.bench.test.", "other.bench.test.", "p32768.bench.test."} {
		a := dnsAnswerAddr(n)
		if !pfx.Contains(a) {
			t.Fatalf("%s → %s, outside %s", n, a, pfx)
		}
		if n[0] != 'o' && n != "p32768.bench.test." {
			if prev, dup := seen[a]; dup {
				t.Fatalf("%s and %s both → %s", prev, n, a)
			}
			seen[a] = n
		}
	}
	if got := dnsAnswerAddr("p1.bench.test."); got != netip.MustParseAddr("198.19.128.1") {
		t.Fatalf("p1 → %s, want 198.19.128.1", got)
	}
}

// TestDNSMarkdownTCP: the TCP rounds get their own table and goal rows.
func TestDNSMarkdownTCP(t *testing.T) {
	d := &dnsResult{Workers: 4, RoundsTCP: &pairRounds{},
		DirectTCP: []*dnsRun{{PerSec: 20000, P50us: 150, P99us: 400, Load: "1.00 1.00 1.00"}},
		ProxyTCP:  []*dnsRun{{PerSec: 5000, P50us: 700, P99us: 1500, Load: "1.00 1.00 1.00"}}}
	d.RoundsTCP.add(20000, 5000, "1.00 1.00 1.00")
	d.AddedTCPP50us, d.AddedTCPP99us = []float64{550}, []float64{1100}
	d.MedianAddedTCPP50, d.MedianAddedTCPP99 = 550, 1100
	md := dnsMarkdown(d)
	if !strings.Contains(md, "**Cached name over TCP**") || !strings.Contains(md, "| 1 | 20000 | 5000 | 0.25 |") || !strings.Contains(md, "Median q/s ratio over TCP **0.25**") {
		t.Fatalf("markdown lacks the TCP rounds:\n%s", md)
	}
	var rows []string
	dnsGoals(d, func(name, target, measured, met string) {
		if strings.Contains(name, "over TCP") {
			rows = append(rows, measured)
		}
	})
	if len(rows) != 2 || !strings.HasPrefix(rows[0], "0.25 ") || rows[1] != "0.550 ms / 1.100 ms" {
		t.Fatalf("TCP goal rows %q", rows)
	}
}
