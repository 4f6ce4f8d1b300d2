//go:build !l7gate_proxyonly

package main

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
)

// TestInheritedListenersByKind: --inherit-listener=PORT:FD takes any of
// the sockets the agent holds across a proxy crash and tells them apart
// by type and family: IPv4 and IPv6 TCP listeners, IPv4 and IPv6 UDP
// sockets; a second socket of one kind for a port, or a descriptor that
// is no socket, is an error.
func TestInheritedListenersByKind(t *testing.T) {
	// dup returns a raw descriptor of a socket, owned by whoever
	// inherits it (as the proxy owns what the supervisor passes).
	dup := func(s interface{ File() (*os.File, error) }) int {
		f, err := s.File()
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		fd, err := syscall.Dup(int(f.Fd()))
		if err != nil {
			t.Fatal(err)
		}
		return fd
	}
	l4, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l4.Close()
	l6, err := net.Listen("tcp", "[::1]:0")
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	defer l6.Close()
	u4, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
	if err != nil {
		t.Fatal(err)
	}
	defer u4.Close()
	u6, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("[::1]:0")))
	if err != nil {
		t.Fatal(err)
	}
	defer u6.Close()
	specs := []string{
		fmt.Sprintf("53:%d", dup(l4.(*net.TCPListener))), fmt.Sprintf("53:%d", dup(l6.(*net.TCPListener))),
		fmt.Sprintf("53:%d", dup(u4)), fmt.Sprintf("53:%d", dup(u6)),
	}
	s, err := inheritedListeners(specs)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if s.Len() != 4 || s.TCP[53] == nil || s.TCP6[53] == nil || s.UDP[53] == nil || s.UDP6[53] == nil {
		t.Fatalf("inherited %+v, want one socket of each kind for port 53", s)
	}
	if s.TCP6[53].Addr().String() != l6.Addr().String() || s.UDP6[53].LocalAddr().String() != u6.LocalAddr().String() {
		t.Errorf("IPv6 sockets %s, %s, want %s, %s", s.TCP6[53].Addr(), s.UDP6[53].LocalAddr(), l6.Addr(), u6.LocalAddr())
	}
	if _, err := inheritedListeners([]string{fmt.Sprintf("80:%d", dup(l4.(*net.TCPListener))), fmt.Sprintf("80:%d", dup(l4.(*net.TCPListener)))}); err == nil {
		t.Error("two IPv4 listeners for one port were accepted")
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	defer r.Close()
	if _, err := inheritedListeners([]string{fmt.Sprintf("80:%d", r.Fd())}); err == nil {
		t.Error("a pipe was accepted as a socket")
	}
}
