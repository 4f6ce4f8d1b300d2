package main

import (
	"strings"
	"testing"
)

// TestRelayGoalRows: every measurement with splice relay rounds gets, in
// the Goals table, the relay / direct ceiling measured in this run (the
// median of the per-round ratios), L7 / relay, and the relay's CPU next
// to the Go proxy's; the rows keep their absolute targets.
func TestRelayGoalRows(t *testing.T) {
	rr := &relayRounds{Unit: "req/s", VsDirect: &pairRounds{}, L7VsRelay: &pairRounds{}}
	// direct, L7, relay per round: relay/direct 0.60, 0.50, 0.70;
	// L7/relay 0.80, 1.00, 0.50
	rr.add(100, 48, 60, 0.030, 0.020, "1 1 1")
	rr.add(100, 50, 50, 0.040, 0.030, "1 1 1")
	rr.add(100, 35, 70, 0.050, 0.025, "1 1 1")
	r := &Results{
		KeepAlive: map[string]*wrkResult{"direct": {ReqPerSec: 100}, "l7": {ReqPerSec: 50, ProxyCPUPer1000: 0.04}},
		Relay:     map[string]*relayRounds{"keepalive": rr, "kafka": rr},
		Kafka:     map[string]*rpcResult{"direct": {MsgPerSec: 100}, "l7": {MsgPerSec: 50}},
	}
	r.computeGoals()
	find := func(prefix string) []goal {
		var out []goal
		for _, g := range r.Goals {
			if strings.HasPrefix(g.Name, prefix) {
				out = append(out, g)
			}
		}
		return out
	}
	idx := func(name string) int {
		for i, g := range r.Goals {
			if strings.HasPrefix(g.Name, name) {
				return i
			}
		}
		return -1
	}
	if g := find("HTTP/1.1 keep-alive req/s, L7 (Go proxy) / direct"); len(g) != 1 || g[0].Target != "≥ 0.66" || g[0].Measured != "0.50" {
		t.Fatalf("the issue's keep-alive row changed: %+v", g)
	}
	ceil := find("(ceiling measured in this run) HTTP/1.1 keep-alive req/s, splice relay / direct")
	if len(ceil) != 1 || ceil[0].Measured != "0.60 (0.50–0.70, 3 rounds)" || ceil[0].Met != "n/a" {
		t.Fatalf("keep-alive ceiling row: %+v", ceil)
	}
	if i, j := idx("HTTP/1.1 keep-alive req/s, L7 (Go proxy) / direct"), idx("(ceiling measured in this run) HTTP/1.1 keep-alive"); j != i+1 {
		t.Errorf("the ceiling row is not next to the issue's row (rows %d and %d)", i, j)
	}
	if g := find("(same run) HTTP/1.1 keep-alive req/s, L7 (Go proxy) / splice relay"); len(g) != 1 || g[0].Measured != "0.80 (0.50–1.00, 3 rounds)" || g[0].Met != "NO" {
		t.Fatalf("keep-alive L7 / relay row: %+v", g)
	}
	// CPU: medians relay 0.025, Go proxy 0.040
	if g := find("(ceiling measured in this run) splice relay CPU per 1000 keep-alive requests"); len(g) != 1 || !strings.HasPrefix(g[0].Measured, "0.0250 CPU-s (Go proxy in the same rounds 0.0400, 1.60×") {
		t.Fatalf("keep-alive CPU row: %+v", g)
	}
	if i, j := idx("Go proxy CPU per 1000 requests (keep-alive)"), idx("(ceiling measured in this run) splice relay CPU per 1000 keep-alive"); j != i+1 {
		t.Errorf("the relay CPU row is not next to the issue's CPU row (rows %d and %d)", i, j)
	}
	if g := find("(ceiling measured in this run) Kafka produce messages/s, splice relay / direct"); len(g) != 1 || g[0].Measured != "0.60 (0.50–0.70, 3 rounds)" {
		t.Fatalf("kafka ceiling row: %+v", g)
	}
	if g := find("(ceiling measured in this run) splice relay CPU per 1000 produce calls"); len(g) != 1 || !strings.HasPrefix(g[0].Measured, "0.0250 CPU-s (Go proxy / relay 1.60×)") {
		t.Fatalf("kafka CPU row: %+v", g)
	}
	// no relay rounds: no relay rows
	r = &Results{KeepAlive: r.KeepAlive}
	r.computeGoals()
	for _, g := range r.Goals {
		if strings.Contains(g.Name, "relay") {
			t.Errorf("relay row without relay rounds: %+v", g)
		}
	}
}

// TestMemoryGoalRows: the memory targets are in the Goals table:
// the proxy's idle RSS right after start (≤ 30 MB), with 10000 idle
// connections and 1000 rules (≤ 80 MB; fewer connections or rules is not
// the target's measurement: NO), and the agent's RSS per pod at the
// largest control plane scale (≤ 2 KB).
func TestMemoryGoalRows(t *testing.T) {
	get := func(m *rssResult, cp []*cpResult) map[string]goal {
		out := map[string]goal{}
		memoryGoals(m, cp, func(name, target, measured, met string) {
			out[strings.SplitN(name, " (", 2)[0]] = goal{name, target, measured, met}
		})
		return out
	}
	cp := []*cpResult{{LocalLookingPods: 100, ClusterPods: 1000, RSSPerPodBytes: 1500}, {LocalLookingPods: 1000, ClusterPods: 10000, RSSPerPodBytes: 3000}, {}}
	g := get(&rssResult{FreshIdleKiB: 29 << 10, IdleKiB: 40 << 10, IdleConns: 10000, ConnRules: 1000, WithConnsKiB: 70 << 10, PerConnBytes: 4000}, cp)
	for name, want := range map[string]struct{ target, met, measured string }{
		"Go proxy RSS idle, 100 HTTP rules, right after it started":                {"≤ 30 MB", "yes", "29.0 MiB (29696 KiB)"},
		"(supplementary) Go proxy RSS idle, 100 HTTP rules, after the load phases": {"≤ 30 MB", "NO", "40.0 MiB"},
		"Go proxy RSS with 10000 idle connections + 1000 HTTP rules":               {"≤ 80 MB", "yes", "70.0 MiB"},
		"agent RSS per pod": {"≤ 2 KB", "NO", "3000 B"},
	} {
		x, ok := g[name]
		if !ok || x.Target != want.target || x.Met != want.met || !strings.HasPrefix(x.Measured, want.measured) {
			t.Errorf("%s: %+v, want target %s met %s measured %s…", name, x, want.target, want.met, want.measured)
		}
	}
	if x := g["agent RSS per pod"]; !strings.Contains(x.Name, "1000 local-looking + 10000 cluster pods") {
		t.Errorf("agent RSS row is not the largest scale's: %s", x.Name)
	}
	// 8192 connections at 100 rules (the run before wave 14) is not the target's measurement
	g = get(&rssResult{IdleKiB: 60 << 10, IdleConns: 8192, WithConnsKiB: 70 << 10}, nil)
	if x := g["Go proxy RSS with 10000 idle connections + 1000 HTTP rules"]; x.Met != "NO" || !strings.Contains(x.Measured, "only 8192 connections and 0 rules") {
		t.Errorf("short run: %+v", x)
	}
	if x := g["Go proxy RSS idle, 100 HTTP rules, right after it started"]; x.Met != "n/a" {
		t.Errorf("no fresh measurement: %+v", x)
	}
	if x := g["agent RSS per pod"]; x.Met != "n/a" {
		t.Errorf("no control plane: %+v", x)
	}
}
