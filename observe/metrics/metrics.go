// Package metrics is what the agent exposes to Prometheus: flow metrics
// under Hubble's names and labels (Flows, a pipeline sink), the flow
// pipeline's own counters, and l7gate's control-plane metrics (Agent):
// policy compute and implement latency, xDS pushes and their outcome per
// consumer, datapath map fill, endpoints by state.
//
// Hubble's metrics, where the meaning is the same (Cilium's
// pkg/hubble/metrics): hubble_flows_processed_total{protocol,type,subtype,
// verdict}, hubble_drop_total{reason,protocol},
// hubble_http_requests_total{method,protocol,status,reporter},
// hubble_http_request_duration_seconds{method,reporter},
// hubble_policy_verdicts_total{direction,match,action}. l7gate's own are
// prefixed l7gate_.
package metrics

import (
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/observe"
	"github.com/l7gate/l7gate/observe/hubble"
)

// Flows counts flows under Hubble's metric names. It is a pipeline sink:
// Consume runs on the pipeline's goroutine and only increments.
type Flows struct {
	processed *prometheus.CounterVec
	drops     *prometheus.CounterVec
	httpReqs  *prometheus.CounterVec
	httpDur   *prometheus.HistogramVec
	verdicts  *prometheus.CounterVec
	kafka     *prometheus.CounterVec
}

// NewFlows registers the flow metrics with reg.
func NewFlows(reg prometheus.Registerer) *Flows {
	f := &Flows{
		processed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hubble_flows_processed_total",
			Help: "Total number of flows processed"}, []string{"protocol", "type", "subtype", "verdict"}),
		drops: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hubble_drop_total",
			Help: "Number of drops"}, []string{"reason", "protocol"}),
		httpReqs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hubble_http_requests_total",
			Help: "Count of HTTP requests"}, []string{"method", "protocol", "status", "reporter"}),
		httpDur: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "hubble_http_request_duration_seconds",
			Help:    "Quantiles of HTTP request duration in seconds",
			Buckets: []float64{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}}, []string{"method", "reporter"}),
		verdicts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "hubble_policy_verdicts_total",
			Help: "Total number of Cilium network policy verdicts"}, []string{"direction", "match", "action"}),
		kafka: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "l7gate_kafka_requests_total",
			Help: "Kafka requests by API, verdict, error code and reporter (client: egress, server: ingress)"},
			[]string{"api_key", "verdict", "error_code", "reporter"}),
	}
	reg.MustRegister(f.processed, f.drops, f.httpReqs, f.httpDur, f.verdicts, f.kafka)
	return f
}

// Consume counts one flow.
func (f *Flows) Consume(ev observe.Event) {
	r := ev.Record
	verdict := hubbleVerdict(r.Verdict)
	l7 := hubble.IsL7(r)
	protocol, typ, subtype := l4Protocol(r.Protocol), "PolicyVerdict", ""
	switch {
	case l7:
		typ = "L7"
		protocol, subtype = "HTTP", "HTTP"
		if r.Protocol == "kafka" {
			protocol, subtype = "Kafka", "Kafka"
		}
	case r.Verdict == flow.VerdictDenied:
		typ = "Drop"
	}
	f.processed.WithLabelValues(protocol, typ, subtype, verdict).Inc()
	if r.Verdict == flow.VerdictDenied {
		f.drops.WithLabelValues(hubble.DropReason(r).String(), protocol).Inc()
	}
	direction := r.Direction.String()
	// hubble_policy_verdicts_total leaves out the host's own connections
	// (the host reaches local endpoints whatever the policy).
	if l7 {
		f.verdicts.WithLabelValues(direction, "l7/"+r.Protocol, strings.ToLower(verdict)).Inc()
	} else if r.SrcIdentity != flow.IdentityHost {
		f.verdicts.WithLabelValues(direction, matchType(r), strings.ToLower(verdict)).Inc()
	}
	if !l7 {
		return
	}
	reporter := "server"
	if r.Direction == flow.Egress {
		reporter = "client"
	}
	switch r.Protocol {
	case "http":
		status := "0"
		if r.Status > 0 {
			status = strconv.Itoa(r.Status)
		}
		f.httpReqs.WithLabelValues(r.Method, "HTTP/1.1", status, reporter).Inc()
		if r.Status > 0 {
			f.httpDur.WithLabelValues(r.Method, reporter).Observe(r.LatencyMS / 1000)
		}
	case "kafka":
		f.kafka.WithLabelValues(r.APIKey, strings.ToLower(verdict), strconv.Itoa(int(r.ErrorCode)), reporter).Inc()
	}
}

func hubbleVerdict(v flow.Verdict) string {
	switch v {
	case flow.VerdictAllowed:
		return "FORWARDED"
	case flow.VerdictDenied:
		return "DROPPED"
	case flow.VerdictRedirected:
		return "REDIRECTED"
	case flow.VerdictAudit:
		return "AUDIT"
	}
	return "VERDICT_UNKNOWN"
}

// l4Protocol is Hubble's protocol label of an L3/L4 flow.
func l4Protocol(p string) string {
	switch p {
	case "tcp", "udp", "sctp":
		return strings.ToUpper(p)
	case "icmp":
		return "ICMPv4"
	}
	return "Unknown L4"
}

// matchType is Hubble's match label of a datapath verdict: l3-l4 when a
// rule decided, none for default allow or default deny.
func matchType(r *flow.Record) string {
	for _, p := range r.DecidedBy {
		if p.Kind != flow.KindDefaultDeny {
			return "l3-l4"
		}
	}
	return "none"
}

// PipelineStats reads a pipeline's counters (observe.Pipeline.Stats).
type PipelineStats func() observe.Stats

// SinkLosses names a sink's counters: how many flows it delivered and how
// many it dropped.
type SinkLosses struct {
	Sink  string
	Stats func() (delivered, lost uint64)
}

// pipelineCollector exposes the flow pipeline's counters at scrape time.
type pipelineCollector struct {
	stats PipelineStats
	sinks []SinkLosses
}

var (
	descFlowsReceived = prometheus.NewDesc("l7gate_flows_received_total",
		"Flow records taken into the pipeline (datapath events, proxy and Envoy access records).", nil, nil)
	descFlowsLost = prometheus.NewDesc("l7gate_flows_lost_total",
		"Flow records dropped: at the pipeline's queue (queue), by slow Observer API followers (follower), or by a sink (otlp, export, ...).",
		[]string{"stage"}, nil)
	descFlowsDelivered = prometheus.NewDesc("l7gate_flows_delivered_total",
		"Flow records a sink delivered (written to the export file, accepted by the OTLP collector, ...).", []string{"sink"}, nil)
	descFlowsKept = prometheus.NewDesc("l7gate_flow_buffer_flows",
		"Flows the ring buffer holds for the Observer API.", nil, nil)
	descFlowsCapacity = prometheus.NewDesc("l7gate_flow_buffer_capacity",
		"Flows the ring buffer can hold.", nil, nil)
)

// NewPipelineCollector exposes a pipeline's counters and its sinks'
// losses.
func NewPipelineCollector(stats PipelineStats, sinks ...SinkLosses) prometheus.Collector {
	return pipelineCollector{stats: stats, sinks: sinks}
}

func (c pipelineCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descFlowsReceived, descFlowsLost, descFlowsDelivered, descFlowsKept, descFlowsCapacity} {
		ch <- d
	}
}

func (c pipelineCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.stats()
	ch <- prometheus.MustNewConstMetric(descFlowsReceived, prometheus.CounterValue, float64(st.Received))
	ch <- prometheus.MustNewConstMetric(descFlowsLost, prometheus.CounterValue, float64(st.LostQueue), "queue")
	ch <- prometheus.MustNewConstMetric(descFlowsLost, prometheus.CounterValue, float64(st.LostFollowers), "follower")
	for _, s := range c.sinks {
		delivered, lost := s.Stats()
		ch <- prometheus.MustNewConstMetric(descFlowsLost, prometheus.CounterValue, float64(lost), s.Sink)
		ch <- prometheus.MustNewConstMetric(descFlowsDelivered, prometheus.CounterValue, float64(delivered), s.Sink)
	}
	ch <- prometheus.MustNewConstMetric(descFlowsKept, prometheus.GaugeValue, float64(st.Kept))
	ch <- prometheus.MustNewConstMetric(descFlowsCapacity, prometheus.GaugeValue, float64(st.Capacity))
}

// Agent holds l7gate's control-plane metrics. A nil *Agent records
// nothing, so the agent calls it unconditionally.
type Agent struct {
	reg             prometheus.Registerer
	compute         *prometheus.HistogramVec
	implement       prometheus.Histogram
	failures        prometheus.Counter
	revision        *prometheus.GaugeVec
	pushes, results *prometheus.CounterVec
	mapEntries      *prometheus.GaugeVec
	mapCapacity     *prometheus.GaugeVec
	syncErrors      prometheus.Counter
	endpoints       *prometheus.GaugeVec
}

var latencyBuckets = []float64{0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

// NewAgent registers the agent's metrics with reg.
func NewAgent(reg prometheus.Registerer) *Agent {
	a := &Agent{
		reg: reg,
		compute: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "l7gate_policy_compute_duration_seconds",
			Help: "Time to compute the policy of a source revision (identities, selectors, every endpoint's policy).", Buckets: latencyBuckets},
			[]string{"outcome"}),
		implement: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "l7gate_policy_implement_duration_seconds",
			Help: "Time to implement a revision: datapath sync, xDS push and ACKs, redirects.", Buckets: latencyBuckets}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{Name: "l7gate_policy_implement_failures_total",
			Help: "Attempts that failed for the whole node (the previous state stayed in force; retried)."}),
		revision: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "l7gate_policy_revision",
			Help: "The newest source revision (state=received) and the last one implemented (state=implemented)."}, []string{"state"}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "l7gate_xds_pushes_total",
			Help: "xDS updates pushed, per consumer (node id)."}, []string{"consumer"}),
		results: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "l7gate_xds_push_results_total",
			Help: "Outcome of xDS pushes per consumer: ack, nack or timeout."}, []string{"consumer", "result"}),
		mapEntries: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "l7gate_datapath_map_entries",
			Help: "Entries in the datapath's maps after the last sync."}, []string{"map"}),
		mapCapacity: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "l7gate_datapath_map_capacity",
			Help: "Capacity of the datapath's maps."}, []string{"map"}),
		syncErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "l7gate_datapath_sync_errors_total",
			Help: "Datapath syncs that failed for the node or for an endpoint direction (which then fails closed)."}),
		endpoints: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "l7gate_endpoints",
			Help: "Local endpoints by state: ready (policy in force) or failing (fail closed, see l7gate status)."}, []string{"state"}),
	}
	reg.MustRegister(a.compute, a.implement, a.failures, a.revision, a.pushes, a.results, a.mapEntries, a.mapCapacity, a.syncErrors, a.endpoints)
	return a
}

// WatchPipeline exposes the flow pipeline's counters and its sinks'
// losses (l7gate_flows_*).
func (a *Agent) WatchPipeline(stats PipelineStats, sinks ...SinkLosses) {
	if a == nil {
		return
	}
	a.reg.MustRegister(NewPipelineCollector(stats, sinks...))
}

// Computed records a policy computation.
func (a *Agent) Computed(d time.Duration, err error) {
	if a == nil {
		return
	}
	a.compute.WithLabelValues(outcome(err)).Observe(d.Seconds())
}

// Received records a new source revision.
func (a *Agent) Received(rev uint64) {
	if a == nil {
		return
	}
	a.revision.WithLabelValues("received").Set(float64(rev))
}

// Implemented records an implemented revision: its duration, the
// endpoints ready and failing, the datapath's map fill and how many
// endpoint directions the datapath rejected.
func (a *Agent) Implemented(rev uint64, d time.Duration, ready, failing int, entries map[string]int, syncErrors int) {
	if a == nil {
		return
	}
	a.implement.Observe(d.Seconds())
	a.revision.WithLabelValues("implemented").Set(float64(rev))
	a.endpoints.WithLabelValues("ready").Set(float64(ready))
	a.endpoints.WithLabelValues("failing").Set(float64(failing))
	for m, n := range entries {
		a.mapEntries.WithLabelValues(m).Set(float64(n))
	}
	a.syncErrors.Add(float64(syncErrors))
}

// Failed counts an attempt that failed node-wide.
func (a *Agent) Failed() {
	if a == nil {
		return
	}
	a.failures.Inc()
}

// MapCapacity records a datapath map's size.
func (a *Agent) MapCapacity(m string, n int) {
	if a == nil {
		return
	}
	a.mapCapacity.WithLabelValues(m).Set(float64(n))
}

// SyncError counts a failed datapath sync.
func (a *Agent) SyncError() {
	if a == nil {
		return
	}
	a.syncErrors.Inc()
}

// Pushed records an xDS push to consumer and its result: "ack", "nack"
// or "timeout".
func (a *Agent) Pushed(consumer, result string) {
	if a == nil {
		return
	}
	a.pushes.WithLabelValues(consumer).Inc()
	a.results.WithLabelValues(consumer, result).Inc()
}

func outcome(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}

// FuncCounter is a counter read at scrape time (e.g. the datapath's event
// counters, the Go proxy's forwarder).
func FuncCounter(name, help string, labelName, labelValue string, f func() float64) prometheus.Collector {
	return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: prometheus.Labels{labelName: labelValue}}, f)
}
