package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l7gate/l7gate/policy"
)

const (
	friend   policy.Identity = 300 // 127.0.0.2
	stranger policy.Identity = 301 // 127.0.0.3
	server   policy.Identity = 400 // 127.0.0.1, the local endpoint
)

type recorder struct {
	mu   sync.Mutex
	recs []*AccessRecord
}

// add keeps a copy of a (the proxy reuses its records after AccessLog
// returns).
func (r *recorder) add(a *AccessRecord) {
	c := *a
	r.mu.Lock()
	defer r.mu.Unlock()
	r.recs = append(r.recs, &c)
}

// waitFor returns the records once there are n (or after 3 s).
func (r *recorder) waitFor(n int) []*AccessRecord {
	deadline := time.Now().Add(3 * time.Second)
	for {
		recs := r.all()
		if len(recs) >= n || time.Now().After(deadline) {
			return recs
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitUntil returns the records once ok accepts them (or after 3 s): a
// record is logged after the verdict is written to the client, so the
// client seeing the verdict does not mean the record is there yet.
func (r *recorder) waitUntil(ok func([]*AccessRecord) bool) []*AccessRecord {
	deadline := time.Now().Add(3 * time.Second)
	for {
		recs := r.all()
		if ok(recs) || time.Now().After(deadline) {
			return recs
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (r *recorder) all() []*AccessRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*AccessRecord(nil), r.recs...)
}

// newTestProxy runs a Proxy on loopback whose connections' original
// destination is upstream (standing in for the datapath's redirect).
func newTestProxy(t *testing.T, upstream string) (*Proxy, *recorder) {
	t.Helper()
	up := netip.MustParseAddrPort(upstream)
	no := false
	rec := &recorder{}
	p := New(Options{
		ListenHost:          "127.0.0.1",
		Transparent:         &no,
		OriginalDestination: func(net.Conn) (netip.AddrPort, error) { return up, nil },
		AccessLog:           rec.add,
	})
	t.Cleanup(func() { p.Close() })
	return p, rec
}

func members() []IdentityMembership {
	return []IdentityMembership{
		{Identity: server, Prefixes: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}},
		{Identity: friend, Prefixes: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}},
		{Identity: stranger, Prefixes: []netip.Prefix{netip.MustParsePrefix("127.0.0.3/32")}},
	}
}

func httpConfig(version string, proxyPort, upstreamPort uint16, rules ...policy.HTTPRule) *Config {
	rs := policy.L7RuleSet{Protocol: policy.ProtoTCP, Port: upstreamPort, Parser: policy.ParserHTTP}
	for i := range rules {
		rs.Rules = append(rs.Rules, policy.L7Rule{Peers: []policy.Identity{friend}, HTTP: &rules[i],
			Origin: policy.Provenance{Policy: "ns/web", Direction: policy.Ingress, Kind: policy.KindAllow, Path: "spec.ingress[0]", L7: fmt.Sprintf("http[%d]", i)}})
	}
	return &Config{Version: version,
		Listeners: []Listener{{Name: "http-ingress", Port: proxyPort, Direction: policy.Ingress, Parser: policy.ParserHTTP}},
		Endpoints: []Endpoint{{Identity: server, IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Ingress: []policy.L7RuleSet{rs}}},
		Members:   members(),
	}
}

func freePort(t *testing.T) uint16 {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

// dialFrom connects to the proxy from a given loopback source address.
func dialFrom(t *testing.T, src string, port uint16) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 3 * time.Second}
	c, err := d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func get(t *testing.T, c net.Conn, r *bufio.Reader, path string) (int, string) {
	t.Helper()
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: web\r\n\r\n", path)
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b)
}

func TestProxyHTTPPolicyByIdentity(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "hello %s", r.URL.Path) }))
	defer srv.Close()
	p, rec := newTestProxy(t, srv.Listener.Addr().String())
	upPort := uint16(srv.Listener.Addr().(*net.TCPAddr).Port)
	port := freePort(t)

	// No config yet: nothing listens, connections are refused.
	if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
		c.Close()
		t.Fatal("a connection was accepted before any config")
	}
	if err := p.Apply(httpConfig("1", port, upPort, policy.HTTPRule{Method: "GET", Path: "/public/.*"})); err != nil {
		t.Fatal(err)
	}
	c := dialFrom(t, "127.0.0.2", port)
	r := bufio.NewReader(c)
	if s, b := get(t, c, r, "/public/a"); s != 200 || b != "hello /public/a" {
		t.Fatalf("friend allowed path: %d %q", s, b)
	}
	if s, b := get(t, c, r, "/private"); s != 403 || b != "Access denied" {
		t.Fatalf("friend denied path: %d %q", s, b)
	}
	c3 := dialFrom(t, "127.0.0.3", port)
	if s, _ := get(t, c3, bufio.NewReader(c3), "/public/a"); s != 403 {
		t.Fatalf("stranger: %d, want 403 (rules apply to the friend identity only)", s)
	}

	// A new config applies to the next request on the open connection.
	if err := p.Apply(httpConfig("2", port, upPort, policy.HTTPRule{Method: "GET", Path: "/private"})); err != nil {
		t.Fatal(err)
	}
	if s, _ := get(t, c, r, "/public/a"); s != 403 {
		t.Fatalf("after update, old path: %d", s)
	}
	if s, _ := get(t, c, r, "/private"); s != 200 {
		t.Fatalf("after update, new path: %d", s)
	}

	// An invalid config is rejected and the previous one stays in force.
	bad := httpConfig("3", port, upPort, policy.HTTPRule{Method: "GET", Path: "/public/.*"})
	bad.Listeners = append(bad.Listeners, Listener{Name: "dup", Port: port, Parser: policy.ParserHTTP})
	if err := p.Apply(bad); err == nil || !strings.Contains(err.Error(), `listener "dup": port`) {
		t.Fatalf("invalid config: %v", err)
	}
	if p.Config().Version != "2" {
		t.Fatalf("config version %s after a rejected update", p.Config().Version)
	}
	if s, _ := get(t, c, r, "/private"); s != 200 {
		t.Fatalf("after rejected update: %d", s)
	}

	// Access records carry identities, verdicts and the deciding rule. A
	// record is written after its response, so wait for the last one.
	recs := rec.waitFor(6)
	if len(recs) < 6 {
		t.Fatalf("%d access records", len(recs))
	}
	first := recs[0]
	if first.SrcIdentity != friend || first.DstIdentity != server || first.Verdict != "allowed" || first.Status != 200 ||
		first.Path != "/public/a" || len(first.DecidedBy) != 1 || first.DecidedBy[0].L7 != "http[0]" {
		t.Errorf("first record: %+v", first)
	}
	// Records of different connections may interleave: find the friend's
	// denial.
	var denied *AccessRecord
	for _, r := range recs {
		if r.Source.Addr() == netip.MustParseAddr("127.0.0.2") && r.Path == "/private" {
			denied = r
			break
		}
	}
	if denied == nil || denied.Verdict != "denied" || denied.Status != 403 || len(denied.DecidedBy) == 0 || denied.DecidedBy[0].Kind != policy.KindDefaultDeny {
		t.Errorf("denial record: %+v", denied)
	}

	// Removing the listener stops new connections.
	if err := p.Apply(&Config{Version: "4", Members: members()}); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
		c.Close()
		t.Fatal("listener still open after removal")
	}
}

func TestProxyNoPolicyForEndpointDenies(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer srv.Close()
	p, rec := newTestProxy(t, srv.Listener.Addr().String())
	port := freePort(t)
	cfg := httpConfig("1", port, 1, policy.HTTPRule{}) // rules for another port
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	c := dialFrom(t, "127.0.0.2", port)
	if s, b := get(t, c, bufio.NewReader(c), "/"); s != 403 || b != "Access denied" {
		t.Fatalf("no policy for the port: %d %q", s, b)
	}
	recs := rec.waitFor(1)
	if len(recs) != 1 || recs[0].DecidedBy[0].Policy != "l7gate/no-policy" {
		t.Fatalf("records: %+v", recs)
	}
}

func TestAdmin(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer srv.Close()
	p, _ := newTestProxy(t, srv.Listener.Addr().String())
	sock := t.TempDir() + "/admin.sock"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go p.ServeAdmin(ctx, sock)
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	fetch := func(path string) (int, string) {
		var resp *http.Response
		var err error
		for range 50 {
			resp, err = client.Get("http://admin" + path)
			if err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}
	if s, _ := fetch("/ready"); s != 503 {
		t.Errorf("/ready before config: %d", s)
	}
	port := freePort(t)
	if err := p.Apply(httpConfig("7", port, 80, policy.HTTPRule{Method: "GET"})); err != nil {
		t.Fatal(err)
	}
	if s, b := fetch("/ready"); s != 200 || b != "LIVE\n" {
		t.Errorf("/ready: %d %q", s, b)
	}
	s, b := fetch("/config_dump")
	if s != 200 || !strings.Contains(b, `"@type": "`+ConfigDumpType+`"`) || !strings.Contains(b, `"version": "7"`) || !strings.Contains(b, `"method": "GET"`) {
		t.Errorf("/config_dump: %d %s", s, b)
	}
	if s, b := fetch("/stats/prometheus"); s != 200 || !strings.Contains(b, `l7gate_proxy_config_updates_total{result="ack"} 1`) {
		t.Errorf("/stats/prometheus: %d %s", s, b)
	}
}

// TestProxyAccessIdentitiesFollowConfig: the records of a kept-alive
// connection carry the identities of the config in force at each request
// (the per-connection identity cache is keyed on the config): 127.0.0.2
// is the friend, then, after an update moves it to another identity,
// that identity.
func TestProxyAccessIdentitiesFollowConfig(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer srv.Close()
	p, rec := newTestProxy(t, srv.Listener.Addr().String())
	upPort := uint16(srv.Listener.Addr().(*net.TCPAddr).Port)
	port := freePort(t)
	if err := p.Apply(httpConfig("1", port, upPort, policy.HTTPRule{Method: "GET"})); err != nil {
		t.Fatal(err)
	}
	c := dialFrom(t, "127.0.0.2", port)
	r := bufio.NewReader(c)
	if s, _ := get(t, c, r, "/one"); s != 200 {
		t.Fatalf("first request: %d", s)
	}
	const moved policy.Identity = 301
	cfg := httpConfig("2", port, upPort, policy.HTTPRule{Method: "GET"})
	cfg.Members = []IdentityMembership{
		{Identity: server, Prefixes: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}},
		{Identity: moved, Prefixes: []netip.Prefix{netip.MustParsePrefix("127.0.0.2/32")}},
	}
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	// 127.0.0.2 is no friend now: the rule (for the friend) denies it.
	if s, _ := get(t, c, r, "/two"); s != 403 {
		t.Fatalf("second request: %d, want 403", s)
	}
	recs := rec.waitUntil(func(rs []*AccessRecord) bool { return len(rs) >= 2 })
	if len(recs) != 2 {
		t.Fatalf("%d records, want 2", len(recs))
	}
	if recs[0].Path != "/one" || recs[0].SrcIdentity != friend || recs[0].DstIdentity != server {
		t.Errorf("first record: path %s, identities %d → %d, want %d → %d", recs[0].Path, recs[0].SrcIdentity, recs[0].DstIdentity, friend, server)
	}
	if recs[1].Path != "/two" || recs[1].SrcIdentity != moved || recs[1].DstIdentity != server || recs[1].Verdict != "denied" {
		t.Errorf("second record: path %s, identities %d → %d (%s), want %d → %d (denied)", recs[1].Path, recs[1].SrcIdentity, recs[1].DstIdentity, recs[1].Verdict, moved, server)
	}
}
