package redirect

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// ListenTransparent opens a TCP listener with IP_TRANSPARENT (so it can
// accept connections addressed to other hosts, with the original
// destination as the accepted socket's local address; accepted sockets
// inherit the option, which lets the SYN-ACK leave from that address) and
// MPTCP off (a SOCKMAP insert of an MPTCP socket fails with EOPNOTSUPP).
// transparent=false opens a plain listener (tests on loopback). An IPv4
// addr ("127.0.0.1:port") gives an AF_INET socket, for IPv4 redirects; an
// IPv6 one an AF_INET6 socket with IPV6_TRANSPARENT: "[::1]:port" takes
// IPv6 redirects only (the datapath keeps it as the port's IPv6 socket,
// beside the IPv4 listener), the wildcard "[::]:port" both families — but
// also any connection to the port on the node's addresses, so a proxy
// that must accept only redirected connections uses the loopback pair.
func ListenTransparent(ctx context.Context, addr string, transparent bool) (*net.TCPListener, error) {
	network, level, opt, optName := "tcp4", unix.SOL_IP, unix.IP_TRANSPARENT, "IP_TRANSPARENT"
	if ap, err := netip.ParseAddrPort(addr); err == nil && ap.Addr().Is6() && !ap.Addr().Is4In6() {
		// "tcp": an AF_INET6 socket without IPV6_V6ONLY (Go sets it for
		// "tcp6"), so that a wildcard address takes IPv4 too.
		network, level, opt, optName = "tcp", unix.SOL_IPV6, unix.IPV6_TRANSPARENT, "IPV6_TRANSPARENT"
	}
	lc := net.ListenConfig{
		// Keep-alive is set once on the listener (setListenerKeepAlive),
		// which accepted sockets inherit, rather than with four
		// setsockopt calls per accepted connection.
		KeepAlive: -1,
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
				if serr == nil {
					serr = setListenerKeepAlive(int(fd))
				}
				if serr == nil && transparent {
					serr = unix.SetsockoptInt(int(fd), level, opt, 1)
					if serr != nil {
						serr = fmt.Errorf("set %s (needs CAP_NET_ADMIN): %w", optName, serr)
					}
				}
			})
			if err != nil {
				return err
			}
			return serr
		},
	}
	lc.SetMultipathTCP(false)
	ln, err := lc.Listen(ctx, network, addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	return ln.(*net.TCPListener), nil
}

// Keep-alive of accepted connections, Go's defaults for a listener
// (net.ListenConfig with KeepAlive 0): the first probe after 15 s idle,
// then every 15 s, 9 unanswered probes end the connection.
const (
	keepAliveIdle     = 15
	keepAliveInterval = 15
	keepAliveCount    = 9
)

// setListenerKeepAlive turns TCP keep-alive on for a listening socket:
// Linux copies SO_KEEPALIVE and the TCP_KEEP* values to every connection
// it accepts (and arms the timer), so none needs a system call for it.
func setListenerKeepAlive(fd int) error {
	for _, o := range []struct{ level, opt, v int }{
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, keepAliveIdle},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, keepAliveInterval},
		{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, keepAliveCount},
	} {
		if err := unix.SetsockoptInt(fd, o.level, o.opt, o.v); err != nil {
			return fmt.Errorf("listener keep-alive: %w", err)
		}
	}
	return nil
}

// OriginalDestination returns where the client meant to connect: with a
// transparent redirect, the accepted socket's local address.
func OriginalDestination(c net.Conn) (netip.AddrPort, error) {
	ta, ok := c.LocalAddr().(*net.TCPAddr)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("not a TCP connection: %s", c.LocalAddr())
	}
	ap := ta.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// ErrSourcePortTaken is returned by a dialer of UpstreamDialer when the
// port the kernel gave the upstream socket is one to avoid: dial again.
var ErrSourcePortTaken = errors.New("source port is in use by a client connection")

// UpstreamDialer returns a dialer for the proxy's upstream connections.
// mark (when non-zero) is set as SO_MARK so the datapath recognises the
// connection as coming from the proxy (needs CAP_NET_ADMIN). source (when
// valid) binds the upstream socket to the client's address with
// IP_TRANSPARENT and a fresh port the kernel picks, so the server sees the
// pod's address; if avoid reports that port as taken (say, by the client
// connection being proxied, whose 4-tuple the upstream must not reuse),
// the dial fails with ErrSourcePortTaken before any packet is sent.
func UpstreamDialer(mark uint32, source netip.Addr, avoid func(port uint16) bool) *net.Dialer {
	d := &net.Dialer{}
	d.SetMultipathTCP(false)
	if mark == 0 && !source.IsValid() {
		return d
	}
	d.Control = func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if mark != 0 {
				if e := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark)); e != nil {
					serr = fmt.Errorf("set SO_MARK %#x (needs CAP_NET_ADMIN): %w", mark, e)
					return
				}
			}
			if !source.IsValid() {
				return
			}
			level, opt := unix.SOL_IPV6, unix.IPV6_TRANSPARENT
			var sa unix.Sockaddr = &unix.SockaddrInet6{Addr: source.As16()}
			if source.Unmap().Is4() {
				level, opt = unix.SOL_IP, unix.IP_TRANSPARENT
				sa = &unix.SockaddrInet4{Addr: source.Unmap().As4()}
			}
			if e := unix.SetsockoptInt(int(fd), level, opt, 1); e != nil {
				serr = fmt.Errorf("set IP_TRANSPARENT for source %s: %w", source, e)
				return
			}
			// Bind here rather than through Dialer.LocalAddr, so the port
			// is known before connect sends the SYN.
			if e := unix.Bind(int(fd), sa); e != nil {
				serr = fmt.Errorf("bind upstream socket to %s: %w", source, e)
				return
			}
			if avoid == nil {
				return
			}
			// (syscall's Getsockname, not x/sys/unix's: that one asks
			// for SO_PROTOCOL too, one more system call per dial)
			got, e := syscall.Getsockname(int(fd))
			if e != nil {
				serr = fmt.Errorf("upstream socket name: %w", e)
				return
			}
			port := -1
			switch a := got.(type) {
			case *syscall.SockaddrInet4:
				port = a.Port
			case *syscall.SockaddrInet6:
				port = a.Port
			}
			if port >= 0 && avoid(uint16(port)) {
				serr = fmt.Errorf("%s:%d: %w", source, port, ErrSourcePortTaken)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
	return d
}
