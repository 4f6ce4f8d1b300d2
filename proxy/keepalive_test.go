package proxy

import (
	"context"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// keepAliveOpts reads a TCP socket's keep-alive settings.
func keepAliveOpts(t *testing.T, c net.Conn) (on, idle, intvl, cnt int) {
	t.Helper()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var gerr error
	err = rc.Control(func(fd uintptr) {
		get := func(level, opt int) int {
			v, e := unix.GetsockoptInt(int(fd), level, opt)
			if e != nil && gerr == nil {
				gerr = e
			}
			return v
		}
		on = get(unix.SOL_SOCKET, unix.SO_KEEPALIVE)
		idle = get(unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		intvl = get(unix.IPPROTO_TCP, unix.TCP_KEEPINTVL)
		cnt = get(unix.IPPROTO_TCP, unix.TCP_KEEPCNT)
	})
	if err != nil || gerr != nil {
		t.Fatalf("keep-alive options: %v %v", err, gerr)
	}
	return on, idle, intvl, cnt
}

// TestUpstreamKeepAliveArmedLater: an upstream connection is dialed
// without keep-alive (no setsockopt for it per dial) and gets Go's dialer
// defaults (15 s idle, 15 s interval, 9 probes) once it has been open for
// a round of the armer; one closed before that is skipped, and the armer
// stops when nothing waits and starts again for the next dial.
func TestUpstreamKeepAliveArmedLater(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	p := New(Options{})
	defer p.Close()
	p.keepAliveEvery = 50 * time.Millisecond
	dst := netip.MustParseAddrPort(ln.Addr().String())
	dial := func() net.Conn {
		c, err := p.dialUpstream(context.Background(), connInfo{src: netip.MustParseAddrPort("127.0.0.2:1"), dst: dst})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	for round := range 2 {
		closed := dial()
		c := dial()
		if on, _, _, _ := keepAliveOpts(t, c); on != 0 {
			t.Fatalf("round %d: keep-alive on right after the dial", round)
		}
		closed.Close()
		deadline := time.Now().Add(10 * time.Second)
		for {
			on, idle, intvl, cnt := keepAliveOpts(t, c)
			if on == 1 {
				if idle != 15 || intvl != 15 || cnt != 9 {
					t.Fatalf("round %d: keep-alive idle %d interval %d count %d, want 15 15 9", round, idle, intvl, cnt)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: keep-alive still off after 10 s", round)
			}
			time.Sleep(10 * time.Millisecond)
		}
		c.Close()
		// the armer ends once nothing waits
		for {
			p.keepAlive.mu.Lock()
			running := p.keepAlive.running
			p.keepAlive.mu.Unlock()
			if !running {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: armer still running with nothing queued", round)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// TestUpstreamKeepAliveDrainNotHeld: a drain (which waits for the proxy's
// goroutines) is not held up by connections waiting for keep-alive: the
// armer gives each its keep-alive at once and ends, and a connection
// dialed during the drain gets keep-alive in the dial.
func TestUpstreamKeepAliveDrainNotHeld(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	p := New(Options{})
	defer p.Close()
	p.keepAliveEvery = time.Hour // longer than the test
	dst := netip.MustParseAddrPort(ln.Addr().String())
	dial := func() net.Conn {
		c, err := p.dialUpstream(context.Background(), connInfo{src: netip.MustParseAddrPort("127.0.0.2:1"), dst: dst})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := dial()
	defer c.Close()
	if on, _, _, _ := keepAliveOpts(t, c); on != 0 {
		t.Fatal("keep-alive on right after the dial")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if st := p.Drain(ctx); st.Cut != 0 || ctx.Err() != nil {
		t.Fatalf("drain with a connection waiting for keep-alive: cut %d, ctx %v (the armer held it up)", st.Cut, ctx.Err())
	}
	if on, idle, _, _ := keepAliveOpts(t, c); on != 1 || idle != 15 {
		t.Errorf("waiting connection after the drain: keep-alive %d idle %d, want 1 15", on, idle)
	}
	c2 := dial()
	defer c2.Close()
	if on, idle, _, _ := keepAliveOpts(t, c2); on != 1 || idle != 15 {
		t.Errorf("connection dialed during the drain: keep-alive %d idle %d, want 1 15", on, idle)
	}
}

// TestUpstreamKeepAliveQueueBounded: beyond keepAliveMax connections
// dialed in one round, a dial sets keep-alive itself (what the armer
// holds stays bounded).
func TestUpstreamKeepAliveQueueBounded(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	p := New(Options{})
	defer p.Close()
	p.keepAliveEvery = time.Hour // longer than the test
	p.keepAliveMax = 2
	dst := netip.MustParseAddrPort(ln.Addr().String())
	for i := range 4 {
		c, err := p.dialUpstream(context.Background(), connInfo{src: netip.MustParseAddrPort("127.0.0.2:1"), dst: dst})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		on, _, _, _ := keepAliveOpts(t, c)
		if want := i >= 2; (on == 1) != want {
			t.Errorf("dial %d with %d queued: keep-alive %d, want on: %v", i+1, min(i, 2), on, want)
		}
	}
	p.keepAlive.mu.Lock()
	queued := len(p.keepAlive.next)
	p.keepAlive.mu.Unlock()
	if queued != 2 {
		t.Errorf("%d connections queued, want 2", queued)
	}
}
