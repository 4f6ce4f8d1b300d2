// Package als is the gRPC access-log service (envoy.service.accesslog.v3)
// that Envoy's http_grpc access logger streams to. It turns each
// HTTPAccessLogEntry into an envoy.Record naming the policy rule that
// decided, and hands it to a sink. It serves on a Unix socket.
package als

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	datav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/grpc"

	"github.com/l7gate/l7gate/envoy"
)

// RBACMetadataNamespace is where Envoy's RBAC filter puts its decision in
// the request's dynamic metadata, which the gRPC access logger sends.
const RBACMetadataNamespace = "envoy.filters.http.rbac"

// Keys of the RBAC filter's dynamic metadata (no rules_stat_prefix set).
const (
	keyEngineResult      = "enforced_engine_result"
	keyEffectivePolicyID = "enforced_effective_policy_id"
	deniedDetailsPrefix  = "rbac_access_denied_matched_policy["
)

// Config of the access-log service.
type Config struct {
	// Socket is the Unix socket path to listen on; a stale socket file
	// there is replaced.
	Socket string
	Log    *slog.Logger
	// Sink receives every record, in stream order; it must not block for
	// long (Envoy buffers while it does).
	Sink func(envoy.Record)
}

// Service implements envoy.service.accesslog.v3.AccessLogService.
type Service struct {
	accesslogv3.UnimplementedAccessLogServiceServer
	log  *slog.Logger
	sink func(envoy.Record)
}

// NewService returns the service, for registering on a grpc.Server.
func NewService(log *slog.Logger, sink func(envoy.Record)) *Service {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{log: log, sink: sink}
}

// StreamAccessLogs receives one Envoy's stream until it ends.
func (s *Service) StreamAccessLogs(stream accesslogv3.AccessLogService_StreamAccessLogsServer) error {
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&accesslogv3.StreamAccessLogsResponse{})
		}
		if err != nil {
			return err
		}
		if id := msg.GetIdentifier(); id != nil {
			s.log.Debug("access-log stream", "node", id.GetNode().GetId(), "log", id.GetLogName())
		}
		for _, e := range msg.GetHttpLogs().GetLogEntry() {
			s.sink(RecordOf(e))
		}
		if n := len(msg.GetTcpLogs().GetLogEntry()); n > 0 {
			s.log.Debug("ignoring tcp access-log entries", "count", n)
		}
	}
}

// Serve listens on cfg.Socket and serves until ctx is done.
func Serve(ctx context.Context, cfg Config) error {
	if cfg.Sink == nil {
		return errors.New("als: no sink")
	}
	if fi, err := os.Lstat(cfg.Socket); err == nil && fi.Mode().Type() == fs.ModeSocket {
		if err := os.Remove(cfg.Socket); err != nil {
			return fmt.Errorf("remove stale socket: %w", err)
		}
	}
	lis, err := net.Listen("unix", cfg.Socket)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	gs := grpc.NewServer()
	accesslogv3.RegisterAccessLogServiceServer(gs, NewService(cfg.Log, cfg.Sink))
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			// Envoy never ends its stream, so a graceful stop would wait
			// forever.
			gs.Stop()
		case <-done:
		}
	}()
	if err := gs.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// RecordOf converts one Envoy HTTP access-log entry. The verdict comes
// from the RBAC filter's dynamic metadata (enforced_engine_result and
// enforced_effective_policy_id); without it, from response_code_details
// "rbac_access_denied_matched_policy[...]" for denials; else it is unknown.
func RecordOf(e *datav3.HTTPAccessLogEntry) envoy.Record {
	c, req, resp := e.GetCommonProperties(), e.GetRequest(), e.GetResponse()
	r := envoy.Record{
		Source:      addrPort(c.GetDownstreamRemoteAddress()),
		Destination: addrPort(c.GetDownstreamLocalAddress()),
		Path:        req.GetPath(),
		Host:        req.GetAuthority(),
		Status:      int(resp.GetResponseCode().GetValue()),
		RuleSet:     c.GetRouteName(),
		Verdict:     envoy.VerdictUnknown,
	}
	if t := c.GetStartTime(); t != nil {
		r.Time = t.AsTime()
	}
	if m := req.GetRequestMethod(); m != corev3.RequestMethod_METHOD_UNSPECIFIED {
		r.Method = m.String()
	}
	if s, ok := resp.GetResponseTrailers()["grpc-status"]; ok {
		r.GRPCStatus = s
	} else if s, ok := resp.GetResponseHeaders()["grpc-status"]; ok {
		r.GRPCStatus = s
	}
	var policyID string
	if md := c.GetMetadata().GetFilterMetadata()[RBACMetadataNamespace]; md != nil && md.GetFields()[keyEngineResult] != nil {
		switch md.GetFields()[keyEngineResult].GetStringValue() {
		case "allowed":
			r.Verdict = envoy.VerdictAllowed
		case "denied":
			r.Verdict = envoy.VerdictDenied
		}
		policyID = md.GetFields()[keyEffectivePolicyID].GetStringValue()
	} else if d := resp.GetResponseCodeDetails(); strings.HasPrefix(d, deniedDetailsPrefix) && strings.HasSuffix(d, "]") {
		r.Verdict = envoy.VerdictDenied
		policyID = strings.TrimSuffix(strings.TrimPrefix(d, deniedDetailsPrefix), "]")
		if policyID == "none" {
			policyID = ""
		}
	}
	switch r.Verdict {
	case envoy.VerdictAllowed:
		r.Kind = envoy.KindAllow
		r.PolicyKind, r.Policy, r.Rule = ParsePolicyID(policyID)
	case envoy.VerdictDenied:
		// The RBAC is an allow-list: a denial matched no policy.
		r.Kind = envoy.KindDefaultDeny
	}
	return r
}

// ParsePolicyID splits an RBAC policy id as xds/envoytranslate.PolicyID
// writes it, "<kind>:<policy>:<rule>[#n]", into its parts; an id of
// another shape comes back whole as the policy.
func ParsePolicyID(id string) (kind, policy, rule string) {
	if i := strings.LastIndexByte(id, '#'); i >= 0 {
		id = id[:i]
	}
	parts := strings.SplitN(id, ":", 3)
	if len(parts) != 3 {
		return "", id, ""
	}
	return parts[0], parts[1], parts[2]
}

func addrPort(a *corev3.Address) netip.AddrPort {
	sa := a.GetSocketAddress()
	ip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ip, uint16(sa.GetPortValue()))
}
