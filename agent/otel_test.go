package agent

import (
	"context"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	otelalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/open_telemetry/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/envoy"
	"github.com/l7gate/l7gate/envoy/als"
	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/xds/envoytranslate"
)

// commandOperator is an Envoy access-log command operator, e.g.
// %REQ(:METHOD)% or %DYNAMIC_METADATA(ns:key)%.
var commandOperator = regexp.MustCompile(`%[A-Z_]+(\([^)]*\))?%`)

// envoyRender is the Envoy stand-in's formatter: every command operator
// replaced by the request's value, "-" when it has none (Envoy's rule).
func envoyRender(format string, req map[string]string) string {
	return commandOperator.ReplaceAllStringFunc(format, func(op string) string {
		if v, ok := req[op]; ok {
			return v
		}
		return "-"
	})
}

// envoyOTelLogs is what Envoy's OpenTelemetry access logger sends for the
// requests under the logger config: resource and record attributes from
// the config, each rendered per request.
func envoyOTelLogs(cfg *otelalsv3.OpenTelemetryAccessLogConfig, reqs []map[string]string) *collogspb.ExportLogsServiceRequest {
	res := &resourcepb.Resource{Attributes: cfg.GetResourceAttributes().GetValues()}
	sl := &logspb.ScopeLogs{}
	for _, req := range reqs {
		lr := &logspb.LogRecord{TimeUnixNano: uint64(time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC).UnixNano()),
			Body: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: envoyRender(cfg.GetBody().GetStringValue(), req)}}}
		for _, kv := range cfg.GetAttributes().GetValues() {
			lr.Attributes = append(lr.Attributes, &commonpb.KeyValue{Key: kv.GetKey(),
				Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: envoyRender(kv.GetValue().GetStringValue(), req)}}})
		}
		sl.LogRecords = append(sl.LogRecords, lr)
	}
	return &collogspb.ExportLogsServiceRequest{ResourceLogs: []*logspb.ResourceLogs{{Resource: res, ScopeLogs: []*logspb.ScopeLogs{sl}}}}
}

// TestEnvoyOTelLoggerToIntake: the agent's Envoy mode with
// --envoy-access-log otel configures Envoy's OpenTelemetry logger (the
// translation) to the access-log cluster; what an Envoy stand-in sends
// under that config, rendered from the config's own command operators,
// reaches the agent's OTLP intake over real gRPC and becomes flow records
// with the verdict, the rule, the identity and the addresses.
func TestEnvoyOTelLoggerToIntake(t *testing.T) {
	objs, _ := policy.Load("../policy/testdata/in/l7.yaml")
	snap, err := policy.Compute(objs, policy.NewIdentityAllocator())
	if err != nil {
		t.Fatal(err)
	}
	ec := EnvoyConfig{AccessLog: EnvoyAccessLogOTel, OTLPResource: map[string]string{"k8s.cluster.name": "prod"}}
	res, err := envoytranslate.Translate(snap, envoytranslate.Config{
		ProxyPorts:       []envoytranslate.ProxyPort{{Direction: policy.Ingress, Parser: envoytranslate.ParserHTTP, Port: 15001}},
		AccessLogCluster: "l7gate/accesslog", Node: "node-a", OpenTelemetry: ec.otel("node-a"),
		Marks: envoytranslate.Marks{Ingress: bpf.ProxyMark(bpf.Ingress, 0), Egress: bpf.ProxyMark(bpf.Egress, 0)},
	})
	if err != nil {
		t.Fatal(err)
	}
	var logger *otelalsv3.OpenTelemetryAccessLogConfig
	for _, l := range res.Listeners {
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				var h hcmv3.HttpConnectionManager
				if f.GetTypedConfig().UnmarshalTo(&h) != nil {
					continue
				}
				for _, al := range h.GetAccessLog() {
					var oc otelalsv3.OpenTelemetryAccessLogConfig
					if al.GetName() == envoytranslate.AccessLoggerOTel && al.GetTypedConfig().UnmarshalTo(&oc) == nil {
						logger = &oc
					} else {
						t.Errorf("access logger %s besides OpenTelemetry with --envoy-access-log otel", al.GetName())
					}
				}
			}
		}
	}
	if logger == nil {
		t.Fatal("no OpenTelemetry access logger in the translation")
	}
	if c := logger.GetGrpcService().GetEnvoyGrpc().GetClusterName(); c != "l7gate/accesslog" {
		t.Fatalf("logs go to cluster %q, want the access-log cluster", c)
	}
	var route string
	for _, rc := range res.Routes {
		for _, vh := range rc.GetVirtualHosts() {
			for _, r := range vh.GetRoutes() {
				if strings.HasPrefix(r.GetName(), "l7gate/ingress/") && strings.HasSuffix(r.GetName(), "/8080") {
					route = r.GetName()
				}
			}
		}
	}
	if route == "" {
		t.Fatal("no ingress route for port 8080")
	}
	_, id, _, _ := envoy.ParseRouteName(route)

	// The requests as Envoy knows them: command operator -> value.
	common := map[string]string{"%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%": "198.18.6.2", "%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%": "198.18.6.1",
		"%DOWNSTREAM_LOCAL_PORT%": "8080", "%REQ(:AUTHORITY)%": "api.shop", "%ROUTE_NAME%": route, "%DURATION%": "2"}
	with := func(m map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range common {
			out[k] = v
		}
		for k, v := range m {
			out[k] = v
		}
		return out
	}
	allowedPolicy := "cnp:shop/http-rules:spec.ingress[0].http[0]"
	reqs := []map[string]string{
		with(map[string]string{"%DOWNSTREAM_REMOTE_PORT%": "40001", "%REQ(:METHOD)%": "GET", "%REQ(:PATH)%": "/api/items", "%RESPONSE_CODE%": "200",
			"%DYNAMIC_METADATA(envoy.filters.http.rbac:enforced_engine_result)%":       "allowed",
			"%DYNAMIC_METADATA(envoy.filters.http.rbac:enforced_effective_policy_id)%": allowedPolicy, "%RESPONSE_CODE_DETAILS%": "via_upstream"}),
		with(map[string]string{"%DOWNSTREAM_REMOTE_PORT%": "40002", "%REQ(:METHOD)%": "DELETE", "%REQ(:PATH)%": "/api/items/1", "%RESPONSE_CODE%": "403",
			"%DYNAMIC_METADATA(envoy.filters.http.rbac:enforced_engine_result)%": "denied", "%RESPONSE_CODE_DETAILS%": "rbac_access_denied_matched_policy[none]"}),
	}

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sock := filepath.Join(t.TempDir(), "als.sock")
	var mu sync.Mutex
	var got []*flow.Record
	served := make(chan error, 1)
	go func() {
		served <- als.Serve(ctx, als.Config{Socket: sock, Sink: func(r *flow.Record) { mu.Lock(); got = append(got, r); mu.Unlock() }})
	}()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	export := envoyOTelLogs(logger, reqs)
	for { // until the intake listens
		var resp *collogspb.ExportLogsServiceResponse
		if resp, err = collogspb.NewLogsServiceClient(conn).Export(ctx, export); err == nil || ctx.Err() != nil {
			if resp.GetPartialSuccess().GetRejectedLogRecords() != 0 {
				t.Errorf("intake rejected Envoy's logs: %v", resp)
			}
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if body := export.ResourceLogs[0].ScopeLogs[0].LogRecords[0].GetBody().GetStringValue(); body != "GET api.shop/api/items 200 via_upstream" {
		t.Errorf("body %q", body)
	}
	resAttrs := map[string]string{}
	for _, kv := range export.ResourceLogs[0].GetResource().GetAttributes() {
		resAttrs[kv.GetKey()] = kv.GetValue().GetStringValue()
	}
	if resAttrs["k8s.node.name"] != "node-a" || resAttrs["k8s.cluster.name"] != "prod" || resAttrs["service.name"] != "l7gate-envoy" {
		t.Errorf("resource attributes %v", resAttrs)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 {
		t.Fatalf("%d flow records, want 2", len(got))
	}
	a, d := got[0], got[1]
	if a.Verdict != flow.VerdictAllowed || a.Direction != flow.Ingress || a.DstIdentity != id || a.Source.String() != "198.18.6.2:40001" ||
		a.Destination.String() != "198.18.6.1:8080" || a.Method != "GET" || a.Path != "/api/items" || a.Status != 200 || a.LatencyMS != 2 ||
		len(a.DecidedBy) != 1 || envoy.PolicyID(a.DecidedBy[0]) != allowedPolicy {
		t.Errorf("allowed request: %s", flow.AppendJSON(nil, a))
	}
	if d.Verdict != flow.VerdictDenied || d.Status != 403 || d.Method != "DELETE" || len(d.DecidedBy) != 1 || d.DecidedBy[0].Kind != flow.KindDefaultDeny {
		t.Errorf("denied request: %s", flow.AppendJSON(nil, d))
	}
}
