package agent

import (
	"net"
	"net/netip"
	"testing"
)

// TestHeldListenersEveryFamily: the agent holds every socket of a port —
// its IPv4 and IPv6 listeners, a dns port's IPv4 and IPv6 UDP sockets —
// and hands each to a restarted proxy (files: IPv4 listener, IPv6
// listener, IPv4 UDP, IPv6 UDP); holding a protocol's sockets again
// replaces only that protocol's; keepOnly drops the ports no longer
// served.
func TestHeldListenersEveryFamily(t *testing.T) {
	tcp := func(addr string) *net.TCPListener {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Skipf("listen %s: %v", addr, err)
		}
		return l.(*net.TCPListener)
	}
	udp := func(addr string) *net.UDPConn {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
		if err != nil {
			t.Skipf("listen udp %s: %v", addr, err)
		}
		return c
	}
	var h heldListeners
	defer h.keepOnly(nil)
	h.hold(1053, false, tcp("127.0.0.1:0"), tcp("[::1]:0"))
	h.hold(1053, true, udp("127.0.0.1:0"), udp("[::1]:0"))
	h.hold(1080, false, tcp("127.0.0.1:0"))
	files, err := h.files()
	if err != nil {
		t.Fatal(err)
	}
	kinds := func(port uint16) []string {
		var out []string
		for _, f := range files[port] {
			defer f.Close()
			if l, err := net.FileListener(f); err == nil {
				out = append(out, "tcp "+l.Addr().String()[:4])
				l.Close()
			} else if c, err := net.FilePacketConn(f); err == nil {
				out = append(out, "udp "+c.LocalAddr().String()[:4])
				c.Close()
			}
		}
		return out
	}
	if got := kinds(1053); len(got) != 4 || got[0] != "tcp 127." || got[1] != "tcp [::1" || got[2] != "udp 127." || got[3] != "udp [::1" {
		t.Errorf("dns port's held sockets %v, want IPv4 and IPv6 listeners, then IPv4 and IPv6 UDP sockets", got)
	}
	if got := kinds(1080); len(got) != 1 {
		t.Errorf("http port's held sockets %v, want its listener", got)
	}
	// A new proxy's listeners replace the listeners, not the UDP sockets.
	old := h.socks[heldKey{port: 1053, v6: true}]
	h.hold(1053, false, tcp("127.0.0.1:0"), tcp("[::1]:0"))
	if _, err := old.File(); err == nil {
		t.Error("the replaced IPv6 listener is still open")
	}
	if len(h.socks) != 5 {
		t.Errorf("%d sockets held, want 5", len(h.socks))
	}
	h.keepOnly(map[uint16]bool{1080: true})
	if len(h.socks) != 1 || h.socks[heldKey{port: 1080}] == nil {
		t.Errorf("after keepOnly(1080): %v", h.socks)
	}
}
