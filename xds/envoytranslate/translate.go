package envoytranslate

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	grpcalsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	rbacfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	origdstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	origsrcv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_src/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	upstreamhttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/l7gate/l7gate/envoy"
	"github.com/l7gate/l7gate/policy"
)

// Envoy extension names used in the resources.
const (
	FilterRBAC         = "envoy.filters.http.rbac"
	FilterRouter       = "envoy.filters.http.router"
	FilterHCM          = "envoy.filters.network.http_connection_manager"
	FilterOriginalDst  = "envoy.filters.listener.original_dst"
	FilterOriginalSrc  = "envoy.filters.listener.original_src"
	AccessLoggerGRPC   = "envoy.access_loggers.http_grpc"
	httpProtocolOptKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
)

// ParserHTTP is the only parser Envoy serves (gRPC is HTTP); rule sets of
// other parsers belong to the Go proxy and are skipped here.
const ParserHTTP = policy.ParserHTTP

// OriginalDstCluster is the name of the cluster every route forwards to.
const OriginalDstCluster = "l7gate/original-dst"

// AccessLogName is the log_name Envoy sends with every access-log stream.
const AccessLogName = "l7gate"

// DeniedBody is the body of a denied HTTP request (EVALUATION.md).
const DeniedBody = "Access denied"

// ProxyPort is the proxy port allocated for one (direction, parser).
type ProxyPort struct {
	Direction policy.Direction
	Parser    string
	Port      uint16
}

// Marks are the SO_MARK values original_src puts on upstream sockets:
// the datapath's from-proxy marks (bpf.ProxyMark with identity 0; bpf owns
// the encoding). The identity bits stay zero because original_src sets one
// mark per listener, not per connection, so the datapath derives the
// source identity from the preserved source address (ipcache) instead.
type Marks struct {
	Ingress uint32
	Egress  uint32
}

// Config is what the translation needs besides the snapshot.
type Config struct {
	// Node selects the endpoints whose traffic this Envoy sees; endpoints
	// without a node are included, and "" includes every endpoint.
	Node string
	// ProxyPorts lists the allocated proxy ports (allocation lives in
	// redirect/). An HTTP rule set in a direction without a port is an
	// error.
	ProxyPorts []ProxyPort
	// Marks are required (the agent takes them from bpf).
	Marks Marks
	// AccessLogCluster is the bootstrap's static cluster for the gRPC
	// access-log service; "" disables access logging.
	AccessLogCluster string
	// OpenTelemetry, when set, adds Envoy's OpenTelemetry access logger
	// (see OTelConfig).
	OpenTelemetry *OTelConfig
	// ConnectTimeout of upstream connections; zero means 5s.
	ConnectTimeout time.Duration
	// IPv6: the node is dual-stack, so listeners also bind [::]. It is a
	// property of the node, not of the pods present, so a pod coming or
	// going never changes a listener's addresses (which Envoy cannot
	// update in place).
	IPv6 bool
	// EscapedSlashes is what a request path with %2F or %5C gets, as the Go
	// proxy's --http-escaped-slashes (default reject: 400).
	EscapedSlashes policy.EscapedSlashAction
}

// Resources are the xDS resources for one Envoy, each list sorted by name.
type Resources struct {
	Listeners []*listenerv3.Listener
	Routes    []*routev3.RouteConfiguration
	Clusters  []*clusterv3.Cluster
	// Warnings name what Envoy cannot enforce as written (see rbac.go).
	Warnings []string
}

// ErrNoProxyPort: a rule set needs a proxy port that was not allocated.
var ErrNoProxyPort = errors.New("no proxy port")

// ListenerName names the listener of a proxy port.
func ListenerName(p ProxyPort) string {
	return fmt.Sprintf("l7gate/%s/%s/%d", p.Direction, p.Parser, p.Port)
}

// Translate renders the Envoy resources for snap.
func Translate(snap *policy.Snapshot, cfg Config) (*Resources, error) {
	if cfg.Marks.Ingress == 0 || cfg.Marks.Egress == 0 {
		return nil, errors.New("envoy translate: from-proxy marks required")
	}
	if cfg.ConnectTimeout == 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	t := &translator{cfg: cfg, peers: newPeerIndex(snap.IPCache)}
	local := map[policy.Identity][]netip.Addr{}
	for _, ep := range snap.Endpoints {
		if cfg.Node != "" && ep.Node != "" && ep.Node != cfg.Node {
			continue
		}
		for _, a := range ep.IPs {
			if a.Unmap().Is4() || cfg.IPv6 {
				local[ep.Identity] = append(local[ep.Identity], a)
			}
		}
	}
	out := &Resources{}
	chains := map[ProxyPort][]*listenerv3.FilterChain{}
	for _, ep := range snap.Policies {
		ips := local[ep.Identity]
		if len(ips) == 0 {
			continue
		}
		slices.SortFunc(ips, netip.Addr.Compare)
		ips = slices.Compact(ips)
		for _, dir := range []policy.Direction{policy.Ingress, policy.Egress} {
			dp := ep.Direction(dir)
			for i := range dp.L7 {
				rs := &dp.L7[i]
				if rs.Parser != ParserHTTP || rs.Protocol != policy.ProtoTCP {
					continue
				}
				pp, err := cfg.proxyPort(dir, rs.Parser)
				if err != nil {
					return nil, err
				}
				name := envoy.RouteName(dir, ep.Identity, rs.Port)
				rbac, warns, err := t.routeRBAC(dir, rs)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", name, err)
				}
				for _, w := range warns {
					out.Warnings = append(out.Warnings, name+": "+w)
				}
				rc, err := t.routeConfig(name, rbac)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", name, err)
				}
				out.Routes = append(out.Routes, rc)
				fc, err := t.filterChain(name, dir, rs.Port, ips)
				if err != nil {
					return nil, fmt.Errorf("%s: %w", name, err)
				}
				chains[pp] = append(chains[pp], fc)
			}
		}
	}
	for pp, fcs := range chains {
		l, err := t.listener(pp, fcs)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", ListenerName(pp), err)
		}
		out.Listeners = append(out.Listeners, l)
	}
	if len(out.Listeners) > 0 {
		c, err := t.cluster()
		if err != nil {
			return nil, err
		}
		out.Clusters = append(out.Clusters, c)
		if cfg.OpenTelemetry != nil && cfg.OpenTelemetry.Collector != "" {
			cc, err := t.collectorCluster()
			if err != nil {
				return nil, err
			}
			out.Clusters = append(out.Clusters, cc)
		}
	}
	slices.SortFunc(out.Listeners, func(a, b *listenerv3.Listener) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(out.Routes, func(a, b *routev3.RouteConfiguration) int { return strings.Compare(a.Name, b.Name) })
	slices.SortFunc(out.Clusters, func(a, b *clusterv3.Cluster) int { return strings.Compare(a.Name, b.Name) })
	slices.Sort(out.Warnings)
	return out, nil
}

func (c *Config) proxyPort(d policy.Direction, parser string) (ProxyPort, error) {
	for _, p := range c.ProxyPorts {
		if p.Direction == d && p.Parser == parser {
			return p, nil
		}
	}
	return ProxyPort{}, fmt.Errorf("%s/%s: %w", d, parser, ErrNoProxyPort)
}

type translator struct {
	cfg   Config
	peers *peerIndex
}

// validator is what protoc-gen-validate generates for every Envoy message.
type validator interface {
	ValidateAll() error
}

// pack validates m (ValidateAll does not look inside Any) and wraps it.
func pack(m proto.Message) (*anypb.Any, error) {
	if v, ok := m.(validator); ok {
		if err := v.ValidateAll(); err != nil {
			return nil, fmt.Errorf("invalid %s: %w", m.ProtoReflect().Descriptor().Name(), err)
		}
	}
	return anypb.New(m)
}

func (t *translator) listener(pp ProxyPort, fcs []*listenerv3.FilterChain) (*listenerv3.Listener, error) {
	slices.SortFunc(fcs, func(a, b *listenerv3.FilterChain) int { return strings.Compare(a.Name, b.Name) })
	mark, dir := t.cfg.Marks.Ingress, corev3.TrafficDirection_INBOUND
	if pp.Direction == policy.Egress {
		mark, dir = t.cfg.Marks.Egress, corev3.TrafficDirection_OUTBOUND
	}
	odst, err := pack(&origdstv3.OriginalDst{})
	if err != nil {
		return nil, err
	}
	osrc, err := pack(&origsrcv3.OriginalSrc{Mark: mark})
	if err != nil {
		return nil, err
	}
	l := &listenerv3.Listener{
		Name:             ListenerName(pp),
		Address:          tcpAddress("0.0.0.0", pp.Port),
		Transparent:      wrapperspb.Bool(true),
		TrafficDirection: dir,
		ListenerFilters: []*listenerv3.ListenerFilter{
			{Name: FilterOriginalDst, ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: odst}},
			{Name: FilterOriginalSrc, ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: osrc}},
		},
		FilterChains: fcs,
	}
	if t.cfg.IPv6 {
		l.AdditionalAddresses = []*listenerv3.AdditionalAddress{{Address: tcpAddress("::", pp.Port)}}
	}
	return l, l.ValidateAll()
}

func tcpAddress(ip string, port uint16) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Protocol:      corev3.SocketAddress_TCP,
		Address:       ip,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)},
	}}}
}

func cidr(p netip.Prefix) *corev3.CidrRange {
	return &corev3.CidrRange{AddressPrefix: p.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(p.Bits()))}
}

// filterChain selects the local endpoint (by destination address on
// ingress, source address on egress) and the rule set's port.
func (t *translator) filterChain(name string, d policy.Direction, port uint16, ips []netip.Addr) (*listenerv3.FilterChain, error) {
	m := &listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(uint32(port))}
	for _, a := range ips {
		a = a.Unmap()
		r := cidr(netip.PrefixFrom(a, a.BitLen()))
		if d == policy.Egress {
			m.SourcePrefixRanges = append(m.SourcePrefixRanges, r)
		} else {
			m.PrefixRanges = append(m.PrefixRanges, r)
		}
	}
	h, err := t.hcm(name)
	if err != nil {
		return nil, err
	}
	return &listenerv3.FilterChain{
		Name:             name,
		FilterChainMatch: m,
		Filters:          []*listenerv3.Filter{{Name: FilterHCM, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: h}}},
	}, nil
}

func (t *translator) hcm(name string) (*anypb.Any, error) {
	// Fail closed: the listener-level RBAC has no policies, so a route
	// without its RBACPerRoute denies every request.
	denyAll, err := pack(&rbacfilterv3.RBAC{Rules: &rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW}})
	if err != nil {
		return nil, err
	}
	router, err := pack(&routerv3.Router{})
	if err != nil {
		return nil, err
	}
	h := &hcmv3.HttpConnectionManager{
		StatPrefix: strings.NewReplacer("/", "_").Replace(name),
		CodecType:  hcmv3.HttpConnectionManager_AUTO,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource: &corev3.ConfigSource{
				ResourceApiVersion:    corev3.ApiVersion_V3,
				ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
			},
			RouteConfigName: name,
		}},
		HttpFilters: []*hcmv3.HttpFilter{
			{Name: FilterRBAC, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: denyAll}},
			{Name: FilterRouter, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}},
		},
		LocalReplyConfig: deniedReply(),
		// A policy proxy should be invisible: no idle timeout of its own
		// (gRPC streams may idle for long), and WebSocket upgrades pass
		// once RBAC admitted the upgrade request.
		StreamIdleTimeout: durationpb.New(0),
		UpgradeConfigs:    []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket"}},
		// Path normalization as the Go proxy does it (policy.
		// NormalizeRequestTarget): RBAC sees, and the backend receives,
		// the RFC 3986-normalized path with slashes merged.
		NormalizePath:                wrapperspb.Bool(true),
		MergeSlashes:                 true,
		PathWithEscapedSlashesAction: escapedSlashesAction(t.cfg.EscapedSlashes),
	}
	als, err := t.accessLogs()
	if err != nil {
		return nil, err
	}
	h.AccessLog = als
	return pack(h)
}

// grpcAccessLog streams every request to the agent's gRPC access-log
// service (envoy/als).
func (t *translator) grpcAccessLog() (*accesslogv3.AccessLog, error) {
	al, err := pack(&grpcalsv3.HttpGrpcAccessLogConfig{CommonConfig: &grpcalsv3.CommonGrpcAccessLogConfig{
		LogName: AccessLogName,
		GrpcService: &corev3.GrpcService{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
			EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: t.cfg.AccessLogCluster},
		}},
		TransportApiVersion: corev3.ApiVersion_V3,
	},
		// A denied gRPC call is a trailers-only response: grpc-status
		// arrives as a header; otherwise as a trailer.
		AdditionalResponseHeadersToLog:  []string{"grpc-status"},
		AdditionalResponseTrailersToLog: []string{"grpc-status"},
	})
	if err != nil {
		return nil, err
	}
	return &accesslogv3.AccessLog{Name: AccessLoggerGRPC, ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: al}}, nil
}

// escapedSlashesAction maps the proxy's escaped-slash setting to Envoy's.
func escapedSlashesAction(a policy.EscapedSlashAction) hcmv3.HttpConnectionManager_PathWithEscapedSlashesAction {
	switch a {
	case policy.EscapedSlashesKeep:
		return hcmv3.HttpConnectionManager_KEEP_UNCHANGED
	case policy.EscapedSlashesUnescape:
		return hcmv3.HttpConnectionManager_UNESCAPE_AND_FORWARD
	}
	return hcmv3.HttpConnectionManager_REJECT_REQUEST
}

// deniedReply rewrites Envoy's local 403 (only RBAC sends one here) to the
// body "Access denied". For gRPC requests Envoy turns a local reply into a
// trailers-only response whose grpc-status is mapped from the HTTP status:
// 403 becomes 7 (PERMISSION_DENIED) and the body becomes grpc-message.
func deniedReply() *hcmv3.LocalReplyConfig {
	return &hcmv3.LocalReplyConfig{Mappers: []*hcmv3.ResponseMapper{{
		Filter: &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_StatusCodeFilter{
			StatusCodeFilter: &accesslogv3.StatusCodeFilter{Comparison: &accesslogv3.ComparisonFilter{
				Op:    accesslogv3.ComparisonFilter_EQ,
				Value: &corev3.RuntimeUInt32{DefaultValue: 403, RuntimeKey: "l7gate.denied_status"},
			}},
		}},
		Body: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: DeniedBody}},
	}}}
}

func (t *translator) routeConfig(name string, rbac *rbacfilterv3.RBAC) (*routev3.RouteConfiguration, error) {
	per, err := pack(&rbacfilterv3.RBACPerRoute{Rbac: rbac})
	if err != nil {
		return nil, err
	}
	rc := &routev3.RouteConfiguration{
		Name: name,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    name,
			Domains: []string{"*"},
			Routes: []*routev3.Route{{
				// The route name reaches access logs as route_name.
				Name:  name,
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{
					ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: OriginalDstCluster},
					// No route timeout: gRPC streams and long polls are
					// the application's business.
					Timeout: durationpb.New(0),
				}},
				TypedPerFilterConfig: map[string]*anypb.Any{FilterRBAC: per},
			}},
		}},
	}
	return rc, rc.ValidateAll()
}

// clusterLimit bounds the node-wide cluster's connections and requests.
const clusterLimit = 1 << 20

func (t *translator) cluster() (*clusterv3.Cluster, error) {
	opts, err := pack(&upstreamhttpv3.HttpProtocolOptions{
		UpstreamProtocolOptions: &upstreamhttpv3.HttpProtocolOptions_UseDownstreamProtocolConfig{
			UseDownstreamProtocolConfig: &upstreamhttpv3.HttpProtocolOptions_UseDownstreamHttpConfig{
				HttpProtocolOptions:  &corev3.Http1ProtocolOptions{},
				Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
			},
		},
	})
	if err != nil {
		return nil, err
	}
	c := &clusterv3.Cluster{
		Name:                          OriginalDstCluster,
		ClusterDiscoveryType:          &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
		LbPolicy:                      clusterv3.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:                durationpb.New(t.cfg.ConnectTimeout),
		TypedExtensionProtocolOptions: map[string]*anypb.Any{httpProtocolOptKey: opts},
		// One cluster carries every redirected request of the node: Envoy's
		// default limits (1024 connections, pending and active requests)
		// would turn load into 503s that policy never asked for.
		CircuitBreakers: &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
			Priority:           corev3.RoutingPriority_DEFAULT,
			MaxConnections:     wrapperspb.UInt32(clusterLimit),
			MaxPendingRequests: wrapperspb.UInt32(clusterLimit),
			MaxRequests:        wrapperspb.UInt32(clusterLimit),
		}}},
	}
	return c, c.ValidateAll()
}
