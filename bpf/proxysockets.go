package bpf

import (
	"errors"
	"fmt"
	"path/filepath"
	"syscall"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// ProxySockets is the pinned sockmap of proxy listeners, for a proxy
// process that registers its own listeners (the agent cannot take another
// process's sockets).
type ProxySockets struct {
	m *ebpf.Map
}

// OpenProxySockets opens the sockmap pinned under bpffsPath.
func OpenProxySockets(bpffsPath string) (*ProxySockets, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(bpffsPath, mapsDir, datapathMapProxySocks), nil)
	if err != nil {
		return nil, fmt.Errorf("open proxy sockmap: %w", err)
	}
	return &ProxySockets{m: m}, nil
}

// Register puts a listener under its proxy port. A TCP listener must have
// IP_TRANSPARENT (so accepted sockets can answer from the original
// destination) and not be MPTCP (Go listeners are MPTCP by default: call
// SetMultipathTCP(false)), else the kernel refuses it. A bound UDP socket
// (the DNS proxy's) is registered as the port's UDP socket, next to its
// TCP listener: redirected datagrams reach it with their original
// destination (IP_RECVORIGDSTADDR). The sockmap holds its own reference;
// closing the socket removes it, and redirects to the port then drop
// (fail closed).
func (p *ProxySockets) Register(port uint16, conn syscall.Conn) error {
	return registerProxy(p.m, port, conn)
}

// Unregister removes the sockets (TCP and UDP) of a proxy port.
func (p *ProxySockets) Unregister(port uint16) error {
	return unregisterProxy(p.m, port)
}

// Close closes the map handle; registrations stay.
func (p *ProxySockets) Close() error { return p.m.Close() }

// proxySockUDP marks the sockmap key of a proxy port's UDP socket
// (PROXY_SOCK_UDP in c/datapath.c).
const proxySockUDP = 1 << 16

func registerProxy(m *ebpf.Map, port uint16, conn syscall.Conn) error {
	if port == 0 {
		return fmt.Errorf("%w: proxy port 0", ErrInvalidEntry)
	}
	rc, err := conn.SyscallConn()
	if err != nil {
		return fmt.Errorf("raw conn: %w", err)
	}
	var uerr error
	if err := rc.Control(func(fd uintptr) {
		key := uint32(port)
		typ, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
		if err != nil {
			uerr = fmt.Errorf("socket type: %w", err)
			return
		}
		if typ == unix.SOCK_DGRAM {
			key |= proxySockUDP
		}
		uerr = m.Update(key, uint64(fd), ebpf.UpdateAny)
	}); err != nil {
		return fmt.Errorf("raw conn control: %w", err)
	}
	if uerr != nil {
		return fmt.Errorf("register proxy port %d: %w", port, uerr)
	}
	return nil
}

func unregisterProxy(m *ebpf.Map, port uint16) error {
	for _, key := range []uint32{uint32(port), uint32(port) | proxySockUDP} {
		if err := m.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("unregister proxy port %d: %w", port, err)
		}
	}
	return nil
}
