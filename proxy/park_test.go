package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	httpparser "github.com/l7gate/l7gate/parsers/http"
	"github.com/l7gate/l7gate/policy"
)

// stackCount counts the goroutines whose stack mentions fn.
func stackCount(fn string) int {
	buf := make([]byte, 64<<20)
	n := runtime.Stack(buf, true)
	count := 0
	for _, g := range bytes.Split(buf[:n], []byte("\n\ngoroutine ")) {
		if bytes.Contains(g, []byte(fn)) {
			count++
		}
	}
	return count
}

// epollFDs counts this process's epoll descriptors.
func epollFDs() int {
	n := 0
	fds, _ := os.ReadDir("/proc/self/fd")
	for _, fd := range fds {
		if l, err := os.Readlink("/proc/self/fd/" + fd.Name()); err == nil && strings.Contains(l, "eventpoll") {
			n++
		}
	}
	return n
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// counted returns the proxy's open connections, the sum of its
// per-source counts and of its per-client-port counts.
func counted(p *Proxy) (conns int64, perSource, clients int) {
	p.srcMu.Lock()
	defer p.srcMu.Unlock()
	for _, n := range p.perSource {
		perSource += n
	}
	for _, n := range p.clients {
		clients += n
	}
	return p.conns.Load(), perSource, clients
}

func expectEOF(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() || len(b) > 0 {
		t.Fatalf("connection not closed: read %q, %v", b, err)
	}
}

// TestProxyParkedConnections: idle HTTP/1 connections park (no goroutine
// each) and still count against the connection limits; a closed, a
// panicking and a drained parked connection each release its counts
// exactly once; Close leaves no poller goroutine or epoll descriptor.
func TestProxyParkedConnections(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer srv.Close()
	up := netip.MustParseAddrPort(srv.Listener.Addr().String())
	pollers0, eps0 := stackCount("parsers/http.(*Poller).loop"), epollFDs()
	no := false
	p := New(Options{ListenHost: "127.0.0.1", Transparent: &no, MaxConnectionsPerSource: 10,
		OriginalDestination: func(net.Conn) (netip.AddrPort, error) { return up, nil },
		HTTP: httpparser.Config{OnRequest: func(r *policy.HTTPRequest) {
			if r.Path == "/boom" {
				panic("injected parser fault")
			}
		}}})
	closed := false
	defer func() {
		if !closed {
			p.Close()
		}
	}()
	if p.poller == nil {
		t.Fatal("the proxy has no poller")
	}
	port := freePort(t)
	if err := p.Apply(httpConfig("1", port, up.Port(), policy.HTTPRule{})); err != nil {
		t.Fatal(err)
	}
	var cs []net.Conn
	var rs []*bufio.Reader
	for range 10 {
		c := dialFrom(t, "127.0.0.2", port)
		r := bufio.NewReader(c)
		if s, _ := get(t, c, r, "/"); s != 200 {
			t.Fatalf("status %d", s)
		}
		cs, rs = append(cs, c), append(rs, r)
	}
	waitUntil(t, "10 connections parked", func() bool { return p.poller.Parked() == 10 })
	if g := stackCount("parsers/http.(*session)"); g != 0 {
		t.Fatalf("%d goroutines serve parked connections", g)
	}
	if n := mustMetric(t, p, "l7gate_proxy_parked_connections"); n != 10 {
		t.Fatalf("l7gate_proxy_parked_connections %d, want 10", n)
	}
	// Parked connections count: the source's eleventh is refused.
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 3 * time.Second}
	if over, err := d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)); err == nil {
		io.WriteString(over, "GET / HTTP/1.1\r\nHost: web\r\n\r\n")
		over.SetReadDeadline(time.Now().Add(3 * time.Second))
		if b, _ := io.ReadAll(over); len(b) != 0 {
			t.Errorf("eleventh connection of the source got %q; want it refused", b)
		}
		over.Close()
	} else if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("eleventh connection of the source: %v; want it reset", err)
	}

	// Three clients close theirs.
	for _, c := range cs[:3] {
		c.Close()
	}
	waitUntil(t, "7 connections counted", func() bool { n, s, c := counted(p); return n == 7 && s == 7 && c == 7 })

	// A panic on a resumed connection.
	fmt.Fprintf(cs[3], "GET /boom HTTP/1.1\r\nHost: web\r\n\r\n")
	expectEOF(t, cs[3])
	waitUntil(t, "6 connections counted", func() bool { n, s, c := counted(p); return n == 6 && s == 6 && c == 6 })
	if n := mustMetric(t, p, "l7gate_proxy_connection_panics_total"); n != 1 {
		t.Fatalf("panics %d, want 1", n)
	}
	// A resumed connection serves.
	if s, b := get(t, cs[4], rs[4], "/again"); s != 200 || b != "ok" {
		t.Fatalf("after parking: %d %q", s, b)
	}
	waitUntil(t, "6 connections parked", func() bool { return p.poller.Parked() == 6 })

	// A drain closes parked connections (once idle for a second).
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st := p.Drain(ctx)
	if st.Cut != 0 {
		t.Fatalf("drain cut %d connections", st.Cut)
	}
	t.Logf("drain of 6 parked connections took %s", st.Took.Round(time.Millisecond))
	for _, c := range cs[4:] {
		expectEOF(t, c)
	}
	if n, s, c := counted(p); n != 0 || s != 0 || c != 0 {
		t.Fatalf("after the drain: %d connections, %d per source, %d per client port counted", n, s, c)
	}
	if k := p.poller.Parked(); k != 0 {
		t.Fatalf("%d parked after the drain", k)
	}
	closed = true
	p.Close()
	if g := stackCount("parsers/http.(*Poller).loop"); g != pollers0 {
		t.Fatalf("%d poller goroutines after Close, want %d", g, pollers0)
	}
	if n := epollFDs(); n != eps0 {
		t.Fatalf("%d epoll descriptors after Close, want %d", n, eps0)
	}
}

// TestProxyCloseParked: Close ends parked connections (no drain first)
// and returns with nothing counted.
func TestProxyCloseParked(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer srv.Close()
	up := netip.MustParseAddrPort(srv.Listener.Addr().String())
	no := false
	p := New(Options{ListenHost: "127.0.0.1", Transparent: &no,
		OriginalDestination: func(net.Conn) (netip.AddrPort, error) { return up, nil }})
	port := freePort(t)
	if err := p.Apply(httpConfig("1", port, up.Port(), policy.HTTPRule{})); err != nil {
		p.Close()
		t.Fatal(err)
	}
	var cs []net.Conn
	for range 5 {
		c := dialFrom(t, "127.0.0.2", port)
		if s, _ := get(t, c, bufio.NewReader(c), "/"); s != 200 {
			p.Close()
			t.Fatalf("status %d", s)
		}
		cs = append(cs, c)
	}
	waitUntil(t, "5 connections parked", func() bool { return p.poller.Parked() == 5 })
	done := make(chan struct{})
	go func() { p.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return with parked connections")
	}
	for _, c := range cs {
		expectEOF(t, c)
	}
	if n, s, c := counted(p); n != 0 || s != 0 || c != 0 {
		t.Fatalf("after Close: %d connections, %d per source, %d per client port counted", n, s, c)
	}
}
