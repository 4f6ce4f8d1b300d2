package proxyapi

import (
	"context"
	"fmt"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// ListenTCP listens on a TCP address of the node for the agent's and the
// proxy's HTTP and gRPC endpoints (Prometheus metrics, the Observer API,
// the service map) with SO_REUSEPORT: during a rolling update (maxSurge, host
// network) the new pod's agent and proxy start while the old pod's still
// hold these ports, and a plain bind fails with EADDRINUSE — a new agent
// would run without metrics, or not start at all with the service map on.
// Both serve until the old pod exits. Linux admits a second SO_REUSEPORT
// socket on a port only for the same effective user.
func ListenTCP(ctx context.Context, addr string) (net.Listener, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		}); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("so_reuseport: %w", serr)
		}
		return nil
	}}
	return lc.Listen(ctx, "tcp", addr)
}
