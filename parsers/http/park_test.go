package http

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/l7gate/l7gate/policy"
)

// parkProxy serves connections with Server.Serve and a Poller (its delay
// short), each connection's goroutine and every resumed one started by
// run; it checks that done comes exactly once per connection.
type parkProxy struct {
	addr    string
	srv     *Server
	poller  *Poller
	cancel  context.CancelFunc
	drain   context.CancelFunc
	wg      sync.WaitGroup
	open    atomic.Int64 // connections whose done has not come
	records chan *Record
	mu      sync.Mutex
	errs    []error // what done received (non-nil)
	twice   int     // done calls beyond the first of a connection
}

func startParkProxy(t testing.TB, cfg Config, upstream string, decide Decider) *parkProxy {
	t.Helper()
	pp := &parkProxy{records: make(chan *Record, 1000)}
	run := func(job func()) {
		pp.wg.Add(1)
		go func() {
			defer pp.wg.Done()
			job()
		}()
	}
	poller, err := NewPoller(run)
	if err != nil {
		t.Fatal(err)
	}
	poller.delay = 50 * time.Millisecond
	pp.poller = poller
	drainCtx, drain := context.WithCancel(context.Background())
	pp.drain = drain
	cfg.Poller, cfg.Drain = poller, drainCtx
	pp.srv = NewServer(cfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pp.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	pp.cancel = cancel
	var accepting sync.WaitGroup
	t.Cleanup(func() {
		cancel()
		ln.Close()
		accepting.Wait()
		for deadline := time.Now().Add(10 * time.Second); pp.open.Load() > 0; {
			if time.Now().After(deadline) {
				t.Errorf("%d connections did not end after the context was cancelled", pp.open.Load())
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		poller.Close()
		pp.wg.Wait()
		drain()
		pp.mu.Lock()
		defer pp.mu.Unlock()
		if pp.twice > 0 {
			t.Errorf("done came %d times more than once per connection", pp.twice)
		}
	})
	accepting.Add(1)
	go func() {
		defer accepting.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			pp.open.Add(1)
			var calls atomic.Int32
			dial := func(ctx context.Context) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "tcp", upstream)
			}
			access := func(r *Record) {
				select {
				case pp.records <- r:
				default:
				}
			}
			run(func() {
				pp.srv.Serve(ctx, c, dial, decide, access, func(err error) {
					pp.mu.Lock()
					if calls.Add(1) > 1 {
						pp.twice++
					} else {
						pp.open.Add(-1)
					}
					if err != nil {
						pp.errs = append(pp.errs, err)
					}
					pp.mu.Unlock()
				})
			})
		}
	}()
	return pp
}

// waitFor polls cond for up to 10 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (pp *parkProxy) waitParked(t testing.TB, n int) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d connections parked", n), func() bool { return pp.poller.Parked() == n })
}

func (pp *parkProxy) errors() []error {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	return append([]error(nil), pp.errs...)
}

// connGoroutines counts the goroutines serving a connection in this
// package (a session's sides, a Serve or ServeConn, an HTTP/2
// connection's readers).
func connGoroutines() int {
	buf := make([]byte, 64<<20)
	n := runtime.Stack(buf, true)
	count := 0
	for _, g := range bytes.Split(buf[:n], []byte("\n\ngoroutine ")) {
		if bytes.Contains(g, []byte("parsers/http.(*session)")) || bytes.Contains(g, []byte("parsers/http.(*Server).serve")) ||
			bytes.Contains(g, []byte("parsers/http.(*h2Conn)")) {
			count++
		}
	}
	return count
}

// pollerGoroutines counts the goroutines of pollers.
func pollerGoroutines() int {
	buf := make([]byte, 64<<20)
	n := runtime.Stack(buf, true)
	return bytes.Count(buf[:n], []byte("parsers/http.(*Poller).loop"))
}

// TestParkedConnectionsHoldNoGoroutine: 1000 idle kept-alive connections
// (each carried one request) hold no goroutine once parked, and each one
// serves its next request.
func TestParkedConnectionsHoldNoGoroutine(t *testing.T) {
	const n = 1000
	upstream := tinyUpstream(t)
	pp := startParkProxy(t, Config{}, upstream, ruleDecider(t, policy.HTTPRule{Method: "GET", Path: "/api/.*"}))
	conns := openIdleConns(t, pp.addr, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	pp.waitParked(t, n)
	if g := connGoroutines(); g > n/100 {
		t.Fatalf("%d goroutines serve %d idle connections, want none (at most %d)", g, n, n/100)
	}
	t.Logf("%d parked connections, %d connection goroutines, %d goroutines in all", pp.poller.Parked(), connGoroutines(), runtime.NumGoroutine())
	var buf [256]byte
	want := "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	for _, c := range conns {
		if _, err := io.WriteString(c, "GET /api/v1/items HTTP/1.1\r\nHost: bench\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(c, buf[:len(want)]); err != nil || string(buf[:len(want)]) != want {
			t.Fatalf("after parking: %q, %v", buf[:len(want)], err)
		}
	}
	pp.waitParked(t, n)
	for _, c := range conns {
		c.Close()
	}
	waitFor(t, "every connection ended", func() bool { return pp.open.Load() == 0 })
	if k := pp.poller.Parked(); k != 0 {
		t.Fatalf("%d connections still parked after the clients closed", k)
	}
	if errs := pp.errors(); len(errs) > 0 {
		t.Fatalf("connections ended with errors: %v", errs[0])
	}
}

// readResp reads one response and its body.
func readResp(t testing.TB, c net.Conn, r *bufio.Reader) (*nethttp.Response, string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := nethttp.ReadResponse(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// expectClosed reads until the server closes c (EOF or a reset).
func expectClosed(t testing.TB, c net.Conn, r *bufio.Reader) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(r)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open (read %q)", b)
	}
	if len(b) > 0 {
		t.Fatalf("read %q before the close", b)
	}
}

// TestParkedRequestDecided: the first request after a wake-up is parsed
// and decided like any other, with pipelined requests that come with it:
// allowed, denied, a body, a malformed one.
func TestParkedRequestDecided(t *testing.T) {
	up, upAddr := newUpstream(t)
	pp := startParkProxy(t, Config{}, upAddr, ruleDecider(t, policy.HTTPRule{Method: "GET"}, policy.HTTPRule{Method: "POST"}))
	c, err := net.Dial("tcp", pp.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	check := func(wantStatus int, wantEcho string) *nethttp.Response {
		t.Helper()
		resp, _ := readResp(t, c, r)
		if resp.StatusCode != wantStatus || resp.Header.Get("X-Echo") != wantEcho {
			t.Fatalf("got %d %q, want %d %q", resp.StatusCode, resp.Header.Get("X-Echo"), wantStatus, wantEcho)
		}
		return resp
	}
	io.WriteString(c, "GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
	check(200, "GET /first")
	pp.waitParked(t, 1)
	if g := connGoroutines(); g != 0 {
		t.Fatalf("%d goroutines serve the parked connection", g)
	}

	// Woken by a denied request.
	io.WriteString(c, "PUT /denied HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
	check(403, "")
	pp.waitParked(t, 1)

	// Woken by pipelined requests (allowed, denied, a body) in one write.
	io.WriteString(c, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"+
		"DELETE /denied HTTP/1.1\r\nHost: x\r\n\r\n"+
		"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
	check(200, "GET /a")
	check(403, "")
	resp := check(200, "POST /b")
	if sum := sha256.Sum256([]byte("hello")); resp.Header.Get("X-Body-SHA256") != hex.EncodeToString(sum[:]) {
		t.Fatalf("POST /b body hash %s", resp.Header.Get("X-Body-SHA256"))
	}
	pp.waitParked(t, 1)

	// Woken by a head split across writes.
	io.WriteString(c, "GET /sp")
	time.Sleep(20 * time.Millisecond)
	io.WriteString(c, "lit HTTP/1.1\r\nHost: x\r\n\r\n")
	check(200, "GET /split")
	pp.waitParked(t, 1)

	// Woken by a malformed request: 400, closed.
	io.WriteString(c, "GET /bad HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
	check(400, "")
	expectClosed(t, c, r)
	waitFor(t, "the connection ended", func() bool { return pp.open.Load() == 0 })
	if got := up.hits.Load(); got != 4 {
		t.Fatalf("upstream saw %d requests, want 4 (no denied or malformed one)", got)
	}
	var denied int
	for len(pp.records) > 0 {
		if rec := <-pp.records; !rec.Allowed && rec.Status == 403 {
			denied++
		}
	}
	if denied != 2 {
		t.Fatalf("%d denial records, want 2", denied)
	}
}

// TestParkedIdleTimeout: a parked connection is closed at its idle
// timeout, not before.
func TestParkedIdleTimeout(t *testing.T) {
	_, upAddr := newUpstream(t)
	const idle = 400 * time.Millisecond
	pp := startParkProxy(t, Config{IdleTimeout: idle}, upAddr, ruleDecider(t, policy.HTTPRule{Method: "GET"}))
	c, err := net.Dial("tcp", pp.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	sent := time.Now() // (the idle wait begins after this)
	io.WriteString(c, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
	readResp(t, c, r)
	pp.waitParked(t, 1)
	expectClosed(t, c, r)
	if took := time.Since(sent); took < idle {
		t.Fatalf("closed %s after the request, before the idle timeout %s", took, idle)
	}
	waitFor(t, "the connection ended", func() bool { return pp.open.Load() == 0 })
	if k := pp.poller.Parked(); k != 0 {
		t.Fatalf("%d connections parked after the idle timeout", k)
	}
}

// liveUpstream answers every request head with a 2-byte body, counts its
// open connections and can close them all.
type liveUpstream struct {
	addr  string
	open  atomic.Int64
	mu    sync.Mutex
	conns []net.Conn
}

func newLiveUpstream(t *testing.T) *liveUpstream {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &liveUpstream{addr: ln.Addr().String()}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); u.closeAll(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.open.Add(1)
			u.mu.Lock()
			u.conns = append(u.conns, c)
			u.mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer u.open.Add(-1)
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					req, err := nethttp.ReadRequest(br)
					if err != nil {
						return
					}
					io.Copy(io.Discard, req.Body)
					if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); err != nil {
						return
					}
				}
			}()
		}
	}()
	return u
}

func (u *liveUpstream) closeAll() {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, c := range u.conns {
		c.Close()
	}
	u.conns = nil
}

// TestParkedClientClose: a client that closes its parked connection ends
// it (done, the upstream connection closed, nothing left parked).
func TestParkedClientClose(t *testing.T) {
	u := newLiveUpstream(t)
	pp := startParkProxy(t, Config{}, u.addr, ruleDecider(t, policy.HTTPRule{Method: "GET"}))
	var cs []net.Conn
	for range 5 {
		c, err := net.Dial("tcp", pp.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
		if resp, _ := readResp(t, c, bufio.NewReader(c)); resp.StatusCode != 200 {
			t.Fatalf("status %d", resp.StatusCode)
		}
		cs = append(cs, c)
	}
	pp.waitParked(t, 5)
	for _, c := range cs[:3] {
		c.Close()
	}
	waitFor(t, "3 connections ended", func() bool { return pp.open.Load() == 2 })
	waitFor(t, "their upstream connections closed", func() bool { return u.open.Load() == 2 })
	if k := pp.poller.Parked(); k != 2 {
		t.Fatalf("%d connections parked, want 2", k)
	}
	// (half-closed: a client that shuts its write side down)
	cs[3].(*net.TCPConn).CloseWrite()
	waitFor(t, "the half-closed connection ended", func() bool { return pp.open.Load() == 1 })
	if errs := pp.errors(); len(errs) > 0 {
		t.Fatalf("connections ended with errors: %v", errs)
	}
}

// TestParkedUpstreamClose: an upstream that closes its connection while
// the client's is parked: the client's next request gets what it gets
// without parking (the proxy notices on that request: 502, closed).
func TestParkedUpstreamClose(t *testing.T) {
	for _, park := range []bool{false, true} {
		t.Run(fmt.Sprintf("park=%v", park), func(t *testing.T) {
			u := newLiveUpstream(t)
			decide := ruleDecider(t, policy.HTTPRule{Method: "GET"})
			var addr string
			if park {
				pp := startParkProxy(t, Config{}, u.addr, decide)
				addr = pp.addr
				defer func() { pp.waitParked(t, 0) }()
			} else {
				addr = startProxy(t, Config{}, u.addr, decide).addr
			}
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			r := bufio.NewReader(c)
			io.WriteString(c, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
			readResp(t, c, r)
			time.Sleep(150 * time.Millisecond) // (parked, with park)
			u.closeAll()
			waitFor(t, "the upstream closed", func() bool { return u.open.Load() == 0 })
			time.Sleep(50 * time.Millisecond)
			io.WriteString(c, "GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
			resp, _ := readResp(t, c, r)
			if resp.StatusCode != 502 {
				t.Fatalf("status %d after the upstream closed, want 502", resp.StatusCode)
			}
			expectClosed(t, c, r)
		})
	}
}

// TestParkedDrain: a drain closes a parked connection once it was idle
// for drainIdleGrace, as any idle connection (at once if it was idle that
// long: from the poller's heap, no goroutine meanwhile), never before.
func TestParkedDrain(t *testing.T) {
	u := newLiveUpstream(t)
	pp := startParkProxy(t, Config{}, u.addr, ruleDecider(t, policy.HTTPRule{Method: "GET"}))
	open := func() (net.Conn, *bufio.Reader, time.Time) {
		c, err := net.Dial("tcp", pp.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		r := bufio.NewReader(c)
		sent := time.Now() // (its idle wait begins after this)
		io.WriteString(c, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
		readResp(t, c, r)
		return c, r, sent
	}
	long, longR, _ := open()
	pp.waitParked(t, 1)
	time.Sleep(drainIdleGrace + 100*time.Millisecond)
	var cs []net.Conn
	var rs []*bufio.Reader
	var sent []time.Time
	for range 3 {
		c, r, s := open()
		cs, rs, sent = append(cs, c), append(rs, r), append(sent, s)
	}
	pp.waitParked(t, 4)
	start := time.Now()
	pp.drain()
	expectClosed(t, long, longR)
	t.Logf("a connection parked for longer than the grace closed %s after the drain began", time.Since(start).Round(time.Millisecond))
	for i := range cs {
		expectClosed(t, cs[i], rs[i])
		if idle := time.Since(sent[i]); idle < drainIdleGrace {
			t.Fatalf("closed %s after its request, before the drain's idle grace %s", idle, drainIdleGrace)
		}
	}
	t.Logf("connections parked briefly closed %s after the drain began", time.Since(start).Round(time.Millisecond))
	waitFor(t, "the connections ended", func() bool { return pp.open.Load() == 0 })
	waitFor(t, "their upstream connections closed", func() bool { return u.open.Load() == 0 })
	if k := pp.poller.Parked(); k != 0 {
		t.Fatalf("%d connections parked after the drain", k)
	}
	if g := connGoroutines(); g != 0 {
		t.Fatalf("%d connection goroutines after the drain", g)
	}
}

// TestParkedContextCancelled: cancelling the connections' context (the
// proxy's Close) ends parked connections, and with the poller closed no
// goroutine or epoll descriptor is left.
func TestParkedContextCancelled(t *testing.T) {
	eps := func() int {
		n := 0
		fds, _ := os.ReadDir("/proc/self/fd")
		for _, fd := range fds {
			if l, err := os.Readlink("/proc/self/fd/" + fd.Name()); err == nil && strings.Contains(l, "eventpoll") {
				n++
			}
		}
		return n
	}
	pollers0, eps0 := pollerGoroutines(), eps()
	u := newLiveUpstream(t)
	pp := startParkProxy(t, Config{}, u.addr, ruleDecider(t, policy.HTTPRule{Method: "GET"}))
	if eps() != eps0+1 || pollerGoroutines() != pollers0+1 {
		t.Fatalf("a poller: %d epoll descriptors and %d poller goroutines more", eps()-eps0, pollerGoroutines()-pollers0)
	}
	var cs []net.Conn
	for range 20 {
		c, err := net.Dial("tcp", pp.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		io.WriteString(c, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
		readResp(t, c, bufio.NewReader(c))
		cs = append(cs, c)
	}
	pp.waitParked(t, 20)
	pp.cancel()
	for _, c := range cs {
		expectClosed(t, c, bufio.NewReader(c))
	}
	waitFor(t, "the connections ended", func() bool { return pp.open.Load() == 0 })
	if k := pp.poller.Parked(); k != 0 {
		t.Fatalf("%d connections parked after the cancel", k)
	}
	pp.poller.Close()
	pp.wg.Wait()
	if g := connGoroutines(); g != 0 {
		t.Fatalf("%d connection goroutines left", g)
	}
	if eps() != eps0 || pollerGoroutines() != pollers0 {
		t.Fatalf("after Close: %d epoll descriptors and %d poller goroutines more", eps()-eps0, pollerGoroutines()-pollers0)
	}
}

// TestParkedPanicAfterResume: a panic while serving a resumed connection
// ends it with a PanicError for done (once), and nothing else.
func TestParkedPanicAfterResume(t *testing.T) {
	u := newLiveUpstream(t)
	cfg := Config{OnRequest: func(r *policy.HTTPRequest) {
		if r.Path == "/boom" {
			panic("injected fault")
		}
	}}
	pp := startParkProxy(t, cfg, u.addr, ruleDecider(t, policy.HTTPRule{Method: "GET"}))
	var cs []net.Conn
	var rs []*bufio.Reader
	for range 2 {
		c, err := net.Dial("tcp", pp.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		r := bufio.NewReader(c)
		io.WriteString(c, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
		readResp(t, c, r)
		cs, rs = append(cs, c), append(rs, r)
	}
	pp.waitParked(t, 2)
	io.WriteString(cs[0], "GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
	expectClosed(t, cs[0], rs[0])
	waitFor(t, "the connection ended", func() bool { return pp.open.Load() == 1 })
	errs := pp.errors()
	var pe *PanicError
	if len(errs) != 1 || !errors.As(errs[0], &pe) || pe.Value != "injected fault" {
		t.Fatalf("done received %v, want one PanicError", errs)
	}
	io.WriteString(cs[1], "GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, _ := readResp(t, cs[1], rs[1]); resp.StatusCode != 200 {
		t.Fatalf("the other connection: %d", resp.StatusCode)
	}
}
