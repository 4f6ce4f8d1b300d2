package http

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	nethttp "net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/l7gate/l7gate/policy"
)

// TestH2ParkedHoldNoGoroutine: idle HTTP/2 connections (each carried one
// request) hold no goroutine once parked, neither the client's reader nor
// their upstream connection's, and each decides its next request: an
// allowed one reaches the upstream, a denied one is answered 403.
func TestH2ParkedHoldNoGoroutine(t *testing.T) {
	const n = 200
	upstream := tinyH2Upstream(t)
	pp := startParkProxy(t, Config{}, upstream, ruleDecider(t, policy.HTTPRule{Method: "GET", Path: "/api/.*"}))
	clients := make([]*h2Client, n)
	for i := range clients {
		clients[i] = dialH2Client(t, pp.addr)
		defer clients[i].c.Close()
		if got := clients[i].get(t, "/api/v1/items"); got != "200" {
			t.Fatalf("status %q", got)
		}
	}
	waitFor(t, "no goroutine serves the idle HTTP/2 connections", func() bool { return connGoroutines() == 0 })
	if k := pp.poller.Parked(); k != n {
		t.Fatalf("%d connections parked, want %d", k, n)
	}
	for i, h := range clients {
		path, want := "/api/v1/items", "200"
		if i%2 == 1 {
			path, want = "/admin", "403"
		}
		if got := h.get(t, path); got != want {
			t.Fatalf("after parking: %s answered %q, want %q", path, got, want)
		}
	}
	pp.waitParked(t, n)
	for _, h := range clients {
		h.c.Close()
	}
	waitFor(t, "every connection ended", func() bool { return pp.open.Load() == 0 })
	if k := pp.poller.Parked(); k != 0 {
		t.Fatalf("%d connections still parked after the clients closed", k)
	}
	if g := connGoroutines(); g != 0 {
		t.Fatalf("%d goroutines left", g)
	}
	if errs := pp.errors(); len(errs) > 0 {
		t.Fatalf("connections ended with errors: %v", errs[0])
	}
}

// h2Await reads frames until match says a frame is the one awaited (5 s
// at most), acking SETTINGS on the way.
func (h *h2Client) await(t *testing.T, what string, match func(http2.Frame) bool) {
	t.Helper()
	h.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer h.c.SetReadDeadline(time.Time{})
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		if match(f) {
			return
		}
		if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
			h.fr.WriteSettingsAck()
		}
	}
}

// TestH2ParkedProtocolDuties: a parked HTTP/2 connection answers the
// client's PING and acknowledges its SETTINGS (each wakes it, and it
// parks again), and its HPACK tables survive: a request whose header
// block refers to the dynamic table entries of the one before parking
// is decoded and decided (x-token is required), its forwarded headers
// encoded against the upstream's table as it was.
func TestH2ParkedProtocolDuties(t *testing.T) {
	up, _ := newUpstream(t)
	srv := &nethttp.Server{Handler: up, Protocols: new(nethttp.Protocols)}
	srv.Protocols.SetUnencryptedHTTP2(true)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	decide := ruleDecider(t, policy.HTTPRule{Method: "GET", Headers: []policy.HeaderMatch{{Name: "X-Token", Presence: true}}})
	pp := startParkProxy(t, Config{}, ln.Addr().String(), decide)
	h := dialH2Client(t, pp.addr)
	defer h.c.Close()
	getTok := func(id uint32, path string, token bool) string {
		h.hb.Reset()
		fields := [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "x"}, {":path", path}}
		if token {
			fields = append(fields, [2]string{"x-token", "secret-value-indexed"})
		}
		for _, f := range fields {
			h.enc.WriteField(hpackField(f))
		}
		block := append([]byte(nil), h.hb.Bytes()...)
		if err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndHeaders: true, EndStream: true}); err != nil {
			t.Fatal(err)
		}
		var status string
		h.await(t, "the response", func(f http2.Frame) bool {
			switch f := f.(type) {
			case *http2.MetaHeadersFrame:
				if f.StreamID == id && status == "" {
					status = f.PseudoValue("status")
				}
				return f.StreamID == id && f.StreamEnded()
			case *http2.DataFrame:
				return f.StreamID == id && f.StreamEnded()
			case *http2.RSTStreamFrame:
				status = "RST"
				return f.StreamID == id
			}
			return false
		})
		return status
	}
	if got := getTok(1, "/a", true); got != "200" {
		t.Fatalf("first request: %q", got)
	}
	pp.waitParked(t, 1)

	if err := h.fr.WritePing(false, [8]byte{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	h.await(t, "the PING ACK", func(f http2.Frame) bool {
		p, ok := f.(*http2.PingFrame)
		return ok && p.IsAck() && p.Data == [8]byte{1, 2, 3}
	})
	pp.waitParked(t, 1)

	if err := h.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	h.await(t, "the SETTINGS ACK", func(f http2.Frame) bool {
		s, ok := f.(*http2.SettingsFrame)
		return ok && s.IsAck()
	})
	pp.waitParked(t, 1)

	// (the same header fields: the encoder refers to its dynamic table)
	if got := getTok(3, "/a", true); got != "200" {
		t.Fatalf("indexed request after parking: %q", got)
	}
	pp.waitParked(t, 1)
	if got := getTok(5, "/b", false); got != "403" {
		t.Fatalf("request without the token after parking: %q, want 403", got)
	}
	pp.waitParked(t, 1)
	if got := getTok(7, "/c", true); got != "200" {
		t.Fatalf("third request: %q", got)
	}
	if got := up.hits.Load(); got != 3 {
		t.Fatalf("upstream saw %d requests, want 3", got)
	}
	paths := strings.Join(up.paths, " ")
	if paths != "/a /a /c" {
		t.Fatalf("upstream saw %q", paths)
	}
}

// TestH2ParkedRealClients: x/net's HTTP/2 client and grpc-go through
// parked connections: every call after a park is decided (allowed ones
// answered by the upstream, denied ones 403 / PermissionDenied).
func TestH2ParkedRealClients(t *testing.T) {
	t.Run("x/net", func(t *testing.T) {
		up, _ := newUpstream(t)
		srv := &nethttp.Server{Handler: up, Protocols: new(nethttp.Protocols)}
		srv.Protocols.SetUnencryptedHTTP2(true)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
		pp := startParkProxy(t, Config{}, ln.Addr().String(), ruleDecider(t, policy.HTTPRule{Method: "GET", Path: "/ok.*"}))
		tr := &http2.Transport{AllowHTTP: true, DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}}
		defer tr.CloseIdleConnections()
		client := &nethttp.Client{Transport: tr, Timeout: 10 * time.Second}
		for i, tc := range []struct {
			path   string
			status int
		}{{"/ok/1", 200}, {"/ok/2", 200}, {"/denied", 403}, {"/ok/3", 200}} {
			req, _ := nethttp.NewRequest("GET", "http://"+pp.addr+tc.path, nil)
			req.Header.Set("X-Custom", "the same value every time")
			resp, err := client.Do(req)
			if err != nil {
				t.Fatalf("%s: %v", tc.path, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.status || resp.ProtoMajor != 2 {
				t.Fatalf("%s: %d HTTP/%d %q, want %d over HTTP/2", tc.path, resp.StatusCode, resp.ProtoMajor, body, tc.status)
			}
			if i < 3 {
				pp.waitParked(t, 1)
			}
		}
		if got := up.hits.Load(); got != 3 {
			t.Fatalf("upstream saw %d requests, want 3", got)
		}
	})
	t.Run("grpc", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		gs := grpc.NewServer()
		hs := health.NewServer()
		hs.SetServingStatus("svc", healthpb.HealthCheckResponse_SERVING)
		healthpb.RegisterHealthServer(gs, hs)
		go gs.Serve(ln)
		defer gs.Stop()
		pp := startParkProxy(t, Config{}, ln.Addr().String(), ruleDecider(t, policy.HTTPRule{Method: "POST", Path: "/grpc.health.v1.Health/Check"}))
		cc, err := grpc.NewClient(pp.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		hc := healthpb.NewHealthClient(cc)
		check := func() {
			t.Helper()
			resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "svc"})
			if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
				t.Fatalf("allowed Check: %v %v", resp, err)
			}
		}
		check()
		pp.waitParked(t, 1)
		check()
		pp.waitParked(t, 1)
		if _, err := hc.List(ctx, &healthpb.HealthListRequest{}); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("denied List after parking: %v, want PermissionDenied", err)
		}
		pp.waitParked(t, 1)
		check()
	})
}

// h2Parked starts a park proxy in front of an h2c upstream and a client
// connection that carried one request and parked.
func h2Parked(t *testing.T, cfg Config) (*parkProxy, *h2Client, *h2UpstreamServer) {
	t.Helper()
	us := &h2UpstreamServer{srv: tinyH2Server(t)}
	pp := startParkProxy(t, cfg, us.srv.Listener.Addr().String(), ruleDecider(t, policy.HTTPRule{Method: "GET"}))
	h := dialH2Client(t, pp.addr)
	t.Cleanup(func() { h.c.Close() })
	if got := h.get(t, "/a"); got != "200" {
		t.Fatalf("status %q", got)
	}
	pp.waitParked(t, 1)
	return pp, h, us
}

type h2UpstreamServer struct{ srv *httptest.Server }

// expectH2End reads until the connection closes and reports whether a
// GOAWAY came first.
func expectH2End(t *testing.T, h *h2Client) (goAway bool) {
	t.Helper()
	h.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("the connection stays open")
			}
			return goAway
		}
		if g, ok := f.(*http2.GoAwayFrame); ok && g.ErrCode == http2.ErrCodeNo {
			goAway = true
		}
	}
}

// TestH2ParkedEnds: a parked HTTP/2 connection ends, its done called once
// and no goroutine left, when its idle timeout passes (GOAWAY, not
// before the timeout), when the proxy drains (GOAWAY), when the client
// closes, and when its context ends; when its upstream closes, it goes
// on and dials a new upstream for its next request.
func TestH2ParkedEnds(t *testing.T) {
	ended := func(t *testing.T, pp *parkProxy) {
		t.Helper()
		waitFor(t, "the connection ended", func() bool { return pp.open.Load() == 0 })
		if k := pp.poller.Parked(); k != 0 {
			t.Fatalf("%d connections still parked", k)
		}
		waitFor(t, "no goroutine serves it", func() bool { return connGoroutines() == 0 })
	}
	t.Run("idle timeout", func(t *testing.T) {
		const idle = 1500 * time.Millisecond // (over 1 s: the write deadline moves at most once a second)
		start := time.Now()
		pp, h, _ := h2Parked(t, Config{IdleTimeout: idle})
		if !expectH2End(t, h) {
			t.Fatal("closed without GOAWAY")
		}
		if d := time.Since(start); d < idle {
			t.Fatalf("closed after %v, before the idle timeout %v", d, idle)
		}
		ended(t, pp)
	})
	t.Run("drain", func(t *testing.T) {
		pp, h, _ := h2Parked(t, Config{})
		pp.drain()
		if !expectH2End(t, h) {
			t.Fatal("closed without GOAWAY")
		}
		ended(t, pp)
	})
	t.Run("client close", func(t *testing.T) {
		pp, h, _ := h2Parked(t, Config{})
		h.c.Close()
		ended(t, pp)
	})
	t.Run("context", func(t *testing.T) {
		pp, h, _ := h2Parked(t, Config{})
		pp.cancel()
		expectH2End(t, h)
		ended(t, pp)
	})
	t.Run("upstream close", func(t *testing.T) {
		pp, h, us := h2Parked(t, Config{})
		us.srv.CloseClientConnections()
		// woken by the upstream's close, it parks again without it
		time.Sleep(200 * time.Millisecond)
		pp.waitParked(t, 1)
		if got := h.get(t, "/b"); got != "200" {
			t.Fatalf("after the upstream closed: %q", got)
		}
		pp.waitParked(t, 1)
		h.c.Close()
		ended(t, pp)
	})
}

func hpackField(f [2]string) hpack.HeaderField { return hpack.HeaderField{Name: f[0], Value: f[1]} }

// BenchmarkGRPCUnarySequentialPark measures what a connection that may
// park costs while busy: sequential gRPC unary calls (one in flight, so
// the connection has no stream between calls and its reader arms and
// clears an idle read deadline per call) through ServeConn (no parking)
// and through Serve with a Poller.
func BenchmarkGRPCUnarySequentialPark(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	gs := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("svc", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(gs, hs)
	go gs.Serve(ln)
	b.Cleanup(gs.Stop)
	decide := ruleDecider(b, policy.HTTPRule{Method: "POST", Path: "/grpc.health.v1.Health/Check"})
	loop := func(b *testing.B, addr string) {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		defer cc.Close()
		hc := healthpb.NewHealthClient(cc)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{Service: "svc"}); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
	}
	b.Run("serveconn", func(b *testing.B) { loop(b, startProxy(b, Config{}, ln.Addr().String(), decide).addr) })
	b.Run("park", func(b *testing.B) { loop(b, startParkProxy(b, Config{}, ln.Addr().String(), decide).addr) })
}
