// Package otlp exports flows as OpenTelemetry logs (OTLP, over gRPC or
// HTTP) to a collector: every L7 record by default (access logs), every
// flow on request. It is a pipeline sink with a bounded queue: a slow or
// absent collector drops logs (counted), never the pipeline.
//
// Each log record's resource is the local endpoint whose policy applied
// (k8s.namespace.name, k8s.pod.name, the workload, k8s.node.name), so a
// collector groups a pod's access logs as it groups the pod's own logs;
// the record carries the verdict, the policies that decided, both peers'
// identities, pods and labels, and the protocol fields under OpenTelemetry
// semantic-convention names where one exists.
package otlp

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	neturl "net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/observe"
)

// Protocols.
const (
	ProtocolGRPC = "grpc"
	ProtocolHTTP = "http"
)

// Config configures the exporter.
type Config struct {
	// Endpoint is the collector: host:port for gRPC, a URL for HTTP
	// (http://host:4318/v1/logs; a URL without a path gets /v1/logs).
	Endpoint string
	// Protocol: grpc (default) or http.
	Protocol string
	// Insecure: no TLS (gRPC: plaintext; HTTP: an http:// URL is always
	// plaintext). TLS, when set, configures TLS.
	Insecure bool
	TLS      *tls.Config
	// Headers are sent with every export (e.g. an API key).
	Headers map[string]string
	// AllFlows exports datapath flows (verdicts, drops) too, not only L7
	// records.
	AllFlows bool
	// Resource attributes added to every resource (k8s.cluster.name, …).
	Resource map[string]string
	// Node is k8s.node.name.
	Node    string
	Version string
	// Queue bounds the logs waiting (default 8192); BatchSize logs are
	// sent per request (default 512), at least every FlushInterval
	// (default 1s); Timeout bounds a request (default 10s).
	Queue         int
	BatchSize     int
	FlushInterval time.Duration
	Timeout       time.Duration
	Logger        *slog.Logger
}

// Exporter sends flows to an OTLP logs endpoint.
type Exporter struct {
	cfg       Config
	q         chan observe.Event
	send      func(context.Context, *collogspb.ExportLogsServiceRequest) error
	close     func() error
	delivered atomic.Uint64
	lost      atomic.Uint64
}

// New returns an exporter; Run sends.
func New(cfg Config) (*Exporter, error) {
	if cfg.Endpoint == "" {
		return nil, errors.New("otlp: no endpoint")
	}
	if cfg.Protocol == "" {
		cfg.Protocol = ProtocolGRPC
	}
	if cfg.Queue <= 0 {
		cfg.Queue = 8192
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 512
	}
	if cfg.FlushInterval <= 0 {
		cfg.FlushInterval = time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	e := &Exporter{cfg: cfg, q: make(chan observe.Event, cfg.Queue)}
	switch cfg.Protocol {
	case ProtocolGRPC:
		creds := insecure.NewCredentials()
		if !cfg.Insecure {
			tc := cfg.TLS
			if tc == nil {
				tc = &tls.Config{MinVersion: tls.VersionTLS12}
			}
			creds = credentials.NewTLS(tc)
		}
		target := cfg.Endpoint
		if !strings.Contains(target, "://") {
			target = "passthrough:///" + target
		}
		conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(creds))
		if err != nil {
			return nil, fmt.Errorf("otlp endpoint %s: %w", cfg.Endpoint, err)
		}
		client := collogspb.NewLogsServiceClient(conn)
		md := metadata.New(cfg.Headers)
		e.send = func(ctx context.Context, req *collogspb.ExportLogsServiceRequest) error {
			resp, err := client.Export(metadata.NewOutgoingContext(ctx, md), req)
			if err != nil {
				return err
			}
			return partial(resp)
		}
		e.close = conn.Close
	case ProtocolHTTP:
		raw := cfg.Endpoint
		if !strings.Contains(raw, "://") {
			raw = "https://" + raw
			if cfg.Insecure {
				raw = "http://" + cfg.Endpoint
			}
		}
		u, err := neturl.Parse(raw)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return nil, fmt.Errorf("otlp endpoint %q: want http(s)://host:port[/path]", cfg.Endpoint)
		}
		if u.Path == "" || u.Path == "/" {
			u.Path = "/v1/logs"
		}
		url := u.String()
		client := &http.Client{Timeout: cfg.Timeout, Transport: &http.Transport{TLSClientConfig: cfg.TLS, MaxIdleConnsPerHost: 2}}
		e.send = func(ctx context.Context, req *collogspb.ExportLogsServiceRequest) error {
			return postHTTP(ctx, client, url, cfg.Headers, req)
		}
		e.close = func() error { client.CloseIdleConnections(); return nil }
	default:
		return nil, fmt.Errorf("otlp: protocol %q: want grpc or http", cfg.Protocol)
	}
	return e, nil
}

// partial turns a partial success (some records rejected) into an error.
func partial(resp *collogspb.ExportLogsServiceResponse) error {
	if ps := resp.GetPartialSuccess(); ps != nil && ps.GetRejectedLogRecords() > 0 {
		return &rejectedError{n: ps.GetRejectedLogRecords(), msg: ps.GetErrorMessage()}
	}
	return nil
}

type rejectedError struct {
	n   int64
	msg string
}

func (e *rejectedError) Error() string {
	return fmt.Sprintf("collector rejected %d log records: %s", e.n, e.msg)
}

func postHTTP(ctx context.Context, client *http.Client, url string, headers map[string]string, req *collogspb.ExportLogsServiceRequest) error {
	body, err := proto.Marshal(req)
	if err != nil {
		return err
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	hreq.Header.Set("Content-Type", "application/x-protobuf")
	for k, v := range headers {
		hreq.Header.Set(k, v)
	}
	resp, err := client.Do(hreq)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("collector answered %s: %.200s", resp.Status, data)
	}
	var out collogspb.ExportLogsServiceResponse
	if len(data) > 0 && resp.Header.Get("Content-Type") == "application/x-protobuf" {
		if err := proto.Unmarshal(data, &out); err != nil {
			return fmt.Errorf("collector response: %w", err)
		}
	}
	return partial(&out)
}

// Consume queues an event (L7 records, or every flow with AllFlows), or
// drops and counts it when the queue is full.
func (e *Exporter) Consume(ev observe.Event) {
	if !e.cfg.AllFlows && ev.Record.Observer == flow.ObserverDatapath {
		return
	}
	select {
	case e.q <- ev:
	default:
		e.lost.Add(1)
	}
}

// Stats returns the logs the collector accepted and the logs dropped
// (queue full, or a batch the collector did not take after retries).
func (e *Exporter) Stats() (delivered, lost uint64) { return e.delivered.Load(), e.lost.Load() }

// Run batches and sends until ctx ends. A failed batch is retried with
// backoff (up to 3 tries, while newer logs queue or drop), then dropped
// and counted.
func (e *Exporter) Run(ctx context.Context) error {
	defer e.close()
	tick := time.NewTicker(e.cfg.FlushInterval)
	defer tick.Stop()
	batch := make([]observe.Event, 0, e.cfg.BatchSize)
	warned := false
	flush := func() {
		if len(batch) == 0 {
			return
		}
		req := e.Request(batch)
		var err error
		for try := range 3 {
			sctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
			err = e.send(sctx, req)
			cancel()
			if err == nil || ctx.Err() != nil {
				break
			}
			var rej *rejectedError
			if errors.As(err, &rej) {
				break // retrying will not help
			}
			select {
			case <-ctx.Done():
			case <-time.After(time.Duration(try+1) * 200 * time.Millisecond):
			}
		}
		switch {
		case err == nil:
			e.delivered.Add(uint64(len(batch)))
			if warned {
				e.cfg.Logger.Info("otlp collector reachable again", "endpoint", e.cfg.Endpoint)
				warned = false
			}
		default:
			var rej *rejectedError
			if errors.As(err, &rej) {
				e.lost.Add(uint64(rej.n))
				e.delivered.Add(uint64(len(batch)) - uint64(min(rej.n, int64(len(batch)))))
			} else {
				e.lost.Add(uint64(len(batch)))
			}
			if !warned {
				e.cfg.Logger.Warn("otlp export failed; logs dropped (l7gate_flows_lost_total{stage=\"otlp\"})", "endpoint", e.cfg.Endpoint, "error", err)
				warned = true
			}
		}
		batch = batch[:0]
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-e.q:
			batch = append(batch, ev)
			if len(batch) >= e.cfg.BatchSize {
				flush()
			}
		case <-tick.C:
			flush()
		}
	}
}

// Request renders events as one export request: a ResourceLogs per local
// endpoint, in order of first appearance.
func (e *Exporter) Request(evs []observe.Event) *collogspb.ExportLogsServiceRequest {
	req := &collogspb.ExportLogsServiceRequest{}
	byKey := map[string]*logspb.ScopeLogs{}
	now := uint64(time.Now().UnixNano())
	for _, ev := range evs {
		r := ev.Record
		self := r.DstEndpoint
		if r.Direction == flow.Egress {
			self = r.SrcEndpoint
		}
		key := r.Endpoint
		sl, ok := byKey[key]
		if !ok {
			sl = &logspb.ScopeLogs{Scope: &commonpb.InstrumentationScope{Name: "l7gate", Version: e.cfg.Version}}
			byKey[key] = sl
			req.ResourceLogs = append(req.ResourceLogs, &logspb.ResourceLogs{Resource: e.resource(self, r), ScopeLogs: []*logspb.ScopeLogs{sl}})
		}
		lr := LogRecord(r)
		lr.ObservedTimeUnixNano = now
		sl.LogRecords = append(sl.LogRecords, lr)
	}
	return req
}

func (e *Exporter) resource(self *flow.Endpoint, r *flow.Record) *resourcepb.Resource {
	attrs := []*commonpb.KeyValue{str("service.name", "l7gate"), str("k8s.node.name", firstNonEmpty(r.Node, e.cfg.Node))}
	if self != nil && self.Pod != "" {
		attrs = append(attrs, str("k8s.namespace.name", self.Namespace), str("k8s.pod.name", self.Pod))
		if self.Workload != "" {
			attrs = append(attrs, str("k8s."+strings.ToLower(self.WorkloadKind)+".name", self.Workload))
		}
	} else if r.Endpoint != "" {
		ns, pod, _ := strings.Cut(r.Endpoint, "/")
		attrs = append(attrs, str("k8s.namespace.name", ns), str("k8s.pod.name", pod))
	}
	for _, k := range sortedKeys(e.cfg.Resource) {
		attrs = append(attrs, str(k, e.cfg.Resource[k]))
	}
	return &resourcepb.Resource{Attributes: attrs}
}

// Attribute names l7gate uses beyond OpenTelemetry's semantic conventions.
const (
	AttrVerdict     = "l7gate.verdict"
	AttrDirection   = "l7gate.direction"
	AttrObserver    = "l7gate.observer"
	AttrReason      = "l7gate.reason"
	AttrPolicies    = "l7gate.policies"    // "kind namespace/name path[.l7]" per deciding rule
	AttrPolicyNames = "l7gate.policy.name" // namespace/name per deciding rule
	AttrSrcIdentity = "l7gate.source.identity"
	AttrDstIdentity = "l7gate.destination.identity"
	AttrSrcNS       = "l7gate.source.namespace"
	AttrSrcPod      = "l7gate.source.pod"
	AttrSrcLabels   = "l7gate.source.labels"
	AttrSrcWorkload = "l7gate.source.workload"
	AttrDstNS       = "l7gate.destination.namespace"
	AttrDstPod      = "l7gate.destination.pod"
	AttrDstLabels   = "l7gate.destination.labels"
	AttrDstWorkload = "l7gate.destination.workload"
	AttrLatencyMS   = "l7gate.latency_ms"
)

// LogRecord renders one flow record as an OTLP log record.
func LogRecord(r *flow.Record) *logspb.LogRecord {
	lr := &logspb.LogRecord{TimeUnixNano: uint64(r.Time.UnixNano()), SeverityNumber: logspb.SeverityNumber_SEVERITY_NUMBER_INFO, SeverityText: "INFO"}
	if r.Verdict == flow.VerdictDenied {
		lr.SeverityNumber, lr.SeverityText = logspb.SeverityNumber_SEVERITY_NUMBER_WARN, "WARN"
	}
	lr.Body = &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: body(r)}}
	a := []*commonpb.KeyValue{str(AttrVerdict, string(r.Verdict)), str(AttrDirection, r.Direction.String()), str(AttrObserver, r.Observer)}
	if r.Reason != "" {
		a = append(a, str(AttrReason, r.Reason))
	}
	if len(r.DecidedBy) > 0 {
		var full, names []string
		for _, p := range r.DecidedBy {
			full = append(full, p.String())
			if p.Policy != "" && !slices.Contains(names, p.Policy) {
				names = append(names, p.Policy)
			}
		}
		a = append(a, strs(AttrPolicies, full))
		if len(names) > 0 {
			a = append(a, strs(AttrPolicyNames, names))
		}
	}
	if r.Source.IsValid() {
		a = append(a, str("source.address", r.Source.Addr().String()), num("source.port", int64(r.Source.Port())))
	}
	if r.Destination.IsValid() {
		a = append(a, str("destination.address", r.Destination.Addr().String()), num("destination.port", int64(r.Destination.Port())))
	}
	a = append(a, num(AttrSrcIdentity, int64(r.SrcIdentity)), num(AttrDstIdentity, int64(r.DstIdentity)))
	a = appendPeer(a, r.SrcEndpoint, AttrSrcNS, AttrSrcPod, AttrSrcLabels, AttrSrcWorkload)
	a = appendPeer(a, r.DstEndpoint, AttrDstNS, AttrDstPod, AttrDstLabels, AttrDstWorkload)
	switch r.Protocol {
	case "http":
		a = append(a, str("network.protocol.name", "http"), str("http.request.method", r.Method), str("url.path", r.Path))
		if r.Host != "" {
			a = append(a, str("server.address", r.Host))
		}
		if r.Status != 0 {
			a = append(a, num("http.response.status_code", int64(r.Status)))
		}
	case "kafka":
		a = append(a, str("network.protocol.name", "kafka"), str("messaging.system", "kafka"), str("messaging.operation.name", r.APIKey),
			num("l7gate.kafka.api_version", int64(r.APIVersion)), num("l7gate.kafka.correlation_id", int64(r.CorrelationID)))
		if len(r.Topics) > 0 {
			a = append(a, strs("messaging.destination.name", r.Topics))
		}
		if r.ClientID != "" {
			a = append(a, str("messaging.client.id", r.ClientID))
		}
		if r.ErrorCode != 0 {
			a = append(a, num("l7gate.kafka.error_code", int64(r.ErrorCode)))
		}
	default:
		if r.Protocol != "" {
			a = append(a, str("network.transport", r.Protocol))
		}
	}
	if r.LatencyMS > 0 {
		a = append(a, &commonpb.KeyValue{Key: AttrLatencyMS, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_DoubleValue{DoubleValue: r.LatencyMS}}})
	}
	if r.Error != "" {
		a = append(a, str("error.type", r.Error))
	}
	lr.Attributes = a
	return lr
}

func appendPeer(a []*commonpb.KeyValue, e *flow.Endpoint, ns, pod, labels, workload string) []*commonpb.KeyValue {
	if e == nil {
		return a
	}
	if e.Pod != "" {
		a = append(a, str(ns, e.Namespace), str(pod, e.Pod))
	}
	if len(e.Labels) > 0 {
		a = append(a, strs(labels, e.Labels))
	}
	if e.Workload != "" {
		a = append(a, str(workload, e.WorkloadKind+"/"+e.Workload))
	}
	return a
}

// body is a one-line summary: "GET host/path 200 allowed", "Kafka produce
// topic-a denied", "tcp 10.0.0.1:4000 -> 10.0.0.2:80 denied (default)".
func body(r *flow.Record) string {
	var b strings.Builder
	switch r.Protocol {
	case "http":
		b.WriteString(r.Method + " " + r.Host + r.Path)
		if r.Status != 0 {
			b.WriteString(" " + strconv.Itoa(r.Status))
		}
	case "kafka":
		b.WriteString("Kafka " + r.APIKey)
		if len(r.Topics) > 0 {
			b.WriteString(" " + strings.Join(r.Topics, ","))
		}
	default:
		fmt.Fprintf(&b, "%s %s -> %s", r.Protocol, r.Source, r.Destination)
	}
	b.WriteString(" " + string(r.Verdict))
	if r.Verdict == flow.VerdictDenied && r.Reason != "" && r.Observer == flow.ObserverDatapath {
		b.WriteString(" (" + r.Reason + ")")
	}
	return b.String()
}

func str(k, v string) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
}

func num(k string, v int64) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: v}}}
}

func strs(k string, vs []string) *commonpb.KeyValue {
	arr := &commonpb.ArrayValue{}
	for _, v := range vs {
		arr.Values = append(arr.Values, &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}})
	}
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_ArrayValue{ArrayValue: arr}}}
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
