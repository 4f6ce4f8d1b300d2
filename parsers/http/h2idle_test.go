package http

import (
	"bytes"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/l7gate/l7gate/policy"
)

// tinyH2Upstream is an h2c server answering every request "ok".
func tinyH2Upstream(t testing.TB) string {
	t.Helper()
	return tinyH2Server(t).Listener.Addr().String()
}

// tinyH2Server is tinyH2Upstream's server.
func tinyH2Server(t testing.TB) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/denied-upstream" {
			w.WriteHeader(500)
		}
		io.WriteString(w, "ok")
	}))
	var p nethttp.Protocols
	p.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = &p
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

// h2Get sends GET path on stream id of a connection whose preface and
// SETTINGS went out, and reads frames (acking SETTINGS and PINGs) until
// the stream ends or is reset: it returns the :status ("RST <code>" for a
// reset).
func h2Get(t testing.TB, c net.Conn, fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer, id uint32, path string) string {
	t.Helper()
	hb.Reset()
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "bench"}, {":path", path}} {
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
		case *http2.PingFrame:
			if !f.IsAck() {
				fr.WritePing(true, f.Data)
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
				return "RST " + f.ErrCode.String()
			}
		case *http2.GoAwayFrame:
			t.Fatalf("stream %d: GOAWAY %v", id, f.ErrCode)
		}
	}
}

// h2Client is a hand-driven HTTP/2 client connection.
type h2Client struct {
	c    net.Conn
	fr   *http2.Framer
	enc  *hpack.Encoder
	hb   bytes.Buffer
	next uint32
}

func dialH2Client(t testing.TB, addr string) *h2Client {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	h := &h2Client{c: c, fr: http2.NewFramer(c, c), next: 1}
	h.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	h.enc = hpack.NewEncoder(&h.hb)
	if _, err := io.WriteString(c, h2Preface); err != nil {
		t.Fatal(err)
	}
	if err := h.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return h
}

// get sends GET path on a new stream and returns its :status.
func (h *h2Client) get(t testing.TB, path string) string {
	t.Helper()
	id := h.next
	h.next += 2
	return h2Get(t, h.c, h.fr, h.enc, &h.hb, id, path)
}

// openIdleH2Conns opens n HTTP/2 connections to addr, each carrying one
// GET, and leaves them open and idle (the client side keeps the socket
// alone).
func openIdleH2Conns(b testing.TB, addr string, n int) []net.Conn {
	conns := make([]net.Conn, 0, n)
	for range n {
		h := dialH2Client(b, addr)
		conns = append(conns, h.c)
		if got := h.get(b, "/api/v1/items"); got != "200" {
			b.Fatalf("status %q", got)
		}
	}
	return conns
}

// BenchmarkIdleH2ConnMemory is BenchmarkIdleConnMemory for HTTP/2 with
// prior knowledge (h2c, the frame-level path): the memory and goroutines
// the proxy holds per idle connection that carried one GET (its client
// side and its upstream HTTP/2 connection), park=false with ServeConn,
// park=true with Serve and a Poller. Run it with -benchtime=1x.
func BenchmarkIdleH2ConnMemory(b *testing.B) {
	for _, park := range []bool{false, true} {
		b.Run(fmt.Sprintf("park=%v", park), func(b *testing.B) { benchIdleH2ConnMemory(b, park) })
	}
}

func benchIdleH2ConnMemory(b *testing.B, park bool) {
	const n = 500
	upstream := tinyH2Upstream(b)
	decide := ruleDecider(b, policy.HTTPRule{Method: "GET", Path: "/api/.*"})
	var addr string
	var poller *Poller
	if park {
		pp := startParkProxy(b, Config{}, upstream, decide)
		addr, poller = pp.addr, pp.poller
	} else {
		addr = startProxy(b, Config{}, upstream, decide).addr
	}
	var direct, proxied, directStacks, proxiedStacks, goroutines float64
	for range b.N {
		base, baseStacks := liveBytes()
		conns := openIdleH2Conns(b, upstream, n)
		time.Sleep(100 * time.Millisecond)
		total, stacks := liveBytes()
		direct, directStacks = (total-base)/n, (stacks-baseStacks)/n
		for _, c := range conns {
			c.Close()
		}
		time.Sleep(200 * time.Millisecond) // the upstream's goroutines end
		base, baseStacks = liveBytes()
		g0 := runtime.NumGoroutine()
		conns = openIdleH2Conns(b, addr, n)
		if park {
			waitFor(b, "every connection parked", func() bool { return poller.Parked() == n })
		} else {
			time.Sleep(300 * time.Millisecond)
		}
		total, stacks = liveBytes()
		proxied, proxiedStacks = (total-base)/n, (stacks-baseStacks)/n
		goroutines = float64(runtime.NumGoroutine()-g0) / n
		for _, c := range conns {
			c.Close()
		}
		if park {
			waitFor(b, "every connection ended", func() bool { return poller.Parked() == 0 })
		}
		time.Sleep(200 * time.Millisecond)
	}
	b.ReportMetric(direct, "direct-bytes/conn")
	b.ReportMetric(proxied, "proxied-bytes/conn")
	b.ReportMetric(proxied-direct, "proxy-bytes/conn")
	b.ReportMetric(proxiedStacks-directStacks, "proxy-stack-bytes/conn")
	b.ReportMetric(goroutines, "goroutines/conn")
}
