package proxy

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/l7gate/l7gate/policy"
)

// TestDrainCutsAtTimeout: a request the upstream never answers keeps its
// connection open through the drain; at the drain's deadline it is cut
// and counted.
func TestDrainCutsAtTimeout(t *testing.T) {
	release := make(chan struct{})
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release
	}))
	defer upstream.Close()
	defer close(release)
	p, _ := newTestProxy(t, upstream.Listener.Addr().String())
	port := freePort(t)
	upPort := uint16(upstream.Listener.Addr().(*net.TCPAddr).Port)
	if err := p.Apply(httpConfig("1", port, upPort, policy.HTTPRule{Path: "/.*"})); err != nil {
		t.Fatal(err)
	}
	c := dialFrom(t, "127.0.0.2", port)
	fmt.Fprintf(c, "GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
	for p.conns.Load() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // the request reached the upstream
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	st := p.Drain(ctx)
	if st.Cut != 1 || st.Took < 300*time.Millisecond {
		t.Errorf("drain: %+v, want 1 connection cut at the 300ms deadline", st)
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := io.ReadAll(c); err != nil {
		t.Errorf("client connection after the cut: %v, want closed", err)
	}
	select {
	case <-p.Drained():
	default:
		t.Error("Drained not closed after Drain returned")
	}
}

// TestAdminDrain: POST /drain on the admin API drains the proxy: /ready
// turns 503, the listener stops accepting, Drained closes.
func TestAdminDrain(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	defer upstream.Close()
	p, _ := newTestProxy(t, upstream.Listener.Addr().String())
	port := freePort(t)
	upPort := uint16(upstream.Listener.Addr().(*net.TCPAddr).Port)
	if err := p.Apply(httpConfig("1", port, upPort, policy.HTTPRule{Path: "/.*"})); err != nil {
		t.Fatal(err)
	}
	admin := httptest.NewServer(p.AdminHandler())
	defer admin.Close()
	resp, err := http.Post(admin.URL+"/drain", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted || !strings.HasPrefix(string(b), "DRAINING") {
		t.Fatalf("POST /drain: %d %q", resp.StatusCode, b)
	}
	select {
	case <-p.Drained():
	case <-time.After(5 * time.Second):
		t.Fatal("not drained 5s after POST /drain with no connection open")
	}
	resp, err = http.Get(admin.URL + "/ready")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("/ready while drained: %d, want 503", resp.StatusCode)
	}
	if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second); err == nil {
		c.Close()
		t.Error("the drained proxy still accepts connections")
	}
	// A config applied after the drain opens no listener.
	if err := p.Apply(httpConfig("2", freePort(t), upPort, policy.HTTPRule{Path: "/.*"})); err != nil {
		t.Fatal(err)
	}
	if n := len(p.listeners); n != 0 {
		t.Errorf("a drained proxy opened %d listeners", n)
	}
}

// TestAdminDrainAnsweredWhenTheProxyStops: the proxy command stops its
// admin server as soon as the drain ends, which with no connection open is
// at once; the POST /drain that started it must still get its answer (a
// clean-clone run's client got none, retried, and found the socket closed:
// "connect: connection refused").
func TestAdminDrainAnsweredWhenTheProxyStops(t *testing.T) {
	dir := t.TempDir()
	for i := range 100 {
		p, _ := newTestProxy(t, "127.0.0.1:9")
		ctx, cancel := context.WithCancel(context.Background())
		go func() { <-p.Drained(); cancel() }() // as cmd/l7gate's proxy does
		sock := filepath.Join(dir, fmt.Sprintf("admin-%d.sock", i))
		served := make(chan error, 1)
		go func() { served <- p.ServeAdmin(ctx, sock) }()
		hc := http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
		var c net.Conn
		var err error
		for range 500 { // until it listens
			if c, err = net.Dial("unix", sock); err == nil {
				c.Close()
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
		resp, err := hc.Post("http://proxy/drain", "", nil)
		if err != nil {
			t.Fatalf("round %d: POST /drain: %v", i, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusAccepted || !strings.HasPrefix(string(b), "DRAINING") {
			t.Fatalf("round %d: POST /drain: %d %q %v", i, resp.StatusCode, b, err)
		}
		<-ctx.Done()
		if err := <-served; err != nil {
			t.Fatalf("round %d: ServeAdmin: %v", i, err)
		}
		p.Close()
	}
}
