package redirect

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestPrivilegedUpstreamDialerKeepsSource: an upstream socket bound to a
// client's address (an address of no interface, IP_TRANSPARENT) reaches
// the server from that address and a fresh port; a port the avoid function
// names fails the dial with ErrSourcePortTaken before the server sees any
// connection.
func TestPrivilegedUpstreamDialerKeepsSource(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace, binds with IP_TRANSPARENT")
	}
	b := make([]byte, 3)
	rand.Read(b)
	ns := "l7rd" + hex.EncodeToString(b)
	for _, args := range [][]string{
		{"netns", "add", ns},
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", ns, "addr", "add", "198.18.9.2/32", "dev", "lo"},
		// The client's address is no interface's: only routed locally,
		// as the node's policy routing does for the proxy's upstreams.
		{"-n", ns, "route", "add", "local", "198.18.9.0/24", "dev", "lo"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
		if args[0] == "netns" {
			t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		}
	}
	client := netip.MustParseAddr("198.18.9.1")
	err := inNetNS(ns, func() error {
		ln, err := net.Listen("tcp4", "198.18.9.2:80")
		if err != nil {
			return err
		}
		defer ln.Close()
		peers := make(chan netip.AddrPort, 4)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				peers <- c.RemoteAddr().(*net.TCPAddr).AddrPort()
				c.Close()
			}
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()

		var refused uint16
		avoidFirst := func(port uint16) bool {
			if refused == 0 {
				refused = port
				return true
			}
			return false
		}
		if _, err := UpstreamDialer(0, client, avoidFirst).DialContext(ctx, "tcp", "198.18.9.2:80"); !errors.Is(err, ErrSourcePortTaken) {
			t.Errorf("dial from a port to avoid: %v, want ErrSourcePortTaken", err)
		}
		c, err := UpstreamDialer(0x0A00, client, avoidFirst).DialContext(ctx, "tcp", "198.18.9.2:80")
		if err != nil {
			return err
		}
		defer c.Close()
		local := c.LocalAddr().(*net.TCPAddr).AddrPort()
		mark, err := soMark(c)
		if err != nil {
			return err
		}
		if mark != 0x0A00 {
			t.Errorf("upstream SO_MARK %#x, want 0xa00", mark)
		}
		select {
		case peer := <-peers:
			if peer.Addr() != client || peer != local {
				t.Errorf("server saw %s, want the client's address (socket %s)", peer, local)
			}
		case <-ctx.Done():
			return ctx.Err()
		}
		select {
		case peer := <-peers:
			t.Errorf("server saw a second connection from %s: the refused dial sent a SYN", peer)
		case <-time.After(200 * time.Millisecond):
		}
		if refused == 0 || local.Port() == refused {
			t.Errorf("refused port %d, upstream port %d", refused, local.Port())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func soMark(c net.Conn) (int, error) {
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		return 0, err
	}
	var mark int
	var serr error
	if err := rc.Control(func(fd uintptr) { mark, serr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) }); err != nil {
		return 0, err
	}
	return mark, serr
}

// inNetNS runs f on a locked OS thread switched into the named network
// namespace (the thread is discarded afterwards).
func inNetNS(ns string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		fd, err := unix.Open(filepath.Join("/var/run/netns", ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- f()
	}()
	return <-errc
}

// TestPrivilegedListenTransparentIPv6: an IPv6 address gives an AF_INET6
// listener with IPV6_TRANSPARENT; [::1] takes IPv6 only (IPV6_V6ONLY), the wildcard
// both families (no IPV6_V6ONLY); an IPv4 address stays AF_INET.
func TestPrivilegedListenTransparentIPv6(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: IPV6_TRANSPARENT needs CAP_NET_ADMIN")
	}
	for _, c := range []struct {
		addr           string
		family, v6only int
	}{{"[::1]:0", unix.AF_INET6, 1}, {"[::]:0", unix.AF_INET6, 0}, {"127.0.0.1:0", unix.AF_INET, -1}} {
		ln, err := ListenTransparent(context.Background(), c.addr, true)
		if err != nil {
			t.Fatalf("%s: %v", c.addr, err)
		}
		rc, err := ln.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		rc.Control(func(fd uintptr) {
			sa, err := unix.Getsockname(int(fd))
			if err != nil {
				t.Fatal(err)
			}
			fam := unix.AF_INET
			if _, ok := sa.(*unix.SockaddrInet6); ok {
				fam = unix.AF_INET6
			}
			if fam != c.family {
				t.Errorf("%s: family %d, want %d", c.addr, fam, c.family)
			}
			if fam != unix.AF_INET6 {
				return
			}
			if tr, err := unix.GetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT); err != nil || tr != 1 {
				t.Errorf("%s: IPV6_TRANSPARENT %d %v", c.addr, tr, err)
			}
			if v6, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_V6ONLY); err != nil || v6 != c.v6only {
				t.Errorf("%s: IPV6_V6ONLY %d %v, want %d", c.addr, v6, err, c.v6only)
			}
		})
		ln.Close()
	}
	// The accepted socket's local address is the original destination,
	// unmapped: here a plain IPv6 connection on loopback.
	ln, err := ListenTransparent(context.Background(), "[::1]:0", true)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		if c, err := net.Dial("tcp6", ln.Addr().String()); err == nil {
			defer c.Close()
			time.Sleep(100 * time.Millisecond)
		}
	}()
	c, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if od, err := OriginalDestination(c); err != nil || od.Addr() != netip.IPv6Loopback() {
		t.Errorf("original destination %v %v, want [::1]", od, err)
	}
}

// TestPrivilegedTakeListeners: both listeners of a port (IPv4 and IPv6)
// of another process are taken, IPv4 first.
func TestPrivilegedTakeListeners(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: pidfd_getfd")
	}
	if _, err := exec.LookPath("python3"); err != nil {
		t.Skip("needs python3 (a listening process of its own)")
	}
	// A process of its own: /proc/PID/net is its main thread's namespace,
	// which in this test binary another test may have moved.
	cmd := exec.Command("python3", "-c", `
import socket, sys, time
a = socket.socket(); a.bind(("127.0.0.1", 0)); a.listen()
port = a.getsockname()[1]
b = socket.socket(socket.AF_INET6); b.bind(("::1", port)); b.listen()
print(port, flush=True)
time.sleep(30)
`)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	var port int
	if _, err := fmt.Fscan(out, &port); err != nil {
		t.Fatalf("listener process: %v", err)
	}
	got, err := TakeListeners(cmd.Process.Pid, uint16(port))
	if err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for _, l := range got {
		addrs = append(addrs, l.Addr().String())
		l.Close()
	}
	want := []string{"127.0.0.1:" + strconv.Itoa(port), "[::1]:" + strconv.Itoa(port)}
	if !slices.Equal(addrs, want) {
		t.Errorf("took %v, want %v", addrs, want)
	}
}

// TestPrivilegedUpstreamDialerKeepsIPv6Source: an upstream socket bound to
// an IPv6 client's address (IPV6_TRANSPARENT) reaches the server from that
// address: the proxy's upstream for an IPv6 redirect.
func TestPrivilegedUpstreamDialerKeepsIPv6Source(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace, binds with IPV6_TRANSPARENT")
	}
	b := make([]byte, 3)
	rand.Read(b)
	ns := "l7rd" + hex.EncodeToString(b)
	for _, args := range [][]string{
		{"netns", "add", ns},
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", ns, "addr", "add", "2001:db8:9::2/128", "dev", "lo", "nodad"},
		{"-n", ns, "-6", "route", "add", "local", "2001:db8:9::/64", "dev", "lo"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v %s", args, err, out)
		}
		if args[0] == "netns" {
			t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		}
	}
	client := netip.MustParseAddr("2001:db8:9::1")
	err := inNetNS(ns, func() error {
		ln, err := net.Listen("tcp6", "[2001:db8:9::2]:80")
		if err != nil {
			return err
		}
		defer ln.Close()
		peer := make(chan netip.AddrPort, 1)
		go func() {
			c, err := ln.Accept()
			if err == nil {
				peer <- c.RemoteAddr().(*net.TCPAddr).AddrPort()
				c.Close()
			}
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := UpstreamDialer(0x0A00, client, func(uint16) bool { return false }).DialContext(ctx, "tcp", "[2001:db8:9::2]:80")
		if err != nil {
			return fmt.Errorf("dial from %s: %w", client, err)
		}
		defer c.Close()
		select {
		case got := <-peer:
			if got.Addr() != client {
				return fmt.Errorf("the server saw %s, want %s", got, client)
			}
		case <-ctx.Done():
			return errors.New("the server saw no connection")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestListenTransparentKeepAlive: connections accepted on a listener of
// ListenTransparent have TCP keep-alive on with Go's listener defaults
// (15 s idle, 15 s interval, 9 probes), inherited from the listening
// socket rather than set per connection.
func TestListenTransparentKeepAlive(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0"} {
		ln, err := ListenTransparent(context.Background(), addr, false)
		if err != nil {
			if addr == "[::1]:0" {
				t.Logf("no IPv6: %v", err)
				continue
			}
			t.Fatal(err)
		}
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.AcceptTCP()
		if err != nil {
			t.Fatal(err)
		}
		raw, err := s.SyscallConn()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]int{}
		raw.Control(func(fd uintptr) {
			for name, o := range map[string][2]int{
				"SO_KEEPALIVE":  {unix.SOL_SOCKET, unix.SO_KEEPALIVE},
				"TCP_KEEPIDLE":  {unix.IPPROTO_TCP, unix.TCP_KEEPIDLE},
				"TCP_KEEPINTVL": {unix.IPPROTO_TCP, unix.TCP_KEEPINTVL},
				"TCP_KEEPCNT":   {unix.IPPROTO_TCP, unix.TCP_KEEPCNT},
				"TCP_NODELAY":   {unix.IPPROTO_TCP, unix.TCP_NODELAY},
			} {
				v, err := unix.GetsockoptInt(int(fd), o[0], o[1])
				if err != nil {
					t.Errorf("%s: %v", name, err)
				}
				got[name] = v
			}
		})
		want := map[string]int{"SO_KEEPALIVE": 1, "TCP_KEEPIDLE": 15, "TCP_KEEPINTVL": 15, "TCP_KEEPCNT": 9, "TCP_NODELAY": 1}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: accepted socket has %s %d, want %d", addr, k, got[k], v)
			}
		}
		c.Close()
		s.Close()
		ln.Close()
	}
}
