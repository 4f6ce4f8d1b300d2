package netns

import (
	"bufio"
	"context"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l7gate/l7gate/internal/testutil"
)

// TestAddHostRejectsBadNames: a host whose veth name does not fit an
// interface name, or a non-IPv4 address, is refused before anything is
// created.
func TestAddHostRejectsBadNames(t *testing.T) {
	tp := &Topology{Prefix: "x", Node: "x-node", NodeAddr: netip.MustParseAddr("198.18.0.1")}
	for _, tc := range []struct{ dev, ip string }{
		{"", "198.18.0.2"},
		{"lxc0123456789abc", "198.18.0.2"},
		{"lxc0", "2001:db8::1"},
	} {
		if _, err := tp.AddHost(context.Background(), "h", tc.dev, netip.MustParseAddr(tc.ip)); err == nil {
			t.Errorf("AddHost(%q, %s) succeeded", tc.dev, tc.ip)
		}
	}
	if len(tp.Namespaces()) != 0 {
		t.Errorf("namespaces created for refused hosts: %v", tp.Namespaces())
	}
}

// TestPrivilegedTopology: two hosts reach each other through the node
// (TCP, forwarded by the node namespace), a process left running in a host
// namespace is ended by Close, and nothing with the prefix remains.
func TestPrivilegedTopology(t *testing.T) {
	testutil.RequirePrivileged(t, "creates network namespaces and veths", "ip", "sleep")
	tp, err := New(context.Background(), Config{Prefix: RandomPrefix("l7nt"), NodeAddr: netip.MustParseAddr("198.18.0.1"),
		Sysctls: map[string]string{"ipv4/ip_forward": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			tp.Close(context.Background())
		}
	})
	a, err := tp.AddHost(context.Background(), "a", "lxca", netip.MustParseAddr("198.18.0.10"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := tp.AddHost(context.Background(), "b", "lxcb", netip.MustParseAddr("198.18.0.11"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := tp.Namespaces(), []string{tp.Node, a.NS, b.NS}; !slices.Equal(got, want) {
		t.Errorf("Namespaces() = %v, want %v", got, want)
	}
	var l net.Listener
	MustIn(t, b.NS, func() error {
		var err error
		l, err = net.Listen("tcp4", "198.18.0.11:7000")
		return err
	})
	defer l.Close()
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Write([]byte(c.RemoteAddr().String() + "\n"))
			c.Close()
		}
	}()
	var line string
	MustIn(t, a.NS, func() error {
		c, err := net.DialTimeout("tcp4", "198.18.0.11:7000", 3*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		line, err = bufio.NewReader(c).ReadString('\n')
		return err
	})
	if !strings.HasPrefix(line, "198.18.0.10:") {
		t.Errorf("b saw the connection from %q, want 198.18.0.10", line)
	}

	// a process inside a host namespace, as a server would be
	if err := IP(context.Background(), "netns", "exec", a.NS, "sh", "-c", "sleep 60 >/dev/null 2>&1 &"); err != nil {
		t.Fatal(err)
	}
	if pids, err := PIDs(a.NS); err != nil || len(pids) == 0 {
		t.Fatalf("PIDs(%s) = %v, %v; want the sleep", a.NS, pids, err)
	}
	closed = true
	if err := tp.Close(context.Background()); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if leaks := tp.Leaks(); len(leaks) != 0 {
		t.Errorf("left after Close: %v", leaks)
	}
}

// TestPrivilegedLeakCheck: a namespace created beside the topology with
// its prefix is reported by Leaks after Close.
func TestPrivilegedLeakCheck(t *testing.T) {
	testutil.RequirePrivileged(t, "creates network namespaces", "ip")
	tp, err := New(context.Background(), Config{Prefix: RandomPrefix("l7nt"), NodeAddr: netip.MustParseAddr("198.18.0.1")})
	if err != nil {
		t.Fatal(err)
	}
	stray := tp.Prefix + "-stray"
	if err := IP(context.Background(), "netns", "add", stray); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { IP(context.Background(), "netns", "del", stray) })
	if err := tp.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if leaks := tp.Leaks(); !slices.Equal(leaks, []string{stray}) {
		t.Errorf("Leaks() = %v, want [%s]", leaks, stray)
	}
	if Exists(tp.Node) {
		t.Errorf("%s still exists after Close", tp.Node)
	}
}

// TestPrivilegedInReturnsThread: In gives its thread back to the runtime
// (switched back to its own namespace) instead of letting it exit: a
// thread that exits sends Pdeathsig to every child forked from it, which
// killed `l7gate demo`'s servers and agent mid-scenario. Sequential calls
// therefore run on threads used before; and a goroutine on such a thread
// is in this process's own namespace.
func TestPrivilegedInReturnsThread(t *testing.T) {
	testutil.RequirePrivileged(t, "creates a network namespace", "ip")
	tp := NewT(t, Config{Prefix: RandomPrefix("l7nt"), NodeAddr: netip.MustParseAddr("198.18.0.1")})
	own, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	reused := 0
	for range 20 {
		MustIn(t, tp.Node, func() error {
			tid := unix.Gettid()
			if seen[tid] {
				reused++
			}
			seen[tid] = true
			return nil
		})
	}
	if reused == 0 {
		t.Errorf("20 calls of In ran on 20 different threads: each thread exited after its call (children forked from them get Pdeathsig)")
	}
	// Every thread of the process is back in its own namespace.
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, task := range tasks {
		ns, err := os.Readlink("/proc/self/task/" + task.Name() + "/ns/net")
		if err == nil && ns != own {
			t.Errorf("thread %s is in %s, not the process's namespace %s", task.Name(), ns, own)
		}
	}
}

// TestAddDualHostRejects: an IPv6 host address needs the node's IPv6
// address, and must be IPv6 (not IPv4-mapped); nothing is created.
func TestAddDualHostRejects(t *testing.T) {
	v4only := &Topology{Prefix: "x", Node: "x-node", NodeAddr: netip.MustParseAddr("198.18.0.1")}
	if _, err := v4only.AddDualHost(context.Background(), "h", "lxc0", netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("2001:db8::2")); err == nil {
		t.Error("IPv6 host without a node IPv6 address accepted")
	}
	dual := &Topology{Prefix: "x", Node: "x-node", NodeAddr: netip.MustParseAddr("198.18.0.1"), NodeAddr6: netip.MustParseAddr("2001:db8::1")}
	if _, err := dual.AddDualHost(context.Background(), "h", "lxc0", netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("::ffff:198.18.0.2")); err == nil {
		t.Error("IPv4-mapped IPv6 host address accepted")
	}
	if len(v4only.Namespaces())+len(dual.Namespaces()) != 0 {
		t.Errorf("namespaces created for refused hosts")
	}
	if _, err := New(context.Background(), Config{NodeAddr: netip.MustParseAddr("198.18.0.1"), NodeAddr6: netip.MustParseAddr("198.18.0.2")}); err == nil {
		t.Error("IPv4 NodeAddr6 accepted")
	}
}

// TestPrivilegedDualStackTopology: two dual-stack hosts reach each other
// over IPv6 through the node (the gateway resolved by neighbour discovery).
func TestPrivilegedDualStackTopology(t *testing.T) {
	testutil.RequirePrivileged(t, "creates network namespaces and veths", "ip")
	tp, err := New(context.Background(), Config{Prefix: RandomPrefix("l7nt"), NodeAddr: netip.MustParseAddr("198.18.0.1"),
		NodeAddr6: netip.MustParseAddr("2001:db8::1"), Sysctls: map[string]string{"ipv4/ip_forward": "1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tp.Close(context.Background()) })
	a := tp.MustAddDualHost(t, "a", "lxca", "198.18.0.10", "2001:db8:1::a")
	b := tp.MustAddDualHost(t, "b", "lxcb", "198.18.0.11", "2001:db8:1::b")
	if a.IP6 != netip.MustParseAddr("2001:db8:1::a") || b.IP6 != netip.MustParseAddr("2001:db8:1::b") {
		t.Fatalf("hosts' IPv6 addresses %v %v", a.IP6, b.IP6)
	}
	var l net.Listener
	MustIn(t, b.NS, func() error {
		var err error
		l, err = net.Listen("tcp6", "[2001:db8:1::b]:7000")
		return err
	})
	defer l.Close()
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Write([]byte(c.RemoteAddr().String() + "\n"))
			c.Close()
		}
	}()
	var line string
	MustIn(t, a.NS, func() error {
		c, err := net.DialTimeout("tcp6", "[2001:db8:1::b]:7000", 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		line, err = bufio.NewReader(c).ReadString('\n')
		return err
	})
	if !strings.HasPrefix(line, "[2001:db8:1::a]:") {
		t.Errorf("b saw the connection from %q, want [2001:db8:1::a]", line)
	}
}
