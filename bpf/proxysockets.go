package bpf

import (
	"errors"
	"fmt"
	"path/filepath"
	"syscall"

	"github.com/cilium/ebpf"
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

// Register puts a listener under its proxy port. The listener must be a
// TCP socket with IP_TRANSPARENT (so accepted sockets can answer from the
// original destination) and not MPTCP (Go listeners are MPTCP by default:
// call SetMultipathTCP(false)), else the kernel refuses it. The sockmap
// holds its own reference; closing the listener removes it, and redirects
// to the port then drop (fail closed).
func (p *ProxySockets) Register(port uint16, conn syscall.Conn) error {
	return registerProxy(p.m, port, conn)
}

// Unregister removes the listener of a proxy port.
func (p *ProxySockets) Unregister(port uint16) error {
	return unregisterProxy(p.m, port)
}

// Close closes the map handle; registrations stay.
func (p *ProxySockets) Close() error { return p.m.Close() }

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
		uerr = m.Update(uint32(port), uint64(fd), ebpf.UpdateAny)
	}); err != nil {
		return fmt.Errorf("raw conn control: %w", err)
	}
	if uerr != nil {
		return fmt.Errorf("register proxy port %d: %w", port, uerr)
	}
	return nil
}

func unregisterProxy(m *ebpf.Map, port uint16) error {
	if err := m.Delete(uint32(port)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("unregister proxy port %d: %w", port, err)
	}
	return nil
}
