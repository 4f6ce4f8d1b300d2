package proxy

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/l7gate/l7gate/internal/testutil"
	"github.com/l7gate/l7gate/policy"
)

// TestAcceptSurvivesDescriptorExhaustion: when a burst of connections
// uses up RLIMIT_NOFILE, accept fails with EMFILE; once descriptors are
// free again the listener serves new connections. (Its accept loop used
// to end at the first such error: the port stayed dead, every later
// connection waiting in the backlog, as make bench's proxyrss phase left
// it at the 20000-descriptor limit of this machine.)
func TestAcceptSurvivesDescriptorExhaustion(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") }))
	defer srv.Close()
	up := netip.MustParseAddrPort(srv.Listener.Addr().String())
	logs := &testutil.LogBuffer{}
	no := false
	p := New(Options{
		ListenHost:          "127.0.0.1",
		Transparent:         &no,
		OriginalDestination: func(net.Conn) (netip.AddrPort, error) { return up, nil },
		Logger:              slog.New(slog.NewTextHandler(logs, nil)),
	})
	defer p.Close()
	port := freePort(t)
	if err := p.Apply(httpConfig("1", port, up.Port(), policy.HTTPRule{Method: "GET", Path: "/.*"})); err != nil {
		t.Fatal(err)
	}
	c := dialFrom(t, "127.0.0.2", port)
	if s, _ := get(t, c, bufio.NewReader(c), "/a"); s != 200 {
		t.Fatalf("before: %d", s)
	}
	c.Close()

	// Leave a few descriptors, then take them: the proxy's accept (same
	// process, same table) fails with EMFILE for the connections the
	// kernel completed meanwhile.
	restore := testutil.ScarceFileLimit(t, 8)
	var held []net.Conn
	for i := 0; i < 64; i++ {
		conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err != nil {
			continue // our side is out of descriptors too (EMFILE)
		}
		held = append(held, conn)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(logs.String(), "too many open files") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(logs.String(), "too many open files") {
		restore()
		for _, h := range held {
			h.Close()
		}
		t.Skipf("accept never ran out of descriptors (log: %s)", logs.String())
	}
	for _, h := range held {
		h.Close()
	}
	restore()

	// Descriptors are free again: a new connection is served.
	c2, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c2, "GET /b HTTP/1.1\r\nHost: web\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c2), nil)
	if err != nil {
		t.Fatalf("after the descriptors came back, the listener serves no more: %v (log: %s)", err, logs.String())
	}
	resp.Body.Close()
	if resp.StatusCode == 0 {
		t.Fatal("no status")
	}
}

// TestHandOverSurvivesDescriptorExhaustion: the hand-over socket's accept
// fails with EMFILE while RLIMIT_NOFILE is used up; once descriptors are
// free again a hand-over still works. (ServeHandOver used to return at
// the first such error: the proxy could never be handed over again, so an
// upgrade or the agent's replacement of a proxy of another version would
// start a second proxy beside it.)
func TestHandOverSurvivesDescriptorExhaustion(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") }))
	defer srv.Close()
	up := netip.MustParseAddrPort(srv.Listener.Addr().String())
	logs := &testutil.LogBuffer{}
	no := false
	p := New(Options{
		ListenHost:          "127.0.0.1",
		Transparent:         &no,
		DrainTimeout:        2 * time.Second,
		OriginalDestination: func(net.Conn) (netip.AddrPort, error) { return up, nil },
		Logger:              slog.New(slog.NewTextHandler(logs, nil)),
	})
	defer p.Close()
	port := freePort(t)
	if err := p.Apply(httpConfig("1", port, up.Port(), policy.HTTPRule{Method: "GET", Path: "/.*"})); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "handover.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() { served <- p.ServeHandOver(ctx, sock) }()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("hand-over socket never appeared")
		}
	}

	// A client socket made while descriptors are left, then every
	// descriptor taken: its connection waits in the backlog, and the
	// proxy's accept of it fails with EMFILE (connect needs no new
	// descriptor on our side; accept needs one on the proxy's).
	restore := testutil.ScarceFileLimit(t, 16)
	pre, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var fill []*os.File
	release := func() {
		for _, f := range fill {
			f.Close()
		}
		fill = nil
		if pre >= 0 {
			syscall.Close(pre)
			pre = -1
		}
		restore()
	}
	defer release()
	for {
		f, err := os.Open(os.DevNull)
		if err != nil {
			break // out of descriptors
		}
		fill = append(fill, f)
	}
	if err := syscall.Connect(pre, &syscall.SockaddrUnix{Name: sock}); err != nil {
		t.Fatalf("connect to the hand-over socket: %v", err)
	}
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(logs.String(), "too many open files") && time.Now().Before(deadline); {
		select {
		case err := <-served:
			release()
			t.Fatalf("hand-over socket stopped serving while descriptors were short: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	if !strings.Contains(logs.String(), "too many open files") {
		release()
		t.Fatalf("accept never ran out of descriptors (log: %s)", logs.String())
	}
	release()

	// Descriptors are free again: the connection queued meanwhile is
	// accepted and fails (its peer is gone), then a real hand-over
	// takes the listener and the old proxy finishes.
	rctx, rcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer rcancel()
	h, err := ReceiveHandOver(rctx, sock)
	if err != nil || h == nil {
		t.Fatalf("hand-over after the descriptors came back: %v, %v (log: %s)", h, err, logs.String())
	}
	defer h.Close()
	if h.TCP[port] == nil {
		t.Fatalf("handed-over sockets %+v, want port %d's listener", h.Sockets, port)
	}
	if err := h.Ready(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("hand-over socket: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the old proxy did not finish after the hand-over")
	}
}
