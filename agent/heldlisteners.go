package agent

import (
	"fmt"
	"maps"
	"net"
	"os"
	"slices"
	"sync"
)

// heldListeners are duplicates of the Go proxy's sockets the agent keeps
// (taken with pidfd_getfd when registering them): every listener of a
// proxy port (127.0.0.1 and [::1]) and a dns port's UDP sockets (both
// families). If the proxy dies without a hand-over, its sockets stay open
// through these, and so in the datapath's socket map: connections
// redirected meanwhile complete their handshake into the listen backlog,
// and datagrams queue in the UDP socket's receive buffer, instead of being
// refused or dropped no-listener; the restarted proxy, which the
// supervisor hands the duplicates to (--inherit-listener, one per socket),
// serves them. Nothing passes unproxied: what queued waits for a proxy.
type heldListeners struct {
	mu    sync.Mutex
	socks map[heldKey]heldSocket
}

// heldSocket is a held *net.TCPListener or *net.UDPConn.
type heldSocket interface {
	File() (*os.File, error)
	Close() error
}

// heldKey names one socket of a port: its protocol and family.
type heldKey struct {
	port uint16
	udp  bool
	v6   bool
}

// sockFamily6 reports whether a held socket serves IPv6 (its local
// address is an IPv6 one).
func sockFamily6(s heldSocket) bool {
	switch c := s.(type) {
	case *net.TCPListener:
		return c.Addr().(*net.TCPAddr).AddrPort().Addr().Unmap().Is6()
	case *net.UDPConn:
		return c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap().Is6()
	}
	return false
}

// hold keeps the sockets of port's protocol (udp: the dns port's UDP
// sockets, else its listeners), closing the duplicates of that protocol
// held before (a socket of a family socks no longer has is dropped too).
func (h *heldListeners) hold(port uint16, udp bool, socks ...heldSocket) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.socks == nil {
		h.socks = map[heldKey]heldSocket{}
	}
	for k, old := range h.socks {
		if k.port == port && k.udp == udp {
			old.Close()
			delete(h.socks, k)
		}
	}
	for _, s := range socks {
		k := heldKey{port: port, udp: udp, v6: sockFamily6(s)}
		if old := h.socks[k]; old != nil {
			old.Close() // two of one family: keep the last
		}
		h.socks[k] = s
	}
}

// keepOnly closes the duplicates of ports not in ports (listeners the
// proxy no longer serves).
func (h *heldListeners) keepOnly(ports map[uint16]bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for k, s := range h.socks {
		if !ports[k.port] {
			s.Close()
			delete(h.socks, k)
		}
	}
}

// files returns new duplicates of the held sockets (the caller closes
// them), by port, for a proxy process to inherit: per port its IPv4
// listener, IPv6 listener, IPv4 UDP socket, IPv6 UDP socket, those held.
func (h *heldListeners) files() (map[uint16][]*os.File, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	keys := slices.SortedFunc(maps.Keys(h.socks), func(a, b heldKey) int {
		switch {
		case a.port != b.port:
			return int(a.port) - int(b.port)
		case a.udp != b.udp:
			return boolInt(a.udp) - boolInt(b.udp)
		}
		return boolInt(a.v6) - boolInt(b.v6)
	})
	out := map[uint16][]*os.File{}
	for _, k := range keys {
		f, err := h.socks[k].File()
		if err != nil {
			for _, fs := range out {
				for _, f := range fs {
					f.Close()
				}
			}
			return nil, fmt.Errorf("duplicate held socket of port %d: %w", k.port, err)
		}
		out[k.port] = append(out[k.port], f)
	}
	return out, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
