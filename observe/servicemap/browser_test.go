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

// TestVerdictColoursAndFiltersBrowser: each verdict is drawn in its colour
// (the audit verdict by its string, in any case), and the namespace and
// verdict filters hide what they leave out.
func TestVerdictColoursAndFiltersBrowser(t *testing.T) {
	page := browsertest.Open(t, time.Minute)
	p := startPipeline(t, observe.Config{Capacity: 64})
	web := pod("shop", "web", "app=web")
	db := pod("shop", "db", "app=db")
	for _, r := range []*flow.Record{
		rec(tiefighter, deathstar1, flow.VerdictAllowed, rule1),
		rec(xwing, deathstar1, flow.VerdictDenied, rule1DD),
		rec(xwing, tiefighter, "AUDIT", rule1DD),
		rec(tiefighter, xwing, flow.VerdictRedirected, rule1),
		rec(web, db, "audited", rule1DD),
		rec(web, deathstar1, flow.VerdictUnknown),
	} {
		p.Ingest(r)
	}
	waitProcessed(t, p, 6)
	_, url := startServer(t, Config{Source: p})
	if err := page.Navigate(url + "/"); err != nil {
		t.Fatal(err)
	}
	edges, err := page.MapEdges()
	if err != nil {
		t.Fatal(err)
	}
	colours := map[string]string{}
	for _, e := range edges {
		colours[e.Source+"→"+e.Target] = e.LineColor
	}
	want := map[string]string{
		"tiefighter→deathstar": "rgb(30,142,62)",   // allowed: green
		"xwing→deathstar":      "rgb(217,48,37)",   // denied: red
		"xwing→tiefighter":     "rgb(227,116,0)",   // AUDIT: amber
		"web→db":               "rgb(227,116,0)",   // audited: amber
		"tiefighter→xwing":     "rgb(26,115,232)",  // to a proxy: blue
		"web→deathstar":        "rgb(136,136,136)", // unknown: grey
	}
	for k, c := range want {
		if colours[k] != c {
			t.Errorf("edge %s drawn in %q, want %s", k, colours[k], c)
		}
	}
	names := func() []string {
		t.Helper()
		edges, err := page.MapEdges()
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range edges {
			out = append(out, e.Source+"→"+e.Target)
		}
		slices.Sort(out)
		return out
	}
	// namespace shop: its edges, also the one leaving it
	if _, err := browsertest.Eval[bool](page, `(() => { const s = document.getElementById('namespace'); s.value = 'shop'; s.dispatchEvent(new Event('change')); return true; })()`); err != nil {
		t.Fatal(err)
	}
	if got, want := names(), []string{"web→db", "web→deathstar"}; !slices.Equal(got, want) {
		t.Errorf("namespace shop shows %q, want %q", got, want)
	}
	// all namespaces, without audit and denied
	if _, err := browsertest.Eval[bool](page, `(() => {
		const s = document.getElementById('namespace'); s.value = ''; s.dispatchEvent(new Event('change'));
		for (const v of ['audit', 'denied']) { const c = document.querySelector('#verdicts input[value="' + v + '"]'); c.checked = false; c.dispatchEvent(new Event('change')); }
		return true; })()`); err != nil {
		t.Fatal(err)
	}
	if got, want := names(), []string{"tiefighter→deathstar", "tiefighter→xwing", "web→deathstar"}; !slices.Equal(got, want) {
		t.Errorf("without audit and denied the page shows %q, want %q", got, want)
	}
	page.Screenshot(t, "service-map-filters.png")
}
