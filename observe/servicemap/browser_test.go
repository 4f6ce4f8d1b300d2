package servicemap

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/internal/browsertest"
	"github.com/l7gate/l7gate/observe"
)

// TestHostileLabelsBrowser: a pod name, a label value, a policy name and an
// HTTP path carrying markup are drawn and listed as text in a real
// browser: no script of theirs runs, no element of theirs appears.
func TestHostileLabelsBrowser(t *testing.T) {
	page := browsertest.Open(t, time.Minute)
	p := startPipeline(t, observe.Config{Capacity: 64})
	const (
		podName = `<script>window.__pwned="pod"</script>`
		label   = `app=<img src=x onerror="window.__pwned='label'">`
		polName = `empire/</script><script>window.__pwned="policy"</script>`
		path    = `/v1/<script>window.__pwned="path"</script><img src=x onerror="window.__pwned='path-img'">`
	)
	evil := pod("empire", podName, label)
	r := rec(evil, deathstar1, flow.VerdictDenied, flow.Provenance{Policy: polName, PolicyKind: flow.KindCNP, Kind: flow.KindDeny, Path: "spec.ingressDeny[0]"})
	r.Protocol, r.Method, r.Path, r.Status = "http", "GET", path, 403
	p.Ingest(r)
	waitProcessed(t, p, 1)
	_, url := startServer(t, Config{Source: p})

	if err := page.Navigate(url + "/"); err != nil {
		t.Fatal(err)
	}
	edges, err := page.MapEdges()
	if err != nil {
		t.Fatal(err)
	}
	if len(edges) != 1 {
		t.Fatalf("edges = %+v, want 1", edges)
	}
	e := edges[0]
	if e.Source != `<img src=x onerror="window.__pwned='label'">` || e.Policy != polName {
		t.Errorf("edge drawn as %+v: the hostile strings are not its text", e)
	}
	// a real click on the edge lists its flow
	if err := page.ClickEdge(e.ID); err != nil {
		t.Fatal(err)
	}
	if err := page.WaitJSFor(`!document.getElementById('flows').hidden`, 5*time.Second); err != nil {
		t.Fatalf("clicking the edge listed no flows: %v", err)
	}
	rows, err := browsertest.Eval[[]string](page, `[...document.querySelectorAll('#flows tbody tr')].map(tr => tr.textContent)`)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || !strings.Contains(rows[0], "GET "+path) || !strings.Contains(rows[0], "empire/"+podName) || !strings.Contains(rows[0], polName) {
		t.Errorf("flow rows = %q, want the path, pod and policy as text", rows)
	}
	title, err := browsertest.Eval[string](page, `document.getElementById('edge-title').textContent + document.getElementById('edge-policy').textContent`)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(title, polName) {
		t.Errorf("details = %q, want the policy name as text", title)
	}
	page.Screenshot(t, "service-map-hostile.png")
	// nothing ran, nothing was parsed as markup
	pwned, err := browsertest.Eval[string](page, `String(window.__pwned)`)
	if err != nil {
		t.Fatal(err)
	}
	if pwned != "undefined" {
		t.Errorf("a hostile string ran script: window.__pwned = %q", pwned)
	}
	n, err := browsertest.Eval[int](page, `document.querySelectorAll('img, main script, aside script').length`)
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d hostile elements in the page", n)
	}
	if slices.ContainsFunc(page.Console(), func(m string) bool { return strings.Contains(m, "Content Security Policy") }) {
		t.Errorf("the page violated its own Content-Security-Policy: %q", page.Console())
	}
}
