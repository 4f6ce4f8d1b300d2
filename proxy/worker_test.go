package proxy

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/l7gate/l7gate/policy"
)

// TestProxyReusesConnectionGoroutines: a connection accepted after
// another one closed is served by the goroutine that served the first
// (waiting for the next), not by a new one, and a goroutine left waiting
// does not hold up a drain (its wait here is longer than the test).
func TestProxyReusesConnectionGoroutines(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }))
	defer upstream.Close()
	p, _ := newTestProxy(t, upstream.Listener.Addr().String())
	p.workerIdle = time.Hour
	port := freePort(t)
	if err := p.Apply(httpConfig("1", port, uint16(upstream.Listener.Addr().(*net.TCPAddr).Port), policy.HTTPRule{Path: "/.*"})); err != nil {
		t.Fatal(err)
	}
	served := map[string]bool{}
	for i := range 3 {
		c := dialFrom(t, "127.0.0.2", port)
		if code, body := get(t, c, bufio.NewReader(c), "/"); code != 200 || body != "ok" {
			t.Fatalf("connection %d: %d %q", i, code, body)
		}
		// the goroutines serving a connection: their stacks name serve
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "proxy.(*Proxy).serve(") {
				served[strings.SplitN(g, " ", 3)[1]] = true
			}
		}
		c.Close()
		for p.conns.Load() != 0 { // until the worker waits again
			time.Sleep(time.Millisecond)
		}
	}
	if len(served) != 1 {
		t.Errorf("3 connections one after another were served by goroutines %v, want one reused", served)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if st := p.Drain(ctx); st.Cut != 0 || ctx.Err() != nil {
		t.Errorf("drain with no connection open but a waiting goroutine: cut %d, ctx %v (the goroutine held it up)", st.Cut, ctx.Err())
	}
}
