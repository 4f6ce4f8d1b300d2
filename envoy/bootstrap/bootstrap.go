// Package bootstrap renders the bootstrap of a stock upstream Envoy that
// l7gate configures: node id "envoy~<node>", ADS over the agent's xDS Unix
// socket (HTTP/2), admin on a Unix socket, and the static cluster of the
// agent's gRPC access-log service. Everything else (listeners, routes,
// clusters) arrives over xDS.
package bootstrap

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"sigs.k8s.io/yaml"
)

// Static cluster names. AccessLogCluster must equal the AccessLogCluster
// the agent passes to xds/envoytranslate.
const (
	XDSCluster       = "l7gate/xds"
	AccessLogCluster = "l7gate/accesslog"
)

// Default socket paths (the agent's and Envoy's, shared via a hostPath).
const (
	DefaultXDSSocket       = "/run/l7gate/xds.sock"
	DefaultAccessLogSocket = "/run/l7gate/accesslog.sock"
	DefaultAdminSocket     = "/run/l7gate/envoy-admin.sock"
)

// MaxRegexProgramSize is the RE2 program size above which Envoy rejects a
// regex (runtime re2.max_program_size.error_level).
const MaxRegexProgramSize = 10000

// NodeIDPrefix marks Envoy consumers on the xDS server.
const NodeIDPrefix = "envoy~"

// Config of a bootstrap. Empty fields take the defaults above.
type Config struct {
	// Node is the Kubernetes node name; the node id is "envoy~<Node>".
	Node            string
	XDSSocket       string
	AccessLogSocket string
	AdminSocket     string
	// Delta selects incremental xDS (DELTA_GRPC) instead of state of the
	// world; the agent's server speaks both.
	Delta bool
}

// ErrNoNode: the node name is required.
var ErrNoNode = errors.New("no node name")

// Generate builds the bootstrap and validates it.
func Generate(cfg Config) (*bootstrapv3.Bootstrap, error) {
	if cfg.Node == "" {
		return nil, ErrNoNode
	}
	if cfg.XDSSocket == "" {
		cfg.XDSSocket = DefaultXDSSocket
	}
	if cfg.AccessLogSocket == "" {
		cfg.AccessLogSocket = DefaultAccessLogSocket
	}
	if cfg.AdminSocket == "" {
		cfg.AdminSocket = DefaultAdminSocket
	}
	xds, err := grpcCluster(XDSCluster, cfg.XDSSocket)
	if err != nil {
		return nil, err
	}
	als, err := grpcCluster(AccessLogCluster, cfg.AccessLogSocket)
	if err != nil {
		return nil, err
	}
	apiType := corev3.ApiConfigSource_GRPC
	if cfg.Delta {
		apiType = corev3.ApiConfigSource_DELTA_GRPC
	}
	ads := func() *corev3.ConfigSource {
		return &corev3.ConfigSource{
			ResourceApiVersion:    corev3.ApiVersion_V3,
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
		}
	}
	// Envoy rejects (NACKs) a safe_regex whose RE2 program is larger than
	// 100 by default; policy regexes (path alternations) exceed that
	// easily and policy accepts them, so the limit is raised.
	staticRuntime, err := structpb.NewStruct(map[string]any{
		"re2.max_program_size.error_level": MaxRegexProgramSize,
	})
	if err != nil {
		return nil, err
	}
	b := &bootstrapv3.Bootstrap{
		Node: &corev3.Node{Id: NodeIDPrefix + cfg.Node, Cluster: "l7gate"},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{
			Clusters: []*clusterv3.Cluster{als, xds},
		},
		DynamicResources: &bootstrapv3.Bootstrap_DynamicResources{
			AdsConfig: &corev3.ApiConfigSource{
				ApiType:             apiType,
				TransportApiVersion: corev3.ApiVersion_V3,
				GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
					EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: XDSCluster},
				}}},
				SetNodeOnFirstMessageOnly: true,
			},
			LdsConfig: ads(),
			CdsConfig: ads(),
		},
		Admin: &bootstrapv3.Admin{Address: pipe(cfg.AdminSocket, 0o600)},
		LayeredRuntime: &bootstrapv3.LayeredRuntime{Layers: []*bootstrapv3.RuntimeLayer{
			{Name: "static", LayerSpecifier: &bootstrapv3.RuntimeLayer_StaticLayer{StaticLayer: staticRuntime}},
			{Name: "admin", LayerSpecifier: &bootstrapv3.RuntimeLayer_AdminLayer_{AdminLayer: &bootstrapv3.RuntimeLayer_AdminLayer{}}},
		}},
	}
	if err := b.ValidateAll(); err != nil {
		return nil, fmt.Errorf("invalid bootstrap: %w", err)
	}
	return b, nil
}

func pipe(path string, mode uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_Pipe{Pipe: &corev3.Pipe{Path: path, Mode: mode}}}
}

// grpcCluster is a static cluster of one Unix-socket endpoint speaking
// HTTP/2 (gRPC).
func grpcCluster(name, socket string) (*clusterv3.Cluster, error) {
	h2 := &upstreamhttpv3.HttpProtocolOptions{UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_{
		ExplicitHttpConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig{
			ProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
				Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
			},
		},
	}}
	if err := h2.ValidateAll(); err != nil {
		return nil, err
	}
	opts, err := anypb.New(h2)
	if err != nil {
		return nil, err
	}
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(time.Second),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: pipe(socket, 0)}},
			}}}},
		},
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": opts,
		},
	}, nil
}

// Marshal renders a message as "yaml" or "json" with sorted keys, so the
// same input gives the same bytes.
func Marshal(m proto.Message, format string) ([]byte, error) {
	raw, err := protojson.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("marshal: %w", err)
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, fmt.Errorf("marshal: %w", err)
	}
	switch format {
	case "json":
		out, err := json.MarshalIndent(v, "", "  ")
		return append(out, '\n'), err
	case "yaml", "":
		return yaml.Marshal(v)
	}
	return nil, fmt.Errorf("unknown format %q (want yaml or json)", format)
}
