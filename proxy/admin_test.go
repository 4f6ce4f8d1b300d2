package proxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestAdminProfiles: the admin socket serves the runtime's profiles (what
// the proxy's memory and goroutines are), a CPU profile and an execution
// trace for ?seconds=, and
// 404 for a profile that does not exist.
func TestAdminProfiles(t *testing.T) {
	p := New(Options{})
	defer p.Close()
	h := p.AdminHandler()
	get := func(path string) *httptest.ResponseRecorder {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
		return rec
	}
	if rec := get("/debug/pprof/goroutine?debug=1"); rec.Code != 200 || !strings.Contains(rec.Body.String(), "goroutine profile:") {
		t.Fatalf("goroutine profile: %d %.200q", rec.Code, rec.Body.String())
	}
	if rec := get("/debug/pprof/heap?gc=1"); rec.Code != 200 || rec.Body.Len() == 0 {
		t.Fatalf("heap profile: %d, %d bytes", rec.Code, rec.Body.Len())
	}
	if rec := get("/debug/pprof/profile?seconds=1"); rec.Code != 200 || rec.Body.Len() == 0 {
		t.Fatalf("CPU profile: %d, %d bytes", rec.Code, rec.Body.Len())
	}
	if rec := get("/debug/pprof/trace?seconds=1"); rec.Code != 200 || !strings.HasPrefix(rec.Body.String(), "go 1.") {
		t.Fatalf("execution trace: %d %.20q", rec.Code, rec.Body.String())
	}
	if rec := get("/debug/pprof/nonesuch"); rec.Code != 404 {
		t.Fatalf("unknown profile: %d, want 404", rec.Code)
	}
}

// TestAdminDrainAnsweredBeforeDrained: the proxy command exits as soon
// as the drain ends, so POST /drain must have its whole answer on the
// socket before the drain starts. Here the drain's end closes every
// admin connection at once, as the process's exit does.
func TestAdminDrainAnsweredBeforeDrained(t *testing.T) {
	for i := range 200 {
		p := New(Options{DrainTimeout: time.Second})
		srv := httptest.NewServer(p.AdminHandler())
		go func() { <-p.Drained(); srv.CloseClientConnections() }()
		resp, err := http.Post(srv.URL+"/drain", "", nil)
		if err != nil {
			t.Fatalf("try %d: POST /drain: %v", i, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusAccepted || !strings.HasPrefix(string(b), "DRAINING") {
			t.Fatalf("try %d: POST /drain: %d %q %v", i, resp.StatusCode, b, err)
		}
		srv.Close()
		p.Close()
	}
}

// TestAdminVersion: GET /version answers Options.Version (what the agent
// compares with its own on adopting a running proxy); 404 without one.
func TestAdminVersion(t *testing.T) {
	for _, tc := range []struct {
		version, body string
		code          int
	}{{"1.2.3+abc", "1.2.3+abc\n", 200}, {"", "", 404}} {
		p := New(Options{Version: tc.version})
		rec := httptest.NewRecorder()
		p.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/version", nil))
		p.Close()
		if rec.Code != tc.code || (tc.code == 200 && rec.Body.String() != tc.body) {
			t.Errorf("version %q: GET /version %d %q, want %d %q", tc.version, rec.Code, rec.Body.String(), tc.code, tc.body)
		}
	}
}
