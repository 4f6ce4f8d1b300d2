package http

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/l7gate/l7gate/policy"
)

func h2cClient() *nethttp.Client {
	var p nethttp.Protocols
	p.SetUnencryptedHTTP2(true)
	return &nethttp.Client{Transport: &nethttp.Transport{Protocols: &p}}
}

func TestHTTP2PriorKnowledge(t *testing.T) {
	up := &upstreamHandler{}
	srv := httptest.NewUnstartedServer(up)
	var p2 nethttp.Protocols
	p2.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = &p2
	srv.Start()
	defer srv.Close()
	p := startProxy(t, Config{}, srv.Listener.Addr().String(), ruleDecider(t, policy.HTTPRule{Method: "GET", Path: "/ok.*"}))
	client := h2cClient()
	for _, tc := range []struct {
		method, path string
		status       int
		body         string
	}{
		{"GET", "/ok?x=1", 200, "GET /ok?x=1 0"},
		{"DELETE", "/ok", 403, "Access denied"},
		{"GET", "/ok/again", 200, "GET /ok/again 0"},
	} {
		req, _ := nethttp.NewRequest(tc.method, "http://"+p.addr+tc.path, nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.path, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 || resp.StatusCode != tc.status || string(b) != tc.body {
			t.Errorf("%s %s: HTTP/%d %d %q, want HTTP/2 %d %q", tc.method, tc.path, resp.ProtoMajor, resp.StatusCode, b, tc.status, tc.body)
		}
	}
	if got := up.hits.Load(); got != 2 {
		t.Errorf("upstream saw %d requests, want 2", got)
	}
}

// TestGRPC runs a real grpc-go client and server through the proxy: an
// allowed method works, a denied one fails with PermissionDenied, and the
// connection keeps serving allowed calls afterwards.
func TestGRPC(t *testing.T) {
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

	p := startProxy(t, Config{}, ln.Addr().String(), ruleDecider(t, policy.HTTPRule{Method: "POST", Path: "/grpc.health.v1.Health/Check"}))
	cc, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hc := healthpb.NewHealthClient(cc)
	resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "svc"})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("allowed Check: %v %v", resp, err)
	}
	_, err = hc.List(ctx, &healthpb.HealthListRequest{})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("denied List: %v, want PermissionDenied", err)
	}
	stream, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{Service: "svc"})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("denied Watch: %v, want PermissionDenied", err)
	}
	if _, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "svc"}); err != nil {
		t.Fatalf("Check after denials: %v", err)
	}
	// The access log names the gRPC path and the verdict.
	seen := map[string]bool{}
	timeout := time.After(3 * time.Second)
	for len(seen) < 3 {
		select {
		case r := <-p.records:
			seen[r.Path+" "+map[bool]string{true: "allowed", false: "denied"}[r.Allowed]] = true
		case <-timeout:
			t.Fatalf("access records: %v", seen)
		}
	}
	for _, want := range []string{"/grpc.health.v1.Health/Check allowed", "/grpc.health.v1.Health/List denied", "/grpc.health.v1.Health/Watch denied"} {
		if !seen[want] {
			t.Errorf("no access record %q in %v", want, seen)
		}
	}
}

// TestH2CUpgrade uses curl's h2c upgrade (HTTP/1.1 request with Upgrade:
// h2c): the proxy answers the upgrade and keeps applying policy.
func TestH2CUpgrade(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("curl not installed (make test installs it)")
	}
	_, upAddr := newUpstream(t)
	p := startProxy(t, Config{}, upAddr, ruleDecider(t, policy.HTTPRule{Method: "GET", Path: "/ok"}))
	// allowed: upgraded, answered over HTTP/2
	out, err := exec.Command("curl", "-sS", "--max-time", "5", "--http2", "-w", " %{http_version}", "-o", "-", "-D", "-", "http://"+p.addr+"/ok").CombinedOutput()
	s := string(out)
	if err != nil || !strings.Contains(s, "101 Switching Protocols") || !strings.Contains(s, "HTTP/2 200") ||
		!strings.Contains(s, "GET /ok 0") || !strings.HasSuffix(s, " 2") {
		t.Errorf("allowed h2c upgrade (%v):\n%s", err, s)
	}
	// denied: the upgrade request itself is denied, in HTTP/1.1, before any
	// protocol switch
	out, err = exec.Command("curl", "-sS", "--max-time", "5", "--http2", "-o", "-", "-D", "-", "http://"+p.addr+"/no").CombinedOutput()
	s = string(out)
	if err != nil || strings.Contains(s, "101") || !strings.Contains(s, "HTTP/1.1 403") || !strings.HasSuffix(s, "Access denied") {
		t.Errorf("denied h2c upgrade (%v):\n%s", err, s)
	}
}

// TestGRPCStatusWithoutMessage: calls answered with a status and no
// message (trailers-only responses: an unknown health service, an
// unimplemented method) keep their status through the proxy, every time.
// A flush timer once raced the end of such responses and turned ~1 in 20
// into "Internal: server closed the stream without sending trailers".
func TestGRPCStatusWithoutMessage(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	healthpb.RegisterHealthServer(gs, health.NewServer())
	go gs.Serve(ln)
	defer gs.Stop()
	p := startProxy(t, Config{}, ln.Addr().String(), func(*policy.HTTPRequest) Decision { return Decision{Allowed: true} })
	cc, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	hc := healthpb.NewHealthClient(cc)
	const calls = 400
	wrong := map[string]int{}
	for i := range calls {
		var err error
		want := codes.NotFound
		if i%2 == 0 {
			_, err = hc.Check(ctx, &healthpb.HealthCheckRequest{Service: "unknown"})
		} else {
			want = codes.Unimplemented
			err = cc.Invoke(ctx, "/no.such.Service/Method", &healthpb.HealthCheckRequest{}, &healthpb.HealthCheckResponse{})
		}
		if got := status.Code(err); got != want {
			wrong[fmt.Sprintf("want %s, got %v", want, err)]++
		}
	}
	if len(wrong) > 0 {
		t.Errorf("%d of %d calls lost their status: %v", sumCounts(wrong), calls, wrong)
	}
}

func sumCounts(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// TestHTTP2PanicRecovered: a panic while deciding an HTTP/2 request ends
// that connection (ServeConn returns a PanicError) and nothing else: the
// proxy serves the next connection.
func TestHTTP2PanicRecovered(t *testing.T) {
	h2Paths(t, func(t *testing.T, cfg Config) {
		be := newH2Backend(t)
		cfg.OnRequest = func(r *policy.HTTPRequest) {
			if strings.HasPrefix(r.Path, "/boom") {
				panic("injected fault")
			}
		}
		p := startProxy(t, cfg, be.addr, func(*policy.HTTPRequest) Decision { return Decision{Allowed: true} })
		r := dialRawH2(t, p.addr)
		r.headers(1, "GET", "/boom", true)
		evs := r.events(func(string) bool { return false })
		if last := evs[len(evs)-1]; last != "closed" || hasEvent(evs, "1 HEADERS 200") {
			t.Errorf("panicking connection: %v, want it closed without a response", evs)
		}
		deadline := time.Now().Add(3 * time.Second)
		for {
			p.mu.Lock()
			var pe *PanicError
			found := len(p.errs) > 0 && errors.As(p.errs[0], &pe)
			p.mu.Unlock()
			if found {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("ServeConn did not return a PanicError")
			}
			time.Sleep(10 * time.Millisecond)
		}
		r2 := dialRawH2(t, p.addr)
		r2.headers(1, "GET", "/ok", true)
		if evs := r2.events(func(ev string) bool { return strings.Contains(ev, "END_STREAM") }); !hasEvent(evs, "1 HEADERS 200") {
			t.Errorf("next connection: %v", evs)
		}
	})
}
