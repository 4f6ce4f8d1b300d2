package http

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/l7gate/l7gate/policy"
)

// benchServer answers every request with 1 KiB.
func benchServer(b *testing.B) string {
	body := strings.Repeat("x", 1024)
	srv := httptest.NewServer(nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		io.WriteString(w, body)
	}))
	b.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// keepAliveLoop sends b.N requests over parallel keep-alive connections with
// a minimal client (so the client's own cost stays small) and checks every
// response.
func keepAliveLoop(b *testing.B, addr string) {
	b.ReportAllocs()
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		r := bufio.NewReaderSize(c, 8192)
		req := []byte("GET /api/v1/service500/items HTTP/1.1\r\nHost: bench\r\nUser-Agent: l7gate-bench\r\n\r\n")
		for pb.Next() {
			if _, err := c.Write(req); err != nil {
				b.Error(err)
				return
			}
			resp, err := nethttp.ReadResponse(r, nil)
			if err != nil {
				b.Error(err)
				return
			}
			n, _ := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || n != 1024 {
				b.Errorf("status %d, %d bytes", resp.StatusCode, n)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
}

// BenchmarkHTTP1KeepAlive compares a direct keep-alive exchange with the
// same exchange through the proxy deciding each request against 100 HTTP
// rules. The ratio of the two req/s numbers is what matters.
func BenchmarkHTTP1KeepAlive(b *testing.B) {
	upstream := benchServer(b)
	b.Run("direct", func(b *testing.B) { keepAliveLoop(b, upstream) })
	b.Run("proxy-100-rules", func(b *testing.B) {
		var rules []policy.HTTPRule
		for i := range 100 {
			rules = append(rules, policy.HTTPRule{Method: "GET", Path: fmt.Sprintf("/api/v1/service%d/items", i*10)})
		}
		p := startProxy(b, Config{}, upstream, ruleDecider(b, rules...))
		keepAliveLoop(b, p.addr)
	})
}

// BenchmarkHTTP2 compares HTTP/2 (prior knowledge) requests direct and
// through the proxy with 100 rules, over one shared connection.
func BenchmarkHTTP2(b *testing.B) {
	body := strings.Repeat("x", 1024)
	h2srv := httptest.NewUnstartedServer(nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		io.WriteString(w, body)
	}))
	var p nethttp.Protocols
	p.SetUnencryptedHTTP2(true)
	h2srv.Config.Protocols = &p
	h2srv.Start()
	b.Cleanup(h2srv.Close)
	loop := func(b *testing.B, addr string) {
		client := h2cClient()
		b.ReportAllocs()
		b.SetParallelism(8)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				resp, err := client.Get("http://" + addr + "/api/v1/service500/items")
				if err != nil {
					b.Error(err)
					return
				}
				n, _ := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 || n != 1024 || resp.ProtoMajor != 2 {
					b.Errorf("HTTP/%d %d, %d bytes", resp.ProtoMajor, resp.StatusCode, n)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
	}
	upstream := h2srv.Listener.Addr().String()
	b.Run("direct", func(b *testing.B) { loop(b, upstream) })
	b.Run("proxy-100-rules", func(b *testing.B) {
		var rules []policy.HTTPRule
		for i := range 100 {
			rules = append(rules, policy.HTTPRule{Method: "GET", Path: fmt.Sprintf("/api/v1/service%d/items", i*10)})
		}
		px := startProxy(b, Config{}, upstream, ruleDecider(b, rules...))
		loop(b, px.addr)
	})
	b.Run("proxy-100-rules-nethttp", func(b *testing.B) {
		var rules []policy.HTTPRule
		for i := range 100 {
			rules = append(rules, policy.HTTPRule{Method: "GET", Path: fmt.Sprintf("/api/v1/service%d/items", i*10)})
		}
		px := startProxy(b, Config{LegacyHTTP2: true}, upstream, ruleDecider(b, rules...))
		loop(b, px.addr)
	})
}

// BenchmarkGRPCUnary compares grpc-go unary health checks (one client
// connection, parallel calls) direct and through both HTTP/2 paths.
func BenchmarkGRPCUnary(b *testing.B) {
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
	loop := func(b *testing.B, addr string) {
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			b.Fatal(err)
		}
		defer cc.Close()
		hc := healthpb.NewHealthClient(cc)
		b.ReportAllocs()
		b.SetParallelism(16)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{Service: "svc"}); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
	}
	decide := ruleDecider(b, policy.HTTPRule{Method: "POST", Path: "/grpc.health.v1.Health/Check"})
	b.Run("direct", func(b *testing.B) { loop(b, ln.Addr().String()) })
	b.Run("proxy", func(b *testing.B) { loop(b, startProxy(b, Config{}, ln.Addr().String(), decide).addr) })
	b.Run("proxy-nethttp", func(b *testing.B) {
		loop(b, startProxy(b, Config{LegacyHTTP2: true}, ln.Addr().String(), decide).addr)
	})
}

// BenchmarkHTTP1NewConnection: one request per connection
// ("Connection: close"), direct and through the proxy (accept, sniff,
// parse, dial upstream, forward, close both).
func BenchmarkHTTP1NewConnection(b *testing.B) {
	upstream := benchServer(b)
	loop := func(b *testing.B, addr string) {
		b.ReportAllocs()
		b.SetParallelism(4)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			req := []byte("GET /api/v1/service500/items HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
			for pb.Next() {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					b.Error(err)
					return
				}
				c.Write(req)
				resp, err := nethttp.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					c.Close()
					b.Error(err)
					return
				}
				n, _ := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				c.Close()
				if resp.StatusCode != 200 || n != 1024 {
					b.Errorf("status %d, %d bytes", resp.StatusCode, n)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "conn/s")
	}
	b.Run("direct", func(b *testing.B) { loop(b, upstream) })
	b.Run("proxy-100-rules", func(b *testing.B) {
		var rules []policy.HTTPRule
		for i := range 100 {
			rules = append(rules, policy.HTTPRule{Method: "GET", Path: fmt.Sprintf("/api/v1/service%d/items", i*10)})
		}
		loop(b, startProxy(b, Config{}, upstream, ruleDecider(b, rules...)).addr)
	})
}

// BenchmarkParseHeads is the per-request parsing of the keep-alive
// benchmark: wrk's request head and Go net/http's 1 KiB response head.
func BenchmarkParseHeads(b *testing.B) {
	req := []byte("GET /api/v1/service500/items HTTP/1.1\r\nHost: 198.18.1.10:80\r\nUser-Agent: l7gate-bench\r\nAccept: */*\r\n\r\n")
	resp := []byte("HTTP/1.1 200 OK\r\nDate: Mon, 07 Dec 2026 09:40:52 GMT\r\nContent-Length: 1024\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
	b.Run("request", func(b *testing.B) {
		b.ReportAllocs()
		var h RequestHead
		for b.Loop() {
			if err := ParseRequestHead(req, Limits{}, &h); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("response", func(b *testing.B) {
		b.ReportAllocs()
		var h ResponseHead
		var fields []Header
		for b.Loop() {
			var err error
			if fields, err = ParseResponseHead(resp, []byte("GET"), Limits{}, fields, &h); err != nil {
				b.Fatal(err)
			}
		}
	})
}
