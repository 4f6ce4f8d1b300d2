package main

import (
	"bufio"
	"context"
	"fmt"
	"log"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The fixedrate phase (issue 19's method): 1000 req/s over 16 keep-alive
// connections per path, in cfg.fixedRounds interleaved rounds (order
// direct, L7, splice relay, HAProxy, reversed every other round, so L7 is
// always next to direct). Each path's run is paired with the direct run of
// its round (the adjacent one for L7); the added p50 / p99 / p99.9 of a
// path is the median of the per-round differences, with their range.

// fixedRatePaths: the paths of the phase, in round order.
func (s *scenario) fixedRatePaths() []string {
	paths := s.withRelay([]string{"direct", "l7"})
	if s.hap != nil {
		paths = append(paths, "haproxy")
	}
	return paths
}

// fixedRateRound is one path's run in one round next to the direct run it
// is paired with (no direct columns for the direct path itself).
type fixedRateRound struct {
	Round  int     `json:"round"`
	P50us  float64 `json:"p50us"`
	P99us  float64 `json:"p99us"`
	P999us float64 `json:"p999us"`
	Sent   int     `json:"sent"`
	Errors int     `json:"errors"`
	// SlowPerHalfSecond: the run's requests over its p99 by half second.
	SlowPerHalfSecond []int   `json:"slowPerHalfSecond,omitempty"`
	DirectP50us       float64 `json:"directP50us,omitempty"`
	DirectP99us       float64 `json:"directP99us,omitempty"`
	DirectP999us      float64 `json:"directP999us,omitempty"`
	// Ready*: the same without the load generator's lateness (see
	// fixedRateResult.ReadyP99us), and that lateness's p99.
	ReadyP99us        float64 `json:"readyP99us,omitempty"`
	ReadyP999us       float64 `json:"readyP999us,omitempty"`
	DirectReadyP99us  float64 `json:"directReadyP99us,omitempty"`
	DirectReadyP999us float64 `json:"directReadyP999us,omitempty"`
	ClientLateP99us   float64 `json:"clientLateP99us,omitempty"`
	// the proxy's CPU and context switches, the agent's CPU (see
	// fixedRateResult)
	ProxyCPUPer1000     float64 `json:"proxyCpuSecPer1000,omitempty"`
	ProxyCtxtPerRequest float64 `json:"proxyCtxtPerRequest,omitempty"`
	AgentCPUPer1000     float64 `json:"agentCpuSecPer1000,omitempty"`
	ProxyGCPer1000      float64 `json:"proxyGcCyclesPer1000,omitempty"`
	// Load is /proc/loadavg at the end of the round.
	Load string `json:"loadavg"`
}

// spread is the median and range of per-round values.
type spread struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

func spreadOf(v []float64) spread {
	m, lo, hi := medianRange(v)
	return spread{m, lo, hi}
}

func (sp spread) String() string {
	return fmt.Sprintf("%s (%s … %s)", us(sp.Median), us(sp.Min), us(sp.Max))
}

// fixedRateAdded: the added latency of a path over its paired direct runs.
type fixedRateAdded struct {
	P50  spread `json:"p50us"`
	P99  spread `json:"p99us"`
	P999 spread `json:"p999us"`
	// ReadyP99, ReadyP999: of the latencies without the load generator's
	// own lateness.
	ReadyP99  spread `json:"readyP99us"`
	ReadyP999 spread `json:"readyP999us"`
	N         int    `json:"rounds"`
}

// summarize fills the per-path medians, sums and (for every path but
// direct) the added latency from the rounds.
func (r *fixedRateResult) summarize() {
	var p50, p99, p999, a50, a99, a999, r99, r999, cpu, ctxt, agent, gc []float64
	r.Sent, r.Errors, r.RoundsP99 = 0, 0, nil
	for _, x := range r.Rounds {
		p50, p99, p999 = append(p50, x.P50us), append(p99, x.P99us), append(p999, x.P999us)
		r.RoundsP99 = append(r.RoundsP99, x.P99us)
		cpu, ctxt, agent = append(cpu, x.ProxyCPUPer1000), append(ctxt, x.ProxyCtxtPerRequest), append(agent, x.AgentCPUPer1000)
		gc = append(gc, x.ProxyGCPer1000)
		r.Sent += x.Sent
		r.Errors += x.Errors
		if x.DirectP99us > 0 {
			a50, a99, a999 = append(a50, x.P50us-x.DirectP50us), append(a99, x.P99us-x.DirectP99us), append(a999, x.P999us-x.DirectP999us)
			r99, r999 = append(r99, x.ReadyP99us-x.DirectReadyP99us), append(r999, x.ReadyP999us-x.DirectReadyP999us)
		}
	}
	r.P50us, _, _ = medianRange(p50)
	r.P99us, _, _ = medianRange(p99)
	r.P999us, _, _ = medianRange(p999)
	r.ProxyCPUPer1000, _, _ = medianRange(cpu)
	r.ProxyCtxtPerRequest, _, _ = medianRange(ctxt)
	r.AgentCPUPer1000, _, _ = medianRange(agent)
	r.ProxyGCPer1000, _, _ = medianRange(gc)
	if len(a99) == 0 {
		r.Added = nil
		return
	}
	r.Added = &fixedRateAdded{P50: spreadOf(a50), P99: spreadOf(a99), P999: spreadOf(a999), ReadyP99: spreadOf(r99), ReadyP999: spreadOf(r999), N: len(a99)}
	r.AddedP50, r.AddedP99, r.AddedP999 = r.Added.P50.Median, r.Added.P99.Median, r.Added.P999.Median
}

// addFixedRateRound records one round's runs (by path; direct among them)
// in res, pairing every other path's run with the round's direct run.
func addFixedRateRound(res map[string]*fixedRateResult, round int, got map[string]*fixedRateResult, load string) {
	d := got["direct"]
	for p, x := range got {
		fr := &fixedRateRound{Round: round, P50us: x.P50us, P99us: x.P99us, P999us: x.P999us, Sent: x.Sent, Errors: x.Errors, SlowPerHalfSecond: x.SlowPerHalfSecond,
			ReadyP99us: x.ReadyP99us, ReadyP999us: x.ReadyP999us, ClientLateP99us: x.ClientLateP99us,
			ProxyCPUPer1000: x.ProxyCPUPer1000, ProxyCtxtPerRequest: x.ProxyCtxtPerRequest, AgentCPUPer1000: x.AgentCPUPer1000, ProxyGCPer1000: x.ProxyGCPer1000, Load: load}
		if p != "direct" && d != nil {
			fr.DirectP50us, fr.DirectP99us, fr.DirectP999us = d.P50us, d.P99us, d.P999us
			fr.DirectReadyP99us, fr.DirectReadyP999us = d.ReadyP99us, d.ReadyP999us
		}
		if res[p] == nil {
			res[p] = &fixedRateResult{Rate: x.Rate, Conns: x.Conns}
		}
		res[p].Rounds = append(res[p].Rounds, fr)
		res[p].summarize()
	}
}

func (s *scenario) fixedRate(ctx context.Context) error {
	s.res.FixedRate = map[string]*fixedRateResult{}
	defer s.proxyRuns("a") // the Go proxy again for the phases after
	n := max(s.cfg.fixedRounds, 1)
	if s.cfg.quick {
		n = 1
	}
	admin := filepath.Join(s.n.run, "proxy-admin.sock")
	for round := range n {
		got := map[string]*fixedRateResult{}
		for _, p := range roundOrder(s.fixedRatePaths(), round) {
			if err := s.use(p); err != nil {
				return err
			}
			pid, agent := s.proxyPIDFor(p), s.n.agent.Process.Pid
			stop := phaseHook("L7GATE_BENCH_FIXEDRATE_HOOK", "FIXEDRATE_PATH", p, pid, 0,
				"ADMIN_SOCKET="+admin, "FIXEDRATE_ROUND="+strconv.Itoa(round))
			cpu0, ctxt0, agent0 := procCPU(pid), procCtxt(pid), procCPU(agent)
			gc0, gcErr := proxyGCCycles(admin, p)
			r, err := runFixedRate(ctx, s.dial, s.addr(p), "bench", benchPath, 1000, 16, s.cfg.fixedDur)
			stop()
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			if pid > 0 && r.Sent > 0 {
				r.ProxyCPUPer1000 = (procCPU(pid) - cpu0) / float64(r.Sent) * 1000
				r.ProxyCtxtPerRequest = float64(procCtxt(pid)-ctxt0) / float64(r.Sent)
			}
			if r.Sent > 0 {
				r.AgentCPUPer1000 = (procCPU(agent) - agent0) / float64(r.Sent) * 1000
			}
			if gc1, err := proxyGCCycles(admin, p); gcErr == nil && err == nil && r.Sent > 0 {
				r.ProxyGCPer1000 = (gc1 - gc0) / float64(r.Sent) * 1000
			}
			log.Printf("  1000 req/s round %d %-8s p50 %6.0fus p99 %6.0fus p99.9 %6.0fus errors %d/%d (over p99 by 0.5 s: %v; without the client's lateness p99 %.0fus p99.9 %.0fus; client lateness p50 %.0fus p99 %.0fus; cpu-s/1000 proxy %.4f agent %.4f, proxy ctxt/req %.2f, proxy GC cycles/1000 req %.2f)",
				round, p, r.P50us, r.P99us, r.P999us, r.Errors, r.Sent, r.SlowPerHalfSecond, r.ReadyP99us, r.ReadyP999us, r.ClientLateP50us, r.ClientLateP99us, r.ProxyCPUPer1000, r.AgentCPUPer1000, r.ProxyCtxtPerRequest, r.ProxyGCPer1000)
			got[p] = r
		}
		addFixedRateRound(s.res.FixedRate, round, got, loadAvg())
	}
	for _, p := range s.fixedRatePaths() {
		if a := s.res.FixedRate[p].Added; a != nil {
			log.Printf("  1000 req/s %-8s added p50 %s p99 %s p99.9 %s; without the client's lateness p99 %s p99.9 %s (median of %d rounds, range)", p, a.P50, a.P99, a.P999, a.ReadyP99, a.ReadyP999, a.N)
		}
	}
	return nil
}

// fixedRateMarkdown is section 2 for a run with rounds (Added set).
func (r *Results) fixedRateMarkdown(order []string, names map[string]string) string {
	var b strings.Builder
	var paths []string
	n := 0
	for _, p := range order {
		if x := r.FixedRate[p]; x != nil {
			paths = append(paths, p)
			n = max(n, len(x.Rounds))
		}
	}
	fmt.Fprintf(&b, "## 2. Fixed rate: 1000 req/s over 16 keep-alive connections (Go client, latency from the scheduled send time)\n\n"+
		"%d interleaved rounds (order direct, L7, splice relay, HAProxy, reversed every other round: L7 always runs next to direct). "+
		"Each path's run is paired with its round's direct run; *added* is the median of the per-round differences (range in brackets), "+
		"the other columns the medians of the path's own rounds (CPU from /proc utime+stime: less load-sensitive than the latencies; a proxy whose CPU per request is above its share of a busy CPU queues). Every round is in the JSON (`fixedRate.<path>.rounds`).\n\n", n)
	b.WriteString("| path | p50 | p99 | p99.9 | added p50 | added p99 | added p99.9 | added p99 / p99.9 without the client's lateness | proxy CPU-s / 1000 req | proxy context switches / req | Go proxy GC cycles / 1000 req | agent CPU-s / 1000 req | errors / sent |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, p := range paths {
		x := r.FixedRate[p]
		a50, a99, a999, ready := "—", "—", "—", "—"
		if a := x.Added; a != nil {
			a50, a99, a999 = a.P50.String(), a.P99.String(), a.P999.String()
			ready = a.ReadyP99.String() + " / " + a.ReadyP999.String()
		}
		cpu, ctxt, gc := "—", "—", "—"
		if x.ProxyCPUPer1000 > 0 {
			cpu, ctxt = fmt.Sprintf("%.4f", x.ProxyCPUPer1000), fmt.Sprintf("%.2f", x.ProxyCtxtPerRequest)
		}
		if p == "l7" || p == "relay" {
			gc = fmt.Sprintf("%.2f", x.ProxyGCPer1000)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %.4f | %d / %d |\n", names[p], us(x.P50us), us(x.P99us), us(x.P999us), a50, a99, a999, ready, cpu, ctxt, gc, x.AgentCPUPer1000, x.Errors, x.Sent)
	}
	b.WriteString("\n*Without the client's lateness*: the same requests timed from the actual send when the load generator had to wake up for it (from the schedule when the previous response on the connection came after it: that wait stays counted). The schedule-based columns are the issue's measure; the difference between the two is this program's own lateness in waking up to send (its p99 per run in the next table), which lands on every path alike.\n")
	b.WriteString("\nEvery round's p99 / p99.9 (µs), and the load generator's lateness p99 in the direct run:\n\n| round |")
	for _, p := range paths {
		fmt.Fprintf(&b, " %s |", shortPathNames[p])
	}
	b.WriteString(" client lateness p99 (direct run) |")
	b.WriteString(" load average |\n|---|" + strings.Repeat("---|", len(paths)) + "---|---|\n")
	for i := range n {
		fmt.Fprintf(&b, "| %d |", i+1)
		load, late := "", "—"
		for _, p := range paths {
			rs := r.FixedRate[p].Rounds
			if i >= len(rs) {
				b.WriteString(" |")
				continue
			}
			fmt.Fprintf(&b, " %.0f / %.0f |", rs[i].P99us, rs[i].P999us)
			load = rs[i].Load
			if p == "direct" && rs[i].ClientLateP99us > 0 {
				late = us(rs[i].ClientLateP99us)
			}
		}
		fmt.Fprintf(&b, " %s | %s |\n", late, load)
	}
	if rl := r.FixedRate["relay"]; rl != nil && rl.Added != nil {
		b.WriteString("\nThe splice relay row is what the extra hop alone adds at this rate on this machine (the Go proxy's accept, upstream dial and io.Copy both ways, no parsing): the Go proxy's added latency beyond it is the proxy's own.\n")
	}
	b.WriteString("\nOn this shared 2-CPU machine the p99 of even the direct path moves by milliseconds between rounds: a single round's difference can come out negative; the median over the rounds and its range say how far that noise goes. A run's p99 is often one stall of the machine: the requests over each run's p99 by half second of the run are in the JSON (`slowPerHalfSecond`).\n\n")
	return b.String()
}

// proxyGCCycles reads the Go proxy's (or the relay build's) completed GC
// cycles from its admin socket (go_gc_duration_seconds_count); an error
// for the paths without one.
func proxyGCCycles(sock, path string) (float64, error) {
	if path != "l7" && path != "relay" {
		return 0, fmt.Errorf("no Go proxy on path %s", path)
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	resp, err := hc.Get("http://proxy/stats/prometheus")
	if err != nil {
		return 0, fmt.Errorf("proxy metrics: %w", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_gc_duration_seconds_count "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	return 0, fmt.Errorf("proxy metrics: no go_gc_duration_seconds_count")
}

// shortPathNames name the paths in table headers.
var shortPathNames = map[string]string{"direct": "direct", "l4": "L3/L4", "l7": "L7 Go proxy", "relay": "splice relay", "haproxy": "HAProxy"}

// fixedRateGoals adds the added-p99 row (the median over the
// rounds when there are rounds) and, after it, the splice relay's in this
// run (the hop alone).
func (r *Results) fixedRateGoals(add func(name, target, measured, met string), na func(name, target string)) {
	l, d := r.FixedRate["l7"], r.FixedRate["direct"]
	if l == nil || d == nil {
		na("added p99 over direct at 1000 req/s (L7)", "≤ 0.3 ms")
		return
	}
	if l.Added == nil {
		add("added p99 over direct at 1000 req/s (L7)", "≤ 0.3 ms", fmt.Sprintf("%.3f ms", l.AddedP99/1e3), yesNo(l.AddedP99 <= 300))
		return
	}
	a := l.Added.P99
	add("added p99 over direct at 1000 req/s (L7), median of the rounds' L7 − adjacent direct", "≤ 0.3 ms",
		fmt.Sprintf("%.3f ms (%.3f … %.3f, %d rounds; without the load generator's own lateness %.3f ms)", a.Median/1e3, a.Min/1e3, a.Max/1e3, l.Added.N, l.Added.ReadyP99.Median/1e3), yesNo(a.Median <= 300))
	if rl := r.FixedRate["relay"]; rl != nil && rl.Added != nil {
		x := rl.Added.P99
		add("(ceiling measured in this run) added p99 at 1000 req/s, splice relay − direct (the hop alone)", "—",
			fmt.Sprintf("%.3f ms (%.3f … %.3f, %d rounds)", x.Median/1e3, x.Min/1e3, x.Max/1e3, rl.Added.N), "n/a")
	}
}
