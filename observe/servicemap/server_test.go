package servicemap

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/observe"
)

// startPipeline runs a real flow pipeline until the test ends.
func startPipeline(t *testing.T, cfg observe.Config) *observe.Pipeline {
	t.Helper()
	p := observe.New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return p
}

// startServer serves the map on a loopback port until the test ends.
func startServer(t *testing.T, cfg Config) (*Server, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, s.Handler()) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return s, "http://" + ln.Addr().String()
}

// waitProcessed waits until the pipeline kept n events.
func waitProcessed(t *testing.T, p *observe.Pipeline, n uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for p.Stats().Processed < n {
		if time.Now().After(deadline) {
			t.Fatalf("pipeline processed %d of %d", p.Stats().Processed, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type sseEvent struct {
	name, data string
}

// sseReader reads server-sent events from a real HTTP response.
type sseReader struct {
	resp *http.Response
	sc   *bufio.Scanner
}

func openEvents(t *testing.T, url string) *sseReader {
	t.Helper()
	resp, err := http.Get(url + "/events")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("GET /events: %s, Content-Type %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	return &sseReader{resp: resp, sc: sc}
}

// next returns the next event (comments and retry lines skipped); ok is
// false at the end of the stream.
func (r *sseReader) next() (ev sseEvent, ok bool) {
	for r.sc.Scan() {
		line := r.sc.Text()
		switch {
		case line == "":
			if ev.name != "" || ev.data != "" {
				return ev, true
			}
		case strings.HasPrefix(line, "event: "):
			ev.name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			ev.data += strings.TrimPrefix(line, "data: ")
		}
	}
	return ev, false
}

func (r *sseReader) mustNext(t *testing.T, name string, v any) {
	t.Helper()
	ev, ok := r.next()
	if !ok {
		t.Fatalf("stream ended waiting for %q: %v", name, r.sc.Err())
	}
	if ev.name != name {
		t.Fatalf("event %q (%s), want %q", ev.name, ev.data, name)
	}
	if err := json.Unmarshal([]byte(ev.data), v); err != nil {
		t.Fatalf("event %q: %v", name, err)
	}
}

// TestEventsStream: a page gets the ring's content as one graph, then each
// new flow as it passes the pipeline.
func TestEventsStream(t *testing.T) {
	p := startPipeline(t, observe.Config{Capacity: 64})
	p.Ingest(rec(xwing, deathstar1, flow.VerdictDenied, rule1DD))
	p.Ingest(rec(tiefighter, deathstar1, flow.VerdictAllowed, rule1))
	waitProcessed(t, p, 2)
	_, url := startServer(t, Config{Source: p})

	sse := openEvents(t, url)
	var g Graph
	sse.mustNext(t, "graph", &g)
	if len(g.Nodes) != 3 || len(g.Edges) != 2 || g.LastSeq != 2 {
		t.Fatalf("graph = %+v", g)
	}
	if e := g.Edges[0]; e.Verdict != "denied" || e.Policy != "default-deny empire/rule1" || e.Source != "w:alliance/class=xwing,org=alliance" {
		t.Errorf("first edge = %+v", e)
	}

	// a new flow on a new edge: its new node comes with it
	r := rec(xwing, tiefighter, flow.VerdictDenied)
	r.Reason = "policy denied"
	p.Ingest(r)
	var u Update
	sse.mustNext(t, "flow", &u)
	if u.Flow.Seq != 3 || u.Edge.Target != "w:empire/class=tiefighter,org=empire" || u.Edge.Policy != "policy denied" || u.Edge.Count != 1 || len(u.Nodes) != 0 {
		t.Errorf("update = %+v", u)
	}
	// a flow on a known edge counts
	p.Ingest(rec(xwing, deathstar2, flow.VerdictDenied, rule1DD))
	sse.mustNext(t, "flow", &u)
	if u.Edge.ID != g.Edges[0].ID || u.Edge.Count != 2 {
		t.Errorf("update = %+v, want edge %s ×2", u.Edge, g.Edges[0].ID)
	}
	// /graph.json is the same map
	resp, err := http.Get(url + "/graph.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var g2 Graph
	if err := json.NewDecoder(resp.Body).Decode(&g2); err != nil {
		t.Fatal(err)
	}
	if len(g2.Edges) != 3 || g2.LastSeq != 4 {
		t.Errorf("graph.json = %+v", g2)
	}
	if st := p.Stats(); st.Followers != 1 {
		t.Errorf("followers = %d, want 1 (the open stream; graph.json unsubscribed)", st.Followers)
	}
}

// TestEventsSlowStreamDropped: a page that stops reading never slows the
// pipeline; its stream falls behind, is ended and unsubscribed, and the
// next page starts from a fresh snapshot.
func TestEventsSlowStreamDropped(t *testing.T) {
	p := startPipeline(t, observe.Config{Capacity: 256, Queue: 256})
	s, url := startServer(t, Config{Source: p, Buffer: 4, WriteTimeout: 300 * time.Millisecond})
	sse := openEvents(t, url)
	var g Graph
	sse.mustNext(t, "graph", &g)
	if st := p.Stats(); st.Followers != 1 {
		t.Fatalf("followers = %d", st.Followers)
	}
	// The page reads nothing more. Large flows fill the socket buffers, so
	// the stream's writes block and its channel overflows.
	big := strings.Repeat("/x", 16<<10)
	const n = 2000
	start := time.Now()
	for i := range n {
		r := rec(xwing, deathstar1, flow.VerdictDenied, rule1DD)
		r.Path = big
		for !p.Ingest(r) { // the queue is bounded: wait for room, count the time
			time.Sleep(time.Millisecond)
		}
		_ = i
	}
	waitProcessed(t, p, n)
	t.Logf("pipeline processed %d flows in %s with a stalled page", n, time.Since(start).Round(time.Millisecond))
	if st := p.Stats(); st.LostFollowers == 0 {
		t.Errorf("the stalled stream lost nothing (stats %+v): it was never behind", st)
	}
	// the stream is ended and unsubscribed
	deadline := time.Now().Add(10 * time.Second)
	for p.Stats().Followers != 0 || s.streams.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("stalled stream still subscribed: followers %d, streams %d", p.Stats().Followers, s.streams.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	// reading on, the page finds the end of the stream (possibly after a
	// "lost" event)
	go func() { time.Sleep(10 * time.Second); sse.resp.Body.Close() }()
	for {
		ev, ok := sse.next()
		if !ok {
			break
		}
		if ev.name != "flow" && ev.name != "lost" {
			t.Errorf("unexpected event %q", ev.name)
		}
	}
	// a new page gets the current map
	sse2 := openEvents(t, url)
	var g2 Graph
	sse2.mustNext(t, "graph", &g2)
	if g2.LastSeq != n || len(g2.Edges) != 1 || g2.Edges[0].Count != 256 {
		t.Errorf("fresh graph: lastSeq %d, edges %+v", g2.LastSeq, g2.Edges)
	}
}

// TestEventsStreamLimit: streams beyond MaxStreams are refused.
func TestEventsStreamLimit(t *testing.T) {
	p := startPipeline(t, observe.Config{Capacity: 8})
	_, url := startServer(t, Config{Source: p, MaxStreams: 1})
	sse := openEvents(t, url)
	var g Graph
	sse.mustNext(t, "graph", &g)
	resp, err := http.Get(url + "/events")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("second stream: %s, want 503", resp.Status)
	}
	if st := p.Stats(); st.Followers != 1 {
		t.Errorf("followers = %d, want 1", st.Followers)
	}
}

// TestPageAndAssets: the page and its pinned scripts come from the agent,
// with a policy that runs no other script, and nothing is loaded from a
// CDN.
func TestPageAndAssets(t *testing.T) {
	p := startPipeline(t, observe.Config{Capacity: 8})
	_, url := startServer(t, Config{Source: p})
	get := func(path string) (*http.Response, string) {
		t.Helper()
		resp, err := http.Get(url + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	resp, page := get("/")
	if resp.StatusCode != 200 || !strings.Contains(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /: %s %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self';") || !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("Content-Security-Policy = %q", csp)
	}
	if m := regexp.MustCompile(`(?i)(src|href)="(https?:)?//`).FindString(page); m != "" {
		t.Errorf("page loads from elsewhere: %s", m)
	}
	for _, src := range regexp.MustCompile(`(?:src|href)="([^"]+)"`).FindAllStringSubmatch(page, -1) {
		if src[1] == "data:," { // the empty favicon
			continue
		}
		if r, _ := get("/" + src[1]); r.StatusCode != 200 {
			t.Errorf("GET /%s: %s", src[1], r.Status)
		}
	}
	// the served Cytoscape is the pinned one
	_, js := get("/assets/cytoscape/cytoscape.min.js")
	sum := sha256.Sum256([]byte(js))
	version, err := os.ReadFile("assets/cytoscape/VERSION")
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(sum[:]); !strings.Contains(string(version), "dist/cytoscape.min.js sha256 "+got) {
		t.Errorf("cytoscape.min.js sha256 %s is not the one assets/cytoscape/VERSION pins", got)
	}
	if r, _ := get("/nope"); r.StatusCode != 404 {
		t.Errorf("GET /nope: %s", r.Status)
	}
}

// TestHostileLabelsJSON: hostile pod labels, policy names and paths reach
// the page as JSON strings with every markup character escaped (the page
// renders them with textContent; TestHostileLabelsBrowser checks that).
func TestHostileLabelsJSON(t *testing.T) {
	p := startPipeline(t, observe.Config{Capacity: 8})
	evil := pod("empire", `<script>alert(1)</script>`, `app=<img src=x onerror=alert(1)>`)
	r := rec(evil, deathstar1, flow.VerdictDenied, flow.Provenance{Policy: `empire/</script><script>alert(2)</script>`, Kind: flow.KindDeny})
	r.Path = `/<script>alert(3)</script>`
	p.Ingest(r)
	waitProcessed(t, p, 1)
	_, url := startServer(t, Config{Source: p})
	resp, err := http.Get(url + "/graph.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if strings.ContainsAny(string(b), "<>") {
		t.Errorf("graph.json carries raw markup characters: %s", b)
	}
	var g Graph
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	if g.Nodes[0].Name != `<img src=x onerror=alert(1)>` || g.Edges[0].Flows[0].Path != `/<script>alert(3)</script>` {
		t.Errorf("hostile strings did not survive as data: %+v", g)
	}
}
