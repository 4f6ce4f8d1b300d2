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

// ListenUDP opens the proxy's UDP socket on addr (an IPv4 or an IPv6
// address: one family per socket, as the datapath keeps a port's IPv4 and
// IPv6 sockets apart). It asks the kernel for each datagram's original
// destination (IP_RECVORIGDSTADDR, IPV6_RECVORIGDSTADDR): a datagram the
// datapath redirected here (sk_lookup) keeps the address and port the
// client sent it to, which ServeUDP forwards to and answers from.
// transparent sets IP_TRANSPARENT (IPV6_TRANSPARENT) as well (the
// redirect does not need it to deliver; answering from the original
// destination does, through the reply sockets, which need CAP_NET_ADMIN
// either way).
func ListenUDP(ctx context.Context, addr string, transparent bool) (*net.UDPConn, error) {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dns proxy: listen udp %s: %w", addr, err)
	}
	network, level, origOpt, transOpt := "udp4", unix.SOL_IP, unix.IP_RECVORIGDSTADDR, unix.IP_TRANSPARENT
	if ap.Addr().Is6() && !ap.Addr().Is4In6() {
		network, level, origOpt, transOpt = "udp6", unix.SOL_IPV6, unix.IPV6_RECVORIGDSTADDR, unix.IPV6_TRANSPARENT
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			// SO_REUSEADDR: a proxy taking over from a running one binds
			// the same port while the old one drains (the socket map
			// decides which socket gets the redirected datagrams).
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			if serr == nil {
				serr = unix.SetsockoptInt(int(fd), level, origOpt, 1)
			}
			if serr == nil && transparent {
				if e := unix.SetsockoptInt(int(fd), level, transOpt, 1); e != nil {
					serr = fmt.Errorf("set IP_TRANSPARENT (needs CAP_NET_ADMIN): %w", e)
				}
			}
		})
		return errors.Join(err, serr)
	}}
	pc, err := lc.ListenPacket(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("dns proxy: listen udp %s: %w", addr, err)
	}
	return pc.(*net.UDPConn), nil
}

// oobSize holds an IP_ORIGDSTADDR or IPV6_ORIGDSTADDR control message (a
// sockaddr_in or sockaddr_in6).
var oobSize = unix.CmsgSpace(unix.SizeofSockaddrInet6)

// origDst returns the IP_ORIGDSTADDR (IPV6_ORIGDSTADDR) of a datagram's
// control messages (invalid: none).
func origDst(oob []byte) netip.AddrPort {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.AddrPort{}
	}
	for _, m := range msgs {
		// struct sockaddr_in / sockaddr_in6: family (host order), port
		// (network order), then the address (IPv6: after the flow info)
		switch {
		case m.Header.Level == unix.SOL_IP && m.Header.Type == unix.IP_ORIGDSTADDR && len(m.Data) >= unix.SizeofSockaddrInet4:
			port := binary.BigEndian.Uint16(m.Data[2:4])
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(m.Data[4:8])), port)
		case m.Header.Level == unix.SOL_IPV6 && m.Header.Type == unix.IPV6_ORIGDSTADDR && len(m.Data) >= unix.SizeofSockaddrInet6:
			port := binary.BigEndian.Uint16(m.Data[2:4])
			return netip.AddrPortFrom(netip.AddrFrom16([16]byte(m.Data[8:24])).Unmap(), port)
		}
	}
	return netip.AddrPort{}
}

// sendFrom sends b to to with from as its source: a transparent socket
// bound to from (the server the client asked; SO_REUSEADDR, as answers
// for the same server may be sent at once), unconnected so it never
// takes a later query of the client. The datapath admits the datagram as
// the reply of the redirected flow. Both addresses are of one family.
func sendFrom(from, to netip.AddrPort, b []byte) error {
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	to = netip.AddrPortFrom(to.Addr().Unmap(), to.Port())
	if from.Addr().Is4() != to.Addr().Is4() {
		return fmt.Errorf("answer from %s to %s: two families", from, to)
	}
	family, level, opt := unix.AF_INET, unix.SOL_IP, unix.IP_TRANSPARENT
	sa := func(a netip.AddrPort) unix.Sockaddr {
		return &unix.SockaddrInet4{Addr: a.Addr().As4(), Port: int(a.Port())}
	}
	if from.Addr().Is6() {
		family, level, opt = unix.AF_INET6, unix.SOL_IPV6, unix.IPV6_TRANSPARENT
		sa = func(a netip.AddrPort) unix.Sockaddr {
			return &unix.SockaddrInet6{Addr: a.Addr().As16(), Port: int(a.Port())}
		}
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("answer socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, level, opt, 1); err != nil {
		return fmt.Errorf("answer socket: set IP_TRANSPARENT (needs CAP_NET_ADMIN): %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return fmt.Errorf("answer socket: %w", err)
	}
	if err := unix.Bind(fd, sa(from)); err != nil {
		return fmt.Errorf("answer socket: bind %s: %w", from, err)
	}
	if err := unix.Sendto(fd, b, 0, sa(to)); err != nil {
		return fmt.Errorf("answer from %s to %s: %w", from, to, err)
	}
	return nil
}
