package envoytranslate

import (
	"path/filepath"
	"slices"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	otelalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/open_telemetry/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"github.com/l7gate/l7gate/envoy"
	"github.com/l7gate/l7gate/internal/testutil"
)

// hcms returns every HTTP connection manager of the listeners.
func hcms(t *testing.T, res *Resources) []*hcmv3.HttpConnectionManager {
	t.Helper()
	var out []*hcmv3.HttpConnectionManager
	for _, l := range res.Listeners {
		for _, fc := range l.FilterChains {
			for _, f := range fc.Filters {
				var h hcmv3.HttpConnectionManager
				if f.GetTypedConfig().UnmarshalTo(&h) == nil {
					out = append(out, &h)
				}
			}
		}
	}
	if len(out) == 0 {
		t.Fatal("no HTTP connection manager in the output")
	}
	return out
}

// TestOpenTelemetryAccessLog: with OpenTelemetry set, every HTTP
// connection manager has Envoy's open_telemetry logger with l7gate's
// attributes and resource attributes — to the agent's access-log cluster
// instead of the gRPC stream, or to a user's collector (a strict-DNS HTTP/2
// cluster) next to the gRPC stream. The output passes Envoy's validation.
func TestOpenTelemetryAccessLog(t *testing.T) {
	snap := loadSnapshot(t, "../../policy/testdata/in/l7.yaml")
	for _, tc := range []struct {
		name, collector string
		wantLoggers     []string
		wantCluster     string
	}{
		{"to-agent", "", []string{AccessLoggerOTel}, "l7gate/accesslog"},
		{"to-collector", "otel-collector.observability.svc:4317", []string{AccessLoggerGRPC, AccessLoggerOTel}, CollectorCluster},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig()
			cfg.OpenTelemetry = &OTelConfig{Collector: tc.collector, ResourceAttributes: map[string]string{"k8s.node.name": "node-a", "k8s.cluster.name": "prod"}}
			res, err := Translate(snap, cfg)
			if err != nil {
				t.Fatal(err)
			}
			// golden: testdata/otel/<case>.yaml (-update rewrites it)
			testutil.Golden(t, filepath.Join("testdata", "otel", tc.name+".yaml"), renderGolden(t, res))
			for _, h := range hcms(t, res) {
				var names []string
				for _, al := range h.AccessLog {
					names = append(names, al.Name)
				}
				if !slices.Equal(names, tc.wantLoggers) {
					t.Fatalf("access loggers %v, want %v", names, tc.wantLoggers)
				}
				var oc otelalsv3.OpenTelemetryAccessLogConfig
				if err := h.AccessLog[len(h.AccessLog)-1].GetTypedConfig().UnmarshalTo(&oc); err != nil {
					t.Fatal(err)
				}
				if err := validateDeep(&oc); err != nil {
					t.Fatal(err)
				}
				if got := oc.GetGrpcService().GetEnvoyGrpc().GetClusterName(); got != tc.wantCluster {
					t.Errorf("logs go to %q, want %q", got, tc.wantCluster)
				}
				var keys []string
				for _, kv := range oc.GetAttributes().GetValues() {
					keys = append(keys, kv.GetKey())
				}
				var want []string
				for _, a := range envoy.OTelAttributes() {
					want = append(want, a.Key)
				}
				if !slices.Equal(keys, want) || oc.GetLogName() != envoy.OTelLogName {
					t.Errorf("attributes %v, want %v", keys, want)
				}
				res := oc.GetResourceAttributes().GetValues()
				if len(res) != 2 || res[0].GetKey() != "k8s.cluster.name" || res[1].GetValue().GetStringValue() != "node-a" {
					t.Errorf("resource attributes %v", res)
				}
			}
			i := slices.IndexFunc(res.Clusters, func(c *clusterv3.Cluster) bool { return c.Name == CollectorCluster })
			if (i >= 0) != (tc.collector != "") {
				t.Fatalf("collector cluster present: %v, want %v", i >= 0, tc.collector != "")
			}
			if i >= 0 {
				c := res.Clusters[i]
				sa := c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
				if c.GetType() != clusterv3.Cluster_STRICT_DNS || sa.GetAddress() != "otel-collector.observability.svc" || sa.GetPortValue() != 4317 {
					t.Errorf("collector cluster %v", c)
				}
				if err := validateDeep(c); err != nil {
					t.Error(err)
				}
			}
		})
	}
	cfg := testConfig()
	cfg.OpenTelemetry = &OTelConfig{Collector: "no-port"}
	if _, err := Translate(snap, cfg); err == nil {
		t.Error("a collector without a port was accepted")
	}
}
