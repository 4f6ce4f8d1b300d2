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

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

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

// h2Get sends GET path on stream id of a raw HTTP/2 connection and reads
// until the stream ends: its :status ("RST" when reset).
func h2Get(t *testing.T, c net.Conn, fr *http2.Framer, id uint32, path string) string {
	t.Helper()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "web"}, {":path", path}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: true}); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	status := ""
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("stream %d: %v", id, err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID == id && status == "" {
				status = f.PseudoValue("status")
			}
			if f.StreamID == id && f.StreamEnded() {
				return status
			}
		case *http2.DataFrame:
			if f.StreamID == id && f.StreamEnded() {
				return status
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				return "RST"
			}
		}
	}
}

// sockets counts this process's socket descriptors.
func sockets() int {
	n := 0
	fds, _ := os.ReadDir("/proc/self/fd")
	for _, fd := range fds {
		if l, err := os.Readlink("/proc/self/fd/" + fd.Name()); err == nil && strings.HasPrefix(l, "socket:") {
			n++
		}
	}
	return n
}

// TestProxyParkedH2: idle HTTP/2 (h2c) connections park through the
// proxy, their upstream HTTP/2 connections with them (no goroutine
// each), count in l7gate_proxy_parked_connections and against the
// connection limits, decide their next request (allowed 200, denied
// 403); a client's close releases its counts once; a drain sends the
// parked ones GOAWAY and closes them; Close then leaves no socket, poller
// goroutine or epoll descriptor of the proxy's.
func TestProxyParkedH2(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	srv.Config.Protocols = new(http.Protocols)
	srv.Config.Protocols.SetUnencryptedHTTP2(true)
	srv.Start()
	defer srv.Close()
	up := netip.MustParseAddrPort(srv.Listener.Addr().String())
	pollers0, eps0, socks0 := stackCount("parsers/http.(*Poller).loop"), epollFDs(), sockets()
	no := false
	p := New(Options{ListenHost: "127.0.0.1", Transparent: &no, MaxConnectionsPerSource: 10,
		OriginalDestination: func(net.Conn) (netip.AddrPort, error) { return up, nil }})
	closed := false
	defer func() {
		if !closed {
			p.Close()
		}
	}()
	port := freePort(t)
	if err := p.Apply(httpConfig("1", port, up.Port(), policy.HTTPRule{Method: "GET", Path: "/ok.*"})); err != nil {
		t.Fatal(err)
	}
	const n = 5
	var cs []net.Conn
	var frs []*http2.Framer
	for range n {
		c := dialFrom(t, "127.0.0.2", port)
		fr := http2.NewFramer(c, c)
		fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		io.WriteString(c, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
		fr.WriteSettings()
		if s := h2Get(t, c, fr, 1, "/ok"); s != "200" {
			t.Fatalf("status %q", s)
		}
		cs, frs = append(cs, c), append(frs, fr)
	}
	waitUntil(t, "5 HTTP/2 connections parked", func() bool { return p.poller.Parked() == n })
	if g := stackCount("parsers/http.(*h2Conn)"); g != 0 {
		t.Fatalf("%d goroutines serve parked HTTP/2 connections", g)
	}
	if v := mustMetric(t, p, "l7gate_proxy_parked_connections"); v != n {
		t.Fatalf("l7gate_proxy_parked_connections %d, want %d", v, n)
	}
	if c, s, cl := counted(p); c != n || s != n || cl != n {
		t.Fatalf("%d connections, %d per source, %d per client port counted, want %d", c, s, cl, n)
	}
	for i := range n {
		path, want := "/ok/again", "200"
		if i%2 == 1 {
			path, want = "/denied", "403"
		}
		if s := h2Get(t, cs[i], frs[i], 3, path); s != want {
			t.Fatalf("after parking: %s %q, want %q", path, s, want)
		}
	}
	waitUntil(t, "5 HTTP/2 connections parked again", func() bool { return p.poller.Parked() == n })

	// Two clients close theirs: counted once each.
	cs[0].Close()
	cs[1].Close()
	waitUntil(t, "3 connections counted", func() bool { c, s, cl := counted(p); return c == 3 && s == 3 && cl == 3 })
	time.Sleep(100 * time.Millisecond)
	if c, s, cl := counted(p); c != 3 || s != 3 || cl != 3 {
		t.Fatalf("after two closes: %d connections, %d per source, %d per client port counted, want 3", c, s, cl)
	}

	// A drain ends the parked connections with GOAWAY.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st := p.Drain(ctx)
	if st.Cut != 0 {
		t.Fatalf("drain cut %d connections", st.Cut)
	}
	for i := 2; i < n; i++ {
		cs[i].SetReadDeadline(time.Now().Add(5 * time.Second))
		goAway := false
		for {
			f, err := frs[i].ReadFrame()
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Fatal("a drained HTTP/2 connection stays open")
				}
				break
			}
			if g, ok := f.(*http2.GoAwayFrame); ok && g.ErrCode == http2.ErrCodeNo {
				goAway = true
			}
		}
		if !goAway {
			t.Fatal("a drained HTTP/2 connection closed without GOAWAY")
		}
		cs[i].Close()
	}
	if c, s, cl := counted(p); c != 0 || s != 0 || cl != 0 {
		t.Fatalf("after the drain: %d connections, %d per source, %d per client port counted", c, s, cl)
	}
	if k := p.poller.Parked(); k != 0 {
		t.Fatalf("%d parked after the drain", k)
	}
	closed = true
	p.Close()
	if g := stackCount("parsers/http.(*Poller).loop"); g != pollers0 {
		t.Fatalf("%d poller goroutines after Close, want %d", g, pollers0)
	}
	if v := epollFDs(); v != eps0 {
		t.Fatalf("%d epoll descriptors after Close, want %d", v, eps0)
	}
	if g := stackCount("parsers/http.(*h2Conn)"); g != 0 {
		t.Fatalf("%d HTTP/2 goroutines after Close", g)
	}
	srv.CloseClientConnections()
	waitUntil(t, "the sockets closed", func() bool { return sockets() <= socks0 })
}
