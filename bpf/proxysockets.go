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
	m, families *ebpf.Map
}

// OpenProxySockets opens the sockmap pinned under bpffsPath.
func OpenProxySockets(bpffsPath string) (*ProxySockets, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(bpffsPath, mapsDir, datapathMapProxySocks), nil)
	if err != nil {
		return nil, fmt.Errorf("open proxy sockmap: %w", err)
	}
	fams, err := ebpf.LoadPinnedMap(filepath.Join(bpffsPath, mapsDir, datapathMapProxyFamilies), nil)
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("open proxy families map: %w", err)
	}
	return &ProxySockets{m: m, families: fams}, nil
}

// Register puts a listener under its proxy port. A TCP listener must have
// IP_TRANSPARENT (so accepted sockets can answer from the original
// destination) and not be MPTCP (Go listeners are MPTCP by default: call
// SetMultipathTCP(false)), else the kernel refuses it. A bound UDP socket
// (the DNS proxy's) is registered as the port's UDP socket, next to its
// TCP listener: redirected datagrams reach it with their original
// destination (IP_RECVORIGDSTADDR). An AF_INET socket serves IPv4 flows;
// an AF_INET6 socket bound to an address (e.g. [::1], IPV6_TRANSPARENT)
// or with IPV6_V6ONLY serves IPv6 flows, next to the port's IPv4 socket;
// an AF_INET6 wildcard socket without IPV6_V6ONLY serves both. A flow
// whose family has no socket is dropped (no-listener). The sockmap holds its own reference;
// closing the socket removes it, and redirects to the port then drop
// (fail closed).
func (p *ProxySockets) Register(port uint16, conn syscall.Conn) error {
	return registerProxy(p.m, p.families, port, conn)
}

// Unregister removes the sockets (TCP and UDP, both families) of a proxy
// port.
func (p *ProxySockets) Unregister(port uint16) error {
	return unregisterProxy(p.m, port)
}

// Close closes the map handles; registrations stay.
func (p *ProxySockets) Close() error { return errors.Join(p.m.Close(), p.families.Close()) }

// proxySockUDP marks the sockmap key of a proxy port's UDP socket
// (PROXY_SOCK_UDP in c/datapath.c); proxySockV6 the key of a port's
// IPv6-only socket (PROXY_SOCK_V6).
const (
	proxySockUDP = 1 << 16
	proxySockV6  = 1 << 17
)

// ipv6Only reports whether fd is an AF_INET6 socket that takes no IPv4:
// IPV6_V6ONLY, or bound to an address other than the wildcard (e.g. ::1).
// An AF_INET6 wildcard socket without IPV6_V6ONLY takes both families.
func ipv6Only(fd int) (bool, error) {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return false, fmt.Errorf("socket address: %w", err)
	}
	sa6, ok := sa.(*unix.SockaddrInet6)
	if !ok {
		return false, nil
	}
	if sa6.Addr != [16]byte{} {
		return true, nil
	}
	v6only, err := unix.GetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY)
	if err != nil {
		return false, fmt.Errorf("IPV6_V6ONLY: %w", err)
	}
	return v6only == 1, nil
}

// Keys of the proxy_families map (PROXY_FAM_V4, PROXY_FAM_V6).
const (
	proxyFamV4 uint32 = 0
	proxyFamV6 uint32 = 1
)

// markProxyFamilies records, for good, that a socket serving these
// families was registered: only then does the datapath look for proxy
// upstream sockets of that family (to_proxy_socket). Each family is its
// own entry, written to 1 (no read-modify-write between registrants).
func markProxyFamilies(fams *ebpf.Map, keys ...uint32) error {
	for _, k := range keys {
		if err := fams.Update(k, uint32(1), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("mark proxy family %d: %w", k, err)
		}
	}
	return nil
}

// socketFamilies lists the proxy_families keys a socket serves: an
// AF_INET socket IPv4, an IPv6-only one IPv6, a dual-stack one both.
func socketFamilies(fd int, v6only bool) ([]uint32, error) {
	dom, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return nil, fmt.Errorf("socket domain: %w", err)
	}
	switch {
	case dom == unix.AF_INET:
		return []uint32{proxyFamV4}, nil
	case dom == unix.AF_INET6 && v6only:
		return []uint32{proxyFamV6}, nil
	case dom == unix.AF_INET6:
		return []uint32{proxyFamV4, proxyFamV6}, nil
	}
	return nil, fmt.Errorf("%w: socket domain %d", ErrInvalidEntry, dom)
}

func registerProxy(m, fams *ebpf.Map, port uint16, conn syscall.Conn) error {
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
		v6, err := ipv6Only(int(fd))
		if err != nil {
			uerr = err
			return
		}
		if v6 {
			key |= proxySockV6
		}
		// Before the socket can take a connection: the datapath must
		// look for its upstream sockets from the first one on.
		keys, err := socketFamilies(int(fd), v6)
		if err != nil {
			uerr = err
			return
		}
		if err := markProxyFamilies(fams, keys...); err != nil {
			uerr = err
			return
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
	for _, key := range []uint32{uint32(port), uint32(port) | proxySockUDP, uint32(port) | proxySockV6, uint32(port) | proxySockUDP | proxySockV6} {
		if err := m.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("unregister proxy port %d: %w", port, err)
		}
	}
	return nil
}
