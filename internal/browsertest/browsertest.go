// Package browsertest drives pages in a real headless browser (Debian's
// chromium, through chromedp) for tests: the service map's page tests in
// observe/servicemap and demo. It is test-only.
package browsertest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Browser is the executable tests run: chromium (hack/install-deps.sh
// installs it).
const Browser = "chromium"

// Page is a tab of a headless chromium, open for one test.
type Page struct {
	// Ctx is the chromedp context of the tab (bounded by Open's timeout).
	Ctx context.Context

	mu      sync.Mutex
	console []string
}

// Console returns what the page wrote to its console so far (calls of the
// console API, uncaught exceptions, the browser's log: CSP violations).
func (p *Page) Console() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.console)
}

// Open starts a headless chromium for the test (ended with it). Without
// chromium on PATH the test is skipped, unless CI is set (CI installs it:
// a missing browser is then a failure).
func Open(t *testing.T, timeout time.Duration) *Page {
	t.Helper()
	exe, err := exec.LookPath(Browser)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("needs %s on PATH (hack/install-deps.sh installs it)", Browser)
		}
		t.Skipf("needs %s on PATH (hack/install-deps.sh installs it)", Browser)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(exe),
		chromedp.NoSandbox, // tests run as root, where chromium refuses its sandbox
		chromedp.DisableGPU,
		chromedp.WindowSize(1400, 800),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-dev-shm-usage", true),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	bctx, cancelBrowser := chromedp.NewContext(actx)
	start := time.Now()
	// The first Run starts the browser; its context must have no timeout.
	if err := chromedp.Do(bctx); err != nil {
		cancelBrowser()
		cancelAlloc()
		t.Fatalf("start %s: %v", exe, err)
	}
	t.Logf("%s started in %s", Browser, time.Since(start).Round(time.Millisecond))
	p := &Page{}
	cctx, stopConsole := context.WithCancel(bctx)
	messages := chromedp.Console(cctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range messages {
			if err != nil {
				return
			}
			p.mu.Lock()
			p.console = append(p.console, m.String())
			p.mu.Unlock()
		}
	}()
	ctx, cancelTimeout := context.WithTimeout(bctx, timeout)
	p.Ctx = ctx
	t.Cleanup(func() {
		stopConsole()
		<-done
		for _, m := range p.Console() {
			t.Logf("page console: %s", m)
		}
		cancelTimeout()
		cancelBrowser()
		cancelAlloc()
	})
	return p
}

// WaitJS evaluates expr (a boolean JavaScript expression) until it is
// true (or the page's timeout).
func (p *Page) WaitJS(expr string) error {
	return p.waitJS(p.Ctx, expr)
}

// WaitJSFor is WaitJS bounded by d.
func (p *Page) WaitJSFor(expr string, d time.Duration) error {
	ctx, cancel := context.WithTimeout(p.Ctx, d)
	defer cancel()
	return p.waitJS(ctx, expr)
}

func (p *Page) waitJS(ctx context.Context, expr string) error {
	for {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
		if err != nil {
			return fmt.Errorf("evaluate %s: %w", expr, err)
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", expr, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Eval evaluates expr and decodes its value into T.
func Eval[T any](p *Page, expr string) (T, error) {
	return chromedp.Run(p.Ctx, chromedp.Evaluate[T](expr))
}

// ArtifactDir is where a test saves what it wants kept (screenshots):
// $L7GATE_ARTIFACTS when set (created), else the test's temp dir.
func ArtifactDir(t *testing.T) string {
	t.Helper()
	if d := os.Getenv("L7GATE_ARTIFACTS"); d != "" {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatalf("artifacts: %v", err)
		}
		return d
	}
	return t.TempDir()
}

// Screenshot saves a PNG of the whole page as name in ArtifactDir and
// returns its path.
func (p *Page) Screenshot(t *testing.T, name string) string {
	t.Helper()
	png, err := chromedp.Run(p.Ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	path := filepath.Join(ArtifactDir(t), name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	t.Logf("screenshot %s (%d bytes)", path, len(png))
	return path
}

// MapEdge is an edge as the service-map page (observe/servicemap) draws
// it: its ends' names and namespaces, verdict class, policy, the colour
// Cytoscape renders its line in, and its midpoint on the page.
type MapEdge struct {
	ID        string  `json:"id"`
	Source    string  `json:"source"`
	SourceNS  string  `json:"sourceNs"`
	Target    string  `json:"target"`
	TargetNS  string  `json:"targetNs"`
	Verdict   string  `json:"verdict"`
	Policy    string  `json:"policy"`
	Label     string  `json:"label"`
	LineColor string  `json:"lineColor"`
	X         float64 `json:"x"`
	Y         float64 `json:"y"`
}

// MapEdges returns the visible edges of the service-map page, once its
// layout settled.
func (p *Page) MapEdges() ([]MapEdge, error) {
	if err := p.WaitJS(`window.serviceMap && window.serviceMap.state.connected && !window.serviceMap.state.layoutPending`); err != nil {
		return nil, err
	}
	return Eval[[]MapEdge](p, `(() => {
		const box = document.getElementById('cy').getBoundingClientRect();
		return window.serviceMap.cy.edges().filter(e => e.visible()).map(e => {
			const m = e.renderedMidpoint();
			return { id: e.id(), source: e.source().data('name'), sourceNs: e.source().data('namespace'),
				target: e.target().data('name'), targetNs: e.target().data('namespace'), verdict: e.data('verdict'),
				policy: e.data('policy'), label: e.data('label'), lineColor: e.style('line-color'),
				x: box.left + m.x, y: box.top + m.y };
		});
	})()`)
}

// MapNodes returns the names ("namespace/name", or the name of an
// entity) of the visible nodes of the service-map page.
func (p *Page) MapNodes() ([]string, error) {
	return Eval[[]string](p, `window.serviceMap.cy.nodes().filter(n => n.visible()).map(n =>
		(n.data('namespace') ? n.data('namespace') + '/' : '') + n.data('name')).sort()`)
}

// ClickEdge clicks the service-map edge id where the page draws it, until
// the page selected it. The edge is raised above the others first
// (parallel edges between two workloads and their labels overlap near the
// midpoint, so the click could land on another one), and new flows may
// move the layout between reading the position and clicking: it retries.
func (p *Page) ClickEdge(id string) error {
	for range 10 {
		if _, err := Eval[bool](p, fmt.Sprintf(`(() => { const e = window.serviceMap.cy.getElementById(%q); e.style('z-index', 9999); return e.nonempty(); })()`, id)); err != nil {
			return err
		}
		edges, err := p.MapEdges()
		if err != nil {
			return err
		}
		i := slices.IndexFunc(edges, func(e MapEdge) bool { return e.ID == id })
		if i < 0 {
			return fmt.Errorf("edge %s is not on the page", id)
		}
		if err := p.Click(edges[i].X, edges[i].Y); err != nil {
			return err
		}
		if p.WaitJSFor(fmt.Sprintf("window.serviceMap.state.selected === %q", id), 2*time.Second) == nil {
			return nil
		}
	}
	return fmt.Errorf("clicking edge %s did not select it", id)
}

// Click clicks the page at x, y (page coordinates).
func (p *Page) Click(x, y float64) error {
	return chromedp.Do(p.Ctx, chromedp.MouseClickXY(x, y))
}

// Navigate opens url and waits for its document to load.
func (p *Page) Navigate(url string) error {
	return chromedp.Do(p.Ctx, chromedp.Navigate(url))
}
