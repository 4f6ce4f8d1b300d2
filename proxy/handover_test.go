package proxy

import (
	"syscall"

	"context"
	"fmt"
	"golang.org/x/sys/unix"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/l7gate/l7gate/policy"
)

// TestHandOverLoopback hands the proxy's listeners from one Proxy to the
// next three times (ServeHandOver / ReceiveHandOver over a Unix socket)
// while a keep-alive client, a new-connection client (both allowed) and a
// denied client run: no allowed request fails, no denied one gets
// through, and each old proxy drains.
func TestHandOverLoopback(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(time.Millisecond)
		fmt.Fprint(w, "ok")
	}))
	defer upstream.Close()
	up := netip.MustParseAddrPort(upstream.Listener.Addr().String())
	port := freePort(t)
	cfg := httpConfig("1", port, up.Port(), policy.HTTPRule{Method: "GET", Path: "/ok.*"})
	sock := filepath.Join(t.TempDir(), "proxy-handover.sock")
	no := false
	newProxy := func(inherited Sockets) *Proxy {
		p := New(Options{ListenHost: "127.0.0.1", Transparent: &no, Inherited: inherited, DrainTimeout: 10 * time.Second,
			OriginalDestination: func(net.Conn) (netip.AddrPort, error) { return up, nil }})
		t.Cleanup(func() { p.Close() })
		if err := p.Apply(cfg); err != nil {
			t.Fatal(err)
		}
		return p
	}
	serve := func(p *Proxy) chan struct{} {
		done := make(chan struct{})
		go func() { defer close(done); p.ServeHandOver(context.Background(), sock) }()
		return done
	}
	cur := newProxy(Sockets{})
	curDone := serve(cur)
	if h, err := ReceiveHandOver(context.Background(), filepath.Join(t.TempDir(), "none.sock")); h != nil || err != nil {
		t.Fatalf("hand-over from nobody: %v, %v; want nil, nil", h, err)
	}

	client := func(src string, keepAlive bool) *http.Client {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: !keepAlive}}
	}
	url := fmt.Sprintf("http://127.0.0.1:%d/ok", port)
	stop := make(chan struct{})
	var sent, failed, leaked, denied atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	loop := func(c *http.Client, wantStatus int) {
		defer wg.Done()
		for i := 0; i < 20000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			sent.Add(1)
			resp, err := c.Get(url)
			if err != nil {
				if wantStatus == 200 {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
				continue
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			switch {
			case wantStatus == 403 && resp.StatusCode == 200:
				leaked.Add(1)
			case wantStatus == 403:
				denied.Add(1)
			case resp.StatusCode != 200:
				failed.Add(1)
				firstErr.CompareAndSwap(nil, fmt.Sprintf("status %d", resp.StatusCode))
			}
		}
	}
	wg.Add(3)
	go loop(client("127.0.0.2", true), 200)
	go loop(client("127.0.0.2", false), 200)
	go loop(client("127.0.0.3", true), 403)

	var drains []time.Duration
	for range 3 {
		time.Sleep(300 * time.Millisecond)
		h, err := ReceiveHandOver(context.Background(), sock)
		if err != nil || h == nil {
			t.Fatalf("receive hand-over: %v", err)
		}
		if h.Len() != 1 || h.TCP[port] == nil {
			t.Fatalf("handed-over sockets: %+v, want port %d's listener", h.Sockets, port)
		}
		next := newProxy(h.Sockets)
		nextDone := serve(next)
		start := time.Now()
		if err := h.Ready(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-curDone:
		case <-time.After(15 * time.Second):
			t.Fatal("old proxy did not finish draining")
		}
		drains = append(drains, time.Since(start))
		if s := cur.Drain(context.Background()); s.Cut != 0 {
			t.Errorf("drain cut %d connections", s.Cut)
		}
		cur, curDone = next, nextDone
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	t.Logf("requests %d, failed %d, denied %d, denied that got through %d; drain times %v", sent.Load(), failed.Load(), denied.Load(), leaked.Load(), drains)
	if failed.Load() != 0 {
		t.Errorf("%d allowed requests failed across 3 hand-overs (first: %v)", failed.Load(), firstErr.Load())
	}
	if leaked.Load() != 0 || denied.Load() == 0 {
		t.Errorf("denied client: %d denials, %d requests got through", denied.Load(), leaked.Load())
	}
}

// TestHostileHandOverPeer: a peer on the hand-over socket that takes the
// listeners and then hangs up, or answers anything but "ready", does not
// make the proxy drain: it keeps serving, and a real hand-over still works
// afterwards.
func TestHostileHandOverPeer(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") }))
	defer upstream.Close()
	up := netip.MustParseAddrPort(upstream.Listener.Addr().String())
	port := freePort(t)
	cfg := httpConfig("1", port, up.Port(), policy.HTTPRule{Path: "/.*"})
	p, _ := newTestProxy(t, upstream.Listener.Addr().String())
	if err := p.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "h.sock")
	done := make(chan struct{})
	go func() { defer close(done); p.ServeHandOver(context.Background(), sock) }()
	for range 50 {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	get := func() error {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
		c := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
		resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/x", port))
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
	for _, answer := range []string{"", "garbage\n", "ready-not\n"} {
		h, err := ReceiveHandOver(context.Background(), sock)
		if err != nil || h == nil {
			t.Fatalf("receive: %v", err)
		}
		if answer != "" {
			h.c.Write([]byte(answer))
		}
		h.Close() // hang up, closing the received sockets
		time.Sleep(50 * time.Millisecond)
		if p.Draining() {
			t.Fatalf("peer answering %q made the proxy drain", answer)
		}
		if err := get(); err != nil {
			t.Fatalf("after a peer answering %q: %v", answer, err)
		}
	}
	h, err := ReceiveHandOver(context.Background(), sock)
	if err != nil || h == nil {
		t.Fatalf("receive: %v", err)
	}
	if err := h.Ready(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("a real hand-over did not drain the proxy")
	}
	h.Sockets.Close()
}

// TestListenUnixReplacingLongPath: a socket path that fits the 108-byte
// limit binds, also through the temporary name the hand-over renames from
// (that name used to be path + ".PID": "bind: invalid argument" in deep
// run dirs, and the proxy had no admin socket — every redirect to it
// failed closed).
func TestListenUnixReplacingLongPath(t *testing.T) {
	dir := t.TempDir()
	pad := 107 - len(dir) - len("/proxy-handover.sock") - 1
	if pad < 1 {
		t.Skipf("temp dir %s too long for the test", dir)
	}
	sub := filepath.Join(dir, strings.Repeat("d", pad))
	for _, name := range []string{"proxy-admin.sock", "proxy-handover.sock"} {
		path := filepath.Join(sub, name)
		ln, err := listenUnixReplacing(path)
		if err != nil {
			t.Fatalf("%s (%d bytes): %v", name, len(path), err)
		}
		ln.Close()
	}
}

// socketInode identifies the socket behind a connection (the same socket
// in two processes or two fds has one inode).
func socketInode(t *testing.T, c syscall.Conn) uint64 {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Fstat(int(fd), &st) }); err != nil || serr != nil {
		t.Fatal(err, serr)
	}
	return st.Ino
}

// TestHandOverUDPSocket: a dns listener's UDP sockets (IPv4 and IPv6) are
// handed over with its TCP listeners, and the successor serves those very
// sockets (the ones the datapath's socket map holds under the port's UDP
// keys), so UDP DNS finds a socket throughout; they stay open after the
// old proxy drained.
func TestHandOverUDPSocket(t *testing.T) {
	no := false
	sock := filepath.Join(t.TempDir(), "proxy-handover.sock")
	old := New(Options{ListenHost: "127.0.0.1", ListenHost6: "::1", Transparent: &no, DrainTimeout: time.Second})
	t.Cleanup(func() { old.Close() })
	var cfg *Config
	for range 20 {
		port := freePortBoth(t) // the [::1] sockets too
		cfg = &Config{Version: "1", Listeners: []Listener{{Name: "egress/dns", Port: port, Direction: policy.Egress, Parser: policy.ParserDNS}}}
		if old.Apply(cfg) == nil {
			break
		}
		cfg = nil
	}
	if cfg == nil {
		t.Fatal("no free port for the dns listener")
	}
	port := cfg.Listeners[0].Port
	old.mu.Lock()
	want := socketInode(t, old.listeners[port].udp)
	if old.listeners[port].udp6 == nil || old.listeners[port].ln6 == nil {
		old.mu.Unlock()
		t.Fatal("the dns listener has no IPv6 sockets")
	}
	want6 := socketInode(t, old.listeners[port].udp6)
	old.mu.Unlock()
	done := make(chan struct{})
	go func() { defer close(done); old.ServeHandOver(context.Background(), sock) }()

	var h *HandOver
	for deadline := time.Now().Add(5 * time.Second); h == nil; {
		var err error
		if h, err = ReceiveHandOver(context.Background(), sock); err != nil || (h == nil && time.Now().After(deadline)) {
			t.Fatalf("receive hand-over: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if h.UDP[port] == nil || h.UDP6[port] == nil || h.TCP6[port] == nil {
		t.Fatalf("handed over udp sockets %v, IPv6 %v, IPv6 listeners %v: want port %d's", h.UDP, h.UDP6, h.TCP6, port)
	}
	next := New(Options{ListenHost: "127.0.0.1", ListenHost6: "::1", Transparent: &no, Inherited: h.Sockets})
	t.Cleanup(func() { next.Close() })
	if err := next.Apply(cfg); err != nil {
		t.Fatal(err)
	}
	if err := h.Ready(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("old proxy did not drain")
	}
	next.mu.Lock()
	udp, udp6 := next.listeners[port].udp, next.listeners[port].udp6
	next.mu.Unlock()
	if got := socketInode(t, udp); got != want {
		t.Errorf("the successor serves udp socket inode %d, want the handed-over one %d", got, want)
	}
	if udp6 == nil || socketInode(t, udp6) != want6 {
		t.Errorf("the successor's IPv6 udp socket %v is not the handed-over one (inode %d)", udp6, want6)
	}
	// Still open and bound after the old proxy closed its descriptor.
	if la, ok := udp.LocalAddr().(*net.UDPAddr); !ok || la.Port != int(port) {
		t.Errorf("successor's udp socket bound to %v, want port %d", udp.LocalAddr(), port)
	}
}

// TestHandOverIPv6Listener: a proxy port's IPv6 listener (ListenHost6) is
// handed over with its IPv4 one, so the new process serves IPv6 on the
// same socket once the old one drained (binding a new [::1] socket while
// the old process still listens there would fail).
func TestHandOverIPv6Listener(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") }))
	defer upstream.Close()
	up := netip.MustParseAddrPort(upstream.Listener.Addr().String())
	port := freePortBoth(t) // [::1] too
	cfg := httpConfig("1", port, up.Port(), policy.HTTPRule{Method: "GET", Path: "/ok.*"})
	cfg.Members[1].Prefixes = append(cfg.Members[1].Prefixes, netip.MustParsePrefix("::1/128")) // the friend
	sock := filepath.Join(t.TempDir(), "proxy-handover.sock")
	no := false
	newProxy := func(h *HandOver) *Proxy {
		opts := Options{ListenHost: "127.0.0.1", ListenHost6: "::1", Transparent: &no, DrainTimeout: 5 * time.Second,
			OriginalDestination: func(net.Conn) (netip.AddrPort, error) { return up, nil }}
		if h != nil {
			opts.Inherited = h.Sockets
		}
		p := New(opts)
		t.Cleanup(func() { p.Close() })
		if err := p.Apply(cfg); err != nil {
			t.Fatal(err)
		}
		return p
	}
	get := func(host string) error {
		src := "127.0.0.2" // the friend
		if host == "::1" {
			src = "::1"
		}
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, DisableKeepAlives: true}}
		resp, err := c.Get(fmt.Sprintf("http://%s/ok", net.JoinHostPort(host, strconv.Itoa(int(port)))))
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
	old := newProxy(nil)
	for _, host := range []string{"127.0.0.1", "::1"} {
		if err := get(host); err != nil {
			t.Fatalf("old proxy over %s: %v", host, err)
		}
	}
	done := make(chan struct{})
	go func() { defer close(done); old.ServeHandOver(context.Background(), sock) }()
	var h *HandOver
	var err error
	for range 50 {
		if h, err = ReceiveHandOver(context.Background(), sock); h != nil || err != nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if h == nil {
		t.Fatalf("no hand-over: %v", err)
	}
	if ln := h.TCP6[port]; ln == nil || ln.Addr().(*net.TCPAddr).AddrPort() != netip.AddrPortFrom(netip.IPv6Loopback(), port) {
		t.Errorf("handed-over IPv6 listeners %v, want [::1]:%d", h.TCP6, port)
	}
	newProxy(h)
	if err := h.Ready(); err != nil {
		t.Fatal(err)
	}
	<-done // the old process drained: its sockets are closed
	for _, host := range []string{"127.0.0.1", "::1"} {
		if err := get(host); err != nil {
			t.Errorf("new proxy over %s after the hand-over: %v", host, err)
		}
	}
}
