package http

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/l7gate/l7gate/policy"
)

// waitHeld waits until the server holds want connection buffers.
func waitHeld(t testing.TB, srv *Server, want int64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for srv.held.Load() != want {
		if time.Now().After(deadline) {
			t.Fatalf("the proxy holds %d connection buffers, want %d", srv.held.Load(), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitNoResponder waits until no goroutine runs a session's response side
// (an idle connection has its request side's goroutine alone).
func waitNoResponder(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if !bytes.Contains(buf[:n], []byte("parsers/http.(*session).responses")) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("a response goroutine still runs on an idle connection:\n%s", buf[:n])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestIdleConnectionThenUsed: a kept-alive connection gives its buffers
// back while it waits for a next request, and proxies correctly when it is
// used again: pipelined requests, a request head split across reads,
// large request and response bodies, a chunked body.
func TestIdleConnectionThenUsed(t *testing.T) {
	up, upAddr := newUpstream(t)
	p := startProxy(t, Config{}, upAddr, ruleDecider(t, policy.HTTPRule{Method: "GET"}, policy.HTTPRule{Method: "POST"}))
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	read := func(wantStatus int, wantEcho string) *nethttp.Response {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := nethttp.ReadResponse(r, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		resp.Body = io.NopCloser(bytes.NewReader(body))
		if resp.StatusCode != wantStatus || resp.Header.Get("X-Echo") != wantEcho {
			t.Fatalf("got %d %q, want %d %q", resp.StatusCode, resp.Header.Get("X-Echo"), wantStatus, wantEcho)
		}
		return resp
	}
	write := func(s string) {
		t.Helper()
		if _, err := io.WriteString(c, s); err != nil {
			t.Fatal(err)
		}
	}
	write("GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
	read(200, "GET /first")
	// Idle: neither the client's nor the upstream's buffer is held, and
	// no goroutine waits for responses.
	waitHeld(t, p.srv, 0)
	waitNoResponder(t)

	// Pipelined: two requests (one denied) and a POST in one write.
	write("GET /a HTTP/1.1\r\nHost: x\r\n\r\n" +
		"PUT /denied HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc" +
		"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
	read(200, "GET /a")
	read(403, "")
	resp := read(200, "POST /b")
	if sum := sha256.Sum256([]byte("hello")); resp.Header.Get("X-Body-SHA256") != hex.EncodeToString(sum[:]) {
		t.Fatalf("POST /b body hash %s", resp.Header.Get("X-Body-SHA256"))
	}
	waitHeld(t, p.srv, 0)

	// A head split across reads: the proxy holds a buffer while the head
	// is incomplete.
	write("GET /split HTTP/1.1\r\nHo")
	waitHeld(t, p.srv, 1)
	write("st: x\r\nX-Part: 2\r\n\r\n")
	read(200, "GET /split")
	waitHeld(t, p.srv, 0)
	waitNoResponder(t)

	// Large bodies both ways.
	big := bytes.Repeat([]byte("abcdefghijklmnop"), 1<<16) // 1 MiB
	write(fmt.Sprintf("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n", len(big)))
	if _, err := c.Write(big); err != nil {
		t.Fatal(err)
	}
	resp = read(200, "POST /upload")
	if sum := sha256.Sum256(big); resp.Header.Get("X-Body-SHA256") != hex.EncodeToString(sum[:]) {
		t.Fatalf("upload body hash %s", resp.Header.Get("X-Body-SHA256"))
	}
	write("GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
	resp = read(200, "")
	if b, _ := io.ReadAll(resp.Body); !bytes.Equal(b, bytes.Repeat([]byte("0123456789abcdef"), 1<<16)) {
		t.Fatalf("big response: %d bytes, not the upstream's", len(b))
	}
	waitHeld(t, p.srv, 0)

	// A chunked body after idling, then a close.
	write("POST /chunk HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n" +
		"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	resp = read(200, "POST /chunk")
	if sum := sha256.Sum256([]byte("hello")); resp.Header.Get("X-Body-SHA256") != hex.EncodeToString(sum[:]) {
		t.Fatalf("chunked body hash %s", resp.Header.Get("X-Body-SHA256"))
	}
	read(200, "GET /last")
	if got := up.hits.Load(); got != 8 {
		t.Fatalf("upstream saw %d requests, want 8 (the denied one never reaches it)", got)
	}
}

// tinyUpstream answers every request head with a 2-byte body, with a small
// buffer per connection (so it adds little to the memory measured).
func tinyUpstream(b testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	b.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
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
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				var buf [512]byte
				n := 0
				for {
					k, err := c.Read(buf[n:])
					if err != nil {
						return
					}
					n += k
					if i := bytes.Index(buf[:n], []byte("\r\n\r\n")); i >= 0 {
						n = copy(buf[:], buf[i+4:n])
						if _, err := io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); err != nil {
							return
						}
					} else if n == len(buf) {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// liveBytes is the live heap plus goroutine stacks after collecting
// garbage (twice: sync.Pool keeps its items over one collection), and the
// stacks alone.
func liveBytes() (total, stacks float64) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return float64(m.HeapAlloc + m.StackInuse), float64(m.StackInuse)
}

// openIdleConns opens n connections to addr, each carrying one request,
// and leaves them open and idle.
func openIdleConns(b testing.TB, addr string, n int) []net.Conn {
	conns := make([]net.Conn, 0, n)
	var buf [256]byte
	want := "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		conns = append(conns, c)
		if _, err := io.WriteString(c, "GET /api/v1/items HTTP/1.1\r\nHost: bench\r\n\r\n"); err != nil {
			b.Fatal(err)
		}
		got := 0
		for got < len(want) {
			k, err := c.Read(buf[got:])
			if err != nil {
				b.Fatal(err)
			}
			got += k
		}
		if string(buf[:got]) != want {
			b.Fatalf("response %q", buf[:got])
		}
	}
	return conns
}

// BenchmarkIdleConnMemory reports the memory (live heap and goroutine
// stacks) of idle kept-alive connections that each carried one request:
// direct (client and upstream only) and through the proxy; proxy-bytes/conn
// is the difference, what the proxy holds per idle connection (its client
// and upstream sides), goroutines/conn the goroutines it adds per
// connection (the upstream's one included). park=false serves with
// ServeConn (a goroutine per connection), park=true with Serve and a
// Poller, measured once every connection parked. Run it with
// -benchtime=1x.
func BenchmarkIdleConnMemory(b *testing.B) {
	for _, park := range []bool{false, true} {
		b.Run(fmt.Sprintf("park=%v", park), func(b *testing.B) { benchIdleConnMemory(b, park) })
	}
}

func benchIdleConnMemory(b *testing.B, park bool) {
	const n = 2000
	// L7GATE_IDLE_HEAPPROFILE=<prefix>: write <prefix>-park=<park>.heap
	// (every allocation sampled) with the proxied connections idle.
	profile := os.Getenv("L7GATE_IDLE_HEAPPROFILE")
	if profile != "" {
		defer func(rate int) { runtime.MemProfileRate = rate }(runtime.MemProfileRate)
		runtime.MemProfileRate = 1
	}
	upstream := tinyUpstream(b)
	decide := ruleDecider(b, policy.HTTPRule{Method: "GET", Path: "/api/.*"})
	var addr string
	var poller *Poller
	if park {
		pp := startParkProxy(b, Config{}, upstream, decide)
		addr, poller = pp.addr, pp.poller
	} else {
		addr = startProxy(b, Config{}, upstream, decide).addr
	}
	var direct, proxied, directStacks, proxiedStacks float64
	var goroutines float64
	for range b.N {
		base, baseStacks := liveBytes()
		conns := openIdleConns(b, upstream, n)
		total, stacks := liveBytes()
		direct, directStacks = (total-base)/n, (stacks-baseStacks)/n
		for _, c := range conns {
			c.Close()
		}
		time.Sleep(100 * time.Millisecond) // the upstream's goroutines end
		base, baseStacks = liveBytes()
		g0 := runtime.NumGoroutine()
		conns = openIdleConns(b, addr, n)
		if park {
			waitFor(b, "every connection parked", func() bool { return poller.Parked() == n })
		}
		total, stacks = liveBytes()
		proxied, proxiedStacks = (total-base)/n, (stacks-baseStacks)/n
		if profile != "" {
			f, err := os.Create(fmt.Sprintf("%s-park=%v.heap", profile, park))
			if err != nil {
				b.Fatal(err)
			}
			pprof.Lookup("heap").WriteTo(f, 0)
			f.Close()
		}
		goroutines = float64(runtime.NumGoroutine()-g0) / n
		for _, c := range conns {
			c.Close()
		}
		if park {
			waitFor(b, "every connection ended", func() bool { return poller.Parked() == 0 })
		}
	}
	b.ReportMetric(direct, "direct-bytes/conn")
	b.ReportMetric(proxied, "proxied-bytes/conn")
	b.ReportMetric(proxied-direct, "proxy-bytes/conn")
	b.ReportMetric(proxiedStacks-directStacks, "proxy-stack-bytes/conn")
	b.ReportMetric(goroutines, "goroutines/conn")
}

// TestIdleConnectionKeepsNoBuffer: an idle connection refers to no
// connection buffer, the client's or the upstream's: once the pool drops
// the buffers it was given back (two collections), they are freed, none
// kept alive by the last request's head, its decider view or the last
// response head.
func TestIdleConnectionKeepsNoBuffer(t *testing.T) {
	_, upAddr := newUpstream(t)
	srv := NewServer(Config{})
	var live atomic.Int64
	srv.bufs.New = func() any {
		b := make([]byte, bufSize)
		live.Add(1)
		runtime.SetFinalizer(&b[0], func(*byte) { live.Add(-1) })
		return &b
	}
	p := startServer(t, srv, upAddr, ruleDecider(t, policy.HTTPRule{Method: "GET", Headers: []policy.HeaderMatch{{Name: "X-Token", Presence: true}}}))
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// pipelined: a request with more headers, then one with fewer
	if _, err := io.WriteString(c, "GET /a HTTP/1.1\r\nHost: x\r\nX-Token: t\r\nX-A: 1\r\nX-B: 2\r\nX-C: 3\r\n\r\n"+
		"GET /b HTTP/1.1\r\nHost: x\r\nX-Token: t\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	for _, want := range []string{"GET /a", "GET /b"} {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := nethttp.ReadResponse(r, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || resp.Header.Get("X-Echo") != want {
			t.Fatalf("got %d %q, want 200 %q", resp.StatusCode, resp.Header.Get("X-Echo"), want)
		}
	}
	waitHeld(t, p.srv, 0)
	waitNoResponder(t)
	if live.Load() == 0 {
		t.Fatal("no connection buffer was taken")
	}
	for deadline := time.Now().Add(10 * time.Second); live.Load() > 0; {
		if time.Now().After(deadline) {
			t.Fatalf("%d connection buffers stay alive with the connection idle and the pool dropped", live.Load())
		}
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	// and the connection still works
	if _, err := io.WriteString(c, "GET /c HTTP/1.1\r\nHost: x\r\nX-Token: t\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := nethttp.ReadResponse(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("X-Echo") != "GET /c" {
		t.Fatalf("after idle: %d %q", resp.StatusCode, resp.Header.Get("X-Echo"))
	}
}
