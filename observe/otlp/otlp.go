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
	"strings"
	"sync"
	"sync/atomic"
	"time"

	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
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
	cfg   Config
	q     chan observe.Event
	enc   *encoder
	send  func(ctx context.Context, body []byte) (reuse bool, err error)
	close func() error
	// delivered: logs the collector accepted; lost: logs dropped (queue
	// full, a batch the collector did not take after retries, or still
	// waiting when the exporter stopped).
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
	e := &Exporter{cfg: cfg, q: make(chan observe.Event, cfg.Queue), enc: newEncoder(cfg)}
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
		md := metadata.New(cfg.Headers)
		e.send = func(ctx context.Context, body []byte) (bool, error) {
			var resp collogspb.ExportLogsServiceResponse
			err := conn.Invoke(metadata.NewOutgoingContext(ctx, md), exportMethod, encoded(body), &resp, grpc.ForceCodecV2(encodedCodec{}))
			if err != nil {
				// The transport may still hold the body of a call that
				// failed: the next batch gets a buffer of its own.
				return false, err
			}
			return true, partial(&resp)
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
		e.send = func(ctx context.Context, body []byte) (bool, error) {
			return postHTTP(ctx, client, url, cfg.Headers, body)
		}
		e.close = func() error { client.CloseIdleConnections(); return nil }
	default:
		return nil, fmt.Errorf("otlp: protocol %q: want grpc or http", cfg.Protocol)
	}
	return e, nil
}

const exportMethod = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"

// encoded is an ExportLogsServiceRequest in wire format (the encoder's).
type encoded []byte

// encodedCodec sends an encoded request as it is and decodes the
// response as protobuf (the content-subtype stays "proto").
type encodedCodec struct{}

func (encodedCodec) Marshal(v any) (mem.BufferSlice, error) {
	b, ok := v.(encoded)
	if !ok {
		return nil, fmt.Errorf("otlp codec: cannot marshal %T", v)
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

func (encodedCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("otlp codec: cannot unmarshal into %T", v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	return proto.Unmarshal(buf.ReadOnlyData(), m)
}

func (encodedCodec) Name() string { return "proto" }

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

// postHTTP posts an encoded request; reuse reports whether the transport
// is done with body (it closes a request's body when it is, possibly
// after Do returned).
func postHTTP(ctx context.Context, client *http.Client, url string, headers map[string]string, body []byte) (reuse bool, err error) {
	rb := &requestBody{Reader: bytes.NewReader(body), closed: make(chan struct{})}
	defer func() {
		select {
		case <-rb.closed:
		default:
			reuse = false
		}
	}()
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, url, rb)
	if err != nil {
		return false, err
	}
	hreq.ContentLength = int64(len(body))
	hreq.Header.Set("Content-Type", "application/x-protobuf")
	for k, v := range headers {
		hreq.Header.Set(k, v)
	}
	resp, err := client.Do(hreq)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return true, fmt.Errorf("collector answered %s: %.200s", resp.Status, data)
	}
	var out collogspb.ExportLogsServiceResponse
	if len(data) > 0 && resp.Header.Get("Content-Type") == "application/x-protobuf" {
		if err := proto.Unmarshal(data, &out); err != nil {
			return true, fmt.Errorf("collector response: %w", err)
		}
	}
	return true, partial(&out)
}

// requestBody tells when the HTTP transport closed it.
type requestBody struct {
	*bytes.Reader
	once   sync.Once
	closed chan struct{}
}

func (b *requestBody) Close() error {
	b.once.Do(func() { close(b.closed) })
	return nil
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
// (queue full, a batch the collector did not take after retries, or
// still waiting when the exporter stopped).
func (e *Exporter) Stats() (delivered, lost uint64) { return e.delivered.Load(), e.lost.Load() }

// Run batches and sends until ctx ends. A batch is sent when it holds
// BatchSize logs or FlushInterval after the last send; it is encoded and
// sent on a goroutine of its own while the next one fills (two batches at
// most: one in flight, one filling; beyond them the queue, then losses).
// A failed batch is retried with backoff (up to 3 tries), then dropped and
// counted. Logs still waiting when ctx ends are counted as lost.
func (e *Exporter) Run(ctx context.Context) error {
	defer e.close()
	full := make(chan []observe.Event)    // to the sender: taken only while it is idle
	free := make(chan []observe.Event, 1) // back from the sender
	free <- make([]observe.Event, 0, e.cfg.BatchSize)
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		e.sendBatches(ctx, full, free)
	}()
	tick := time.NewTicker(e.cfg.FlushInterval)
	defer tick.Stop()
	batch := make([]observe.Event, 0, e.cfg.BatchSize)
	for {
		select {
		case <-ctx.Done():
			close(full)
			<-sent
			e.lost.Add(uint64(len(batch) + len(e.q)))
			return nil
		case ev := <-e.q:
			batch = append(batch, ev)
			if len(batch) < e.cfg.BatchSize {
				continue
			}
			// Full: wait for the sender (the queue takes what comes
			// meanwhile).
			select {
			case full <- batch:
				batch = <-free
			case <-ctx.Done():
			}
		case <-tick.C:
			if len(batch) == 0 {
				continue
			}
			select {
			case full <- batch:
				batch = <-free
			default: // the sender is busy: this batch fills meanwhile
			}
		}
	}
}

// sendBatches encodes and sends the batches it receives, handing each
// batch's slice back (cleared) when done with it.
func (e *Exporter) sendBatches(ctx context.Context, full <-chan []observe.Event, free chan<- []observe.Event) {
	warned := false
	for batch := range full {
		body := e.enc.encode(batch, uint64(time.Now().UnixNano()))
		n := uint64(len(batch))
		clear(batch) // the records are the ring's; do not keep them alive
		free <- batch[:0]
		var err error
		for try := range 3 {
			sctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
			var reuse bool
			reuse, err = e.send(sctx, body)
			cancel()
			if !reuse {
				e.enc.out = nil
			}
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
		var rej *rejectedError
		switch {
		case err == nil:
			e.delivered.Add(n)
			if warned {
				e.cfg.Logger.Info("otlp collector reachable again", "endpoint", e.cfg.Endpoint)
				warned = false
			}
		case errors.As(err, &rej):
			e.lost.Add(uint64(min(rej.n, int64(n))))
			e.delivered.Add(n - uint64(min(rej.n, int64(n))))
		default:
			e.lost.Add(n)
		}
		if err != nil && !warned {
			e.cfg.Logger.Warn("otlp export failed; logs dropped (l7gate_flows_lost_total{stage=\"otlp\"})", "endpoint", e.cfg.Endpoint, "error", err)
			warned = true
		}
	}
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
