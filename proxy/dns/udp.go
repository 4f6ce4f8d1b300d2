package dnsproxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// ListenUDP opens the proxy's UDP socket on addr. It asks the kernel for
// each datagram's original destination (IP_RECVORIGDSTADDR): a datagram
// the datapath redirected here (sk_lookup) keeps the address and port the
// client sent it to, which ServeUDP forwards to and answers from.
// transparent sets IP_TRANSPARENT as well (the redirect does not need it
// to deliver; answering from the original destination does, through the
// reply sockets, which need CAP_NET_ADMIN either way).
func ListenUDP(ctx context.Context, addr string, transparent bool) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			// SO_REUSEADDR: a proxy taking over from a running one binds
			// the same port while the old one drains (the socket map
			// decides which socket gets the redirected datagrams).
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			if serr == nil {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_RECVORIGDSTADDR, 1)
			}
			if serr == nil && transparent {
				if e := unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1); e != nil {
					serr = fmt.Errorf("set IP_TRANSPARENT (needs CAP_NET_ADMIN): %w", e)
				}
			}
		})
		return errors.Join(err, serr)
	}}
	pc, err := lc.ListenPacket(ctx, "udp4", addr)
	if err != nil {
		return nil, fmt.Errorf("dns proxy: listen udp %s: %w", addr, err)
	}
	return pc.(*net.UDPConn), nil
}

// oobSize holds an IP_ORIGDSTADDR control message (a sockaddr_in).
var oobSize = unix.CmsgSpace(unix.SizeofSockaddrInet4)

// origDst returns the IP_ORIGDSTADDR of a datagram's control messages
// (invalid: none).
func origDst(oob []byte) netip.AddrPort {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.AddrPort{}
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_ORIGDSTADDR && len(m.Data) >= unix.SizeofSockaddrInet4 {
			// struct sockaddr_in: family (host order), port (network
			// order), address
			port := binary.BigEndian.Uint16(m.Data[2:4])
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(m.Data[4:8])), port)
		}
	}
	return netip.AddrPort{}
}

// sendFrom sends b to to with from as its source: a transparent socket
// bound to from (the server the client asked; SO_REUSEADDR, as answers
// for the same server may be sent at once), unconnected so it never
// takes a later query of the client. The datapath admits the datagram as
// the reply of the redirected flow.
func sendFrom(from, to netip.AddrPort, b []byte) error {
	if !from.Addr().Is4() || !to.Addr().Unmap().Is4() {
		return fmt.Errorf("answer from %s to %s: IPv4 only", from, to)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("answer socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1); err != nil {
		return fmt.Errorf("answer socket: set IP_TRANSPARENT (needs CAP_NET_ADMIN): %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fmt.Errorf("answer socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: from.Addr().As4(), Port: int(from.Port())}); err != nil {
		return fmt.Errorf("answer socket: bind %s: %w", from, err)
	}
	if err := unix.Sendto(fd, b, 0, &unix.SockaddrInet4{Addr: to.Addr().Unmap().As4(), Port: int(to.Port())}); err != nil {
		return fmt.Errorf("answer from %s to %s: %w", from, to, err)
	}
	return nil
}
