package als

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	datav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/l7gate/l7gate/flow"
)

var t0 = time.Date(2026, 11, 22, 4, 0, 0, 0, time.UTC)

func sockAddr(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

func rbacMetadata(result, policyID string) *corev3.Metadata {
	f := map[string]any{keyEngineResult: result}
	if policyID != "" {
		f[keyEffectivePolicyID] = policyID
	}
	s, err := structpb.NewStruct(f)
	if err != nil {
		panic(err)
	}
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{RBACMetadataNamespace: s}}
}

// entry builds an HTTPAccessLogEntry the way Envoy's http_grpc logger
// fills it for a request through an l7gate listener.
func entry(method corev3.RequestMethod, path string, status uint32, md *corev3.Metadata, details string, trailers map[string]string) *datav3.HTTPAccessLogEntry {
	return &datav3.HTTPAccessLogEntry{
		CommonProperties: &datav3.AccessLogCommon{
			DownstreamRemoteAddress: sockAddr("198.18.6.2", 40123),
			DownstreamLocalAddress:  sockAddr("198.18.6.1", 8080),
			StartTime:               timestamppb.New(t0),
			RouteName:               "l7gate/ingress/256/8080",
			Metadata:                md,
			UpstreamCluster:         "l7gate/original-dst",
		},
		ProtocolVersion: datav3.HTTPAccessLogEntry_HTTP11,
		Request: &datav3.HTTPRequestProperties{
			RequestMethod: method,
			Scheme:        "http",
			Authority:     "shop.example.com",
			Path:          path,
		},
		Response: &datav3.HTTPResponseProperties{
			ResponseCode:        wrapperspb.UInt32(status),
			ResponseCodeDetails: details,
			ResponseTrailers:    trailers,
		},
	}
}

// TestStreamAccessLogs sends recorded entries over a real gRPC connection
// on a Unix socket and checks the records that come out.
func TestStreamAccessLogs(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	sock := filepath.Join(t.TempDir(), "als.sock")
	var mu sync.Mutex
	var got []*flow.Record
	served := make(chan error, 1)
	srvCtx, stop := context.WithCancel(ctx)
	go func() {
		served <- Serve(srvCtx, Config{Socket: sock, Sink: func(r *flow.Record) {
			mu.Lock()
			got = append(got, r)
			mu.Unlock()
		}})
	}()
	defer func() {
		stop()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()

	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	defer func() {
		if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o660 {
			t.Errorf("access-log socket mode %v (%v), want 0660", fi.Mode().Perm(), err)
		}
	}()
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	var stream accesslogv3.AccessLogService_StreamAccessLogsClient
	for i := 0; ; i++ { // the server may not be listening yet
		stream, err = accesslogv3.NewAccessLogServiceClient(cc).StreamAccessLogs(ctx, grpc.WaitForReady(true))
		if err == nil || i == 50 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	msgs := []*accesslogv3.StreamAccessLogsMessage{
		{
			Identifier: &accesslogv3.StreamAccessLogsMessage_Identifier{Node: &corev3.Node{Id: "envoy~node-a"}, LogName: "l7gate"},
			LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: []*datav3.HTTPAccessLogEntry{
				entry(corev3.RequestMethod_GET, "/api/v1/items/7", 200, rbacMetadata("allowed", "cnp:shop/http-rules:spec.ingress[0].http[0]"), "via_upstream", nil),
				entry(corev3.RequestMethod_DELETE, "/api/v1/items/7", 403, rbacMetadata("denied", ""), "rbac_access_denied_matched_policy[none]", nil),
			}}},
		},
		{
			LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: []*datav3.HTTPAccessLogEntry{
				// An Envoy without the enforced metadata: details only.
				entry(corev3.RequestMethod_POST, "/shop.v1.Cart/Checkout", 200, nil, "rbac_access_denied_matched_policy[none]", map[string]string{"grpc-status": "7"}),
				entry(corev3.RequestMethod_POST, "/shop.v1.Cart/AddItem", 200, rbacMetadata("allowed", "ccnp:cart-all:specs[1].ingress[0].http[0]#3"), "via_upstream", map[string]string{"grpc-status": "0"}),
				entry(corev3.RequestMethod_GET, "/nowhere", 404, nil, "route_not_found", nil),
			}}},
		},
	}
	for _, m := range msgs {
		if err := stream.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := stream.CloseAndRecv(); err != nil {
		t.Fatal(err)
	}

	src, dst := netip.MustParseAddrPort("198.18.6.2:40123"), netip.MustParseAddrPort("198.18.6.1:8080")
	base := flow.Record{Time: t0, Protocol: "http", Source: src, Destination: dst, Host: "shop.example.com",
		Direction: flow.Ingress, DstIdentity: 256, Observer: flow.ObserverEnvoy}
	with := func(f func(r *flow.Record)) *flow.Record { r := base; f(&r); return &r }
	allow := func(kind flow.PolicyKind, pol, path, l7 string) []flow.Provenance {
		return []flow.Provenance{{Kind: flow.KindAllow, Direction: flow.Ingress, PolicyKind: kind, Policy: pol, Path: path, L7: l7}}
	}
	defaultDeny := []flow.Provenance{{Kind: flow.KindDefaultDeny, Direction: flow.Ingress}}
	want := []*flow.Record{
		with(func(r *flow.Record) {
			r.Method, r.Path, r.Status, r.Verdict = "GET", "/api/v1/items/7", 200, flow.VerdictAllowed
			r.DecidedBy = allow(flow.KindCNP, "shop/http-rules", "spec.ingress[0]", "http[0]")
		}),
		with(func(r *flow.Record) {
			r.Method, r.Path, r.Status, r.Verdict, r.DecidedBy = "DELETE", "/api/v1/items/7", 403, flow.VerdictDenied, defaultDeny
		}),
		with(func(r *flow.Record) {
			r.Method, r.Path, r.Status, r.Error, r.Verdict, r.DecidedBy = "POST", "/shop.v1.Cart/Checkout", 200, "grpc-status 7", flow.VerdictDenied, defaultDeny
		}),
		with(func(r *flow.Record) {
			r.Method, r.Path, r.Status, r.Verdict = "POST", "/shop.v1.Cart/AddItem", 200, flow.VerdictAllowed
			r.DecidedBy = allow(flow.KindCCNP, "cart-all", "specs[1].ingress[0]", "http[0]")
		}),
		with(func(r *flow.Record) {
			r.Method, r.Path, r.Status, r.Verdict = "GET", "/nowhere", 404, flow.VerdictUnknown
		}),
	}
	mu.Lock()
	defer mu.Unlock()
	if !reflect.DeepEqual(got, want) {
		t.Errorf("records:\n got %s\nwant %s", jsonOf(got), jsonOf(want))
	}
}

func jsonOf(rs []*flow.Record) string {
	var b []byte
	for _, r := range rs {
		b = flow.AppendJSON(b, r)
	}
	return string(b)
}

// TestRecordOfEgress: an egress route names the source endpoint's
// identity.
func TestRecordOfEgress(t *testing.T) {
	e := entry(corev3.RequestMethod_POST, "/v1/x", 200, rbacMetadata("denied", ""), "", map[string]string{"grpc-status": "7"})
	e.CommonProperties.RouteName = "l7gate/egress/300/50051"
	r := RecordOf(e)
	if r.Verdict != flow.VerdictDenied || r.SrcIdentity != 300 || r.DstIdentity != 0 || r.Direction != flow.Egress ||
		r.Error != "grpc-status 7" || len(r.DecidedBy) != 1 || r.DecidedBy[0].Kind != flow.KindDefaultDeny {
		t.Errorf("%s", flow.AppendJSON(nil, r))
	}
}
