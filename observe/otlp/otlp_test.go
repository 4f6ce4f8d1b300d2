package otlp

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/observe"
)

// logsServer is an in-process OTLP LogsService (gRPC) and OTLP/HTTP
// receiver on loopback, collecting what it receives.
type logsServer struct {
	collogspb.UnimplementedLogsServiceServer
	mu      sync.Mutex
	reqs    []*collogspb.ExportLogsServiceRequest
	headers []string
	reject  int64 // reject this many records per request (partial success)
}

func (s *logsServer) Export(ctx context.Context, req *collogspb.ExportLogsServiceRequest) (*collogspb.ExportLogsServiceResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reqs = append(s.reqs, req)
	s.headers = append(s.headers, md.Get("x-api-key")...)
	if s.reject > 0 {
		return &collogspb.ExportLogsServiceResponse{PartialSuccess: &collogspb.ExportLogsPartialSuccess{RejectedLogRecords: s.reject, ErrorMessage: "no"}}, nil
	}
	return &collogspb.ExportLogsServiceResponse{}, nil
}

func (s *logsServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v1/logs" || r.Header.Get("Content-Type") != "application/x-protobuf" {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	data, _ := io.ReadAll(r.Body)
	var req collogspb.ExportLogsServiceRequest
	if err := proto.Unmarshal(data, &req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	s.reqs = append(s.reqs, &req)
	s.headers = append(s.headers, r.Header.Get("X-Api-Key"))
	s.mu.Unlock()
	out, _ := proto.Marshal(&collogspb.ExportLogsServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	w.Write(out)
}

func (s *logsServer) records() []*logspb.ResourceLogs {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*logspb.ResourceLogs
	for _, r := range s.reqs {
		out = append(out, r.GetResourceLogs()...)
	}
	return out
}

func startGRPC(t *testing.T, s *logsServer) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	collogspb.RegisterLogsServiceServer(gs, s)
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	return ln.Addr().String()
}

func startHTTP(t *testing.T, s *logsServer) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: s}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String()
}

var t0 = time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)

func records() []*flow.Record {
	deathstar := &flow.Endpoint{Namespace: "default", Pod: "deathstar-0", Labels: []string{"k8s:app=deathstar", "k8s:org=empire"},
		WorkloadKind: "StatefulSet", Workload: "deathstar"}
	tie := &flow.Endpoint{Namespace: "default", Pod: "tiefighter", Labels: []string{"k8s:class=tiefighter", "k8s:org=empire"}}
	ap := netip.MustParseAddrPort
	return []*flow.Record{
		{Time: t0, Observer: flow.ObserverProxy, Protocol: "http", Source: ap("198.18.1.12:40001"), Destination: ap("198.18.1.10:80"),
			SrcIdentity: 258, DstIdentity: 256, Verdict: flow.VerdictDenied, Method: "PUT", Path: "/v1/exhaust-port", Host: "deathstar", Status: 403,
			DecidedBy: []flow.Provenance{{Policy: "default/rule1", PolicyKind: flow.KindCNP, Kind: flow.KindDefaultDeny, Path: "specs[0].ingress[0]"}},
			Node:      "n1", SrcEndpoint: tie, DstEndpoint: deathstar, Endpoint: "default/deathstar-0"},
		{Time: t0, Observer: flow.ObserverDatapath, Protocol: "tcp", Verdict: flow.VerdictDenied, Reason: "default", Node: "n1", Endpoint: "default/deathstar-0"},
		{Time: t0.Add(time.Second), Observer: flow.ObserverEnvoy, Protocol: "http", Direction: flow.Egress, Source: ap("198.18.1.12:40002"),
			Destination: ap("198.18.1.10:80"), SrcIdentity: 258, DstIdentity: 256, Verdict: flow.VerdictAllowed, Method: "POST", Path: "/v1/request-landing",
			Status: 200, LatencyMS: 2.5, DecidedBy: []flow.Provenance{{Policy: "default/rule1", PolicyKind: flow.KindCNP, Kind: flow.KindAllow, Path: "specs[0].egress[0]", L7: "http[0]"}},
			Node: "n1", SrcEndpoint: tie, DstEndpoint: deathstar, Endpoint: "default/tiefighter"},
		{Time: t0.Add(2 * time.Second), Observer: flow.ObserverProxy, Protocol: "kafka", Direction: flow.Egress, Verdict: flow.VerdictDenied,
			APIKey: "produce", APIVersion: 9, Topics: []string{"deathstar-plans"}, ErrorCode: 29, ClientID: "kcat", Node: "n1", SrcEndpoint: tie,
			Endpoint: "default/tiefighter"},
	}
}

func attr(kvs []*commonpb.KeyValue, key string) *commonpb.AnyValue {
	for _, kv := range kvs {
		if kv.GetKey() == key {
			return kv.GetValue()
		}
	}
	return nil
}

func export(t *testing.T, cfg Config, recs []*flow.Record) *Exporter {
	t.Helper()
	e, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	for i, r := range recs {
		e.Consume(observe.Event{Seq: uint64(i + 1), Record: r})
	}
	return e
}

func waitDelivered(t *testing.T, e *Exporter, n uint64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		d, lost := e.Stats()
		if d+lost >= n {
			if lost != 0 {
				t.Fatalf("delivered %d lost %d", d, lost)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("delivered %d of %d", d, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// checkExport asserts what a receiver got for records(): L7 records only,
// grouped by the endpoint whose policy applied, with k8s resource
// attributes, verdict, policies, identities and protocol fields.
func checkExport(t *testing.T, rls []*logspb.ResourceLogs) {
	t.Helper()
	if len(rls) != 2 {
		t.Fatalf("%d resources, want 2 (deathstar-0, tiefighter): %v", len(rls), rls)
	}
	res := rls[0].GetResource().GetAttributes()
	if attr(res, "k8s.pod.name").GetStringValue() != "deathstar-0" || attr(res, "k8s.namespace.name").GetStringValue() != "default" ||
		attr(res, "k8s.statefulset.name").GetStringValue() != "deathstar" || attr(res, "k8s.node.name").GetStringValue() != "n1" ||
		attr(res, "service.name").GetStringValue() != "l7gate" || attr(res, "k8s.cluster.name").GetStringValue() != "c1" {
		t.Errorf("resource %v", res)
	}
	denied := rls[0].GetScopeLogs()[0].GetLogRecords()
	if len(denied) != 1 {
		t.Fatalf("deathstar-0 logs %v (the datapath drop must not be exported)", denied)
	}
	a := denied[0].GetAttributes()
	if attr(a, AttrVerdict).GetStringValue() != "denied" || attr(a, "http.request.method").GetStringValue() != "PUT" ||
		attr(a, "url.path").GetStringValue() != "/v1/exhaust-port" || attr(a, "http.response.status_code").GetIntValue() != 403 ||
		attr(a, AttrSrcIdentity).GetIntValue() != 258 || attr(a, AttrDstIdentity).GetIntValue() != 256 ||
		attr(a, AttrPolicyNames).GetArrayValue().GetValues()[0].GetStringValue() != "default/rule1" ||
		attr(a, AttrSrcPod).GetStringValue() != "tiefighter" || attr(a, "source.address").GetStringValue() != "198.18.1.12" ||
		denied[0].GetSeverityNumber() != logspb.SeverityNumber_SEVERITY_NUMBER_WARN || denied[0].GetTimeUnixNano() != uint64(t0.UnixNano()) ||
		denied[0].GetBody().GetStringValue() != "PUT deathstar/v1/exhaust-port 403 denied" {
		t.Errorf("denied record %v", denied[0])
	}
	if res := rls[1].GetResource().GetAttributes(); attr(res, "k8s.pod.name").GetStringValue() != "tiefighter" {
		t.Errorf("second resource %v", res)
	}
	egress := rls[1].GetScopeLogs()[0].GetLogRecords()
	if len(egress) != 2 || attr(egress[0].GetAttributes(), AttrObserver).GetStringValue() != "envoy" ||
		attr(egress[0].GetAttributes(), AttrLatencyMS).GetDoubleValue() != 2.5 ||
		attr(egress[1].GetAttributes(), "messaging.destination.name").GetArrayValue().GetValues()[0].GetStringValue() != "deathstar-plans" ||
		attr(egress[1].GetAttributes(), "l7gate.kafka.error_code").GetIntValue() != 29 {
		t.Errorf("tiefighter records %v", egress)
	}
}

// TestExportGRPC: an in-process LogsService gets the L7 records over OTLP
// gRPC, with the configured headers.
func TestExportGRPC(t *testing.T) {
	s := &logsServer{}
	addr := startGRPC(t, s)
	e := export(t, Config{Endpoint: addr, Insecure: true, Headers: map[string]string{"x-api-key": "k"}, Resource: map[string]string{"k8s.cluster.name": "c1"},
		FlushInterval: 20 * time.Millisecond}, records())
	waitDelivered(t, e, 3)
	var rls []*logspb.ResourceLogs
	for _, rl := range s.records() { // merge batches by pod, in order
		i := slices.IndexFunc(rls, func(x *logspb.ResourceLogs) bool {
			return attr(x.GetResource().GetAttributes(), "k8s.pod.name").GetStringValue() == attr(rl.GetResource().GetAttributes(), "k8s.pod.name").GetStringValue()
		})
		if i < 0 {
			rls = append(rls, rl)
			continue
		}
		rls[i].ScopeLogs[0].LogRecords = append(rls[i].ScopeLogs[0].LogRecords, rl.GetScopeLogs()[0].GetLogRecords()...)
	}
	checkExport(t, rls)
	if !slices.Contains(s.headers, "k") {
		t.Errorf("headers %v", s.headers)
	}
}

// TestExportHTTP: the same over OTLP/HTTP (protobuf), path /v1/logs added.
func TestExportHTTP(t *testing.T) {
	s := &logsServer{}
	url := startHTTP(t, s)
	e := export(t, Config{Endpoint: url, Protocol: ProtocolHTTP, Headers: map[string]string{"X-Api-Key": "k"},
		Resource: map[string]string{"k8s.cluster.name": "c1"}, BatchSize: 3, FlushInterval: time.Hour}, records())
	waitDelivered(t, e, 3) // a full batch goes without the timer
	rls := s.records()
	checkExport(t, rls)
	if s.headers[0] != "k" {
		t.Errorf("headers %v", s.headers)
	}
}

// TestExportCountsLosses: logs the collector does not take (unreachable,
// or rejected in a partial success) and logs beyond a full queue are
// counted lost, and the pipeline never blocks.
func TestExportCountsLosses(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := ln.Addr().String()
	ln.Close()
	e, err := New(Config{Endpoint: dead, Insecure: true, Queue: 4, BatchSize: 2, FlushInterval: 10 * time.Millisecond, Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range append(records(), records()...) { // 6 L7 records, queue 4
		e.Consume(observe.Event{Record: r})
	}
	if _, lost := e.Stats(); lost != 2 {
		t.Errorf("queue full: lost %d, want 2", lost)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, lost := e.Stats(); lost == 6 {
			break
		}
		if time.Now().After(deadline) {
			_, lost := e.Stats()
			t.Fatalf("unreachable collector: lost %d, want 6", lost)
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	<-done

	s := &logsServer{reject: 1}
	e2 := export(t, Config{Endpoint: startGRPC(t, s), Insecure: true, FlushInterval: 10 * time.Millisecond}, records()[:1])
	deadline = time.Now().Add(10 * time.Second)
	for {
		if d, lost := e2.Stats(); lost == 1 && d == 0 {
			break
		}
		if time.Now().After(deadline) {
			d, lost := e2.Stats()
			t.Fatalf("partial success: delivered %d lost %d", d, lost)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// blockingLogs is an OTLP LogsService whose Export waits for release.
type blockingLogs struct {
	collogspb.UnimplementedLogsServiceServer
	entered chan struct{}
	release chan struct{}
}

func (s *blockingLogs) Export(ctx context.Context, req *collogspb.ExportLogsServiceRequest) (*collogspb.ExportLogsServiceResponse, error) {
	s.entered <- struct{}{}
	select {
	case <-s.release:
	case <-ctx.Done():
	}
	return &collogspb.ExportLogsServiceResponse{}, nil
}

// TestExportBoundedWhileSending: while a batch is in flight the next one
// fills from the queue, and no more: one batch sending, one batch
// waiting, a full queue, then every further log is counted as lost; the
// logs still waiting when the exporter stops are counted as lost too.
// delivered+lost always equals what was consumed.
func TestExportBoundedWhileSending(t *testing.T) {
	s := &blockingLogs{entered: make(chan struct{}, 8), release: make(chan struct{})}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	collogspb.RegisterLogsServiceServer(gs, s)
	go gs.Serve(ln)
	defer gs.Stop()
	e, err := New(Config{Endpoint: ln.Addr().String(), Insecure: true, Queue: 4, BatchSize: 2, FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	r := records()[0]
	consume := func(n int) {
		for range n {
			e.Consume(observe.Event{Record: r})
		}
	}
	consume(2) // a full batch: sent
	<-s.entered
	consume(2) // the next batch fills while the first is in flight
	for deadline := time.Now().Add(5 * time.Second); len(e.q) > 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the exporter does not take from the queue while a batch is in flight")
		}
	}
	consume(4 + 3) // the queue's 4, and 3 beyond
	if d, lost := e.Stats(); d != 0 || lost != 3 {
		t.Fatalf("one batch in flight, one waiting, a full queue: delivered %d lost %d, want 0 and 3", d, lost)
	}
	close(s.release)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if d, _ := e.Stats(); d == 8 {
			break
		}
		if time.Now().After(deadline) {
			d, lost := e.Stats()
			t.Fatalf("released: delivered %d lost %d, want 8 delivered", d, lost)
		}
	}
	consume(1) // queued or in a batch waiting for the flush interval when the exporter stops: lost
	cancel()
	<-done
	if d, lost := e.Stats(); d != 8 || lost != 4 {
		t.Errorf("stopped: delivered %d lost %d, want 8 and 4 (every log consumed is counted)", d, lost)
	}
}

// TestExportAllFlows: with AllFlows the datapath's records go too.
func TestExportAllFlows(t *testing.T) {
	s := &logsServer{}
	e := export(t, Config{Endpoint: startGRPC(t, s), Insecure: true, AllFlows: true, FlushInterval: 10 * time.Millisecond}, records())
	waitDelivered(t, e, 4)
	n := 0
	for _, rl := range s.records() {
		for _, lr := range rl.GetScopeLogs()[0].GetLogRecords() {
			n++
			if attr(lr.GetAttributes(), AttrObserver).GetStringValue() == "datapath" &&
				!strings.HasSuffix(lr.GetBody().GetStringValue(), " denied (default)") {
				t.Errorf("datapath body %q", lr.GetBody().GetStringValue())
			}
		}
	}
	if n != 4 {
		t.Errorf("%d records, want 4", n)
	}
}

// TestEncoderMatchesReference: the encoder's wire bytes decode to the
// request the generated messages render (referenceRequest) for every
// kind of record (proxy, datapath, Envoy, Kafka, IPv6, a record without
// addresses, one without an endpoint), grouped as the reference groups.
func TestEncoderMatchesReference(t *testing.T) {
	recs := records()
	ap := netip.MustParseAddrPort
	recs = append(recs,
		&flow.Record{Time: t0, Observer: flow.ObserverProxy, Protocol: "http", Source: ap("[2001:db8::1]:40000"), Destination: ap("[2001:db8::2]:8080"),
			Verdict: flow.VerdictAllowed, Method: "GET", Path: "/", Status: 200, LatencyMS: 0.125, Error: "upstream reset", Endpoint: "other/pod-1"},
		&flow.Record{Observer: flow.ObserverDatapath, Protocol: "", Verdict: flow.VerdictDenied, Reason: "unsupported"},
		&flow.Record{Time: t0, Observer: flow.ObserverProxy, Protocol: "kafka", APIKey: "fetch", Topics: []string{"a", "b"}, CorrelationID: -1,
			DecidedBy: []flow.Provenance{{Kind: flow.KindDefaultDeny}, {Policy: "default/r", PolicyKind: flow.KindCNP, Kind: flow.KindAllow}, {Policy: "default/r", PolicyKind: flow.KindCNP, Kind: flow.KindAllow, L7: "kafka[1]"}},
			Endpoint:  "default/deathstar-0"},
	)
	var evs []observe.Event
	for i, r := range recs {
		evs = append(evs, observe.Event{Seq: uint64(i + 1), Record: r})
	}
	for _, cfg := range []Config{{Node: "n2"}, {Version: "v1.2.3", Resource: map[string]string{"k8s.cluster.name": "c1", "a": "b"}}} {
		enc := newEncoder(cfg)
		for range 2 { // the second run reuses the buffers
			var got collogspb.ExportLogsServiceRequest
			if err := proto.Unmarshal(enc.encode(evs, 42), &got); err != nil {
				t.Fatal(err)
			}
			if want := referenceRequest(cfg, evs, 42); !proto.Equal(&got, want) {
				t.Fatalf("encoder (config %+v):\n%v\nreference:\n%v", cfg, &got, want)
			}
		}
	}
}

// BenchmarkEncode: encoding a batch of 512 access records.
func BenchmarkEncode(b *testing.B) {
	enc := newEncoder(Config{Node: "n1"})
	var evs []observe.Event
	for i := range 512 {
		evs = append(evs, observe.Event{Seq: uint64(i), Record: records()[i%4]})
	}
	b.ReportAllocs()
	for b.Loop() {
		enc.encode(evs, 1)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/512, "ns/record")
}

// BenchmarkReferenceRequest: what encoding a batch of 512 cost before
// the encoder (the generated messages, marshalled).
func BenchmarkReferenceRequest(b *testing.B) {
	var evs []observe.Event
	for i := range 512 {
		evs = append(evs, observe.Event{Seq: uint64(i), Record: records()[i%4]})
	}
	b.ReportAllocs()
	for b.Loop() {
		proto.Marshal(referenceRequest(Config{Node: "n1"}, evs, 1))
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/512, "ns/record")
}

// BenchmarkExportGRPC: records through the exporter to an in-process OTLP
// gRPC LogsService on loopback (batching, rendering, marshalling, the
// send, and the receiver's decoding, all in this process): wall time and
// the process's CPU time (user+system, both sides) per record.
func BenchmarkExportGRPC(b *testing.B) {
	s := &logsServer{}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	gs := grpc.NewServer()
	collogspb.RegisterLogsServiceServer(gs, s)
	go gs.Serve(ln)
	defer gs.Stop()
	e, err := New(Config{Endpoint: ln.Addr().String(), Insecure: true, Queue: 1 << 16, FlushInterval: 10 * time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	defer func() { cancel(); <-done }()
	recs := records()
	cpu := func() time.Duration {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpu()
	for i := 0; i < b.N; i++ {
		r := recs[0]
		if i%2 == 1 {
			r = recs[2]
		}
		for {
			d, lost := e.Stats()
			if uint64(i)-d-lost < 1<<15 { // keep the queue from overflowing
				break
			}
			time.Sleep(100 * time.Microsecond)
		}
		e.Consume(observe.Event{Seq: uint64(i), Record: r})
	}
	for {
		d, lost := e.Stats()
		if d+lost >= uint64(b.N) {
			if lost > 0 {
				b.Fatalf("lost %d of %d", lost, b.N)
			}
			break
		}
		time.Sleep(time.Millisecond)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/record")
	b.ReportMetric(float64((cpu()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/record")
	s.mu.Lock()
	s.reqs = nil
	s.mu.Unlock()
}
