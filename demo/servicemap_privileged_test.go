package demo

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/l7gate/l7gate/internal/browsertest"
)

// red is how Chromium reports the denied colour (#d93025) of an edge's line.
const red = "rgb(217,48,37)"

// TestPrivilegedServiceMapStarwars runs the Star Wars scenario with the
// agent serving the service map (as `l7gate demo --keep` does) and, after
// the last step, drives the page in headless chromium: it shows the
// scenario's workloads and a red edge xwing → deathstar naming the policy
// that dropped it; clicking that edge lists its flows; a screenshot is
// saved ($L7GATE_ARTIFACTS or the test's temp dir).
func TestPrivilegedServiceMapStarwars(t *testing.T) {
	bin := needAgent(t)
	start := time.Now()
	page := browsertest.Open(t, 4*time.Minute)
	browserStart := time.Since(start)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	url := ServiceMapURL(ln)
	cmd, env := testServerCommand(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	sc := scenarioByName(t, BuiltinName)
	var out strings.Builder
	var pageTime time.Duration
	checkPage := func(ctx context.Context, step int, _ *Topology) error {
		if step != len(sc.Steps)-1 {
			return nil
		}
		pageStart := time.Now()
		defer func() { pageTime = time.Since(pageStart) }()
		if err := page.Navigate(url); err != nil {
			return err
		}
		// The last check (xwing → deathstar, dropped) may still be on its
		// way through the pipeline: wait for its red edge.
		var edges []browsertest.MapEdge
		var denied *browsertest.MapEdge
		deadline := time.Now().Add(20 * time.Second)
		for {
			if edges, err = page.MapEdges(); err != nil {
				return err
			}
			if i := slices.IndexFunc(edges, func(e browsertest.MapEdge) bool {
				return e.Source == "xwing" && e.Target == "deathstar" && e.Verdict == "denied"
			}); i >= 0 {
				denied = &edges[i]
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("no denied edge xwing → deathstar on the page; edges: %+v", edges)
			}
			time.Sleep(200 * time.Millisecond)
		}
		for _, e := range edges {
			t.Logf("edge %s/%s → %s/%s %s %q (%s)", e.SourceNS, e.Source, e.TargetNS, e.Target, e.Verdict, e.Label, e.LineColor)
		}
		var errs []error
		nodes, err := page.MapNodes()
		if err != nil {
			return err
		}
		for _, want := range []string{"default/deathstar", "default/tiefighter", "default/xwing"} {
			if !slices.Contains(nodes, want) {
				errs = append(errs, fmt.Errorf("workload %s not on the page (nodes %q)", want, nodes))
			}
		}
		if denied.LineColor != red {
			errs = append(errs, fmt.Errorf("denied edge drawn in %s, want red %s", denied.LineColor, red))
		}
		if !strings.Contains(denied.Policy, "default/rule1") || !strings.Contains(denied.Label, "default/rule1") {
			errs = append(errs, fmt.Errorf("denied edge names policy %q (label %q), want default/rule1", denied.Policy, denied.Label))
		}
		// the L7 denial (tiefighter PUT /v1/exhaust-port) is a red edge too
		if !slices.ContainsFunc(edges, func(e browsertest.MapEdge) bool {
			return e.Source == "tiefighter" && e.Target == "deathstar" && e.Verdict == "denied" && e.LineColor == red
		}) {
			errs = append(errs, errors.New("no red edge tiefighter → deathstar for the denied PUT /v1/exhaust-port"))
		}
		page.Screenshot(t, "service-map-starwars.png")
		// clicking the L7 denial lists its request
		for _, e := range edges {
			if e.Source != "tiefighter" || e.Target != "deathstar" || e.Verdict != "denied" {
				continue
			}
			if err := page.ClickEdge(e.ID); err != nil {
				return err
			}
			if err := page.WaitJSFor(`!document.getElementById('flows').hidden`, 5*time.Second); err != nil {
				return fmt.Errorf("clicking the edge listed no flows: %w", err)
			}
			rows, err := browsertest.Eval[[]string](page, `[...document.querySelectorAll('#flows tbody tr')].map(tr => tr.textContent)`)
			if err != nil {
				return err
			}
			if !slices.ContainsFunc(rows, func(r string) bool { return strings.Contains(r, "PUT /v1/exhaust-port → 403") }) {
				errs = append(errs, fmt.Errorf("flows of the denied L7 edge = %q, want PUT /v1/exhaust-port → 403", rows))
			}
			page.Screenshot(t, "service-map-starwars-flows.png")
		}
		return errors.Join(errs...)
	}
	sum, err := Run(ctx, Config{
		Scenario: sc, Executable: bin, ServerCommand: cmd, ServerEnv: env,
		TempDir: t.TempDir(), Out: &out, ServiceMap: ln, AfterStep: checkPage,
		Log: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	})
	for line := range strings.SplitSeq(strings.TrimRight(out.String(), "\n"), "\n") {
		t.Log(line)
	}
	t.Logf("browser started in %s; the page checks took %s; all in %s", browserStart.Round(time.Millisecond),
		pageTime.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if sum.Failed > 0 {
		t.Errorf("%d of %d checks failed", sum.Failed, len(sum.Results))
	}
	if !strings.Contains(out.String(), "Service map: "+url) {
		t.Errorf("the demo did not print the service map's URL %s", url)
	}
}
