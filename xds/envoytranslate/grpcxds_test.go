package envoytranslate

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/xds"
	"google.golang.org/protobuf/proto"

	"github.com/l7gate/l7gate/envoy"
	"github.com/l7gate/l7gate/policy"
)

// grpcPolicy puts pods on loopback addresses, because grpc-go matches
// principals by the connection's source address: 127.0.0.2, 127.0.0.3 and
// 127.0.0.5 are pods, 127.0.0.4 is world. ops (127.0.0.5) has L7 rules and
// an L3-only allow, which lifts them (Cilium's semantics): every call of
// ops is allowed, by the L3 rule.
const grpcPolicy = `
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: grpc, labels: {app: server}}
status: {podIP: 127.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: grpc, labels: {app: frontend}}
status: {podIP: 127.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: batch, namespace: grpc, labels: {app: batch}}
status: {podIP: 127.0.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: ops, namespace: grpc, labels: {app: ops}}
status: {podIP: 127.0.0.5}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-grpc, namespace: grpc}
spec:
  endpointSelector:
    matchLabels: {app: server}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts:
    - ports: [{port: "50051", protocol: TCP}]
      rules:
        http:
        - {method: POST, path: /grpc.testing.TestService/EmptyCall}
        - {path: "/grpc.testing.TestService/Unary.*", headers: ["x-tenant: blue"]}
  - toPorts:
    - ports: [{port: "50051", protocol: TCP}]
      rules:
        http:
        - {path: /grpc.testing.TestService/CacheableUnaryCall, headers: ["x-public: yes"]}
  - fromEntities: [world]
    toPorts:
    - ports: [{port: "50051", protocol: TCP}]
      rules:
        http:
        - {method: GET}
        - {path: /grpc.testing.TestService/Unary}
        - {method: POST, path: "/grpc\\.testing\\.TestService/Empty.*", headers: ["x-tenant: red"]}
  - fromEndpoints: [{matchLabels: {app: batch}}]
    toPorts:
    - ports: [{port: "50051", protocol: TCP}]
      rules:
        http:
        - {path: "/grpc\\.testing\\.TestService/(Empty|Unary)Call", headers: ["x-batch"]}
  - fromEndpoints: [{matchLabels: {app: ops}}]
    toPorts:
    - ports: [{port: "50051", protocol: TCP}]
      rules:
        http:
        - {path: /grpc.testing.TestService/EmptyCall}
  - fromEndpoints: [{matchLabels: {app: ops}}]
`

type testService struct {
	testgrpc.UnimplementedTestServiceServer
}

func (testService) EmptyCall(context.Context, *testgrpc.Empty) (*testgrpc.Empty, error) {
	return &testgrpc.Empty{}, nil
}

func (testService) UnaryCall(context.Context, *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	return &testgrpc.SimpleResponse{}, nil
}

func (testService) CacheableUnaryCall(context.Context, *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	return &testgrpc.SimpleResponse{}, nil
}

// grpcServerResources wraps the translator's output for one rule set in
// the shape grpc-go's xDS server accepts: a Listener named by the bootstrap
// template at the real address with one match-all filter chain holding our
// HTTP connection manager (RBAC deny-all, then router; routes over ADS),
// and our RouteConfiguration with its action made a NonForwardingAction.
func grpcServerResources(t *testing.T, res *Resources, chain string, addr netip.AddrPort) (*listenerv3.Listener, *routev3.RouteConfiguration) {
	t.Helper()
	var fc *listenerv3.FilterChain
	for _, l := range res.Listeners {
		for _, c := range l.FilterChains {
			if c.Name == chain {
				fc = proto.Clone(c).(*listenerv3.FilterChain)
			}
		}
	}
	var rc *routev3.RouteConfiguration
	for _, r := range res.Routes {
		if r.Name == chain {
			rc = proto.Clone(r).(*routev3.RouteConfiguration)
		}
	}
	if fc == nil || rc == nil {
		t.Fatalf("translation has no filter chain and route %s", chain)
	}
	fc.FilterChainMatch = nil
	for _, vh := range rc.VirtualHosts {
		for _, r := range vh.Routes {
			r.Action = &routev3.Route_NonForwardingAction{NonForwardingAction: &routev3.NonForwardingAction{}}
		}
	}
	l := &listenerv3.Listener{
		Name:         "grpc/server?xds.resource.listening_address=" + addr.String(),
		Address:      tcpAddress(addr.Addr().String(), addr.Port()),
		FilterChains: []*listenerv3.FilterChain{fc},
	}
	return l, rc
}

// TestGRPCXDSDifferential feeds the translator's RBAC for a gRPC rule set
// to grpc-go's xDS server (an independent xDS data plane) through a
// go-control-plane ADS server on a Unix socket, and checks that every call
// in a table gets the verdict policy's own evaluation gives.
func TestGRPCXDSDifferential(t *testing.T) { runGRPCXDS(t, grpcPolicy, false) }

// TestGRPCXDSAudit: the same policy in audit mode (l7gate.io/audit) is
// ACKed by grpc-go (RBAC with shadow_rules under the allow-all audit
// policy) and every call policy would deny goes through.
func TestGRPCXDSAudit(t *testing.T) {
	audited := strings.Replace(grpcPolicy, "metadata: {name: server-grpc, namespace: grpc}",
		`metadata: {name: server-grpc, namespace: grpc, annotations: {l7gate.io/audit: "true"}}`, 1)
	if audited == grpcPolicy {
		t.Fatal("policy not annotated")
	}
	runGRPCXDS(t, audited, true)
}

func runGRPCXDS(t *testing.T, policyYAML string, audit bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	in := filepath.Join(dir, "grpc.yaml")
	if err := os.WriteFile(in, []byte(policyYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	snap := loadSnapshot(t, in)
	res, err := Translate(snap, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	serverID := snap.IdentityOf(netip.MustParseAddr("127.0.0.1"))
	rs := snap.Policy(serverID).Ingress.L7Set(policy.ProtoTCP, 50051)
	if rs == nil {
		t.Fatal("no rule set on port 50051")
	}

	// The data plane's listening socket comes first: its address names
	// the Listener resource.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().(*net.TCPAddr).AddrPort()
	l, rc := grpcServerResources(t, res, envoy.RouteName(policy.Ingress, serverID, 50051), addr)

	// go-control-plane ADS on a Unix socket.
	const nodeID = "envoy~test"
	cache := cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)
	xsnap, err := cachev3.NewSnapshot("1", map[resource.Type][]types.Resource{
		resource.ListenerType: {l},
		resource.RouteType:    {rc},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := xsnap.Consistent(); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	if err := cache.SetSnapshot(ctx, nodeID, xsnap); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "xds.sock")
	xdsLis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	cp := grpc.NewServer()
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(cp, serverv3.NewServer(ctx, cache, nil))
	go func() { _ = cp.Serve(xdsLis) }()
	defer cp.Stop()

	bootstrap := fmt.Sprintf(`{
  "xds_servers": [{"server_uri": "unix://%s", "channel_creds": [{"type": "insecure"}], "server_features": ["xds_v3"]}],
  "node": {"id": %q},
  "server_listener_resource_name_template": "grpc/server?xds.resource.listening_address=%%s"
}`, sock, nodeID)
	serving := make(chan error, 1)
	srv, err := xds.NewGRPCServer(
		grpc.Creds(insecure.NewCredentials()),
		xds.BootstrapContentsForTesting([]byte(bootstrap)),
		xds.ServingModeCallback(func(_ net.Addr, a xds.ServingModeChangeArgs) {
			if a.Mode == connectivity.ServingModeServing {
				select {
				case serving <- nil:
				default:
				}
			} else if a.Err != nil {
				t.Logf("grpc-go xds server not serving: %v", a.Err)
			}
		}),
	)
	if err != nil {
		t.Fatal(err)
	}
	testgrpc.RegisterTestServiceServer(srv, testService{})
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()
	select {
	case <-serving:
	case <-ctx.Done():
		t.Fatal("grpc-go xds server never started serving (listener NACKed?)")
	}

	clients := map[string]testgrpc.TestServiceClient{}
	sources := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"}
	for _, src := range sources {
		local := &net.TCPAddr{IP: net.ParseIP(src)}
		cc, err := grpc.NewClient(addr.String(),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
				d := net.Dialer{LocalAddr: local}
				return d.DialContext(ctx, "tcp", a)
			}))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		clients[src] = testgrpc.NewTestServiceClient(cc)
	}

	methods := map[string]func(context.Context, testgrpc.TestServiceClient) error{
		testgrpc.TestService_EmptyCall_FullMethodName: func(ctx context.Context, c testgrpc.TestServiceClient) error {
			_, err := c.EmptyCall(ctx, &testgrpc.Empty{})
			return err
		},
		testgrpc.TestService_UnaryCall_FullMethodName: func(ctx context.Context, c testgrpc.TestServiceClient) error {
			_, err := c.UnaryCall(ctx, &testgrpc.SimpleRequest{})
			return err
		},
		testgrpc.TestService_CacheableUnaryCall_FullMethodName: func(ctx context.Context, c testgrpc.TestServiceClient) error {
			_, err := c.CacheableUnaryCall(ctx, &testgrpc.SimpleRequest{})
			return err
		},
	}
	headerSets := [][]policy.HTTPHeader{
		nil,
		{{Name: "x-tenant", Value: "blue"}},
		{{Name: "x-tenant", Value: "red"}},
		{{Name: "x-batch", Value: "1"}},
		{{Name: "x-public", Value: "yes"}},
		{{Name: "x-public", Value: "no"}, {Name: "x-tenant", Value: "blue"}},
	}
	allowed, denied, lifted := 0, 0, 0
	for _, src := range sources {
		peer := snap.IdentityOf(netip.MustParseAddr(src))
		for _, method := range []string{testgrpc.TestService_EmptyCall_FullMethodName, testgrpc.TestService_UnaryCall_FullMethodName, testgrpc.TestService_CacheableUnaryCall_FullMethodName} {
			for _, hs := range headerSets {
				want, err := rs.EvaluateHTTP(peer, &policy.HTTPRequest{Method: "POST", Path: method, Host: addr.String(), Headers: hs})
				if err != nil {
					t.Fatal(err)
				}
				var kv []string
				for _, h := range hs {
					kv = append(kv, h.Name, h.Value)
				}
				callCtx, callCancel := context.WithTimeout(metadata.AppendToOutgoingContext(ctx, kv...), 5*time.Second)
				err = methods[method](callCtx, clients[src])
				callCancel()
				got := policy.DecisionAllowed
				switch status.Code(err) {
				case codes.OK:
				case codes.PermissionDenied:
					got = policy.DecisionDenied
				default:
					t.Fatalf("%s %s %v: unexpected error %v", src, method, hs, err)
				}
				if audit {
					// in audit mode policy's denial is forwarded
					if want = want.Audit(); want.Decision == policy.DecisionAudit {
						want.Decision = policy.DecisionAllowed
						denied++
					}
				}
				if got != want.Decision {
					t.Errorf("%s (identity %d) %s %v: grpc-go says %s, policy says %s (%v)", src, peer, method, hs, got, want.Decision, want.DecidedBy)
				}
				if got == policy.DecisionAllowed {
					allowed++
					if len(want.Shadowed) > 0 {
						lifted++
						if len(want.DecidedBy) != 1 || want.DecidedBy[0].Path != "spec.ingress[5]" || want.DecidedBy[0].L7 != "" {
							t.Errorf("%s %s: lifted call decided by %v, want the L3-only rule spec.ingress[5]", src, method, want.DecidedBy)
						}
					}
				} else {
					denied++
				}
			}
		}
	}
	if allowed == 0 || denied == 0 || lifted == 0 {
		t.Errorf("table does not exercise every case: %d allowed (%d through a lifted L7 rule set), %d denied", allowed, lifted, denied)
	}
	verb := "denied"
	if audit {
		verb = "audited (denied by rules in audit mode, forwarded)"
	}
	t.Logf("%d calls allowed (%d through a lifted L7 rule set), %d %s, all as policy decides", allowed, lifted, denied, verb)
}
