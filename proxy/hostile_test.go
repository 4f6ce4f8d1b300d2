package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	httpparser "github.com/l7gate/l7gate/parsers/http"
	"github.com/l7gate/l7gate/policy"
)

// metric reads one sample from /stats/prometheus; ok is false when the
// series is missing.
func metric(t *testing.T, p *Proxy, series string) (int64, bool) {
	t.Helper()
	rec := httptest.NewRecorder()
	p.AdminHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/stats/prometheus", nil))
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\d+)$`).FindStringSubmatch(rec.Body.String())
	if m == nil {
		return 0, false
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	return n, true
}

func mustMetric(t *testing.T, p *Proxy, series string) int64 {
	t.Helper()
	n, ok := metric(t, p, series)
	if !ok {
		t.Fatalf("no series %s in /stats/prometheus", series)
	}
	return n
}

// headerEcho answers with the request's headers, one "Name: v1|v2" line
// each, sorted.
func headerEcho() *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var lines []string
		for name, vals := range r.Header {
			lines = append(lines, name+": "+strings.Join(vals, "|"))
		}
		sort.Strings(lines)
		io.WriteString(w, strings.Join(lines, "\n"))
	}))
}

// TestProxyHeaderMismatchActions: headerMatches mismatch actions are
// applied to the forwarded request as Cilium applies them and logged.
func TestProxyHeaderMismatchActions(t *testing.T) {
	srv := headerEcho()
	defer srv.Close()
	p, rec := newTestProxy(t, srv.Listener.Addr().String())
	port := freePort(t)
	upPort := uint16(srv.Listener.Addr().(*net.TCPAddr).Port)
	if err := p.Apply(httpConfig("1", port, upPort,
		policy.HTTPRule{Method: "GET", Path: "/api", Headers: []policy.HeaderMatch{
			{Name: "X-Log", Value: "expected", Mismatch: policy.MismatchLog},
			{Name: "X-Add", Value: "added", Mismatch: policy.MismatchAdd},
			{Name: "X-Del", Value: "good", Mismatch: policy.MismatchDelete},
			{Name: "X-Rep", Value: "fixed", Mismatch: policy.MismatchReplace},
			{Name: "X-Missing", Value: "filled", Mismatch: policy.MismatchReplace},
		}},
		policy.HTTPRule{Method: "GET", Path: "/framing", Headers: []policy.HeaderMatch{
			{Name: "Content-Length", Value: "5", Mismatch: policy.MismatchReplace},
		}},
	)); err != nil {
		t.Fatal(err)
	}
	c := dialFrom(t, "127.0.0.2", port)
	r := bufio.NewReader(c)
	do := func(raw string) (int, string) {
		t.Helper()
		io.WriteString(c, raw)
		resp, err := http.ReadResponse(r, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}
	// Every header mismatches.
	s, body := do("GET /api HTTP/1.1\r\nHost: web\r\nX-Add: orig\r\nX-Del: bad\r\nX-Rep: bad1\r\nX-Rep: bad2\r\n\r\n")
	want := "X-Add: orig|added\nX-Missing: filled\nX-Rep: fixed"
	if s != 200 || body != want {
		t.Errorf("mismatching request: %d, backend saw\n%s\nwant\n%s", s, body, want)
	}
	// Every header matches: nothing changes.
	s, body = do("GET /api HTTP/1.1\r\nHost: web\r\nX-Log: expected\r\nX-Add: added\r\nX-Del: good\r\nX-Rep: fixed\r\nX-Missing: filled\r\n\r\n")
	want = "X-Add: added\nX-Del: good\nX-Log: expected\nX-Missing: filled\nX-Rep: fixed"
	if s != 200 || body != want {
		t.Errorf("matching request: %d, backend saw\n%s\nwant\n%s", s, body, want)
	}
	// An action on a framing header is never applied: the request is denied.
	if s, body = do("GET /framing HTTP/1.1\r\nHost: web\r\n\r\n"); s != 403 {
		t.Errorf("REPLACE of Content-Length: %d %q, want 403", s, body)
	}
	recs := rec.waitFor(3)
	if len(recs) != 3 {
		t.Fatalf("%d access records", len(recs))
	}
	got := fmt.Sprint(recs[0].HeaderMismatches)
	wantLog := "[{LOG X-Log expected} {ADD X-Add added} {DELETE X-Del bad} {REPLACE X-Rep fixed} {REPLACE X-Missing filled}]"
	if got != wantLog {
		t.Errorf("access log header mismatches %s, want %s", got, wantLog)
	}
	if len(recs[1].HeaderMismatches) != 0 {
		t.Errorf("matching request logged %v", recs[1].HeaderMismatches)
	}
	if recs[2].Verdict != "denied" || !strings.Contains(recs[2].Error, "Content-Length") {
		t.Errorf("framing record: %+v", recs[2])
	}
}

// TestProxyPanicRecovered: a panic while handling one connection closes
// that connection, is counted, and every other connection keeps working.
func TestProxyPanicRecovered(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer srv.Close()
	up := netip.MustParseAddrPort(srv.Listener.Addr().String())
	no := false
	p := New(Options{
		ListenHost: "127.0.0.1", Transparent: &no,
		OriginalDestination: func(net.Conn) (netip.AddrPort, error) { return up, nil },
		HTTP: httpparser.Config{OnRequest: func(r *policy.HTTPRequest) {
			if strings.HasPrefix(r.Path, "/boom") {
				panic("injected parser fault")
			}
		}},
	})
	defer p.Close()
	port := freePort(t)
	if err := p.Apply(httpConfig("1", port, up.Port(), policy.HTTPRule{})); err != nil {
		t.Fatal(err)
	}
	keep := dialFrom(t, "127.0.0.2", port)
	kr := bufio.NewReader(keep)
	if s, _ := get(t, keep, kr, "/before"); s != 200 {
		t.Fatalf("before: %d", s)
	}
	// HTTP/1 and HTTP/2 connections that panic.
	bad := dialFrom(t, "127.0.0.2", port)
	io.WriteString(bad, "GET /boom HTTP/1.1\r\nHost: web\r\n\r\n")
	bad.SetReadDeadline(time.Now().Add(3 * time.Second))
	if b, err := io.ReadAll(bad); err != nil || len(b) != 0 {
		t.Errorf("panicking connection: read %q, %v; want it closed", b, err)
	}
	h2 := h2cClient(port)
	if resp, err := h2.Get("http://web/boom2"); err == nil {
		resp.Body.Close()
		t.Errorf("HTTP/2 request that panicked got a response: %d", resp.StatusCode)
	}
	if s, b := get(t, keep, kr, "/after"); s != 200 || b != "ok" {
		t.Errorf("other connection after the panics: %d %q", s, b)
	}
	fresh := dialFrom(t, "127.0.0.2", port)
	if s, _ := get(t, fresh, bufio.NewReader(fresh), "/new"); s != 200 {
		t.Errorf("new connection after the panics: %d", s)
	}
	deadline := time.Now().Add(3 * time.Second)
	for {
		n, _ := metric(t, p, "l7gate_proxy_connection_panics_total")
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("l7gate_proxy_connection_panics_total %d, want 2", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// h2cClient speaks HTTP/2 with prior knowledge to the proxy port.
func h2cClient(port uint16) *http.Client {
	var pr http.Protocols
	pr.SetUnencryptedHTTP2(true)
	return &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{Protocols: &pr,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
			return d.DialContext(ctx, "tcp", fmt.Sprintf("127.0.0.1:%d", port))
		}}}
}

// TestProxySelfDialRefused: the listeners bind in the node's own network
// namespace, so anything there can connect to a proxy port directly. Such
// a connection's original destination is the proxy itself: it must be
// closed, never dialed (which would loop until the connection limit).
func TestProxySelfDialRefused(t *testing.T) {
	no := false
	p := New(Options{ListenHost: "127.0.0.1", Transparent: &no, MaxConnections: 50})
	defer p.Close()
	httpPort, kafkaPort := freePort(t), freePort(t)
	cfg := httpConfig("1", httpPort, httpPort, policy.HTTPRule{})
	cfg.Listeners = append(cfg.Listeners, Listener{Name: "kafka-ingress", Port: kafkaPort, Direction: policy.Ingress, Parser: policy.ParserKafka})
	cfg.Endpoints[0].Ingress = append(cfg.Endpoints[0].Ingress, policy.L7RuleSet{Protocol: policy.ProtoTCP, Port: kafkaPort, Parser: policy.ParserKafka,
		Rules: []policy.L7Rule{{Peers: []policy.Identity{friend}, Kafka: &policy.KafkaRule{}}}})
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	for _, port := range []uint16{httpPort, kafkaPort} {
		// The proxy resets such a connection at once, possibly before the
		// dial returns.
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 3 * time.Second}
		c, err := d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue
		}
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: web\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		if b, _ := io.ReadAll(c); len(b) > 0 {
			t.Errorf("direct connection to port %d got an answer: %q", port, b)
		}
		c.Close()
	}
	time.Sleep(200 * time.Millisecond) // let a loop, if any, run into the limit
	accepted := mustMetric(t, p, "l7gate_proxy_connections_total")
	upstream, ok := metric(t, p, "l7gate_proxy_upstream_connections_total")
	t.Logf("accepted %d client connections, upstream %d (series present: %v)", accepted, upstream, ok)
	if accepted > 0 || !ok || upstream != 0 {
		t.Errorf("direct connections to the proxy ports: %d accepted, %d upstream connections (series present %v); want 0 and 0", accepted, upstream, ok)
	}
	if n, _ := metric(t, p, `l7gate_proxy_connections_rejected_total{reason="not_steered"}`); n != 2 {
		t.Errorf("rejected as not steered: %d, want 2", n)
	}
}

// TestProxyConnectionLimitPerSource: one source identity cannot take all
// connections; others still connect, and the refusals are counted.
func TestProxyConnectionLimitPerSource(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer srv.Close()
	up := netip.MustParseAddrPort(srv.Listener.Addr().String())
	no := false
	p := New(Options{ListenHost: "127.0.0.1", Transparent: &no, MaxConnectionsPerSource: 3,
		OriginalDestination: func(net.Conn) (netip.AddrPort, error) { return up, nil }})
	defer p.Close()
	port := freePort(t)
	if err := p.Apply(httpConfig("1", port, up.Port(), policy.HTTPRule{})); err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	for range 3 {
		c := dialFrom(t, "127.0.0.2", port)
		if s, _ := get(t, c, bufio.NewReader(c), "/"); s != 200 {
			t.Fatalf("connection within the limit: %d", s)
		}
		held = append(held, c)
	}
	// The proxy resets the fourth connection at accept; the reset may
	// reach the client before its connect() reports success (then the
	// dial itself fails with ECONNRESET) or after (then reads end empty).
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 3 * time.Second}
	if over, err := d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
		io.WriteString(over, "GET / HTTP/1.1\r\nHost: web\r\n\r\n")
		over.SetReadDeadline(time.Now().Add(3 * time.Second))
		if b, err := io.ReadAll(over); len(b) != 0 {
			t.Errorf("fourth connection of one identity got %q (%v); want it closed", b, err)
		}
		over.Close()
	} else if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("fourth connection of one identity: %v; want it reset", err)
	}
	other := dialFrom(t, "127.0.0.3", port)
	if s, _ := get(t, other, bufio.NewReader(other), "/"); s != 403 && s != 200 {
		t.Errorf("another identity: %d", s)
	}
	if n, _ := metric(t, p, `l7gate_proxy_connections_rejected_total{reason="per_source"}`); n != 1 {
		t.Errorf("rejected per source: %d, want 1", n)
	}
	held[0].Close()
	time.Sleep(100 * time.Millisecond)
	again := dialFrom(t, "127.0.0.2", port)
	if s, _ := get(t, again, bufio.NewReader(again), "/"); s != 200 {
		t.Errorf("after one connection of the identity closed: %d", s)
	}
}
