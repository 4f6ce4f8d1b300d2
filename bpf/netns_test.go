package bpf

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l7gate/l7gate/internal/netns"
)

// topology is a node network namespace with pods behind veths
// (internal/netns):
//
//	pod ns "eth0" (pod IP/32, default via 198.18.0.1) <-> node ns "lxc<name>"
//	(198.18.0.1/32, route pod IP/32)
//
// plus the proxy policy routing (fwmark 0x200/0xf00 -> table 2004 local).
type topology struct {
	t      *testing.T
	prefix string
	node   string
	pods   map[string]*testPod
	topo   *netns.Topology
}

type testPod struct {
	name    string
	ns      string
	ip      netip.Addr
	ip6     netip.Addr // invalid: IPv4 only
	hostDev string
	id      uint32 // endpoint id
	ident   Identity
}

const (
	nodeAddr  = "198.18.0.1"
	nodeAddr6 = "2001:db8::1"
)

func ipCmd(t *testing.T, args ...string) { t.Helper(); netns.MustIP(t, args...) }

func newTopology(t *testing.T) *topology {
	t.Helper()
	topo := netns.NewT(t, netns.Config{Prefix: netns.RandomPrefix("l7gt"), NodeAddr: netip.MustParseAddr(nodeAddr),
		NodeAddr6: netip.MustParseAddr(nodeAddr6),
		Sysctls: map[string]string{
			"ipv4/ip_forward":             "1",
			"ipv4/conf/all/rp_filter":     "0",
			"ipv4/conf/default/rp_filter": "0",
			// Required by the redirect (see doc.go): else a forwarded
			// packet whose 4-tuple matches a proxy socket is dropped.
			"ipv4/tcp_early_demux": "0",
			// Lets the node's own connections, turned around into a pod
			// veth by an ingress redirect, in despite their local source.
			"ipv4/conf/all/accept_local":     "1",
			"ipv4/conf/default/accept_local": "1",
		}})
	tp := &topology{t: t, prefix: topo.Prefix, node: topo.Node, pods: make(map[string]*testPod), topo: topo}
	ipCmd(t, "-n", tp.node, "rule", "add", "fwmark", "0x200/0xf00", "lookup", fmt.Sprint(ProxyRoutingTable))
	ipCmd(t, "-n", tp.node, "route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", fmt.Sprint(ProxyRoutingTable))
	return tp
}

func (tp *topology) addPod(name, ip string, id uint32, ident Identity) *testPod {
	tp.t.Helper()
	h := tp.topo.MustAddHost(tp.t, name, "lxc"+name, ip)
	p := &testPod{name: name, ns: h.NS, ip: h.IP, hostDev: h.HostDev, id: id, ident: ident}
	if ident != 0 {
		tp.pods[name] = p
	}
	return p
}

// addDualPod is addPod with an IPv6 address too.
func (tp *topology) addDualPod(name, ip, ip6 string, id uint32, ident Identity) *testPod {
	tp.t.Helper()
	h := tp.topo.MustAddDualHost(tp.t, name, "lxc"+name, ip, ip6)
	p := &testPod{name: name, ns: h.NS, ip: h.IP, ip6: h.IP6, hostDev: h.HostDev, id: id, ident: ident}
	tp.pods[name] = p
	return p
}

// addExternal adds a host outside the cluster: a namespace routed through
// the node like a pod, but with no endpoint and no ipcache entry (world).
func (tp *topology) addExternal(name, ip string) *testPod {
	return tp.addPod(name, ip, 0, 0)
}

// inNS runs f on a fresh OS thread switched into the named network
// namespace (netns.In).
func inNS(ns string, f func() error) error { return netns.In(ns, f) }

func mustInNS(t *testing.T, ns string, f func() error) { t.Helper(); netns.MustIn(t, ns, f) }

// ifindex of a device in a namespace.
func (tp *topology) ifindex(dev string) int {
	tp.t.Helper()
	var idx int
	mustInNS(tp.t, tp.node, func() error {
		ifc, err := net.InterfaceByName(dev)
		if err != nil {
			return err
		}
		idx = ifc.Index
		return nil
	})
	return idx
}

// ipcache: pods by IP, the node as host.
func (tp *topology) ipcache() []IPCacheEntry {
	out := []IPCacheEntry{{Prefix: netip.MustParsePrefix(nodeAddr + "/32"), Identity: IdentityHost},
		{Prefix: netip.MustParsePrefix(nodeAddr6 + "/128"), Identity: IdentityHost}}
	for _, p := range tp.pods {
		out = append(out, IPCacheEntry{Prefix: netip.PrefixFrom(p.ip, 32), Identity: p.ident})
		if p.ip6.IsValid() {
			out = append(out, IPCacheEntry{Prefix: netip.PrefixFrom(p.ip6, 128), Identity: p.ident})
		}
	}
	return out
}

// banner servers: every accepted connection gets "<tag> <local addr>\n"
// and is closed by the server.
type bannerServer struct {
	mu       sync.Mutex
	accepted []string // local addresses seen
	wg       sync.WaitGroup
}

func serveBanner(t *testing.T, l net.Listener, tag string) *bannerServer {
	s := &bannerServer{}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.accepted = append(s.accepted, c.LocalAddr().String())
			s.mu.Unlock()
			fmt.Fprintf(c, "%s %s\n", tag, c.LocalAddr())
			c.Close()
		}
	}()
	t.Cleanup(func() { l.Close(); s.wg.Wait() })
	return s
}

func (s *bannerServer) seen() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.accepted...)
}

func listenTCP(t *testing.T, ns, addr string, transparent bool) *net.TCPListener {
	t.Helper()
	var l net.Listener
	mustInNS(t, ns, func() error {
		lc := net.ListenConfig{}
		lc.SetMultipathTCP(false)
		if transparent {
			lc.Control = func(_, _ string, c syscall.RawConn) error {
				var serr error
				err := c.Control(func(fd uintptr) {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
				})
				return errors.Join(err, serr)
			}
		}
		var err error
		l, err = lc.Listen(context.Background(), "tcp4", addr)
		return err
	})
	return l.(*net.TCPListener)
}

// udpEcho answers every datagram with "echo <local addr>".
func udpEcho(t *testing.T, ns, addr string) {
	t.Helper()
	var pc net.PacketConn
	mustInNS(t, ns, func() error {
		var err error
		pc, err = net.ListenPacket("udp4", addr)
		return err
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_ = n
			pc.WriteTo([]byte("echo "+pc.LocalAddr().String()), from)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
}

type dialOpts struct {
	localPort int
	mark      uint32
	timeout   time.Duration
}

// dialRead connects from ns to addr and reads the banner.
func dialRead(ns, addr string, o dialOpts) (string, error) {
	if o.timeout == 0 {
		o.timeout = 3 * time.Second
	}
	var c net.Conn
	err := inNS(ns, func() error {
		d := net.Dialer{Timeout: o.timeout}
		d.SetMultipathTCP(false)
		if o.localPort != 0 {
			d.LocalAddr = &net.TCPAddr{Port: o.localPort}
		}
		d.Control = func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
				if serr == nil && o.mark != 0 {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(o.mark))
				}
			})
			return errors.Join(err, serr)
		}
		var err error
		c, err = d.Dial("tcp", addr) // the address says which family
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return line, fmt.Errorf("read banner: %w", err)
	}
	// Wait for the server's FIN so that the server side closes first.
	io.Copy(io.Discard, c)
	return strings.TrimSpace(line), nil
}

// udpQuery sends one datagram from ns and waits (bounded) for an answer.
func udpQuery(ns, addr string) (string, error) {
	var c net.Conn
	if err := inNS(ns, func() error {
		var err error
		c, err = net.Dial("udp4", addr)
		return err
	}); err != nil {
		return "", err
	}
	defer c.Close()
	buf := make([]byte, 512)
	for range 3 {
		if _, err := c.Write([]byte("q")); err != nil {
			return "", err
		}
		c.SetReadDeadline(time.Now().Add(400 * time.Millisecond))
		n, err := c.Read(buf)
		if err == nil {
			return string(buf[:n]), nil
		}
	}
	return "", errors.New("no udp answer")
}

// serveSink reads each connection to its end and answers
// "got <bytes> at <local addr>".
func serveSink(t *testing.T, l net.Listener) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(20 * time.Second))
				n, _ := io.Copy(io.Discard, c)
				fmt.Fprintf(c, "got %d at %s\n", n, c.LocalAddr())
			}()
		}
	}()
	t.Cleanup(func() { l.Close(); wg.Wait() })
}

// sendBulk sends size bytes from ns to addr and returns the sink's answer.
func sendBulk(ns, addr string, size int) (string, error) {
	var c net.Conn
	if err := inNS(ns, func() error {
		var err error
		c, err = net.DialTimeout("tcp4", addr, 3*time.Second)
		return err
	}); err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write(make([]byte, size)); err != nil {
		return "", err
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}
