package http

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/l7gate/l7gate/policy"
)

// upstreamHandler answers like a small API: it echoes the method, path and
// a hash of the body, and counts requests.
type upstreamHandler struct {
	hits  atomic.Int64
	mu    sync.Mutex
	paths []string
}

func (u *upstreamHandler) ServeHTTP(w nethttp.ResponseWriter, r *nethttp.Request) {
	u.hits.Add(1)
	u.mu.Lock()
	u.paths = append(u.paths, r.URL.Path)
	u.mu.Unlock()
	body, _ := io.ReadAll(r.Body)
	sum := sha256.Sum256(body)
	switch r.URL.Path {
	case "/chunked":
		w.Header().Set("X-Echo", r.Method+" "+r.URL.RequestURI())
		fl := w.(nethttp.Flusher)
		for i := range 5 {
			fmt.Fprintf(w, "part %d;", i)
			fl.Flush()
		}
		return
	case "/nocontent":
		w.WriteHeader(204)
		return
	case "/big":
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Write(bytes.Repeat([]byte("0123456789abcdef"), 1<<16))
		return
	}
	w.Header().Set("X-Echo", r.Method+" "+r.URL.RequestURI())
	w.Header().Set("X-Body-SHA256", hex.EncodeToString(sum[:]))
	fmt.Fprintf(w, "%s %s %d", r.Method, r.URL.RequestURI(), len(body))
}

type testProxy struct {
	addr    string
	srv     *Server
	records chan *Record
	mu      sync.Mutex
	errs    []error
}

// startProxy runs ServeConn for every connection accepted on a loopback
// listener, dialing upstream for allowed requests.
func startProxy(t testing.TB, cfg Config, upstream string, decide Decider) *testProxy {
	t.Helper()
	return startServer(t, NewServer(cfg), upstream, decide)
}

// startServer is startProxy with srv.
func startServer(t testing.TB, srv *Server, upstream string, decide Decider) *testProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tp := &testProxy{addr: ln.Addr().String(), records: make(chan *Record, 1000)}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	tp.srv = srv
	t.Cleanup(func() {
		cancel()
		ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				dial := func(ctx context.Context) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, "tcp", upstream)
				}
				err := srv.ServeConn(ctx, c, dial, decide, func(r *Record) {
					select {
					case tp.records <- r:
					default:
					}
				})
				if err != nil {
					tp.mu.Lock()
					tp.errs = append(tp.errs, err)
					tp.mu.Unlock()
				}
			}()
		}
	}()
	return tp
}

// ruleDecider allows what rules allow, using the policy package's matcher.
func ruleDecider(t testing.TB, rules ...policy.HTTPRule) Decider {
	t.Helper()
	refs := make([]policy.HTTPRuleRef, len(rules))
	for i := range rules {
		refs[i] = policy.HTTPRuleRef{AnyPeer: true, Rule: &rules[i]}
	}
	m, err := policy.NewHTTPMatcher(refs)
	if err != nil {
		t.Fatal(err)
	}
	return func(req *policy.HTTPRequest) Decision {
		i := m.Match(1, req)
		if i < 0 {
			return Decision{}
		}
		return Decision{Allowed: true, DecidedBy: []policy.Provenance{{Policy: "ns/p", L7: fmt.Sprintf("http[%d]", i)}}}
	}
}

func newUpstream(t testing.TB) (*upstreamHandler, string) {
	h := &upstreamHandler{}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return h, srv.Listener.Addr().String()
}

func TestAllowDenyKeepAlive(t *testing.T) {
	up, upAddr := newUpstream(t)
	p := startProxy(t, Config{}, upAddr, ruleDecider(t,
		policy.HTTPRule{Method: "GET", Path: "/public/.*"},
		policy.HTTPRule{Method: "POST", Path: "/submit"},
		policy.HTTPRule{Method: "GET", Path: "/chunked|/nocontent|/big"},
		policy.HTTPRule{Method: "HEAD", Path: "/public/.*"},
	))
	client := &nethttp.Client{Transport: &nethttp.Transport{MaxConnsPerHost: 1}}
	reused := 0
	do := func(method, path, body string) (*nethttp.Response, string) {
		t.Helper()
		req, _ := nethttp.NewRequest(method, "http://"+p.addr+path, strings.NewReader(body))
		if body == "" {
			req.Body = nil
		}
		req = req.WithContext(httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
			if i.Reused {
				reused++
			}
		}}))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(b)
	}
	resp, body := do("GET", "/public/index.html?x=1", "")
	if resp.StatusCode != 200 || body != "GET /public/index.html?x=1 0" {
		t.Fatalf("allowed GET: %d %q", resp.StatusCode, body)
	}
	resp, body = do("DELETE", "/public/index.html", "")
	if resp.StatusCode != 403 || body != "Access denied" {
		t.Fatalf("denied DELETE: %d %q", resp.StatusCode, body)
	}
	// A denied request with a body: the body is dropped, the connection
	// stays usable.
	resp, body = do("POST", "/other", strings.Repeat("x", 100000))
	if resp.StatusCode != 403 || body != "Access denied" {
		t.Fatalf("denied POST: %d %q", resp.StatusCode, body)
	}
	payload := strings.Repeat("payload-", 50000)
	resp, body = do("POST", "/submit", payload)
	sum := sha256.Sum256([]byte(payload))
	if resp.StatusCode != 200 || resp.Header.Get("X-Body-SHA256") != hex.EncodeToString(sum[:]) {
		t.Fatalf("allowed POST body changed: %d %q", resp.StatusCode, body)
	}
	resp, body = do("GET", "/chunked", "")
	if resp.StatusCode != 200 || body != "part 0;part 1;part 2;part 3;part 4;" {
		t.Fatalf("chunked response: %d %q", resp.StatusCode, body)
	}
	resp, _ = do("GET", "/nocontent", "")
	if resp.StatusCode != 204 {
		t.Fatalf("204: %d", resp.StatusCode)
	}
	resp, body = do("HEAD", "/public/x", "")
	if resp.StatusCode != 200 || body != "" {
		t.Fatalf("HEAD: %d %q", resp.StatusCode, body)
	}
	resp, body = do("GET", "/big", "")
	if resp.StatusCode != 200 || len(body) != 16<<16 {
		t.Fatalf("big: %d %d bytes", resp.StatusCode, len(body))
	}
	if reused != 7 {
		t.Errorf("connection reused %d times, want 7 (denials must keep it open)", reused)
	}
	if got := up.hits.Load(); got != 6 {
		t.Errorf("upstream saw %d requests, want the 6 allowed", got)
	}
	// access log: one record per request, with verdicts and rules
	var recs []*Record
	for range 8 {
		select {
		case r := <-p.records:
			recs = append(recs, r)
		case <-time.After(2 * time.Second):
			t.Fatalf("only %d access records", len(recs))
		}
	}
	if recs[0].Status != 200 || !recs[0].Allowed || recs[0].DecidedBy[0].L7 != "http[0]" || recs[0].Path != "/public/index.html?x=1" {
		t.Errorf("record 0: %+v", recs[0])
	}
	if recs[1].Status != 403 || recs[1].Allowed || recs[1].Method != "DELETE" {
		t.Errorf("record 1: %+v", recs[1])
	}
}

// rawExchange writes raw bytes and reads everything until the proxy closes
// or the deadline passes.
func rawExchange(t *testing.T, addr, raw string, wait time.Duration) string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(raw)); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(wait))
	b, _ := io.ReadAll(c)
	return string(b)
}

func statusLines(resp string) []string {
	var out []string
	r := bufio.NewReader(strings.NewReader(resp))
	for {
		res, err := nethttp.ReadResponse(r, nil)
		if err != nil {
			return out
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		out = append(out, res.Status)
	}
}

func TestPipelining(t *testing.T) {
	_, upAddr := newUpstream(t)
	p := startProxy(t, Config{}, upAddr, ruleDecider(t, policy.HTTPRule{Method: "GET"}))
	raw := "GET /a HTTP/1.1\r\nHost: x\r\n\r\n" +
		"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello" +
		"GET /c HTTP/1.1\r\nHost: x\r\n\r\n" +
		"DELETE /d HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" +
		"GET /e HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
	resp := rawExchange(t, p.addr, raw, 5*time.Second)
	got := statusLines(resp)
	want := []string{"200 OK", "403 Forbidden", "200 OK", "403 Forbidden", "200 OK"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("responses %v, want %v\n%s", got, want, resp)
	}
	for _, path := range []string{"GET /a ", "GET /c ", "GET /e "} {
		if !strings.Contains(resp, path) {
			t.Errorf("response for %s missing or out of order", path)
		}
	}
}

// TestSmugglingRejected sends request-smuggling forms: each must be
// answered with an error and a closed connection, and nothing may reach the
// upstream.
func TestSmugglingRejected(t *testing.T) {
	up, upAddr := newUpstream(t)
	p := startProxy(t, Config{}, upAddr, func(*policy.HTTPRequest) Decision { return Decision{Allowed: true} })
	cases := map[string]struct{ raw, status string }{
		"CL.TE":                    {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", "400"},
		"TE.CL":                    {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n", "400"},
		"duplicate Content-Length": {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", "400"},
		"same duplicate CL":        {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", "400"},
		"CL with sign":             {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello", "400"},
		"CL list":                  {"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello", "400"},
		"obs-fold":                 {"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", "400"},
		"obs-fold TE":              {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n", "400"},
		"space before colon":       {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", "400"},
		"TE chunked, identity":     {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", "501"},
		"TE xchunked":              {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", "501"},
		"duplicate TE":             {"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "400"},
		"TE in HTTP/1.0":           {"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "400"},
		"bare LF":                  {"GET / HTTP/1.1\nHost: x\n\n", "400"},
		"bare LF in headers":       {"GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n", "400"},
		"NUL in header":            {"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", "400"},
		"missing Host":             {"GET / HTTP/1.1\r\n\r\n", "400"},
		"two Hosts":                {"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "400"},
		"absolute form":            {"GET http://evil/ HTTP/1.1\r\nHost: x\r\n\r\n", "400"},
		"HTTP/2 version":           {"GET / HTTP/2.0\r\nHost: x\r\n\r\n", "505"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			resp := rawExchange(t, p.addr, tc.raw, 3*time.Second)
			if !strings.HasPrefix(resp, "HTTP/1.1 "+tc.status+" ") || !strings.Contains(resp, "Connection: close") {
				t.Errorf("got %q, want status %s and Connection: close", resp, tc.status)
			}
		})
	}
	// invalid chunk sizes: the head is fine, so the request starts upstream,
	// but the broken body must end the connection and never complete there.
	chunkCases := map[string]string{
		"hex prefix":   "0x5\r\nhello\r\n0\r\n\r\n",
		"negative":     "-5\r\nhello\r\n0\r\n\r\n",
		"overflow":     "ffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
		"space":        "5 \r\nhello\r\n0\r\n\r\n",
		"missing CRLF": "5\r\nhelloX\r\n0\r\n\r\n",
		"empty size":   "\r\nhello\r\n0\r\n\r\n",
		"bare LF":      "5\nhello\r\n0\r\n\r\n",
	}
	for name, body := range chunkCases {
		t.Run("chunk "+name, func(t *testing.T) {
			resp := rawExchange(t, p.addr, "POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"+body+"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n", 3*time.Second)
			if strings.Contains(resp, "200 OK") {
				t.Errorf("a request with a broken chunked body got a 200: %q", resp)
			}
		})
	}
	up.mu.Lock()
	defer up.mu.Unlock()
	for _, p := range up.paths {
		if p != "/x" {
			t.Errorf("upstream received %s: a smuggled request got through", p)
		}
	}
}

func TestLimitsAndTimeouts(t *testing.T) {
	_, upAddr := newUpstream(t)
	p := startProxy(t, Config{HeaderTimeout: 300 * time.Millisecond, Limits: Limits{MaxHeaderBytes: 4096, MaxRequestLine: 1024, MaxHeaders: 10}}, upAddr,
		func(*policy.HTTPRequest) Decision { return Decision{Allowed: true} })
	for name, tc := range map[string]struct{ raw, status string }{
		"long request line": {"GET /" + strings.Repeat("a", 2000) + " HTTP/1.1\r\nHost: x\r\n\r\n", "414"},
		"large headers":     {"GET / HTTP/1.1\r\nHost: x\r\nX: " + strings.Repeat("b", 5000) + "\r\n\r\n", "431"},
		"many headers":      {"GET / HTTP/1.1\r\nHost: x\r\n" + strings.Repeat("X: y\r\n", 11) + "\r\n", "431"},
		"slow head":         {"GET / HTTP/1.1\r\nHost: x\r\n", "408"},
	} {
		t.Run(name, func(t *testing.T) {
			resp := rawExchange(t, p.addr, tc.raw, 3*time.Second)
			if !strings.HasPrefix(resp, "HTTP/1.1 "+tc.status+" ") {
				t.Errorf("got %q, want %s", resp, tc.status)
			}
		})
	}
	// An upstream that refuses: 503.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	p2 := startProxy(t, Config{}, dead, func(*policy.HTTPRequest) Decision { return Decision{Allowed: true} })
	if resp := rawExchange(t, p2.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 3*time.Second); !strings.HasPrefix(resp, "HTTP/1.1 503 ") {
		t.Errorf("refused upstream: %q", resp)
	}
}

// TestHeadTimeoutOnKeptAliveConnection: on a kept-alive connection the
// header timeout runs from a head's first byte (not the idle timeout),
// and a finished head's deadline does not cut the idle wait that follows.
func TestHeadTimeoutOnKeptAliveConnection(t *testing.T) {
	_, upAddr := newUpstream(t)
	const headTimeout = 300 * time.Millisecond
	p := startProxy(t, Config{HeaderTimeout: headTimeout, IdleTimeout: time.Minute}, upAddr,
		func(*policy.HTTPRequest) Decision { return Decision{Allowed: true} })
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	get := func() {
		t.Helper()
		fmt.Fprintf(c, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := nethttp.ReadResponse(r, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
	}
	get()
	// idle for longer than the header timeout: still open
	time.Sleep(3 * headTimeout)
	get()
	// a head that stalls half-way: 408 after the header timeout
	// sent is taken before the write: the proxy's timer starts when it
	// reads the first byte, which can be before Fprintf returns.
	sent := time.Now()
	fmt.Fprintf(c, "GET /x HTTP/1.1\r\nHost: x\r\n")
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := nethttp.ReadResponse(r, nil)
	if err != nil {
		t.Fatalf("stalled head: %v after %v", err, time.Since(sent))
	}
	if resp.StatusCode != 408 {
		t.Fatalf("stalled head: status %d", resp.StatusCode)
	}
	if waited := time.Since(sent); waited < headTimeout {
		t.Errorf("408 after %v, before the header timeout %v", waited, headTimeout)
	}
}

// TestRuleChangeAppliesToNextRequest: the decider is consulted per request,
// so a policy change applies on an existing connection.
func TestRuleChangeAppliesToNextRequest(t *testing.T) {
	_, upAddr := newUpstream(t)
	var allow atomic.Bool
	allow.Store(true)
	p := startProxy(t, Config{}, upAddr, func(*policy.HTTPRequest) Decision { return Decision{Allowed: allow.Load()} })
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	get := func() int {
		fmt.Fprintf(c, "GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := nethttp.ReadResponse(r, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode
	}
	if s := get(); s != 200 {
		t.Fatalf("first: %d", s)
	}
	allow.Store(false)
	if s := get(); s != 403 {
		t.Fatalf("after the change: %d", s)
	}
	allow.Store(true)
	if s := get(); s != 200 {
		t.Fatalf("after allowing again: %d", s)
	}
}

// TestUpgradeTunnel: an allowed WebSocket upgrade becomes a tunnel
// after the upstream's 101.
func TestUpgradeTunnel(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		req, err := nethttp.ReadRequest(r)
		if err != nil || req.Header.Get("Upgrade") != "websocket" {
			return
		}
		c.Write([]byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"))
		io.Copy(c, r)
	}()
	p := startProxy(t, Config{}, ln.Addr().String(), func(*policy.HTTPRequest) Decision { return Decision{Allowed: true} })
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nearly-bytes|")
	r := bufio.NewReader(c)
	resp, err := nethttp.ReadResponse(r, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	fmt.Fprintf(c, "after-upgrade")
	buf := make([]byte, len("early-bytes|after-upgrade"))
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.ReadFull(r, buf); err != nil || string(buf) != "early-bytes|after-upgrade" {
		t.Fatalf("tunnel echoed %q, %v", buf, err)
	}
}

// TestUpstreamFailureAnswered502: an upstream that closes without an
// answer, or answers with something that is no HTTP/1.1 response, gets
// the client a 502 with "Connection: close", and the request its access
// record (status 502 and the error): for a request without a body (the
// request side answers it itself) and with one (the response goroutine
// answers it). A 101 to a request that asked for no upgrade reaches the
// client (a 1xx is written as it comes) and ends the connection.
func TestUpstreamFailureAnswered502(t *testing.T) {
	for _, upstream := range []struct{ name, answer string }{
		{"closes", ""},
		{"garbage", "HTTP/1.1 abc\r\n\r\n"},
		{"101 unasked", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: upgrade\r\n\r\n"},
	} {
		for _, req := range []struct{ name, raw string }{
			{"GET", "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"},
			{"POST", "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"},
		} {
			t.Run(upstream.name+"/"+req.name, func(t *testing.T) {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { ln.Close() })
				go func() {
					for {
						c, err := ln.Accept()
						if err != nil {
							return
						}
						go func() {
							defer c.Close()
							r := bufio.NewReader(c)
							for {
								line, err := r.ReadString('\n')
								if err != nil || line == "\r\n" {
									break
								}
							}
							io.WriteString(c, upstream.answer)
						}()
					}
				}()
				p := startProxy(t, Config{}, ln.Addr().String(), func(*policy.HTTPRequest) Decision { return Decision{Allowed: true} })
				resp := rawExchange(t, p.addr, req.raw, 5*time.Second)
				want502 := upstream.name != "101 unasked"
				if want502 && (!strings.HasPrefix(resp, "HTTP/1.1 502 ") || !strings.Contains(resp, "Connection: close")) {
					t.Errorf("client got %q, want a 502 and Connection: close", resp)
				}
				if strings.Count(resp, "HTTP/1.1 ") > 1 {
					t.Errorf("client got more than one response: %q", resp)
				}
				select {
				case r := <-p.records:
					if want502 && r.Status != 502 || r.Error == "" || r.Method != req.name {
						t.Errorf("record %+v, want %s with status 502 and the error", r, req.name)
					}
				case <-time.After(3 * time.Second):
					t.Fatal("no access record")
				}
			})
		}
	}
}
