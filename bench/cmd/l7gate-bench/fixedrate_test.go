package main

import (
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
)

// TestFixedRateRoundsPaired: the fixedrate phase's added latency is the
// median (and range) of the per-round differences between a path's run
// and its round's direct run, not the difference of the best rounds; the
// Goals row takes that median, the splice relay's row follows it, and
// every round is kept.
func TestFixedRateRoundsPaired(t *testing.T) {
	res := map[string]*fixedRateResult{}
	run := func(p50, p99, p999 float64) *fixedRateResult {
		// without the client's lateness: half the p99 and p99.9
		return &fixedRateResult{Rate: 1000, Conns: 16, Sent: 4000, P50us: p50, P99us: p99, P999us: p999, ReadyP99us: p99 / 2, ReadyP999us: p999 / 2, ClientLateP99us: 700, ProxyCPUPer1000: p50 / 1e4}
	}
	// (direct p99, L7 p99, relay p99) per round: L7 − direct 400, 100,
	// 2000, 200, 300 → median 300; the best rounds' difference would be
	// 500 − 1500 < 0
	rounds := [][3]float64{{1000, 1400, 1100}, {1500, 1600, 1500}, {3000, 5000, 3200}, {1200, 1400, 1300}, {2000, 2300, 2100}}
	for i, r := range rounds {
		addFixedRateRound(res, i, map[string]*fixedRateResult{
			"direct": run(700, r[0], 2*r[0]),
			"l7":     run(760, r[1], 2*r[1]+100),
			"relay":  run(720, r[2], 2*r[2]),
		}, "1.00 1.00 1.00")
	}
	l := res["l7"]
	if l.Added == nil || l.Added.N != 5 || l.Added.P99 != (spread{300, 100, 2000}) || l.AddedP99 != 300 {
		t.Fatalf("L7 added p99: %+v", l.Added)
	}
	if l.Added.P50 != (spread{60, 60, 60}) || l.Added.P999.Median != 700 {
		t.Errorf("L7 added p50 / p99.9: %+v", l.Added)
	}
	if l.Added.ReadyP99 != (spread{150, 50, 1000}) || l.Added.ReadyP999.Median != 350 {
		t.Errorf("L7 added without the client's lateness: %+v", l.Added)
	}
	if len(l.Rounds) != 5 || l.Rounds[2].DirectP99us != 3000 || l.Rounds[2].P99us != 5000 || l.Sent != 20000 || len(l.RoundsP99) != 5 {
		t.Errorf("L7 rounds not kept: %+v", l.Rounds)
	}
	if l.ProxyCPUPer1000 != 0.076 {
		t.Errorf("L7 proxy CPU per 1000 = %v, want the median of its rounds 0.076", l.ProxyCPUPer1000)
	}
	if l.P99us != 1600 {
		t.Errorf("L7 p99 = %v, want the median of its rounds 1600", l.P99us)
	}
	if d := res["direct"]; d.Added != nil || d.Rounds[0].DirectP99us != 0 {
		t.Errorf("direct paired with itself: %+v", d.Added)
	}
	if a := res["relay"].Added; a == nil || a.P99.Median != 100 {
		t.Fatalf("relay added p99: %+v", a)
	}

	r := &Results{FixedRate: res}
	r.computeGoals()
	var rows []goal
	for _, g := range r.Goals {
		if strings.Contains(g.Name, "at 1000 req/s") {
			rows = append(rows, g)
		}
	}
	if len(rows) != 2 {
		t.Fatalf("fixed-rate goal rows: %+v", rows)
	}
	if g := rows[0]; !strings.HasPrefix(g.Name, "added p99 over direct at 1000 req/s (L7)") || g.Target != "≤ 0.3 ms" || g.Met != "yes" || !strings.HasPrefix(g.Measured, "0.300 ms (0.100 … 2.000, 5 rounds; without the load generator's own lateness 0.150 ms)") {
		t.Errorf("issue row: %+v", g)
	}
	if g := rows[1]; !strings.Contains(g.Name, "splice relay") || g.Met != "n/a" || !strings.HasPrefix(g.Measured, "0.100 ms") {
		t.Errorf("relay row: %+v", g)
	}
	md := r.fixedRateMarkdown([]string{"direct", "l4", "l7", "relay", "haproxy"}, pathNames)
	for _, want := range []string{"5 interleaved rounds", "| 3 | 3000 / 6000 | 5000 / 10100 | 3200 / 6400 | 700 µs | 1.00 1.00 1.00 |", "150 µs (50 µs … 1.00 ms) / 350 µs", "300 µs (100 µs … 2.00 ms)"} {
		if !strings.Contains(md, want) {
			t.Errorf("section 2 lacks %q:\n%s", want, md)
		}
	}
}

// TestProxyGCCycles: the fixedrate phase counts the Go proxy's GC cycles
// from its admin socket's go_gc_duration_seconds_count, and has none for
// the paths without a Go proxy.
func TestProxyGCCycles(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "proxy-admin.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/stats/prometheus" {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, "# TYPE go_gc_duration_seconds summary\ngo_gc_duration_seconds_sum 0.003\ngo_gc_duration_seconds_count 7\ngo_goroutines 24\n")
	})}
	go srv.Serve(ln)
	defer srv.Close()
	if n, err := proxyGCCycles(sock, "l7"); err != nil || n != 7 {
		t.Fatalf("l7: %v, %v; want 7", n, err)
	}
	if _, err := proxyGCCycles(sock, "haproxy"); err == nil {
		t.Error("haproxy: GC cycles of a path without a Go proxy")
	}
}
