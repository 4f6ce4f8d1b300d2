package proxy

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/l7gate/l7gate/policy"
)

// TestBenchRelayOnlyInItsBuild: a request the policy denies is answered
// 403 by every build but make bench's splice relay (-tags
// l7gate_benchrelay), whose proxy copies the bytes to the upstream
// unparsed and records nothing. Run it both ways: `go test ./proxy` and
// `go test -tags l7gate_benchrelay -run TestBenchRelay ./proxy`.
func TestBenchRelayOnlyInItsBuild(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "hello %s", r.URL.Path) }))
	defer srv.Close()
	p, rec := newTestProxy(t, srv.Listener.Addr().String())
	port := freePort(t)
	if err := p.Apply(httpConfig("1", port, uint16(srv.Listener.Addr().(*net.TCPAddr).Port), policy.HTTPRule{Method: "GET", Path: "/public/.*"})); err != nil {
		t.Fatal(err)
	}
	c := dialFrom(t, "127.0.0.3", port) // a stranger: no rule allows it
	r := bufio.NewReader(c)
	s, b := get(t, c, r, "/private")
	if !benchRelayBuild {
		if s != 403 {
			t.Fatalf("default build: a denied request got %d %q, want 403", s, b)
		}
		return
	}
	if s != 200 || b != "hello /private" {
		t.Fatalf("relay build: %d %q, want the upstream's 200 (bytes copied, no policy)", s, b)
	}
	// the same connection carries the next request: a byte stream, both ways
	if s, b := get(t, c, r, "/again"); s != 200 || b != "hello /again" {
		t.Fatalf("relay build, second request: %d %q", s, b)
	}
	if n := len(rec.all()); n != 0 {
		t.Fatalf("relay build wrote %d access records", n)
	}
}
