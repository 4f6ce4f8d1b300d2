package proxy

import (
	"net/http/httptest"
	"strings"
	"testing"
)

// TestAdminProfiles: the admin socket serves the runtime's profiles (what
// the proxy's memory and goroutines are), a CPU profile for ?seconds=, and
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
	if rec := get("/debug/pprof/nonesuch"); rec.Code != 404 {
		t.Fatalf("unknown profile: %d, want 404", rec.Code)
	}
}
