package dnsproxy

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/l7gate/l7gate/internal/testutil"
)

// TestOrigDstIPv6: the original destination of a datagram on an IPv6
// socket comes in an IPV6_ORIGDSTADDR control message (a sockaddr_in6);
// IPv4's stays readable.
func TestOrigDstIPv6(t *testing.T) {
	cmsg := func(level, typ int32, data []byte) []byte {
		b := make([]byte, unix.CmsgSpace(len(data)))
		h := (*unix.Cmsghdr)(unsafePointer(b))
		h.Level, h.Type = level, typ
		h.SetLen(unix.CmsgLen(len(data)))
		copy(b[unix.CmsgLen(0):], data)
		return b
	}
	sa6 := make([]byte, unix.SizeofSockaddrInet6)
	binary.NativeEndian.PutUint16(sa6[0:2], unix.AF_INET6)
	binary.BigEndian.PutUint16(sa6[2:4], 53)
	a6 := netip.MustParseAddr("2001:db8:31::53").As16()
	copy(sa6[8:24], a6[:])
	if got := origDst(cmsg(unix.SOL_IPV6, unix.IPV6_ORIGDSTADDR, sa6)); got != netip.MustParseAddrPort("[2001:db8:31::53]:53") {
		t.Errorf("IPv6: %v", got)
	}
	sa4 := make([]byte, unix.SizeofSockaddrInet4)
	binary.NativeEndian.PutUint16(sa4[0:2], unix.AF_INET)
	binary.BigEndian.PutUint16(sa4[2:4], 53)
	copy(sa4[4:8], []byte{198, 18, 31, 53})
	if got := origDst(cmsg(unix.SOL_IP, unix.IP_ORIGDSTADDR, sa4)); got != netip.MustParseAddrPort("198.18.31.53:53") {
		t.Errorf("IPv4: %v", got)
	}
	if got := origDst(cmsg(unix.SOL_IPV6, unix.IPV6_ORIGDSTADDR, sa6[:20])); got.IsValid() {
		t.Errorf("short sockaddr_in6: %v, want none", got)
	}
	if len(cmsg(unix.SOL_IPV6, unix.IPV6_ORIGDSTADDR, sa6)) > oobSize {
		t.Errorf("oobSize %d holds no IPV6_ORIGDSTADDR", oobSize)
	}
}

// TestPrivilegedDNSProxyIPv6: the DNS proxy's IPv6 sockets (ListenUDP on
// [::1] with IPV6_TRANSPARENT and IPV6_RECVORIGDSTADDR, a TCP listener on
// [::1]): the real dig over IPv6, UDP and TCP, gets the allowed name's A
// and AAAA answers (cached for toFQDNs) and REFUSED for a denied one; an
// answer sent from an address the proxy does not own (sendFrom, as for a
// redirected query) reaches an IPv6 client from that address.
func TestPrivilegedDNSProxyIPv6(t *testing.T) {
	testutil.RequirePrivileged(t, "IPV6_TRANSPARENT sockets", "dig")
	p := startProxy(t, nil)
	if c, err := net.ListenPacket("udp6", "[::1]:0"); err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	} else {
		c.Close()
	}
	ctx, cancel := context.WithCancel(context.Background())
	pc, err := ListenUDP(ctx, "[::1]:0", true)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	port := netip.MustParseAddrPort(pc.LocalAddr().String()).Port()
	ln, err := net.Listen("tcp6", net.JoinHostPort("::1", strconv.Itoa(int(port))))
	if err != nil {
		cancel()
		pc.Close()
		t.Fatal(err)
	}
	done := make(chan struct{}, 2)
	go func() { p.ServeUDP(ctx, pc); done <- struct{}{} }()
	go func() { p.ServeTCP(ctx, ln); done <- struct{}{} }()
	t.Cleanup(func() { cancel(); <-done; <-done })

	dig6 := func(args ...string) string {
		t.Helper()
		all := append([]string{"-6", "@::1", "-p", strconv.Itoa(int(port)), "+tries=1", "+time=3"}, args...)
		out, err := exec.Command("dig", all...).CombinedOutput()
		if err != nil {
			t.Fatalf("dig %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	for _, tcp := range []string{"+notcp", "+tcp"} {
		if out := dig6(tcp, "www.example.com", "AAAA"); !strings.Contains(out, "status: NOERROR") || !strings.Contains(out, "2001:db8::1") {
			t.Errorf("allowed AAAA query over IPv6 (%s):\n%s", tcp, out)
		}
		if out := dig6(tcp, "www.example.com", "A"); !strings.Contains(out, "status: NOERROR") || !strings.Contains(out, "198.18.2.1") {
			t.Errorf("allowed A query over IPv6 (%s):\n%s", tcp, out)
		}
		if out := dig6(tcp, "evil.org", "A"); !strings.Contains(out, "status: REFUSED") || strings.Contains(out, "198.18.6.6") {
			t.Errorf("denied query over IPv6 (%s):\n%s", tcp, out)
		}
	}
	if got := cachedIPs(p.cache, "www.example.com."); !slices.Equal(got, []string{"198.18.2.1", "2001:db8::1"}) {
		t.Errorf("cache for www.example.com: %v, want the A and the AAAA answer", got)
	}
	for _, r := range p.recs.find("www.example.com.", "AAAA") {
		if !r.Source.Addr().Is6() || r.SrcIdentity == 0 {
			t.Errorf("record of a query over IPv6: source %s identity %d, want the client's IPv6 address and identity", r.Source, r.SrcIdentity)
		}
	}

	// an answer from a server address the proxy does not own
	client, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	from := netip.AddrPortFrom(netip.MustParseAddr("::1"), port+1)
	if err := sendFrom(from, netip.MustParseAddrPort(client.LocalAddr().String()), []byte("answer")); err != nil {
		t.Fatal(err)
	}
	client.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 64)
	n, src, err := client.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "answer" || src != from {
		t.Errorf("answer: %q from %s (%v), want \"answer\" from %s", buf[:n], src, err, from)
	}
	if err := sendFrom(netip.MustParseAddrPort("127.0.0.1:53"), netip.MustParseAddrPort(client.LocalAddr().String()), []byte("x")); err == nil {
		t.Error("an answer across families was sent")
	}
}

func unsafePointer(b []byte) unsafe.Pointer { return unsafe.Pointer(&b[0]) }
