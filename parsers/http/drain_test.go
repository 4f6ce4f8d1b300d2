package http

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/l7gate/l7gate/policy"
)

// drainProxy is one proxy process's share of a listening socket: it
// accepts on its own duplicate of the socket (as two processes handing
// over do) and serves with a Server whose Config.Drain is its drain.
type drainProxy struct {
	ln     *net.TCPListener
	srv    *Server
	drain  context.CancelFunc
	hard   context.CancelFunc
	active atomic.Int64
	wg     sync.WaitGroup
}

func startDrainProxy(t *testing.T, ln *net.TCPListener, upstream string, decide Decider) *drainProxy {
	t.Helper()
	f, err := ln.File() // a duplicate of the socket, as SCM_RIGHTS gives
	if err != nil {
		t.Fatal(err)
	}
	dup, err := net.FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	drainCtx, drain := context.WithCancel(context.Background())
	ctx, hard := context.WithCancel(context.Background())
	p := &drainProxy{ln: dup.(*net.TCPListener), srv: NewServer(Config{Drain: drainCtx}), drain: drain, hard: hard}
	t.Cleanup(func() { p.ln.Close(); hard(); drain(); p.wg.Wait() })
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := p.ln.Accept()
			if err != nil {
				return
			}
			p.active.Add(1)
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				defer p.active.Add(-1)
				dial := func(ctx context.Context) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, "tcp", upstream)
				}
				p.srv.ServeConn(ctx, c, dial, decide, nil)
			}()
		}
	}()
	return p
}

// stop stops accepting and drains; it returns how long the connections
// took to end.
func (p *drainProxy) stop(t *testing.T, bound time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	p.ln.Close()
	p.drain()
	for p.active.Load() > 0 {
		if time.Since(start) > bound {
			t.Errorf("%d connections still open %s after the drain began", p.active.Load(), bound)
			p.hard()
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

// slowUpstream answers /slow after 150 ms and tells started about it.
func slowUpstream(t *testing.T, started chan<- struct{}) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/slow" {
			select {
			case started <- struct{}{}:
			default:
			}
			time.Sleep(150 * time.Millisecond)
		}
		fmt.Fprintf(w, "%s %s", r.Method, r.URL.Path)
	}))
	var p nethttp.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = &p
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// TestDrainHTTP1 drains a proxy holding an idle keep-alive connection and
// one with a request in flight: the request in flight is answered, with
// "Connection: close", the idle connection is closed (after drainIdleGrace
// without a request), and both end without
// the proxy's context being cancelled.
func TestDrainHTTP1(t *testing.T) {
	started := make(chan struct{}, 1)
	up := slowUpstream(t, started)
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p := startDrainProxy(t, ln, up, ruleDecider(t, policy.HTTPRule{Path: "/.*"}))
	addr := ln.Addr().String()

	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	fmt.Fprintf(idle, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
	buf := make([]byte, 4096)
	if n, err := idle.Read(buf); err != nil || n == 0 {
		t.Fatalf("idle connection's first response: %v", err)
	}

	busy := &nethttp.Client{Transport: &nethttp.Transport{}}
	type result struct {
		resp *nethttp.Response
		body string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := busy.Get("http://" + addr + "/slow")
		if err != nil {
			done <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		done <- result{resp: resp, body: string(b), err: err}
	}()
	<-started
	took := p.stop(t, 5*time.Second)

	r := <-done
	if r.err != nil {
		t.Fatalf("request in flight during the drain failed: %v", r.err)
	}
	if r.resp.StatusCode != 200 || r.body != "GET /slow" || !r.resp.Close {
		t.Errorf("request in flight: %d %q close=%v, want 200 \"GET /slow\" with Connection: close", r.resp.StatusCode, r.body, r.resp.Close)
	}
	idle.SetReadDeadline(time.Now().Add(2 * time.Second))
	if n, err := idle.Read(buf); !errors.Is(err, io.EOF) {
		t.Errorf("idle keep-alive connection after the drain: read %d bytes, %v; want EOF (closed between requests)", n, err)
	}
	t.Logf("drain took %s (one request in flight, one idle connection)", took.Round(time.Millisecond))
}

// TestDrainDeniedKeepAlive: a keep-alive client whose requests are all
// denied, sending the next one as soon as it has the 403, gets
// "Connection: close" on a 403 once the drain begins and its connection
// ends (a denial answered with keep-alive during a drain kept the
// connection until the drain was cut: TestHandOverLoopback under -race).
func TestDrainDeniedKeepAlive(t *testing.T) {
	up := slowUpstream(t, nil)
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p := startDrainProxy(t, ln, up, ruleDecider(t, policy.HTTPRule{Path: "/allowed"}))
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	get := func() (*nethttp.Response, error) {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := fmt.Fprintf(c, "GET /denied HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			return nil, err
		}
		resp, err := nethttp.ReadResponse(r, nil)
		if err != nil {
			return nil, err
		}
		io.Copy(io.Discard, resp.Body)
		return resp, nil
	}
	if resp, err := get(); err != nil || resp.StatusCode != 403 || resp.Close {
		t.Fatalf("before the drain: %v %v", resp, err)
	}
	done := make(chan time.Duration, 1)
	go func() { done <- p.stop(t, 3*time.Second) }()
	// keep sending denied requests back to back until the proxy says close
	var closed bool
	for i := 0; i < 100000 && !closed; i++ {
		resp, err := get()
		if err != nil {
			t.Fatalf("denied request %d during the drain: %v", i, err)
		}
		if resp.StatusCode != 403 {
			t.Fatalf("denied request %d: status %d", i, resp.StatusCode)
		}
		closed = resp.Close
	}
	if !closed {
		t.Fatal("no 403 during the drain said Connection: close")
	}
	if took := <-done; took > 2*time.Second {
		t.Errorf("drain took %s", took)
	}
}

// TestDrainHandOverClients runs keep-alive HTTP/1.1, HTTP/2 (h2c) and
// grpc-go clients against a listening socket while the proxy serving it is
// replaced three times (the next one accepts on the same socket, the
// previous one drains): no request fails.
func TestDrainHandOverClients(t *testing.T) {
	up := slowUpstream(t, nil)
	gln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("svc", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	go gs.Serve(gln)
	defer gs.Stop()

	allow := ruleDecider(t, policy.HTTPRule{Path: "/.*"})
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	gln2, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer gln2.Close()
	cur := startDrainProxy(t, ln, up, allow)
	gcur := startDrainProxy(t, gln2, gln.Addr().String(), allow)
	ln.Close() // the proxies hold their own duplicates
	gln2.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stopClients := make(chan struct{})
	var sent, failed, newConns atomic.Int64
	var wg sync.WaitGroup
	var errMu sync.Mutex
	var errs []string
	fail := func(kind string, err error) {
		failed.Add(1)
		errMu.Lock()
		if len(errs) < 5 {
			errs = append(errs, kind+": "+err.Error())
		}
		errMu.Unlock()
	}
	trace := httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
		if !i.Reused {
			newConns.Add(1)
		}
	}})
	// Every proxy accepts on a duplicate of the same socket: one address.
	addr, gaddr := cur.ln.Addr().String(), gcur.ln.Addr().String()
	httpLoop := func(kind string, client *nethttp.Client, path string) {
		defer wg.Done()
		for i := 0; i < 5000; i++ {
			select {
			case <-stopClients:
				return
			default:
			}
			req, _ := nethttp.NewRequestWithContext(trace, "GET", "http://"+addr+path, nil)
			sent.Add(1)
			resp, err := client.Do(req)
			if err != nil {
				fail(kind, err)
				continue
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				fail(kind, fmt.Errorf("status %d", resp.StatusCode))
			}
		}
	}
	var h2 nethttp.Protocols
	h2.SetUnencryptedHTTP2(true)
	wg.Add(4)
	go httpLoop("http/1.1", &nethttp.Client{Transport: &nethttp.Transport{}}, "/a")
	go httpLoop("http/1.1 slow", &nethttp.Client{Transport: &nethttp.Transport{}}, "/slow")
	go httpLoop("h2c", &nethttp.Client{Transport: &nethttp.Transport{Protocols: &h2}}, "/slow")
	go func() {
		defer wg.Done()
		cc, err := grpc.NewClient(gaddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			fail("grpc", err)
			return
		}
		defer cc.Close()
		hc := healthpb.NewHealthClient(cc)
		for i := 0; i < 5000; i++ {
			select {
			case <-stopClients:
				return
			default:
			}
			sent.Add(1)
			// grpc-go moves calls to a new connection after GOAWAY; a call
			// racing the close is retried transparently (never sent).
			if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "svc"}); err != nil {
				fail("grpc", err)
			}
		}
	}()

	var drains []time.Duration
	for range 3 {
		time.Sleep(300 * time.Millisecond)
		next := startDrainProxy(t, cur.ln, up, allow)
		gnext := startDrainProxy(t, gcur.ln, gln.Addr().String(), allow)
		drains = append(drains, cur.stop(t, 5*time.Second), gcur.stop(t, 5*time.Second))
		cur, gcur = next, gnext
	}
	time.Sleep(300 * time.Millisecond)
	close(stopClients)
	wg.Wait()
	t.Logf("requests %d, failed %d, new client connections %d, drain times %v", sent.Load(), failed.Load(), newConns.Load(), drains)
	if failed.Load() != 0 || sent.Load() == 0 {
		t.Errorf("%d of %d requests failed across 3 hand-overs: %v", failed.Load(), sent.Load(), errs)
	}
	if newConns.Load() < 3*3 {
		t.Errorf("clients opened %d new connections; each hand-over should have moved all three HTTP clients", newConns.Load())
	}

}
