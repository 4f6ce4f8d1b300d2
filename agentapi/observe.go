package agentapi

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	observerpb "github.com/l7gate/l7gate/proto/hubble/observerpb"
)

// ObserverTarget is the gRPC target of an agent's Observer API (the same
// one `hubble observe --server` takes).
func ObserverTarget(runDir string) string { return "unix://" + HubbleSocket(runDir) }

// ObserverConn is a connection to a Hubble Observer API: an l7gate
// agent's, or any Hubble server's.
type ObserverConn struct {
	observerpb.ObserverClient
	conn *grpc.ClientConn
}

// DialObserver connects to target ("unix:///path" or "host:port"); with
// a TLS config over TLS, else in plaintext (a Unix socket needs none).
func DialObserver(target string, tlsConfig *tls.Config) (*ObserverConn, error) {
	creds := insecure.NewCredentials()
	if tlsConfig != nil {
		creds = credentials.NewTLS(tlsConfig)
	}
	if !strings.Contains(target, "://") && !strings.HasPrefix(target, "dns:") {
		target = "passthrough:///" + target
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("observer api %s: %w", target, err)
	}
	return &ObserverConn{ObserverClient: observerpb.NewObserverClient(conn), conn: conn}, nil
}

// Close closes the connection.
func (c *ObserverConn) Close() error { return c.conn.Close() }

// Flows calls GetFlows and hands every response to fn until the stream
// ends (EOF), ctx ends or fn fails.
func (c *ObserverConn) Flows(ctx context.Context, req *observerpb.GetFlowsRequest, fn func(*observerpb.GetFlowsResponse) error) error {
	st, err := c.GetFlows(ctx, req)
	if err != nil {
		return observerError(err)
	}
	for {
		resp, err := st.Recv()
		switch {
		case errors.Is(err, io.EOF):
			return nil
		case err != nil:
			if ctx.Err() != nil || status.Code(err) == codes.Canceled {
				return nil
			}
			return observerError(err)
		}
		if err := fn(resp); err != nil {
			return err
		}
	}
}

func observerError(err error) error {
	if s, ok := status.FromError(err); ok {
		switch s.Code() {
		case codes.Unavailable:
			return fmt.Errorf("observer api unavailable (is the agent running?): %s", s.Message())
		case codes.InvalidArgument, codes.Unimplemented:
			return fmt.Errorf("observer api: %s", s.Message())
		}
	}
	return fmt.Errorf("observer api: %w", err)
}
