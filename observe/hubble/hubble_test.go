package hubble

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/observe"
	flowpb "github.com/l7gate/l7gate/proto/hubble/flowpb"
	observerpb "github.com/l7gate/l7gate/proto/hubble/observerpb"
)

var t0 = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

var (
	xwing = &flow.Endpoint{Namespace: "default", Pod: "xwing-6f7d9c-abcde", Labels: []string{"k8s:app=xwing", "k8s:io.kubernetes.pod.namespace=default", "k8s:org=alliance"},
		WorkloadKind: "Deployment", Workload: "xwing"}
	tiefighter = &flow.Endpoint{Namespace: "default", Pod: "tiefighter", Labels: []string{"k8s:class=tiefighter", "k8s:io.kubernetes.pod.namespace=default", "k8s:org=empire"}}
	deathstar  = &flow.Endpoint{Namespace: "default", Pod: "deathstar-0", Labels: []string{"k8s:app=deathstar", "k8s:io.kubernetes.pod.namespace=default", "k8s:org=empire"},
		WorkloadKind: "StatefulSet", Workload: "deathstar", Service: "default/deathstar"}
)

// scenario are the records of a starwars-like run: datapath verdicts and
// drops (default-deny attributed to the policy), HTTP allowed and denied,
// Kafka denied.
func scenario() []*flow.Record {
	ap := func(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
	rule := flow.Provenance{Policy: "default/rule1", PolicyKind: flow.KindCNP, Direction: flow.Ingress, Kind: flow.KindAllow, Path: "specs[0].ingress[0]", L7: "http[0]"}
	dd := flow.Provenance{Policy: "default/rule1", PolicyKind: flow.KindCNP, Direction: flow.Ingress, Kind: flow.KindDefaultDeny, Path: "specs[0]"}
	return []*flow.Record{
		{Time: t0, Observer: flow.ObserverDatapath, Protocol: "tcp", IPProtocol: 6, Direction: flow.Ingress, Source: ap("198.18.1.11:40000"), Destination: ap("198.18.1.10:80"),
			SrcIdentity: 257, DstIdentity: 256, Verdict: flow.VerdictDenied, Reason: "default", DecidedBy: []flow.Provenance{dd}, Node: "n1",
			SrcEndpoint: xwing, DstEndpoint: deathstar, Endpoint: "default/deathstar-0"},
		{Time: t0.Add(1 * time.Second), Observer: flow.ObserverDatapath, Protocol: "tcp", IPProtocol: 6, Source: ap("198.18.1.12:40001"), Destination: ap("198.18.1.10:80"),
			SrcIdentity: 258, DstIdentity: 256, Verdict: flow.VerdictRedirected, Reason: "policy", ProxyPort: 15001, Node: "n1",
			DecidedBy: []flow.Provenance{rule}, SrcEndpoint: tiefighter, DstEndpoint: deathstar},
		{Time: t0.Add(2 * time.Second), Observer: flow.ObserverProxy, Protocol: "http", Source: ap("198.18.1.12:40001"), Destination: ap("198.18.1.10:80"),
			SrcIdentity: 258, DstIdentity: 256, Verdict: flow.VerdictAllowed, Method: "POST", Path: "/v1/request-landing", Host: "deathstar.default.svc",
			Status: 200, LatencyMS: 1.5, DecidedBy: []flow.Provenance{rule}, Node: "n1", SrcEndpoint: tiefighter, DstEndpoint: deathstar},
		{Time: t0.Add(3 * time.Second), Observer: flow.ObserverProxy, Protocol: "http", Source: ap("198.18.1.12:40002"), Destination: ap("198.18.1.10:80"),
			SrcIdentity: 258, DstIdentity: 256, Verdict: flow.VerdictDenied, Method: "PUT", Path: "/v1/exhaust-port", Host: "deathstar.default.svc",
			Status: 403, DecidedBy: []flow.Provenance{{Policy: "default/rule1", PolicyKind: flow.KindCNP, Kind: flow.KindDefaultDeny, Path: "specs[0].ingress[0]"}},
			Node: "n1", SrcEndpoint: tiefighter, DstEndpoint: deathstar},
		{Time: t0.Add(4 * time.Second), Observer: flow.ObserverProxy, Protocol: "kafka", Direction: flow.Egress, Source: ap("198.18.1.12:40003"), Destination: ap("198.18.1.20:9092"),
			SrcIdentity: 258, DstIdentity: 2, Verdict: flow.VerdictDenied, APIKey: "produce", APIVersion: 9, CorrelationID: 7, Topics: []string{"deathstar-plans"},
			ErrorCode: 29, Reason: "no rule of default/kafka allows topic deathstar-plans", Node: "n1", SrcEndpoint: tiefighter},
	}
}

type testServer struct {
	p      *observe.Pipeline
	client observerpb.ObserverClient
	health healthpb.HealthClient
	sock   string
}

func startServer(t *testing.T, recs []*flow.Record) *testServer {
	t.Helper()
	p := observe.New(observe.Config{Capacity: 64})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	for _, r := range recs {
		p.Ingest(r)
	}
	for p.Stats().Processed < uint64(len(recs)) {
		time.Sleep(time.Millisecond)
	}
	sock := filepath.Join(t.TempDir(), "hubble.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(ServerConfig{Pipeline: p, Node: "n1", Options: Options{Version: "test", Instance: 42}, StartedAt: t0,
		now: func() time.Time { return t0.Add(30 * time.Second) }})
	served := make(chan error, 1)
	go func() { served <- Serve(ctx, ln, srv) }()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		if err := <-served; err != nil {
			t.Error(err)
		}
		<-done
	})
	return &testServer{p: p, client: observerpb.NewObserverClient(conn), health: healthpb.NewHealthClient(conn), sock: sock}
}

func collect(t *testing.T, c observerpb.ObserverClient, req *observerpb.GetFlowsRequest) ([]*flowpb.Flow, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.GetFlows(ctx, req)
	if err != nil {
		return nil, err
	}
	var out []*flowpb.Flow
	for {
		resp, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		if resp.GetNodeName() != "n1" {
			t.Errorf("response node %q", resp.GetNodeName())
		}
		out = append(out, resp.GetFlow())
	}
}

func summaries(fs []*flowpb.Flow) []string {
	var out []string
	for _, f := range fs {
		out = append(out, f.GetSummary())
	}
	return out
}

// TestObserverGetFlows: a real grpc-go client of the Observer API gets
// the last N / first N flows, filtered by Hubble's filters (whitelist OR,
// fields AND, blacklist), bounded by since/until.
func TestObserverGetFlows(t *testing.T) {
	s := startServer(t, scenario())
	ts := func(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(t0.Add(d)) }
	cases := []struct {
		name string
		req  *observerpb.GetFlowsRequest
		want []int // indexes into scenario()
	}{
		{"all", &observerpb.GetFlowsRequest{}, []int{0, 1, 2, 3, 4}},
		{"last 2", &observerpb.GetFlowsRequest{Number: 2}, []int{3, 4}},
		{"first 2", &observerpb.GetFlowsRequest{Number: 2, First: true}, []int{0, 1}},
		{"dropped", &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}}}}, []int{0, 3, 4}},
		{"http PUT", &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{HttpMethod: []string{"put"}}}}, []int{3}},
		{"http status 2+", &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{HttpStatusCode: []string{"2+"}}}}, []int{2}},
		{"http path", &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{HttpPath: []string{"^/v1/exhaust"}}}}, []int{3}},
		{"from pod prefix (default namespace)", &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{SourcePod: []string{"xwing"}}}}, []int{0}},
		{"to namespace", &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{DestinationPod: []string{"default/"}}}}, []int{0, 1, 2, 3}},
		{"label selector with source", &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{SourceLabel: []string{"k8s:org=empire,class in (tiefighter)"}}}}, []int{1, 2, 3, 4}},
		{"label selector negation", &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{SourceLabel: []string{"org!=empire"}}}}, []int{0}},
		{"workload", &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{DestinationWorkload: []*flowpb.Workload{{Kind: "StatefulSet"}}}}}, []int{0, 1, 2, 3}},
		{"service", &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{DestinationService: []string{"default/deathstar"}}}}, []int{0, 1, 2, 3}},
		{"fields AND", &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}, Protocol: []string{"kafka"}}}}, []int{4}},
		{"whitelist OR", &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{Protocol: []string{"kafka"}}, {SourcePod: []string{"xwing"}}}}, []int{0, 4}},
		{"blacklist", &observerpb.GetFlowsRequest{Blacklist: []*flowpb.FlowFilter{{EventType: []*flowpb.EventTypeFilter{{Type: MessageTypeAccessLog}}}}}, []int{0, 1}},
		{"drop reason", &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{DropReasonDesc: []flowpb.DropReason{flowpb.DropReason_POLICY_DENIED}}}}, []int{0, 3, 4}},
		{"egress", &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{TrafficDirection: []flowpb.TrafficDirection{flowpb.TrafficDirection_EGRESS}}}}, []int{4}},
		{"identity and port", &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{SourceIdentity: []uint32{258}, DestinationPort: []string{"80"}}}}, []int{1, 2, 3}},
		{"ip cidr", &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{DestinationIp: []string{"198.18.1.16/28"}}}}, []int{4}},
		{"reply false", &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{Reply: []bool{false}}}}, []int{0, 1, 2, 3, 4}},
		{"node glob", &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{NodeName: []string{"default/n*"}}}}, []int{0, 1, 2, 3, 4}},
		{"since", &observerpb.GetFlowsRequest{Since: ts(2 * time.Second)}, []int{2, 3, 4}},
		{"since until", &observerpb.GetFlowsRequest{Since: ts(1 * time.Second), Until: ts(3 * time.Second)}, []int{1, 2, 3}},
	}
	all := scenario()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := collect(t, s.client, c.req)
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			for _, i := range c.want {
				want = append(want, Convert(observe.Event{Record: all[i]}, Options{}).GetSummary())
			}
			if !slices.Equal(summaries(got), want) {
				t.Errorf("got  %q\nwant %q", summaries(got), want)
			}
		})
	}
}

// TestHostileObserverFilters: filters l7gate cannot apply are refused
// with InvalidArgument naming them, never ignored.
func TestHostileObserverFilters(t *testing.T) {
	s := startServer(t, scenario())
	for _, req := range []*observerpb.GetFlowsRequest{
		{Whitelist: []*flowpb.FlowFilter{{SourceFqdn: []string{"*.example.com"}}}},
		{Blacklist: []*flowpb.FlowFilter{{TcpFlags: []*flowpb.TCPFlags{{SYN: true}}}}},
		{Whitelist: []*flowpb.FlowFilter{{Experimental: &flowpb.FlowFilter_Experimental{CelExpression: []string{"true"}}}}},
		{Whitelist: []*flowpb.FlowFilter{{HttpPath: []string{"("}}}},
		{Whitelist: []*flowpb.FlowFilter{{SourceLabel: []string{"a in (b"}}}},
		{Whitelist: []*flowpb.FlowFilter{{HttpStatusCode: []string{"20x"}}}},
		{Whitelist: []*flowpb.FlowFilter{{SourceIp: []string{"300.1.1.1"}}}},
		{Whitelist: []*flowpb.FlowFilter{{Protocol: []string{"gopher"}}}},
		{Follow: true, Until: timestamppb.New(t0)},
	} {
		_, err := collect(t, s.client, req)
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%v: %v, want InvalidArgument", req, err)
		}
	}
	_, err := collect(t, s.client, &observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{SourceFqdn: []string{"x"}}}})
	if !strings.Contains(err.Error(), "source_fqdn") {
		t.Errorf("error does not name the field: %v", err)
	}
}

// TestObserverFollow: follow streams the flows kept after the request
// (and, with number, the last N before), filtered.
func TestObserverFollow(t *testing.T) {
	s := startServer(t, scenario()[:2])
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := s.client.GetFlows(ctx, &observerpb.GetFlowsRequest{Follow: true, Number: 1,
		Whitelist: []*flowpb.FlowFilter{{SourceIdentity: []uint32{258}}}})
	if err != nil {
		t.Fatal(err)
	}
	first, err := st.Recv()
	if err != nil || first.GetFlow().GetVerdict() != flowpb.Verdict_REDIRECTED {
		t.Fatalf("history: %v %v", first, err)
	}
	// wait until the follower subscribed, then add more
	for s.p.Stats().Followers == 0 {
		time.Sleep(time.Millisecond)
	}
	for _, r := range scenario()[2:] {
		s.p.Ingest(r)
	}
	s.p.Ingest(scenario()[0]) // xwing: filtered out
	var got []string
	for len(got) < 3 {
		resp, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, resp.GetFlow().GetSummary())
	}
	want := summaries([]*flowpb.Flow{Convert(observe.Event{Record: scenario()[2]}, Options{}),
		Convert(observe.Event{Record: scenario()[3]}, Options{}), Convert(observe.Event{Record: scenario()[4]}, Options{})})
	if !slices.Equal(got, want) {
		t.Errorf("followed %q\nwant %q", got, want)
	}
}

// TestObserverStatusNodesNamespacesHealth: ServerStatus, GetNodes,
// GetNamespaces and the gRPC health service `hubble status` checks.
func TestObserverStatusNodesNamespacesHealth(t *testing.T) {
	s := startServer(t, scenario())
	ctx := context.Background()
	st, err := s.client.ServerStatus(ctx, &observerpb.ServerStatusRequest{})
	if err != nil || st.GetNumFlows() != 5 || st.GetMaxFlows() != 64 || st.GetSeenFlows() != 5 || st.GetNumConnectedNodes().GetValue() != 1 ||
		st.GetUptimeNs() != uint64(30*time.Second) || st.GetFlowsRate() != 5.0/60 {
		t.Errorf("status %v %v", st, err)
	}
	nodes, err := s.client.GetNodes(ctx, &observerpb.GetNodesRequest{})
	if err != nil || len(nodes.GetNodes()) != 1 || nodes.GetNodes()[0].GetName() != "n1" || nodes.GetNodes()[0].GetNumFlows() != 5 {
		t.Errorf("nodes %v %v", nodes, err)
	}
	nss, err := s.client.GetNamespaces(ctx, &observerpb.GetNamespacesRequest{})
	if err != nil || len(nss.GetNamespaces()) != 1 || nss.GetNamespaces()[0].GetNamespace() != "default" {
		t.Errorf("namespaces %v %v", nss, err)
	}
	for _, svc := range []string{"", HealthService} {
		h, err := s.health.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health %q: %v %v", svc, h, err)
		}
	}
}

// TestConvert: the fields the hubble CLI prints and users filter on.
func TestConvert(t *testing.T) {
	recs := scenario()
	drop := Convert(observe.Event{Seq: 1, Record: recs[0]}, Options{Emitter: "l7gate", Version: "v", Instance: 1})
	if drop.GetType() != flowpb.FlowType_L3_L4 || drop.GetEventType().GetType() != MessageTypeDrop ||
		drop.GetEventType().GetSubType() != int32(flowpb.DropReason_POLICY_DENIED) || drop.GetDropReasonDesc() != flowpb.DropReason_POLICY_DENIED ||
		drop.GetVerdict() != flowpb.Verdict_DROPPED || drop.GetIsReply() == nil || drop.GetIsReply().GetValue() ||
		drop.GetTrafficDirection() != flowpb.TrafficDirection_INGRESS || drop.GetL4().GetTCP().GetDestinationPort() != 80 ||
		drop.GetSource().GetPodName() != "xwing-6f7d9c-abcde" || drop.GetSource().GetWorkloads()[0].GetKind() != "Deployment" ||
		drop.GetDestinationService().GetName() != "deathstar" || drop.GetNodeName() != "n1" || drop.GetEmitter().GetName() != "l7gate" ||
		drop.GetUuid() != "00000000-0000-4001-8000-000000000001" {
		t.Errorf("drop flow %v", drop)
	}
	// default-deny names the policy that made the endpoint default-deny
	if d := drop.GetIngressDeniedBy(); len(d) != 1 || d[0].GetName() != "rule1" || d[0].GetNamespace() != "default" ||
		d[0].GetKind() != "CiliumNetworkPolicy" || !slices.Contains(d[0].GetLabels(), LabelDecision+"=default-deny") {
		t.Errorf("denied by %v", d)
	}
	if !strings.Contains(drop.GetSummary(), "default-deny default/rule1") {
		t.Errorf("summary %q", drop.GetSummary())
	}
	redirect := Convert(observe.Event{Record: recs[1]}, Options{})
	if redirect.GetEventType().GetType() != MessageTypePolicyVerdict || redirect.GetPolicyMatchType() != PolicyMatchL3L4 ||
		redirect.GetVerdict() != flowpb.Verdict_REDIRECTED || redirect.GetProxyPort() != 15001 || len(redirect.GetIngressAllowedBy()) != 1 {
		t.Errorf("redirect flow %v", redirect)
	}
	http := Convert(observe.Event{Record: recs[2]}, Options{})
	if http.GetType() != flowpb.FlowType_L7 || http.GetEventType().GetType() != MessageTypeAccessLog || http.GetL7().GetType() != flowpb.L7FlowType_REQUEST ||
		http.GetL7().GetHttp().GetCode() != 200 || http.GetL7().GetHttp().GetUrl() != "http://deathstar.default.svc/v1/request-landing" ||
		http.GetL7().GetLatencyNs() != 1500000 || http.GetVerdict() != flowpb.Verdict_FORWARDED ||
		http.GetSummary() != "HTTP/1.1 POST http://deathstar.default.svc/v1/request-landing => 200 (1.5ms)" {
		t.Errorf("http flow %v", http)
	}
	kafka := Convert(observe.Event{Record: recs[4]}, Options{})
	if kafka.GetL7().GetKafka().GetTopic() != "deathstar-plans" || kafka.GetL7().GetKafka().GetErrorCode() != 29 ||
		kafka.GetTrafficDirection() != flowpb.TrafficDirection_EGRESS || kafka.GetDestination().GetLabels()[0] != "reserved:world" ||
		kafka.GetDropReasonDesc() != flowpb.DropReason_POLICY_DENIED {
		t.Errorf("kafka flow %v", kafka)
	}
}

// TestDropReasonsMapped: every reason the datapath reports has a Cilium
// drop reason (a new bpf.Reason without one fails here).
func TestDropReasonsMapped(t *testing.T) {
	for r := bpf.Reason(0); ; r++ {
		name := r.String()
		if strings.HasPrefix(name, "reason(") {
			break
		}
		if _, ok := dropReasons[name]; !ok {
			t.Errorf("datapath reason %q has no Hubble drop reason", name)
		}
	}
}

// TestObserverFieldMask: a field mask (the hubble CLI sends one by default
// for its compact output) returns only the masked fields, nested paths
// included; a path that is not a Flow field is refused, not ignored.
func TestObserverFieldMask(t *testing.T) {
	s := startServer(t, scenario())
	mask, err := fieldmaskpb.New(&flowpb.Flow{}, "time", "verdict", "source.pod_name", "l7", "Summary", "ingress_denied_by")
	if err != nil {
		t.Fatal(err)
	}
	got, err := collect(t, s.client, &observerpb.GetFlowsRequest{FieldMask: mask,
		Whitelist: []*flowpb.FlowFilter{{HttpMethod: []string{"PUT"}}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("%d flows, want 1 (the filter sees every field, not only the masked ones)", len(got))
	}
	f := got[0]
	full := Convert(observe.Event{Record: scenario()[3]}, Options{})
	if f.GetVerdict() != flowpb.Verdict_DROPPED || f.GetSource().GetPodName() != "tiefighter" || f.GetL7().GetHttp().GetMethod() != "PUT" ||
		f.GetSummary() != full.GetSummary() || !f.GetTime().AsTime().Equal(full.GetTime().AsTime()) || len(f.GetIngressDeniedBy()) != len(full.GetIngressDeniedBy()) {
		t.Errorf("masked fields missing: %v", f)
	}
	if f.GetSource().GetNamespace() != "" || len(f.GetSource().GetLabels()) != 0 || f.GetDestination() != nil || f.GetL4() != nil || f.GetNodeName() != "" {
		t.Errorf("fields outside the mask sent: %v", f)
	}
	_, err = collect(t, s.client, &observerpb.GetFlowsRequest{FieldMask: &fieldmaskpb.FieldMask{Paths: []string{"source.no_such_field"}}})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("invalid field mask: %v, want InvalidArgument", err)
	}
}
