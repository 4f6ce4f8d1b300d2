package proxy

import (
	"bufio"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
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
