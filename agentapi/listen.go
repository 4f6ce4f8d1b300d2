package agentapi

import (
	"context"
	"net"

	"github.com/l7gate/l7gate/agentapi/proxyapi"
)

// ListenTCP listens on a TCP address of the node with SO_REUSEPORT
// (proxyapi.ListenTCP, which says why).
func ListenTCP(ctx context.Context, addr string) (net.Listener, error) {
	return proxyapi.ListenTCP(ctx, addr)
}
