package envoytranslate

import (
	"fmt"
	"net"
	"slices"
	"strconv"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	otelalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/open_telemetry/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/l7gate/l7gate/envoy"
)

// AccessLoggerOTel is Envoy's OpenTelemetry access logger.
const AccessLoggerOTel = "envoy.access_loggers.open_telemetry"

// CollectorCluster is the cluster of a user's OTLP collector
// (OTelConfig.Collector).
const CollectorCluster = "l7gate/otlp-collector"

// OTelConfig configures Envoy's own OpenTelemetry access logger
// (envoy.access_loggers.open_telemetry) with l7gate's attributes
// (envoy.OTelAttributes: addresses, request, status, route, the RBAC
// decision and the policy that made it).
type OTelConfig struct {
	// Collector, "host:port" of an OTLP gRPC collector, sends the logs
	// straight there (a cluster named CollectorCluster is added; the
	// agent keeps its gRPC access-log stream, so flows, metrics and the
	// Observer API still see every request). Empty: the logs go to the
	// agent's intake on the access-log cluster instead of the gRPC
	// access-log stream, and the agent enriches and exports them.
	Collector string
	// ResourceAttributes are added to every log's resource (e.g.
	// k8s.node.name, k8s.cluster.name), sorted by key.
	ResourceAttributes map[string]string
}

// accessLogs are the HCM's access loggers: the gRPC access-log stream to
// the agent and/or the OpenTelemetry logger.
func (t *translator) accessLogs() ([]*accesslogv3.AccessLog, error) {
	var out []*accesslogv3.AccessLog
	otel := t.cfg.OpenTelemetry
	if t.cfg.AccessLogCluster != "" && (otel == nil || otel.Collector != "") {
		al, err := t.grpcAccessLog()
		if err != nil {
			return nil, err
		}
		out = append(out, al)
	}
	if otel == nil {
		return out, nil
	}
	cluster := CollectorCluster
	if otel.Collector == "" {
		if t.cfg.AccessLogCluster == "" {
			return nil, fmt.Errorf("opentelemetry access log: no collector and no access-log cluster")
		}
		cluster = t.cfg.AccessLogCluster
	}
	attrs := &commonpb.KeyValueList{}
	for _, a := range envoy.OTelAttributes() {
		attrs.Values = append(attrs.Values, kv(a.Key, a.Format))
	}
	res := &commonpb.KeyValueList{}
	keys := make([]string, 0, len(otel.ResourceAttributes))
	for k := range otel.ResourceAttributes {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		res.Values = append(res.Values, kv(k, otel.ResourceAttributes[k]))
	}
	cfg := &otelalsv3.OpenTelemetryAccessLogConfig{
		GrpcService: &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
			EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: cluster},
		}},
		LogName:            envoy.OTelLogName,
		ResourceAttributes: res,
		Body:               &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: envoy.OTelBody}},
		Attributes:         attrs,
	}
	packed, err := pack(cfg)
	if err != nil {
		return nil, err
	}
	return append(out, &accesslogv3.AccessLog{Name: AccessLoggerOTel, ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: packed}}), nil
}

func kv(k, v string) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
}

// collectorCluster is the cluster of a user's collector: strict DNS,
// HTTP/2 (OTLP gRPC).
func (t *translator) collectorCluster() (*clusterv3.Cluster, error) {
	host, portStr, err := net.SplitHostPort(t.cfg.OpenTelemetry.Collector)
	if err != nil {
		return nil, fmt.Errorf("opentelemetry collector %q: %w", t.cfg.OpenTelemetry.Collector, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 || host == "" {
		return nil, fmt.Errorf("opentelemetry collector %q: want host:port", t.cfg.OpenTelemetry.Collector)
	}
	h2 := &upstreamhttpv3.HttpProtocolOptions{UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{
		ExplicitHttpConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
		},
	}}
	opts, err := anypb.New(h2)
	if err != nil {
		return nil, err
	}
	c := &clusterv3.Cluster{
		Name:                 CollectorCluster,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS},
		ConnectTimeout:       durationpb.New(t.cfg.ConnectTimeout),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: CollectorCluster, Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)}}}},
			}}}},
		}}},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{httpProtocolOptKey: opts},
	}
	return c, c.ValidateAll()
}
