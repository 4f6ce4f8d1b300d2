package als

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
	"time"

	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"

	"github.com/l7gate/l7gate/envoy"
	"github.com/l7gate/l7gate/flow"
)

// LogsService is the agent's OTLP logs intake for Envoy's OpenTelemetry
// access logger (configured by xds/envoytranslate with
// envoy.OTelAttributes): each log record becomes a flow record, like an
// entry of the gRPC access-log stream.
type LogsService struct {
	collogspb.UnimplementedLogsServiceServer
	svc *Service
}

// Logs returns the OTLP logs service of s, for registering on a
// grpc.Server.
func (s *Service) Logs() *LogsService { return &LogsService{svc: s} }

// Export takes one batch; records that are not Envoy's (no
// l7gate.observer=envoy attribute) are ignored and counted as rejected.
func (l *LogsService) Export(_ context.Context, req *collogspb.ExportLogsServiceRequest) (*collogspb.ExportLogsServiceResponse, error) {
	var rejected int64
	for _, rl := range req.GetResourceLogs() {
		for _, sl := range rl.GetScopeLogs() {
			for _, lr := range sl.GetLogRecords() {
				r, ok := RecordOfOTel(lr)
				if !ok {
					rejected++
					continue
				}
				l.svc.sink(r)
			}
		}
	}
	resp := &collogspb.ExportLogsServiceResponse{}
	if rejected > 0 {
		resp.PartialSuccess = &collogspb.ExportLogsPartialSuccess{RejectedLogRecords: rejected,
			ErrorMessage: "not an l7gate Envoy access log (no l7gate.observer=envoy attribute)"}
	}
	return resp, nil
}

// RecordOfOTel converts one log record of Envoy's OpenTelemetry logger as
// l7gate configures it. Values Envoy did not know are "-". The verdict
// comes from the RBAC filter's decision (l7gate.rbac.result), else from
// the response code details of a denial, else it is unknown, as for the
// gRPC access-log stream (RecordOf).
func RecordOfOTel(lr *logspb.LogRecord) (*flow.Record, bool) {
	attrs := map[string]string{}
	for _, kv := range lr.GetAttributes() {
		attrs[kv.GetKey()] = anyString(kv.GetValue())
	}
	if attrs[envoy.OTelObserver] != flow.ObserverEnvoy {
		return nil, false
	}
	get := func(k string) string {
		if v := attrs[k]; v != "-" {
			return v
		}
		return ""
	}
	r := &flow.Record{Protocol: "http", Observer: flow.ObserverEnvoy, Verdict: flow.VerdictUnknown,
		Method: get(envoy.OTelMethod), Path: get(envoy.OTelPath), Host: get(envoy.OTelAuthority)}
	if ns := lr.GetTimeUnixNano(); ns > 0 {
		r.Time = time.Unix(0, int64(ns)).UTC()
	}
	r.Source = addrPortOf(get(envoy.OTelSourceAddress), get(envoy.OTelSourcePort))
	r.Destination = addrPortOf(get(envoy.OTelDestinationAddress), get(envoy.OTelDestinationPort))
	r.Status, _ = strconv.Atoi(get(envoy.OTelStatus))
	if ms, err := strconv.ParseFloat(get(envoy.OTelDurationMS), 64); err == nil {
		r.LatencyMS = ms
	}
	// header and trailer operators concatenated: "-7", "0-", "--"
	if gs := strings.Trim(attrs[envoy.OTelGRPCStatus], "-"); gs != "" && gs != "0" {
		r.Error = "grpc-status " + gs
	}
	if dir, id, _, ok := envoy.ParseRouteName(get(envoy.OTelRoute)); ok {
		r.Direction = dir
		if dir == flow.Ingress {
			r.DstIdentity = id
		} else {
			r.SrcIdentity = id
		}
	}
	decide(r, get(envoy.OTelRBACResult), get(envoy.OTelRBACPolicy), get(envoy.OTelResponseDetails))
	audit(r, get(envoy.OTelRBACPolicy), get(envoy.OTelRBACShadowResult), get(envoy.OTelRBACShadowPolicy))
	return r, true
}

func addrPortOf(addr, port string) netip.AddrPort {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return netip.AddrPort{}
	}
	p, _ := strconv.ParseUint(port, 10, 16)
	return netip.AddrPortFrom(a.Unmap(), uint16(p))
}

func anyString(v *commonpb.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_IntValue:
		return strconv.FormatInt(x.IntValue, 10)
	case *commonpb.AnyValue_DoubleValue:
		return strconv.FormatFloat(x.DoubleValue, 'f', -1, 64)
	case *commonpb.AnyValue_BoolValue:
		return strconv.FormatBool(x.BoolValue)
	}
	return ""
}
