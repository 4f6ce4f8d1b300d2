package main

import (
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/png"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// Results is everything one `make bench` run measured.
type Results struct {
	Date         string                `json:"date"`
	GoVersion    string                `json:"goVersion"`
	Kernel       string                `json:"kernel"`
	CPUs         int                   `json:"cpus"`
	Pinning      string                `json:"pinning"`
	Durations    string                `json:"durations"`
	TotalSeconds float64               `json:"totalSeconds"`
	KeepAlive    map[string]*wrkResult `json:"keepAlive,omitempty"`
	// KeepAliveIPv6: keep-alive through the Go proxy over IPv4 and IPv6 in
	// interleaved rounds (issue 21).
	KeepAliveIPv6 *familyRounds `json:"keepAliveIPv6,omitempty"`
	// KeepAliveIPv6Direct: the same for the direct path (the control).
	KeepAliveIPv6Direct *familyRounds               `json:"keepAliveIPv6Direct,omitempty"`
	FixedRate           map[string]*fixedRateResult `json:"fixedRate,omitempty"`
	NewConns            map[string]*wrkResult       `json:"newConnections,omitempty"`
	H2                  map[string]*h2loadResult    `json:"http2,omitempty"`
	GRPC                map[string]*rpcResult       `json:"grpc,omitempty"`
	H2Rounds            *pairRounds                 `json:"http2Rounds,omitempty"`
	GRPCRounds          *pairRounds                 `json:"grpcRounds,omitempty"`
	AgentArgs           []string                    `json:"agentArgs,omitempty"`
	Datapath            []dpRow                     `json:"datapath,omitempty"`
	DatapathIPv6        []dp6Row                    `json:"datapathIPv6,omitempty"`
	Iptables            []iptRow                    `json:"iptables,omitempty"`
	ControlPlane        []*cpResult                 `json:"controlPlane,omitempty"`
	Kafka               map[string]*rpcResult       `json:"kafka,omitempty"`
	KafkaRounds         *pairRounds                 `json:"kafkaRounds,omitempty"`
	// KafkaRoundsB: direct against the -kafka-bin-b binary's proxy (path
	// l7b), in the same rounds as KafkaRounds.
	KafkaRoundsB *pairRounds `json:"kafkaRoundsB,omitempty"`
	// NewConnRounds: the newconn phase's interleaved rounds, L7 / direct;
	// NewConnHAProxyRounds: the same rounds, L7 / HAProxy (its "direct"
	// column is HAProxy's conn/s).
	NewConnRounds        *pairRounds            `json:"newConnectionRounds,omitempty"`
	NewConnHAProxyRounds *pairRounds            `json:"newConnectionHAProxyRounds,omitempty"`
	AccessLogOff         map[string]*wrkResult  `json:"keepAliveAccessLogOff,omitempty"`
	ProxyRSS             *rssResult             `json:"proxyRss,omitempty"`
	OTLP                 map[string]*otlpResult `json:"keepAliveOTLP,omitempty"`
	// DNS: the DNS proxy phase (issue 16), see dns.go.
	DNS *dnsResult `json:"dns,omitempty"`
	// Relay: the splice relay (path relay, -relay) by measurement
	// (keepalive, newconn, h2, grpc, kafka), in the same rounds as direct
	// and L7.
	Relay map[string]*relayRounds `json:"relay,omitempty"`
	// HAProxyMode: "redirect" (HAProxy on the datapath's redirect path,
	// its listener in the socket map) or "reverse" (a reverse proxy on the
	// node's address; before wave 14 always, then the field was empty).
	HAProxyMode string   `json:"haproxyMode,omitempty"`
	Goals       []goal   `json:"goals"`
	Missing     []string `json:"missing,omitempty"`
	Errors      []string `json:"errors,omitempty"`
	Logs        string   `json:"logs,omitempty"`
}

type goal struct {
	Name     string `json:"name"`
	Target   string `json:"target"`
	Measured string `json:"measured"`
	Met      string `json:"met"` // "yes", "NO", "n/a"
}

// pairRounds keeps every interleaved round of a direct vs L7 measurement:
// each round measures both paths back to back (order reversed every other
// round), and the ratio is taken within the round, so the machine's drift
// between rounds cancels out.
type pairRounds struct {
	Direct []float64 `json:"direct"`
	L7     []float64 `json:"l7"`
	Ratios []float64 `json:"ratios"`
	// Load is /proc/loadavg (1, 5, 15 min) at the end of each round.
	Load   []string `json:"loadavg"`
	Median float64  `json:"medianRatio"`
	Min    float64  `json:"minRatio"`
	Max    float64  `json:"maxRatio"`
}

func (pr *pairRounds) add(direct, l7 float64, load string) {
	pr.Direct = append(pr.Direct, direct)
	pr.L7 = append(pr.L7, l7)
	pr.Ratios = append(pr.Ratios, ratio(l7, direct))
	pr.Load = append(pr.Load, load)
	sorted := slices.Clone(pr.Ratios)
	slices.Sort(sorted)
	pr.Min, pr.Max = sorted[0], sorted[len(sorted)-1]
	if n := len(sorted); n%2 == 1 {
		pr.Median = sorted[n/2]
	} else {
		pr.Median = (sorted[n/2-1] + sorted[n/2]) / 2
	}
}

func (pr *pairRounds) markdown(unit string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "| round | direct %s | L7 %s | L7 / direct | load average |\n|---|---|---|---|---|\n", unit, unit)
	for i := range pr.Ratios {
		fmt.Fprintf(&b, "| %d | %.0f | %.0f | %.2f | %s |\n", i+1, pr.Direct[i], pr.L7[i], pr.Ratios[i], pr.Load[i])
	}
	fmt.Fprintf(&b, "\nMedian ratio **%.2f** (range %.2f–%.2f, %d rounds).\n\n", pr.Median, pr.Min, pr.Max, len(pr.Ratios))
	return b.String()
}

// relayRounds: the splice relay (a -tags l7gate_benchrelay build of the
// proxy: the Go proxy's accept and upstream dial, then io.Copy both ways,
// no policy) in one measurement's interleaved rounds next to direct and
// the Go proxy (L7).
type relayRounds struct {
	Unit string `json:"unit"`
	// VsDirect: relay / direct per round (its "l7" column is the relay).
	VsDirect *pairRounds `json:"relayVsDirect"`
	// L7VsRelay: L7 / relay per round (its "direct" column is the relay).
	L7VsRelay *pairRounds `json:"l7VsRelay"`
	// CPU-s per 1000 requests (connections, calls, produces) per round.
	RelayCPUPer1000 []float64 `json:"relayCpuSecPer1000"`
	L7CPUPer1000    []float64 `json:"l7CpuSecPer1000"`
}

func (rr *relayRounds) add(direct, l7, relay, l7CPU, relayCPU float64, load string) {
	rr.VsDirect.add(direct, relay, load)
	rr.L7VsRelay.add(relay, l7, load)
	rr.RelayCPUPer1000 = append(rr.RelayCPUPer1000, relayCPU)
	rr.L7CPUPer1000 = append(rr.L7CPUPer1000, l7CPU)
}

// cpu returns the medians of the relay's and the Go proxy's CPU per 1000.
func (rr *relayRounds) cpu() (relay, l7 float64) {
	relay, _, _ = medianRange(rr.RelayCPUPer1000)
	l7, _, _ = medianRange(rr.L7CPUPer1000)
	return relay, l7
}

// relayRatioRow is the Goals row of a same-run relay ratio: the median of
// the rounds' ratios and their range; the target column says what the
// issue derived from such a ceiling (the row itself is not a goal).
func relayRatioRow(name, issueTarget string, pr *pairRounds) goal {
	return goal{Name: name, Target: issueTarget, Measured: fmt.Sprintf("%.2f (%.2f–%.2f, %d rounds)", pr.Median, pr.Min, pr.Max, len(pr.Ratios)), Met: "n/a"}
}

// relayGoals adds the same-run splice relay rows of one measurement after
// its issue-19 rows: relay / direct (the ceiling measured in this run),
// L7 / relay, and the relay's CPU next to the Go proxy's.
func relayGoals(rr *relayRounds, what, unit, ceilingTarget string, add func(name, target, measured, met string)) {
	if rr == nil || rr.VsDirect == nil || len(rr.VsDirect.Ratios) == 0 {
		return
	}
	g := relayRatioRow("(ceiling measured in this run) "+what+", splice relay / direct, median of interleaved rounds", ceilingTarget, rr.VsDirect)
	add(g.Name, g.Target, g.Measured, g.Met)
	g = relayRatioRow("(same run) "+what+", L7 (Go proxy) / splice relay, median of interleaved rounds", "report", rr.L7VsRelay)
	add(g.Name, g.Target, g.Measured, g.Met)
	relay, l7 := rr.cpu()
	add("(ceiling measured in this run) splice relay CPU per 1000 "+unit+" ("+what+"), median of rounds", "report (Go proxy: "+fmt.Sprintf("%.4f CPU-s", l7)+")",
		fmt.Sprintf("%.4f CPU-s (Go proxy / relay %.2f×)", relay, ratio(l7, relay)), "n/a")
}

// relayMarkdown: section 12, every round of the splice relay next to
// direct and the Go proxy.
func relayMarkdown(rel map[string]*relayRounds) string {
	var b strings.Builder
	b.WriteString("## 12. The splice relay: the ceiling of a byte-copying proxy on the same redirect path, in the same rounds\n\n" +
		"The relay is cmd/l7gate built with `-tags l7gate_benchrelay` (proxy/benchrelay.go): the agent hands its proxy over to it for the relay's runs and back (the same hand-over as on an upgrade). It accepts the redirected connection exactly as the Go proxy does (the same listeners in the datapath's socket map, the same steering check and limits), dials upstream as the Go proxy does (the client's source address, the from-proxy mark), then only copies bytes both ways with io.Copy (splice(2)): no parsing, no policy, no access records. The policy in force is the L7 one, so the datapath redirects to it as to the Go proxy. A default build contains none of it (TestBenchRelayNotInDefaultBuild).\n\n")
	for _, k := range []struct{ key, title string }{{"keepalive", "HTTP/1.1 keep-alive (section 1)"}, {"newconn", "new connections (section 3)"}, {"h2", "HTTP/2 h2load (section 4)"}, {"grpc", "gRPC unary (section 4)"}, {"kafka", "Kafka produce (section 7)"}} {
		rr := rel[k.key]
		if rr == nil || len(rr.VsDirect.Ratios) == 0 {
			continue
		}
		fmt.Fprintf(&b, "### %s\n\n| round | direct %s | relay %s | Go proxy (L7) %s | relay / direct | L7 / relay | relay CPU-s / 1000 | Go proxy CPU-s / 1000 | load average |\n|---|---|---|---|---|---|---|---|---|\n", k.title, rr.Unit, rr.Unit, rr.Unit)
		for i := range rr.VsDirect.Ratios {
			fmt.Fprintf(&b, "| %d | %.0f | %.0f | %.0f | %.2f | %.2f | %.4f | %.4f | %s |\n", i+1, rr.VsDirect.Direct[i], rr.VsDirect.L7[i], rr.L7VsRelay.L7[i], rr.VsDirect.Ratios[i], rr.L7VsRelay.Ratios[i], rr.RelayCPUPer1000[i], rr.L7CPUPer1000[i], rr.VsDirect.Load[i])
		}
		relay, l7 := rr.cpu()
		fmt.Fprintf(&b, "\nRelay / direct: median **%.2f** (%.2f–%.2f); L7 / relay: median **%.2f** (%.2f–%.2f); CPU-s per 1000: relay %.4f, Go proxy %.4f (medians, %d rounds).\n\n",
			rr.VsDirect.Median, rr.VsDirect.Min, rr.VsDirect.Max, rr.L7VsRelay.Median, rr.L7VsRelay.Min, rr.L7VsRelay.Max, relay, l7, len(rr.VsDirect.Ratios))
	}
	return b.String()
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

func yesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "NO"
}

func (r *Results) computeGoals() {
	add := func(name, target, measured, met string) {
		r.Goals = append(r.Goals, goal{name, target, measured, met})
	}
	na := func(name, target string) { add(name, target, "not measured", "n/a") }
	if d, l := r.KeepAlive["direct"], r.KeepAlive["l7"]; d != nil && l != nil {
		x := ratio(l.ReqPerSec, d.ReqPerSec)
		add("HTTP/1.1 keep-alive req/s, L7 (Go proxy) / direct", "≥ 0.66", fmt.Sprintf("%.2f", x), yesNo(x >= 0.66))
		if rr := r.Relay["keepalive"]; rr != nil && len(rr.VsDirect.Ratios) > 0 {
			g := relayRatioRow("(ceiling measured in this run) HTTP/1.1 keep-alive req/s, splice relay / direct, median of interleaved rounds", "— (the issue's ≥ 0.66 is this ceiling as measured before)", rr.VsDirect)
			add(g.Name, g.Target, g.Measured, g.Met)
			g = relayRatioRow("(same run) HTTP/1.1 keep-alive req/s, L7 (Go proxy) / splice relay, median of interleaved rounds", "≥ 1.0 would mean at the ceiling", rr.L7VsRelay)
			add(g.Name, g.Target, g.Measured, yesNo(rr.L7VsRelay.Median >= 1.0))
		}
	} else {
		na("HTTP/1.1 keep-alive req/s, L7 (Go proxy) / direct", "≥ 0.66")
	}
	if h, l := r.KeepAlive["haproxy"], r.KeepAlive["l7"]; h != nil && l != nil {
		x := ratio(l.ReqPerSec, h.ReqPerSec)
		add("HTTP/1.1 keep-alive req/s, L7 (Go proxy) / HAProxy ("+r.haproxyWhere()+")", "≥ 1.0", fmt.Sprintf("%.2f", x), yesNo(x >= 1.0))
	} else {
		na("HTTP/1.1 keep-alive req/s, L7 (Go proxy) / HAProxy", "≥ 1.0")
	}
	if d, l := r.AccessLogOff["direct"], r.AccessLogOff["l7"]; d != nil && l != nil {
		x := ratio(l.ReqPerSec, d.ReqPerSec)
		add("(supplementary) keep-alive req/s, L7 with access log off / direct (section 9)", "≥ 0.66", fmt.Sprintf("%.2f", x), yesNo(x >= 0.66))
		if h := r.KeepAlive["haproxy"]; h != nil {
			x := ratio(l.ReqPerSec, h.ReqPerSec)
			add("(supplementary) keep-alive req/s, L7 with access log off / HAProxy", "≥ 1.0", fmt.Sprintf("%.2f", x), yesNo(x >= 1.0))
		}
	}
	r.goalsIPv6(add)
	r.fixedRateGoals(add, na)
	if l := r.KeepAlive["l7"]; l != nil {
		add("Go proxy CPU per 1000 requests (keep-alive)", "≤ 0.016 CPU-s", fmt.Sprintf("%.4f CPU-s", l.ProxyCPUPer1000), yesNo(l.ProxyCPUPer1000 <= 0.016))
		if rr := r.Relay["keepalive"]; rr != nil && len(rr.RelayCPUPer1000) > 0 {
			relay, l7 := rr.cpu()
			add("(ceiling measured in this run) splice relay CPU per 1000 keep-alive requests, median of rounds", "— (the issue's ≤ 0.016 is this cost as measured before)",
				fmt.Sprintf("%.4f CPU-s (Go proxy in the same rounds %.4f, %.2f× the relay)", relay, l7, ratio(l7, relay)), "n/a")
		}
	} else {
		na("Go proxy CPU per 1000 requests (keep-alive)", "≤ 0.016 CPU-s")
	}
	if d, l := r.NewConns["direct"], r.NewConns["l7"]; d != nil && l != nil {
		// the median of the rounds' ratios (older reports: the best runs')
		x := ratio(l.ReqPerSec, d.ReqPerSec)
		if nr := r.NewConnRounds; nr != nil && len(nr.Ratios) > 0 {
			x = nr.Median
		}
		add("new connections/s, L7 / direct", "≥ 0.60", fmt.Sprintf("%.2f", x), yesNo(x >= 0.60))
		if h := r.NewConns["haproxy"]; h != nil {
			x := ratio(l.ReqPerSec, h.ReqPerSec)
			if hr := r.NewConnHAProxyRounds; hr != nil && len(hr.Ratios) > 0 {
				x = hr.Median
			}
			add("new connections/s, L7 / HAProxy ("+r.haproxyWhere()+")", "≥ 1.1", fmt.Sprintf("%.2f", x), yesNo(x >= 1.1))
		}
		relayGoals(r.Relay["newconn"], "new connections/s", "connections", "report", add)
	} else {
		na("new connections/s, L7 / direct", "≥ 0.60")
	}
	// HTTP/2 and gRPC (issue 19): the median of the interleaved rounds' ratios.
	for _, g := range []struct {
		name              string
		pr                *pairRounds
		relay, what, unit string
	}{{"HTTP/2 (h2load) req/s, L7 / direct, median of interleaved rounds", r.H2Rounds, "h2", "HTTP/2 (h2load) req/s", "requests"}, {"gRPC unary calls/s, L7 / direct, median of interleaved rounds", r.GRPCRounds, "grpc", "gRPC unary calls/s", "calls"}} {
		if g.pr == nil || len(g.pr.Ratios) == 0 {
			na(g.name, "≥ 0.60")
			continue
		}
		add(g.name, "≥ 0.60", fmt.Sprintf("%.2f (%.2f–%.2f, %d rounds)", g.pr.Median, g.pr.Min, g.pr.Max, len(g.pr.Ratios)), yesNo(g.pr.Median >= 0.60))
		relayGoals(r.Relay[g.relay], g.what, g.unit, "report", add)
	}
	worst := 0.0
	for _, d := range r.Datapath {
		if d.Entries == 100000 {
			worst = math.Max(worst, d.XVs10)
		}
	}
	if worst > 0 {
		add("datapath ns/packet at 100k entries vs 10 (worst path)", "≤ 1.1×", fmt.Sprintf("%.3f×", worst), yesNo(worst <= 1.1))
	} else {
		na("datapath ns/packet at 100k entries vs 10 (worst path)", "≤ 1.1×")
	}
	worst6, worstPath6 := 0.0, ""
	for _, d := range r.DatapathIPv6 {
		// "-v6-ext" adds extension headers to the IPv6 packet only: the
		// cost of walking them, not of the family (shown in section 5).
		if !strings.HasSuffix(d.Path, "-v6-ext") && d.V6VsV4 > worst6 {
			worst6, worstPath6 = d.V6VsV4, d.Path
		}
	}
	if worst6 > 0 {
		add("datapath ns/packet IPv6 vs IPv4, 10k entries (worst path; median of the runs)", "≤ 1.05×", fmt.Sprintf("%.3f× (%s)", worst6, worstPath6), yesNo(worst6 <= 1.05))
	} else {
		na("datapath ns/packet IPv6 vs IPv4, 10k entries (worst path; median of the runs)", "≤ 1.05×")
	}
	for _, c := range r.ControlPlane {
		if c.Changes == 0 {
			continue
		}
		sc := fmt.Sprintf("%d local-looking + %d cluster pods, %d changes", c.LocalLookingPods, c.ClusterPods, c.Changes)
		add("control plane p99, agent pick-up → implemented (agent's own `took`: compute, endpoints, datapath sync, xDS push and proxy ACK), "+sc, "≤ 20 ms", fmt.Sprintf("%.1f ms", c.TookP99ms), yesNo(c.TookP99ms <= 20))
		add("control plane p99, file write → implemented (incl. the folder source seeing and decoding the change), "+sc, "≤ 50 ms", fmt.Sprintf("%.1f ms", c.E2EP99ms), yesNo(c.E2EP99ms <= 50))
	}
	if len(r.ControlPlane) == 0 {
		na("control plane p99", "≤ 50 ms")
	}
	if kr := r.KafkaRounds; kr != nil && len(kr.Ratios) > 0 {
		add("Kafka produce throughput, L7 / direct, median of interleaved rounds", "≥ 0.85", fmt.Sprintf("%.2f (%.2f–%.2f, %d rounds)", kr.Median, kr.Min, kr.Max, len(kr.Ratios)), yesNo(kr.Median >= 0.85))
	} else if d, l := r.Kafka["direct"], r.Kafka["l7"]; d != nil && l != nil {
		x := ratio(l.MsgPerSec, d.MsgPerSec)
		add("Kafka produce throughput, L7 / direct", "≥ 0.85", fmt.Sprintf("%.2f", x), yesNo(x >= 0.85))
	} else {
		na("Kafka produce throughput, L7 / direct", "≥ 0.85")
	}
	relayGoals(r.Relay["kafka"], "Kafka produce messages/s", "produce calls", "report", add)
	memoryGoals(r.ProxyRSS, r.ControlPlane, add)
	dnsGoals(r.DNS, add)
}

// memoryGoals: the issue's memory rows (Go proxy RSS idle with 100 rules
// ≤ 30 MB, with 10k idle connections + 1000 rules ≤ 80 MB; agent RSS per
// cluster pod ≤ 2 KB, from the controlplane phase's largest scale).
// MB and KB are taken as MiB and KiB.
func memoryGoals(m *rssResult, cp []*cpResult, add func(name, target, measured, met string)) {
	const idleTarget, connTarget = 30 << 10, 80 << 10 // KiB
	mib := func(kib int64) string { return fmt.Sprintf("%.1f MiB (%d KiB)", float64(kib)/1024, kib) }
	if m != nil && m.FreshIdleKiB > 0 {
		add("Go proxy RSS idle, 100 HTTP rules, right after it started (before the load phases)", "≤ 30 MB", mib(m.FreshIdleKiB), yesNo(m.FreshIdleKiB <= idleTarget))
	} else {
		add("Go proxy RSS idle, 100 HTTP rules, right after it started (before the load phases)", "≤ 30 MB", "not measured", "n/a")
	}
	if m != nil && m.IdleKiB > 0 {
		add("(supplementary) Go proxy RSS idle, 100 HTTP rules, after the load phases", "≤ 30 MB", mib(m.IdleKiB), yesNo(m.IdleKiB <= idleTarget))
	}
	name := "Go proxy RSS with 10000 idle connections + 1000 HTTP rules"
	switch {
	case m == nil || m.WithConnsKiB == 0:
		add(name, "≤ 80 MB", "not measured", "n/a")
	case m.IdleConns < 10000 || m.ConnRules < 1000:
		add(name, "≤ 80 MB", fmt.Sprintf("%s with only %d connections and %d rules", mib(m.WithConnsKiB), m.IdleConns, m.ConnRules), "NO")
	default:
		add(name, "≤ 80 MB", fmt.Sprintf("%s (%d connections, %.0f B per connection)", mib(m.WithConnsKiB), m.IdleConns, m.PerConnBytes), yesNo(m.WithConnsKiB <= connTarget))
	}
	var big *cpResult
	for _, c := range cp {
		if c.ClusterPods > 0 && (big == nil || c.ClusterPods+c.LocalLookingPods > big.ClusterPods+big.LocalLookingPods) {
			big = c
		}
	}
	if big == nil {
		add("agent RSS per pod (controlplane phase)", "≤ 2 KB", "not measured", "n/a")
		return
	}
	heap := ""
	if big.HeapPerPodBytes > 0 {
		heap = fmt.Sprintf(" (live heap %.0f B)", big.HeapPerPodBytes)
	}
	add(fmt.Sprintf("agent RSS per pod (controlplane phase: the agent's VmRSS growth, each read after a collection returned the freed pages to the OS, / %d local-looking + %d cluster pods)", big.LocalLookingPods, big.ClusterPods), "≤ 2 KB",
		fmt.Sprintf("%.0f B%s", big.RSSPerPodBytes, heap), yesNo(big.RSSPerPodBytes <= 2048))
}

// chartNames avoid a lower-case l, which the 7x13 bitmap font draws like a 1.
var chartNames = map[string]string{"direct": "direct", "l4": "L3/L4", "l7": "L7 Go proxy", "relay": "RELAY", "haproxy": "HAProxy"}

var pathNames = map[string]string{
	"direct":  "direct (agent running, no policy)",
	"l4":      "L3/L4 policy (eBPF only)",
	"l7":      "L7 policy, Go proxy (100 HTTP rules)",
	"l7b":     "L7 policy, Go proxy of -kafka-bin-b (100 HTTP rules)",
	"relay":   "splice relay on the L7 redirect (no policy: accept + upstream dial as the Go proxy, then io.Copy)",
	"haproxy": "HAProxy 100 ACLs (reverse proxy, node ns)",
}

// haproxyRedirectName is the HAProxy path's name on the redirect path.
const haproxyRedirectName = "HAProxy 100 ACLs on the redirect path (its listener in the socket map, transparent; upstream from the node's address)"

// pathNamesOf is pathNames with the HAProxy path named by where it ran.
func (r *Results) pathNamesOf() map[string]string {
	m := maps.Clone(pathNames)
	if r.HAProxyMode == "redirect" {
		m["haproxy"] = haproxyRedirectName
	}
	return m
}

// haproxyWhere labels the Goals rows against HAProxy.
func (r *Results) haproxyWhere() string {
	if r.HAProxyMode == "redirect" {
		return "HAProxy on the redirect path"
	}
	return "HAProxy as a reverse proxy"
}

func writeReport(dir, stamp string, r *Results) error {
	r.computeGoals()
	pathNames := r.pathNamesOf()
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, stamp+".json"), js, 0o644); err != nil {
		return err
	}
	var charts []string
	chart := func(name, title string, labels []string, vals []float64, unit string) {
		if len(vals) == 0 {
			return
		}
		f := stamp + "-" + name + ".png"
		if err := writeBarChart(filepath.Join(dir, f), title, labels, vals, unit); err == nil {
			charts = append(charts, fmt.Sprintf("![%s](%s)", title, f))
		}
	}
	order := []string{"direct", "l4", "l7", "relay", "haproxy"}
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format, a...) }
	w("# l7gate benchmark — %s\n\n", r.Date)
	w("Go %s, kernel %s, %d CPUs. One run of `make bench` (%.0f s); every ratio is taken between runs of this same invocation on the same machine. The machine is shared and its speed drifts, so compare ratios, not absolute numbers across runs.\n\n", r.GoVersion, r.Kernel, r.CPUs, r.TotalSeconds)
	w("Pinning: %s. %s.\n\n", r.Pinning, r.Durations)
	hapText := fmt.Sprintf("HAProxy runs as a **reverse proxy** in the node namespace on %s:%d (the same client → veth → node namespace → veth → server path as the redirect, but not the datapath redirect itself: HAProxy's listener is not in the sk_lookup SOCKMAP)", nodeIP, haproxyPort)
	if r.HAProxyMode == "redirect" {
		hapText = "HAProxy runs **on the datapath's redirect path**, as the Go proxy does: its listener (a socket this program opens in the node namespace with IP_TRANSPARENT, handed to HAProxy as `bind fd@3`) is put in the datapath's sk_lookup socket map under the ingress HTTP proxy port in place of the Go proxy's for HAProxy's runs, and put back after them; `server s1 0.0.0.0:0` connects to the original destination. HAProxy 2.6 cannot set the from-proxy mark, so its upstream connections leave from the node's address: the policy of HAProxy's runs is the L7 one plus an L3 allow `fromEntities: [host]` on the server"
	}
	w("Topology: a node network namespace running `l7gate agent` (which starts `l7gate proxy`) with a private bpffs; server pod %s and client pod %s behind veths (198.18.0.0/15; dual-stack: IPv6 %s and %s in 2001:db8::/32, for section 1b). The server is this program's `serve` mode: Go net/http (HTTP/1.1 + h2c) returning 1 KB, grpc-go health service, franz-go kfake. %s, with the same 100 method+path rules as ACLs (`http-request allow if { method GET } path_reg_i` …, else 403), one thread, `http-reuse never`, no logging. The Go proxy as the agent starts it writes one JSON access-log line per request to a file; section 9 repeats keep-alive with it off.\n\n", serverIP, clientIP, serverIP6, clientIP6, hapText)

	w("## Goals\n\n| goal | target | measured | met |\n|---|---|---|---|\n")
	for _, g := range r.Goals {
		w("| %s | %s | %s | %s |\n", g.Name, g.Target, g.Measured, g.Met)
	}
	w("\n")
	if len(r.Missing) > 0 || len(r.Errors) > 0 {
		w("## Missing or failed\n\n")
		for _, m := range r.Missing {
			w("- %s\n", m)
		}
		for _, e := range r.Errors {
			w("- error: %s\n", strings.ReplaceAll(e, "\n", " "))
		}
		w("\n")
	}
	if r.Logs != "" {
		w("Logs of this run (agent, proxy, servers, HAProxy): `%s`.\n\n", r.Logs)
	}

	if len(r.KeepAlive) > 0 {
		d := r.KeepAlive["direct"]
		w("## 1. HTTP/1.1 keep-alive, 1 KB responses, 64 connections (wrk -t1 -c64 --latency)\n\nPaths measured in %d interleaved rounds (order reversed every other round, 1 s warm-up each); the best round of each path is shown, every round's req/s is in the JSON (`roundsReqPerSec`). HAProxy uses `http-reuse never` (one server connection per client connection, as a transparent proxy that keeps the client's source address must).\n\n", rounds)
		w("| path | req/s (best round) | ratio to direct | every round's req/s | p50 | p99 | p99.9 | proxy CPU-s / 1000 req | non-2xx | socket errors |\n|---|---|---|---|---|---|---|---|---|---|\n")
		var labels []string
		var vals []float64
		for _, p := range order {
			x := r.KeepAlive[p]
			if x == nil {
				continue
			}
			cpu := "—"
			if x.ProxyCPUPer1000 > 0 {
				cpu = fmt.Sprintf("%.4f", x.ProxyCPUPer1000)
			}
			w("| %s | %.0f | %.2f | %s | %s | %s | %s | %s | %d | %d |\n", pathNames[p], x.ReqPerSec, ratio(x.ReqPerSec, d.reqs()), joinF(x.Rounds, "%.0f"), us(x.P50us), us(x.P99us), us(x.P999us), cpu, x.Non2xx, x.Errors)
			labels = append(labels, fmt.Sprintf("%s %.2fx", chartNames[p], ratio(x.ReqPerSec, d.reqs())))
			vals = append(vals, x.ReqPerSec)
		}
		if h, l := r.KeepAlive["haproxy"], r.KeepAlive["l7"]; h != nil && l != nil {
			w("\nGo proxy / HAProxy: **%.2f** in req/s; CPU per request Go proxy / HAProxy: %.2f.\n", ratio(l.ReqPerSec, h.ReqPerSec), ratio(l.ProxyCPUPer1000, h.ProxyCPUPer1000))
		}
		w("\n")
		chart("keepalive", "HTTP/1.1 keep-alive req/s (ratio to direct)", labels, vals, "req/s")
	}
	if fr := r.KeepAliveIPv6; fr != nil && len(fr.Ratios) > 0 {
		w("## 1b. HTTP/1.1 keep-alive through the Go proxy, IPv6 vs IPv4 (issue 21)\n\nThe L7 path of section 1 (wrk -t1 -c64 in the client pod → the datapath's redirect → the Go proxy with 100 HTTP rules → the server pod), once to the server's IPv4 address %s and once to its IPv6 address %s (dual-stack pods, `status.podIPs`; the proxy's IPv6 listener), back to back in %d rounds (order reversed every other round, 1 s warm-up each); the ratio is taken within each round. Every run must get only 2xx answers and cost the Go proxy CPU (else the phase fails). Every round's full wrk result is in the JSON (`keepAliveIPv6`).\n\n", serverIP, serverIP6, len(fr.Ratios))
		w("%s", fr.markdown())
		if d := r.KeepAliveIPv6Direct; d != nil && len(d.Ratios) > 0 {
			w("The control: the direct path (agent running, no policy, no proxy) over both families in the same rounds — the kernel's and the datapath's own IPv6 vs IPv4 difference on this topology:\n\n%s", d.markdown())
		}
	}
	if fr := r.FixedRate["l7"]; fr != nil && fr.Added != nil {
		w("%s", r.fixedRateMarkdown(order, pathNames))
		var labels []string
		var vals []float64
		for _, p := range order {
			if x := r.FixedRate[p]; x != nil && x.Added != nil {
				labels = append(labels, chartNames[p])
				vals = append(vals, x.AddedP99)
			}
		}
		chart("fixedrate-p99", "added p99 at 1000 req/s, median of rounds (us)", labels, vals, "us")
	} else if len(r.FixedRate) > 0 {
		w("## 2. Fixed rate: 1000 req/s over 16 keep-alive connections (Go client, latency from the scheduled send time)\n\nBest (lowest p99) of %d interleaved rounds per path; all rounds' p99 in the JSON.\n\n", rounds)
		w("| path | p50 | p99 | p99.9 | added p50 | added p99 | every round's p99 (µs) | errors / sent |\n|---|---|---|---|---|---|---|---|\n")
		var labels []string
		var vals []float64
		for _, p := range order {
			x := r.FixedRate[p]
			if x == nil {
				continue
			}
			w("| %s | %s | %s | %s | %s | %s | %s | %d / %d |\n", pathNames[p], us(x.P50us), us(x.P99us), us(x.P999us), us(x.AddedP50), us(x.AddedP99), joinF(x.RoundsP99, "%.0f"), x.Errors, x.Sent)
			labels = append(labels, chartNames[p])
			vals = append(vals, x.P99us)
		}
		w("\nOn this shared 2-CPU machine the p99 of even the direct path moves by milliseconds between rounds, so the added p99 is within noise (it can come out negative); the added p50 is the steadier signal of the per-request cost at this rate.\n\n")
		chart("fixedrate-p99", "p99 latency at 1000 req/s (us)", labels, vals, "us")
	}
	if len(r.NewConns) > 0 {
		d := r.NewConns["direct"]
		w("## 3. New connections (wrk -c16, `Connection: close`)\n\n| path | conn/s | ratio to direct | p99 | proxy CPU-s / 1000 conns | errors |\n|---|---|---|---|---|---|\n")
		for _, p := range order {
			x := r.NewConns[p]
			if x == nil {
				continue
			}
			w("| %s | %.0f | %.2f | %s | %.4f | %d |\n", pathNames[p], x.ReqPerSec, ratio(x.ReqPerSec, d.reqs()), us(x.P99us), x.ProxyCPUPer1000, x.Errors)
		}
		if nr := r.NewConnRounds; nr != nil && len(nr.Ratios) > 1 {
			w("\nInterleaved rounds (the table above shows each path's best round; the goals take the median ratio):\n\n%s", nr.markdown("conn/s"))
			if hr := r.NewConnHAProxyRounds; hr != nil {
				w("The same rounds, L7 / HAProxy (the \"direct\" column is HAProxy's conn/s):\n\n%s", hr.markdown("conn/s"))
			}
		}
		if r.HAProxyMode == "redirect" {
			w("\nThe Go proxy is transparent: every client connection gets its own upstream connection, from the client's address and marked with the client's identity (the redirect path: SYN marked by tc, sk_lookup picks the listener). HAProxy takes the same redirect (its listener in the socket map) and opens one server connection per client connection (`http-reuse never`) from the node's address: no source bind, no mark.\n\n")
		} else {
			w("\nThe Go proxy is transparent: every client connection gets its own upstream connection, marked with the client's identity (the redirect path: SYN marked by tc, sk_lookup picks the listener). HAProxy accepts on its own address and opens one server connection per client connection (`http-reuse never`).\n\n")
		}

	}
	if len(r.H2) > 0 || len(r.GRPC) > 0 {
		w("## 4. HTTP/2 (h2load -c16 -m10, prior knowledge) and gRPC (grpc-go, 4 connections, 32 concurrent unary health checks)\n\n")
		w("| path | h2 req/s | h2 ratio | h2 mean | h2 failed | proxy CPU-s / 1000 h2 req | gRPC calls/s | gRPC ratio | gRPC p50 | gRPC p99 | gRPC errors | proxy CPU-s / 1000 gRPC calls |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, p := range []string{"direct", "l7", "relay"} {
			h, g := r.H2[p], r.GRPC[p]
			hs, gs := "| — | — | — | — | — ", "| — | — | — | — | — | — "
			if h != nil {
				hs = fmt.Sprintf("| %.0f | %.2f | %s | %d | %.4f ", h.ReqPerSec, ratio(h.ReqPerSec, r.H2["direct"].rps()), us(h.MeanReqUs), h.Failed, h.ProxyCPUPer1000)
			}
			if g != nil {
				gs = fmt.Sprintf("| %.0f | %.2f | %s | %s | %d | %.4f ", g.PerSec, ratio(g.PerSec, r.GRPC["direct"].rate()), us(g.P50us), us(g.P99us), g.Errors, g.ProxyCPUPer1000)
			}
			w("| %s %s%s|\n", pathNames[p], hs, gs)
		}
		w("\n")
		if r.H2Rounds != nil {
			w("HTTP/2 (h2load) in interleaved rounds; the table above shows each path's best round:\n\n%s", r.H2Rounds.markdown("req/s"))
		}
		if r.GRPCRounds != nil {
			w("gRPC unary in interleaved rounds:\n\n%s", r.GRPCRounds.markdown("calls/s"))
		}
		if len(r.AgentArgs) > 0 {
			w("Extra agent arguments of this run: `%s`.\n\n", strings.Join(r.AgentArgs, " "))
		}
	}
	if len(r.Datapath) > 0 || len(r.Iptables) > 0 {
		w("## 5. Datapath scaling\n\n`go test -run '^$' -bench BenchmarkDatapath ./bpf/` (BPF_PROG_TEST_RUN, one CPU, each size alternated with the 10-entry datapath; x-vs-10 is the ratio to it):\n\n")
		w("| entries | path | ns/packet | × vs 10 entries |\n|---|---|---|---|\n")
		for _, d := range r.Datapath {
			w("| %d | %s | %.0f | %.3f |\n", d.Entries, d.Path, d.NsPkt, d.XVs10)
		}
		if len(r.DatapathIPv6) > 0 {
			w("\nIPv6 vs IPv4 (`BenchmarkDatapathIPv6`: the same packet over both families on one 10k-entry datapath, alternated; *-v6-ext* gives the IPv6 packet hop-by-hop and destination options headers, so it measures their walk and is left out of the goal; the *to-pod-ack-denied* paths are untracked ACKs into a pod, default-denied: *to-pod-ack-denied* on a node whose proxy registered sockets of both families but into a pod none of whose flows was redirected to it, so no proxy upstream socket can have the pod's address and the datapath skips the kernel's socket lookup for one, *-proxied* into a pod whose flows of both families were redirected, with the proxy-upstream pre-filter on and 10k recorded upstream sockets, none of them the packet's, so the pre-filter misses and the kernel lookup is skipped, *-noproxy* on a node where no proxy socket of the family was ever registered, so it is skipped). The benchmark runs %d times; each row gives the medians over the runs and the range of the per-run ratios:\n\n", dp6Rounds)
			w("| path | IPv4 ns/packet | IPv6 ns/packet | IPv6 / IPv4 (median) | range | runs |\n|---|---|---|---|---|---|\n")
			for _, d := range r.DatapathIPv6 {
				_, lo, hi := medianRange(d.Ratios)
				w("| %s | %.0f | %.0f | %.3f | %.3f–%.3f | %d |\n", d.Path, d.NsV4, d.NsV6, d.V6VsV4, lo, hi, len(d.Ratios))
			}
		}
		w("\nThe same allow set as an iptables chain (one rule per entry, `-s peer -p tcp --dport port -j ACCEPT`, the matching entry last, then DROP, after a conntrack ESTABLISHED shortcut; loaded with iptables-restore into a fresh namespace pair), measured with new connections (wrk -c16 `Connection: close`), so every SYN walks the chain:\n\n")
		w("| rules | backend | conn/s | cost × vs 10 rules | datapath × vs 10 at this size (default-deny path) | load time |\n|---|---|---|---|---|---|\n")
		var labels []string
		var vals []float64
		for _, ip := range r.Iptables {
			dpx := "—"
			for _, d := range r.Datapath {
				if d.Entries == ip.Rules && d.Path == "default-deny" {
					dpx = fmt.Sprintf("%.3f", d.XVs10)
				}
			}
			if ip.Skipped != "" {
				w("| %d | %s | skipped: %s | — | %s | %.1f s |\n", ip.Rules, ip.Backend, ip.Skipped, dpx, ip.LoadSec)
				continue
			}
			w("| %d | %s | %.0f | %.2f | %s | %.1f s |\n", ip.Rules, ip.Backend, ip.ConnPerSec, ip.CostVs10, dpx, ip.LoadSec)
			labels = append(labels, fmt.Sprintf("IPTABLES %d", ip.Rules))
			vals = append(vals, ip.CostVs10)
		}
		for _, d := range r.Datapath {
			if d.Path == "default-deny" {
				labels = append(labels, fmt.Sprintf("EBPF %d", d.Entries))
				vals = append(vals, d.XVs10)
			}
		}
		w("\n")
		chart("datapath", "cost vs 10 entries: iptables chain vs eBPF datapath", labels, vals, "x")
	}
	if len(r.ControlPlane) > 0 {
		w("## 6. Control plane\n\n")
		w("Synthetic pods are added as one more YAML file in the agent's source folder: *local-looking* pods (IPs in the node's 198.18.64.0/22 pod range, but no veth routes to them, so the agent treats them as cluster endpoints — only the 2 real veths are local endpoints and get datapath programs) and cluster pods (198.19.0.0/16), with 500 distinct label sets. Each change rewrites the server's L7 CNP with a different extra HTTP rule, so every change is computed, pushed over xDS, ACKed by the proxy and synced to the datapath. *e2e* is file written → the agent logs `policy implemented` for the new revision and includes the folder source's inotify debounce (2 ms of quiet, at most 50 ms) and re-reading the changed file; *took* is the agent's own measurement of that revision (compute + finding local endpoints + datapath sync + xDS push and the proxy's ACK; agents before w12 left the compute out). Changes at each scale are bounded by -cp-budget.\n\n")
		w("| local-looking pods | cluster pods | identities | changes | e2e p50 | e2e p99 | took p50 | took p99 | adding the pods took | agent VmRSS before → after | RSS per pod | live heap per pod |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, c := range r.ControlPlane {
			add := "—"
			rss := "—"
			per := "—"
			heap := "—"
			if c.HeapPerPodBytes > 0 {
				heap = fmt.Sprintf("%.0f B", c.HeapPerPodBytes)
			}
			if c.LocalLookingPods+c.ClusterPods > 0 {
				add = fmt.Sprintf("%.1f s", c.InitialImplMs/1e3)
				rss = fmt.Sprintf("%d → %d KiB", c.AgentRSSBeforeKiB, c.AgentRSSAfterKiB)
				if c.RawRSSAfterKiB > 0 {
					rss += fmt.Sprintf(" (%d KiB before the collection)", c.RawRSSAfterKiB)
				}
				per = fmt.Sprintf("%.0f B", c.RSSPerPodBytes)
			}
			w("| %d | %d | %d | %d | %.0f ms | %.0f ms | %.0f ms | %.0f ms | %s | %s | %s | %s |\n", c.LocalLookingPods, c.ClusterPods, c.Identities, c.Changes, c.E2EP50ms, c.E2EP99ms, c.TookP50ms, c.TookP99ms, add, rss, per, heap)
		}
		w("\n")
	}
	if len(r.Kafka) > 0 {
		w("## 7. Kafka produce (kfake broker in the server pod, kafka-go: 8 writers, 10 × 100 B messages per produce, acks=1)\n\nCPU-s per 1000 produce calls of each process (of the best round; less load-sensitive than the rates, though a pinned proxy on a busy CPU still costs more per call): the Go proxy, the server pod's process (kfake), this process (the kafka-go clients) and the agent (it receives the proxy's flow records); the proxy's context switches per produce.\n\n| path | produce calls/s | messages/s | ratio | p50 | p99 | proxy CPU | server CPU | client CPU | agent CPU | proxy ctxt/produce | errors |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, p := range []string{"direct", "l7", "relay", "l7b"} {
			k := r.Kafka[p]
			if k == nil {
				continue
			}
			w("| %s | %.0f | %.0f | %.2f | %s | %s | %.4f | %.4f | %.4f | %.4f | %.2f | %d |\n", strings.Replace(pathNames[p], "100 HTTP rules", "Kafka produce rule", 1), k.PerSec, k.MsgPerSec, ratio(k.MsgPerSec, r.Kafka["direct"].msgs()), us(k.P50us), us(k.P99us),
				k.ProxyCPUPer1000, k.ServerCPUPer1000, k.ClientCPUPer1000, k.AgentCPUPer1000, k.ProxyCtxtPerCall, k.Errors)
		}
		w("\n")
		if r.KafkaRounds != nil {
			w("Messages/s in interleaved rounds; the table above shows each path's best round:\n\n%s", r.KafkaRounds.markdown("msg/s"))
		}
		if r.KafkaRoundsB != nil {
			w("\nThe same rounds, the second binary's proxy (-kafka-bin-b, path l7b):\n\n%s", r.KafkaRoundsB.markdown("msg/s"))
		}
	}
	if m := r.ProxyRSS; m != nil {
		rules := m.ConnRules
		if rules == 0 {
			rules = 100 // runs before wave 14
		}
		w("## 8. Go proxy memory (VmRSS)\n\nMeasured 2 s after each step: idle with 100 HTTP rules right after the topology came up (before any load phase; the issue's idle target), then in the proxyrss phase idle with 100 HTTP rules (after the load phases above, so the Go heap has grown), idle with 1000 HTTP rules, then with idle proxied connections open at %d rules (each carried one request; the proxy's RLIMIT_NOFILE raised with prlimit, its --max-connections-per-source %d: the client pod is one identity).\n\n| state | VmRSS |\n|---|---|\n", rules, m.MaxConnsPerSource)
		if m.FreshIdleKiB > 0 {
			w("| idle, 100 HTTP rules, right after start | %d KiB |\n", m.FreshIdleKiB)
		}
		w("| idle, 100 HTTP rules, after the load phases | %d KiB |\n| idle, 1000 HTTP rules | %d KiB |\n| %d rules, before connections | %d KiB |\n| %d open idle connections, %d rules | %d KiB (**%.0f B per connection**) |\n\n", m.IdleKiB, m.Rules1kKiB, rules, m.BeforeConnsKiB, m.IdleConns, rules, m.WithConnsKiB, m.PerConnBytes)
		if m.ConnErr != "" {
			w("Opening connections: %s\n\n", m.ConnErr)
		}
	}
	if len(r.AccessLogOff) > 0 {
		d := r.AccessLogOff["direct"]
		w("## 9. Keep-alive with the Go proxy's access log off (`l7gate proxy --access-log none`, adopted by the agent; direct re-measured alongside)\n\n| path | req/s | ratio to direct | p50 | p99 | p99.9 | proxy CPU-s / 1000 req | non-2xx |\n|---|---|---|---|---|---|---|---|\n")
		for _, p := range []string{"direct", "l7"} {
			x := r.AccessLogOff[p]
			if x == nil {
				continue
			}
			w("| %s | %.0f | %.2f | %s | %s | %s | %.4f | %d |\n", pathNames[p], x.ReqPerSec, ratio(x.ReqPerSec, d.reqs()), us(x.P50us), us(x.P99us), us(x.P999us), x.ProxyCPUPer1000, x.Non2xx)
		}
		if h, l := r.KeepAlive["haproxy"], r.AccessLogOff["l7"]; h != nil && l != nil {
			w("\nGo proxy (log off) / HAProxy (from section 1, earlier in this run): %.2f.\n", ratio(l.ReqPerSec, h.ReqPerSec))
		}
		w("\n")
	}
	if off, on := r.OTLP["off"], r.OTLP["on"]; off != nil && on != nil {
		w("## 10. OTLP access-log export on vs off (keep-alive L7; the agent restarted with and without `--otlp-endpoint` to an OTLP gRPC sink in the node namespace, adopting the same Go proxy; the proxy forwards every access record to the agent in both modes; best of %d interleaved rounds by req/s)\n\n| OTLP | req/s | p99 | proxy CPU-s / 1000 req | agent CPU-s / 1000 req | logs delivered | lost | rounds: proxy CPU / agent CPU per 1000 |\n|---|---|---|---|---|---|---|---|\n", len(on.Rounds))
		for _, m := range []string{"off", "on"} {
			x := r.OTLP[m]
			var rs []string
			for i := range x.RoundsProxyCPU {
				rs = append(rs, fmt.Sprintf("%.4f / %.4f", x.RoundsProxyCPU[i], x.RoundsAgentCPU[i]))
			}
			w("| %s | %.0f | %s | %.4f | %.4f | %.0f | %.0f | %s |\n", m, x.ReqPerSec, us(x.P99us), x.ProxyCPUPer1000, x.AgentCPUPer1000, x.OTLPDelivered, x.OTLPLost, strings.Join(rs, "; "))
		}
		w("\nAdded CPU per 1000 requests with OTLP on: proxy %+.4f s, agent %+.4f s.\n\n", on.ProxyCPUPer1000-off.ProxyCPUPer1000, on.AgentCPUPer1000-off.AgentCPUPer1000)
	}
	if r.DNS != nil {
		w("%s", dnsMarkdown(r.DNS))
	}
	if len(r.Relay) > 0 {
		w("%s", relayMarkdown(r.Relay))
	}
	if len(charts) > 0 {
		w("## Charts\n\n%s\n", strings.Join(charts, "\n\n"))
	}
	md := []byte(b.String())
	if err := os.WriteFile(filepath.Join(dir, stamp+".md"), md, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "latest.md"), md, 0o644)
}

// rerenderReport rewrites the Markdown and charts of a saved run.
func rerenderReport(jsonPath string) error {
	data, err := os.ReadFile(jsonPath)
	if err != nil {
		return err
	}
	var r Results
	if err := json.Unmarshal(data, &r); err != nil {
		return err
	}
	r.Goals = nil
	return writeReport(filepath.Dir(jsonPath), strings.TrimSuffix(filepath.Base(jsonPath), ".json"), &r)
}

func joinF(v []float64, format string) string {
	if len(v) == 0 {
		return "—"
	}
	p := make([]string, len(v))
	for i, x := range v {
		p[i] = fmt.Sprintf(format, x)
	}
	return strings.Join(p, ", ")
}

func (w *wrkResult) reqs() float64 {
	if w == nil {
		return 0
	}
	return w.ReqPerSec
}

func (w *wrkResult) cpu() float64 {
	if w == nil {
		return 0
	}
	return w.ProxyCPUPer1000
}

func (h *h2loadResult) rps() float64 {
	if h == nil {
		return 0
	}
	return h.ReqPerSec
}

func (r *rpcResult) rate() float64 {
	if r == nil {
		return 0
	}
	return r.PerSec
}

func (r *rpcResult) msgs() float64 {
	if r == nil {
		return 0
	}
	return r.MsgPerSec
}

func us(v float64) string {
	if math.Abs(v) >= 1000 {
		return fmt.Sprintf("%.2f ms", v/1000)
	}
	return fmt.Sprintf("%.0f µs", v)
}

// writeBarChart draws a horizontal bar chart with labels and values.
func writeBarChart(path, title string, labels []string, vals []float64, unit string) error {
	const wdt, rowH, left, top, right = 760, 28, 190, 40, 110
	h := top + rowH*len(vals) + 20
	img := image.NewRGBA(image.Rect(0, 0, wdt, h))
	draw.Draw(img, img.Bounds(), &image.Uniform{color.White}, image.Point{}, draw.Src)
	face := basicfont.Face7x13
	text := func(x, y int, s string, c color.Color) {
		d := &font.Drawer{Dst: img, Src: &image.Uniform{c}, Face: face, Dot: fixed.P(x, y)}
		d.DrawString(s)
	}
	text(10, 20, title, color.Black)
	maxV := 0.0
	for _, v := range vals {
		maxV = math.Max(maxV, v)
	}
	if maxV <= 0 {
		maxV = 1
	}
	palette := []color.RGBA{{66, 133, 244, 255}, {52, 168, 83, 255}, {234, 67, 53, 255}, {251, 188, 5, 255}, {120, 94, 240, 255}, {0, 172, 193, 255}}
	for i, v := range vals {
		y := top + i*rowH
		text(10, y+17, labels[i], color.Black)
		bw := int(float64(wdt-left-right) * v / maxV)
		draw.Draw(img, image.Rect(left, y+4, left+max(bw, 1), y+rowH-4), &image.Uniform{palette[i%len(palette)]}, image.Point{}, draw.Src)
		vs := fmt.Sprintf("%.0f %s", v, unit)
		if v < 100 {
			vs = fmt.Sprintf("%.3g %s", v, unit)
		}
		text(left+bw+6, y+17, vs, color.Black)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
