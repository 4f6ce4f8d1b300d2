package soak

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Counts are requests by outcome.
type Counts struct {
	Sent, OK, Denied, Failed, Leaked int
}

func (c *Counts) add(outcome uint8) {
	c.Sent++
	switch outcome {
	case oOK:
		c.OK++
	case oDenied:
		c.Denied++
	case oFailed:
		c.Failed++
	case oLeaked:
		c.Leaked++
	}
}

// Windows are the event windows requests are attributed to.
func (r *Result) windows() [nPhases][][2]int64 {
	var w [nPhases][][2]int64
	for _, e := range r.Events {
		p := -1
		switch e.Kind {
		case "hand-over":
			p = pHandOver
		case "agent kill":
			p = pAgentKill
		case "proxy crash":
			p = pCrash
		}
		if p >= 0 {
			w[p] = append(w[p], [2]int64{int64(e.Start), int64(e.End + 3*time.Second)})
		}
	}
	return w
}

// Phase returns the phase of a request in flight from start to end.
func phaseOf(w *[nPhases][][2]int64, start, end int64) int {
	for p := nPhases - 1; p > pSteady; p-- {
		for _, iv := range w[p] {
			if start < iv[1] && end > iv[0] {
				return p
			}
		}
	}
	return pSteady
}

// ByPhase counts requests per phase; ByClient per client.
func (r *Result) ByPhase() (phases [nPhases]Counts, clients [nClients]Counts, total Counts) {
	w := r.windows()
	for _, rec := range r.Records {
		phases[phaseOf(&w, rec.start, rec.end)].add(rec.outcome)
		clients[rec.client].add(rec.outcome)
		total.add(rec.outcome)
	}
	return
}

// FailedOutsideCrashes counts failed allowed requests in the steady and
// hand-over phases (must be 0).
func (r *Result) FailedOutsideCrashes() int {
	p, _, _ := r.ByPhase()
	return p[pSteady].Failed + p[pHandOver].Failed
}

// Leaked counts denied requests that got through (must be 0), as the
// clients saw them, plus denied requests that reached the servers.
func (r *Result) Leaked() int {
	_, _, t := r.ByPhase()
	return t.Leaked + int(r.ServerBypass)
}

// EventCount counts the events of a kind.
func (r *Result) EventCount(kind string) int {
	n := 0
	for _, e := range r.Events {
		if e.Kind == kind || strings.HasPrefix(e.Kind, kind) {
			n++
		}
	}
	return n
}

func durations(evs []Event, kind string) (n int, lo, med, hi time.Duration) {
	var ds []time.Duration
	for _, e := range evs {
		if strings.HasPrefix(e.Kind, kind) {
			ds = append(ds, e.End-e.Start)
		}
	}
	if len(ds) == 0 {
		return 0, 0, 0, 0
	}
	slices.Sort(ds)
	return len(ds), ds[0], ds[len(ds)/2], ds[len(ds)-1]
}

// resource summarises one series: first, median of the first and the last
// quarter, max and last.
type resource struct {
	name                     string
	first, q1, q4, max, last float64
}

func summarize(name string, xs []float64) resource {
	var v []float64
	for _, x := range xs {
		if x >= 0 {
			v = append(v, x)
		}
	}
	r := resource{name: name}
	if len(v) == 0 {
		return r
	}
	med := func(s []float64) float64 {
		c := slices.Clone(s)
		slices.Sort(c)
		return c[len(c)/2]
	}
	q := max(1, len(v)/4)
	r.first, r.last, r.max = v[0], v[len(v)-1], slices.Max(v)
	r.q1, r.q4 = med(v[:q]), med(v[len(v)-q:])
	return r
}

func (r *Result) series() []struct {
	name  string
	unit  string
	vals  func(Sample) float64
	scale float64
} {
	return []struct {
		name  string
		unit  string
		vals  func(Sample) float64
		scale float64
	}{
		{"agent RSS", "MiB", func(s Sample) float64 { return float64(s.AgentRSS) }, 1 << 20},
		{"proxy RSS", "MiB", func(s Sample) float64 { return float64(s.ProxyRSS) }, 1 << 20},
		{"agent goroutines", "", func(s Sample) float64 { return float64(s.AgentGoroutines) }, 1},
		{"proxy goroutines", "", func(s Sample) float64 { return float64(s.ProxyGoroutines) }, 1},
		{"agent fds", "", func(s Sample) float64 { return float64(s.AgentFDs) }, 1},
		{"proxy fds", "", func(s Sample) float64 { return float64(s.ProxyFDs) }, 1},
	}
}

// WriteMarkdown writes the report; chart is the SVG's file name.
func (r *Result) WriteMarkdown(w io.Writer, chart string) {
	c := r.Config
	phases, clients, total := r.ByPhase()
	fmt.Fprintf(w, "# Soak %s\n\n", r.Started.UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(w, "`make soak DURATION=%s`: the real agent, datapath and Go proxy on a node in network namespaces (bench/soak). ", c.Duration)
	fmt.Fprintf(w, "Clients in the tiefighter's namespace through L7 policy to the deathstar: HTTP/1.1 keep-alive and h2c (every 10th request the PUT the L7 rule denies), "+
		"a new-connection HTTP loop, gRPC (grpc-go: Health/Check allowed, every 10th Health/List denied) and Kafka (franz-go against kfake: produce to empire-announce allowed, every 10th produce to deathstar-plans denied). ")
	fmt.Fprintf(w, "Policy churn: %d policy object changes (%d per 10 minutes), %d revisions implemented. ", r.PolicyWrites, c.PolicyUpdates, r.Revisions)
	if c.FlipEvery > 0 {
		fmt.Fprintf(w, "Every %s the xwing's allow policy flips and a pod comes or goes (troopers must land, rebels must never connect, also before the agent knows them), checked once implemented. ", c.FlipEvery)
	}
	fmt.Fprintf(w, "Proxy hand-over (SIGHUP to the agent) every %s, proxy SIGKILL every %s, agent SIGKILL once: %v; proxy --drain-timeout %s.\n\n", c.HandOverEvery, c.CrashEvery, c.KillAgent, c.DrainTimeout)
	fmt.Fprintf(w, "Ran %s. Verdict: **%s**.\n\n", r.Took.Round(time.Second), r.verdict())

	fmt.Fprintf(w, "## Requests by phase\n\n")
	fmt.Fprintf(w, "A request belongs to the highest phase whose window it overlaps (proxy crash: kill → restarted proxy ready + 3 s; agent kill: kill → restarted agent ready + 3 s; hand-over: SIGHUP → old proxy exited + 3 s).\n\n")
	fmt.Fprintf(w, "| phase | events | sent | succeeded (allowed + denied as expected) | denied as expected | failed | denied that succeeded |\n|---|---:|---:|---:|---:|---:|---:|\n")
	evN := [nPhases]int{pSteady: 0, pHandOver: r.EventCount("hand-over"), pAgentKill: r.EventCount("agent kill"), pCrash: r.EventCount("proxy crash")}
	for p := range nPhases {
		x := phases[p]
		fmt.Fprintf(w, "| %s | %d | %d | %d | %d | %d | %d |\n", phaseNames[p], evN[p], x.Sent, x.OK+x.Denied, x.Denied, x.Failed, x.Leaked)
	}
	fmt.Fprintf(w, "| **total** | | %d | %d | %d | %d | %d |\n\n", total.Sent, total.OK+total.Denied, total.Denied, total.Failed, total.Leaked)
	fmt.Fprintf(w, "Denied requests that reached the deathstar's HTTP or gRPC server: %d.\n\n", r.ServerBypass)

	fmt.Fprintf(w, "## Requests by client\n\n| client | sent | allowed ok | denied as expected | failed | denied that succeeded |\n|---|---:|---:|---:|---:|---:|\n")
	for i := range nClients {
		x := clients[i]
		fmt.Fprintf(w, "| %s | %d | %d | %d | %d | %d |\n", clientNames[i], x.Sent, x.OK, x.Denied, x.Failed, x.Leaked)
	}

	fmt.Fprintf(w, "\n## Events\n\n| kind | count | min | median | max |\n|---|---:|---:|---:|---:|\n")
	for _, k := range []string{"hand-over", "proxy crash", "agent kill", "flip: xwing allowed", "flip: xwing denied"} {
		n, lo, med, hi := durations(r.Events, k)
		fmt.Fprintf(w, "| %s | %d | %s | %s | %s |\n", k, n, lo.Round(time.Millisecond), med.Round(time.Millisecond), hi.Round(time.Millisecond))
	}
	fmt.Fprintf(w, "\nHand-over: SIGHUP → the old proxy exited (drained). Proxy crash: SIGKILL → the restarted proxy answers /ready. Agent kill: SIGKILL → the restarted agent (started 2 s later) reports ready. Flip: file written → the agent implemented exactly that source (digest), churn paused meanwhile.\n\n")

	fmt.Fprintf(w, "## Agent and proxy over time\n\n![chart](%s)\n\n", chart)
	fmt.Fprintf(w, "Sampled every 2 s (%d samples). The proxy is a new process after each hand-over and crash, the agent after its kill; the quarters compare the first and the last quarter of the run.\n\n", len(r.Samples))
	fmt.Fprintf(w, "| series | first | median 1st quarter | median last quarter | max | last |\n|---|---:|---:|---:|---:|---:|\n")
	for _, s := range r.series() {
		var xs []float64
		for _, sm := range r.Samples {
			v := s.vals(sm)
			if v >= 0 {
				v /= s.scale
			}
			xs = append(xs, v)
		}
		rs := summarize(s.name, xs)
		unit := ""
		if s.unit != "" {
			unit = " " + s.unit
		}
		fmt.Fprintf(w, "| %s%s | %.1f | %.1f | %.1f | %.1f | %.1f |\n", s.name, unit, rs.first, rs.q1, rs.q4, rs.max, rs.last)
	}
	if len(r.Errors) > 0 {
		fmt.Fprintf(w, "\n## Failed requests (first of each client)\n\n```\n%s\n```\n", strings.Join(r.Errors, "\n"))
	}
	if len(r.Problems) > 0 {
		fmt.Fprintf(w, "\n## Problems\n\n```\n%s\n```\n", strings.Join(r.Problems, "\n"))
	}
}

func (r *Result) verdict() string {
	var bad []string
	if n := r.Leaked(); n > 0 {
		bad = append(bad, fmt.Sprintf("%d denied requests got through", n))
	}
	if n := r.FailedOutsideCrashes(); n > 0 {
		bad = append(bad, fmt.Sprintf("%d requests failed outside crash windows", n))
	}
	if len(r.Problems) > 0 {
		bad = append(bad, fmt.Sprintf("%d problems", len(r.Problems)))
	}
	if len(bad) == 0 {
		return "pass (0 denied requests got through; 0 failed requests outside proxy crashes and the agent kill)"
	}
	return "FAIL: " + strings.Join(bad, "; ")
}

// WriteSVG draws requests per second and the agent's and the proxy's RSS,
// goroutines and fds over time, with the events as vertical lines.
func (r *Result) WriteSVG(w io.Writer) {
	const W, left, right, panelH, gap, top = 960, 70, 20, 150, 40, 40
	type line struct {
		name, color string
		vals        []float64
	}
	type panel struct {
		title string
		lines []line
	}
	get := func(f func(Sample) float64, scale float64) []float64 {
		var v []float64
		for _, s := range r.Samples {
			x := f(s)
			if x >= 0 {
				x /= scale
			}
			v = append(v, x)
		}
		return v
	}
	const agentC, proxyC = "#1f77b4", "#ff7f0e"
	panels := []panel{
		{"requests per second (all clients)", []line{
			{"succeeded", "#2ca02c", get(func(s Sample) float64 { return float64(s.OK) }, 2)},
			{"failed", "#d62728", get(func(s Sample) float64 { return float64(s.Failed) }, 2)}}},
		{"RSS (MiB)", []line{
			{"agent", agentC, get(func(s Sample) float64 { return float64(s.AgentRSS) }, 1<<20)},
			{"proxy", proxyC, get(func(s Sample) float64 { return float64(s.ProxyRSS) }, 1<<20)}}},
		{"goroutines", []line{
			{"agent", agentC, get(func(s Sample) float64 { return float64(s.AgentGoroutines) }, 1)},
			{"proxy", proxyC, get(func(s Sample) float64 { return float64(s.ProxyGoroutines) }, 1)}}},
		{"open fds", []line{
			{"agent", agentC, get(func(s Sample) float64 { return float64(s.AgentFDs) }, 1)},
			{"proxy", proxyC, get(func(s Sample) float64 { return float64(s.ProxyFDs) }, 1)}}},
	}
	H := top + len(panels)*(panelH+gap) + 30
	total := r.Config.Duration.Seconds()
	if total <= 0 {
		total = 1
	}
	xOf := func(sec float64) float64 { return left + sec/total*float64(W-left-right) }
	fmt.Fprintf(w, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="11">`+"\n", W, H, W, H)
	fmt.Fprintf(w, `<rect width="%d" height="%d" fill="white"/>`+"\n", W, H)
	fmt.Fprintf(w, `<text x="%d" y="20" font-size="14">l7gate soak %s — %s; grey: hand-over, red: proxy SIGKILL, purple: agent SIGKILL</text>`+"\n",
		left, r.Started.UTC().Format("2006-01-02 15:04 UTC"), r.Config.Duration)
	for i, p := range panels {
		y0 := float64(top + i*(panelH+gap))
		y1 := y0 + panelH
		hi := 1.0
		for _, l := range p.lines {
			for _, v := range l.vals {
				hi = max(hi, v)
			}
		}
		hi *= 1.1
		fmt.Fprintf(w, `<text x="%d" y="%.0f" font-size="12">%s</text>`+"\n", left, y0-6, p.title)
		fmt.Fprintf(w, `<rect x="%d" y="%.0f" width="%d" height="%d" fill="none" stroke="#999"/>`+"\n", left, y0, W-left-right, panelH)
		for _, frac := range []float64{0, 0.5, 1} {
			y := y1 - frac*panelH
			fmt.Fprintf(w, `<text x="%d" y="%.1f" text-anchor="end">%.0f</text>`+"\n", left-4, y+4, frac*hi)
		}
		for _, e := range r.Events {
			color := ""
			switch e.Kind {
			case "hand-over":
				color = "#aaa"
			case "proxy crash":
				color = "#d62728"
			case "agent kill":
				color = "#9467bd"
			}
			if color != "" {
				x := xOf(e.Start.Seconds())
				fmt.Fprintf(w, `<line x1="%.1f" y1="%.0f" x2="%.1f" y2="%.0f" stroke="%s" stroke-dasharray="3,2"/>`+"\n", x, y0, x, y1, color)
			}
		}
		for j, l := range p.lines {
			var pts []string
			for k, v := range l.vals {
				if v < 0 {
					continue
				}
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", xOf(r.Samples[k].At.Seconds()), y1-v/hi*panelH))
			}
			fmt.Fprintf(w, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>`+"\n", l.color, strings.Join(pts, " "))
			fmt.Fprintf(w, `<text x="%d" y="%.0f" fill="%s" text-anchor="end">%s</text>`+"\n", W-right-5-j*70, y0-6, l.color, l.name)
		}
	}
	yAxis := top + len(panels)*(panelH+gap) - gap + 14
	for s := 0.0; s <= total; s += max(30, float64(int(total/10/30+1)*30)) {
		fmt.Fprintf(w, `<text x="%.1f" y="%d" text-anchor="middle">%.0fs</text>`+"\n", xOf(s), yAxis, s)
	}
	fmt.Fprintln(w, "</svg>")
}
