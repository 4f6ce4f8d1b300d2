// Package als is the gRPC access-log service (envoy.service.accesslog.v3)
// that Envoy's http_grpc access logger streams to. It turns each
// HTTPAccessLogEntry into a flow.Record naming the identities and the
// policy rule that decided, and hands it to a sink. It serves on a Unix
// socket.
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
	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	"google.golang.org/grpc"

	"github.com/l7gate/l7gate/envoy"
	"github.com/l7gate/l7gate/flow"
)

// RBACMetadataNamespace is where Envoy's RBAC filter puts its decision in
// the request's dynamic metadata, which the gRPC access logger sends.
const RBACMetadataNamespace = "envoy.filters.http.rbac"

// Keys of the RBAC filter's dynamic metadata (no rules_stat_prefix set).
const (
	keyEngineResult      = "enforced_engine_result"
	keyEffectivePolicyID = "enforced_effective_policy_id"
	keyShadowResult      = "shadow_engine_result"
	keyShadowPolicyID    = "shadow_effective_policy_id"
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
	Sink func(*flow.Record)
}

// Service implements envoy.service.accesslog.v3.AccessLogService.
type Service struct {
	accesslogv3.UnimplementedAccessLogServiceServer
	log  *slog.Logger
	sink func(*flow.Record)
}

// NewService returns the service, for registering on a grpc.Server.
func NewService(log *slog.Logger, sink func(*flow.Record)) *Service {
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

// Serve listens on cfg.Socket (mode 0660) and serves until ctx is done.
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
	// Only the node's l7gate group may log (forged records would
	// misattribute requests).
	if err := os.Chmod(cfg.Socket, 0o660); err != nil {
		lis.Close()
		return fmt.Errorf("socket mode: %w", err)
	}
	gs := grpc.NewServer()
	svc := NewService(cfg.Log, cfg.Sink)
	accesslogv3.RegisterAccessLogServiceServer(gs, svc)
	// Envoy's OpenTelemetry access logger may point at the same socket.
	collogspb.RegisterLogsServiceServer(gs, svc.Logs())
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
// The route name (envoy.RouteName) gives the direction and the identity of
// the endpoint whose rule set applied.
func RecordOf(e *datav3.HTTPAccessLogEntry) *flow.Record {
	c, req, resp := e.GetCommonProperties(), e.GetRequest(), e.GetResponse()
	r := &flow.Record{
		Protocol:    "http",
		Source:      addrPort(c.GetDownstreamRemoteAddress()),
		Destination: addrPort(c.GetDownstreamLocalAddress()),
		Path:        req.GetPath(),
		Host:        req.GetAuthority(),
		Status:      int(resp.GetResponseCode().GetValue()),
		Verdict:     flow.VerdictUnknown,
		Observer:    flow.ObserverEnvoy,
	}
	if t := c.GetStartTime(); t != nil {
		r.Time = t.AsTime()
	}
	if m := req.GetRequestMethod(); m != corev3.RequestMethod_METHOD_UNSPECIFIED {
		r.Method = m.String()
	}
	if dir, id, _, ok := envoy.ParseRouteName(c.GetRouteName()); ok {
		r.Direction = dir
		if dir == flow.Ingress {
			r.DstIdentity = id
		} else {
			r.SrcIdentity = id
		}
	}
	grpcStatus, ok := resp.GetResponseTrailers()["grpc-status"]
	if !ok {
		grpcStatus = resp.GetResponseHeaders()["grpc-status"]
	}
	if grpcStatus != "" && grpcStatus != "0" {
		r.Error = "grpc-status " + grpcStatus
	}
	var result, policyID, shadow, shadowID string
	if md := c.GetMetadata().GetFilterMetadata()[RBACMetadataNamespace]; md != nil && md.GetFields()[keyEngineResult] != nil {
		result = md.GetFields()[keyEngineResult].GetStringValue()
		policyID = md.GetFields()[keyEffectivePolicyID].GetStringValue()
		shadow = md.GetFields()[keyShadowResult].GetStringValue()
		shadowID = md.GetFields()[keyShadowPolicyID].GetStringValue()
	}
	decide(r, result, policyID, resp.GetResponseCodeDetails())
	audit(r, policyID, shadow, shadowID)
	return r
}

// decide sets the verdict and provenance from the RBAC filter's decision
// (result "allowed"/"denied" and the effective policy id) or, without
// one, from response code details naming an RBAC denial.
func decide(r *flow.Record, result, policyID, details string) {
	switch {
	case result == "allowed":
		r.Verdict = flow.VerdictAllowed
	case result == "denied":
		r.Verdict = flow.VerdictDenied
	case result == "" && strings.HasPrefix(details, deniedDetailsPrefix) && strings.HasSuffix(details, "]"):
		r.Verdict = flow.VerdictDenied
	}
	switch r.Verdict {
	case flow.VerdictAllowed:
		p := flow.Provenance{Kind: flow.KindAllow, Direction: r.Direction}
		if policyID != "" {
			parsed, _ := envoy.ParsePolicyID(policyID)
			p.Policy, p.PolicyKind, p.Path, p.L7 = parsed.Policy, parsed.PolicyKind, parsed.Path, parsed.L7
		}
		r.DecidedBy = []flow.Provenance{p}
	case flow.VerdictDenied:
		// The RBAC is an allow-list: a denial matched no policy.
		r.DecidedBy = []flow.Provenance{{Kind: flow.KindDefaultDeny, Direction: r.Direction}}
	}
}

// audit applies the shadow rules' decision of a rule set in audit mode
// (the enforced rules allowed the request under envoy.AuditPolicyID): a
// shadow denial is verdict audit (the agent names the policies behind the
// default-deny), a shadow allow is allowed by the rule that matched.
func audit(r *flow.Record, policyID, shadow, shadowID string) {
	if r.Verdict != flow.VerdictAllowed || policyID != envoy.AuditPolicyID {
		return
	}
	switch shadow {
	case "denied":
		r.Verdict = flow.VerdictAudit
		r.DecidedBy = []flow.Provenance{{Kind: flow.KindDefaultDeny, Direction: r.Direction, Audit: true}}
	case "allowed":
		p, _ := envoy.ParsePolicyID(shadowID)
		p.Kind, p.Direction, p.Audit = flow.KindAllow, r.Direction, true
		r.DecidedBy = []flow.Provenance{p}
	}
}

func addrPort(a *corev3.Address) netip.AddrPort {
	sa := a.GetSocketAddress()
	ip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ip, uint16(sa.GetPortValue()))
}
