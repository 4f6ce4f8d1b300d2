package proxy

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metric descriptions of the Go proxy (names kept from its first
// /stats/prometheus, so dashboards keep working).
var (
	descConns = prometheus.NewDesc("l7gate_proxy_connections_total",
		"Client connections accepted.", nil, nil)
	descRejected = prometheus.NewDesc("l7gate_proxy_connections_rejected_total",
		"Client connections closed at accept: limit (all connections), per_source (one source identity), not_steered (not redirected by the datapath, e.g. a direct connection to a proxy port).",
		[]string{"reason"}, nil)
	descUpstream = prometheus.NewDesc("l7gate_proxy_upstream_connections_total",
		"Upstream connections opened.", nil, nil)
	descPanics = prometheus.NewDesc("l7gate_proxy_connection_panics_total",
		"Client connections closed because handling them panicked (the proxy kept running).", nil, nil)
	descActive = prometheus.NewDesc("l7gate_proxy_active_connections",
		"Client connections open now.", nil, nil)
	descParked = prometheus.NewDesc("l7gate_proxy_parked_connections",
		"Idle HTTP/1 and HTTP/2 client connections parked now (waiting in the poller with no goroutine; counted in active_connections too).", nil, nil)
	descRequests = prometheus.NewDesc("l7gate_proxy_requests_total",
		"L7 requests by protocol and verdict.", []string{"protocol", "verdict"}, nil)
	descUpdates = prometheus.NewDesc("l7gate_proxy_config_updates_total",
		"Configs applied (ack) or rejected (nack).", []string{"result"}, nil)
	descKafkaBuf = prometheus.NewDesc("l7gate_proxy_kafka_buffer_bytes",
		"Memory Kafka connections hold in frame buffers (charged to the budget).", nil, nil)
	descKafkaLimit = prometheus.NewDesc("l7gate_proxy_kafka_buffer_limit_bytes",
		"The Kafka memory budget.", nil, nil)
	descKafkaRefused = prometheus.NewDesc("l7gate_proxy_kafka_buffer_refused_total",
		"Kafka connections closed because the memory budget was exhausted.", nil, nil)
	descKafkaTables = prometheus.NewDesc("l7gate_proxy_kafka_topic_id_tables",
		"Kafka topic-ID tables (one per upstream cluster and trust scope).", nil, nil)
	descReady = prometheus.NewDesc("l7gate_proxy_ready",
		"1 once a config from the agent is applied.", nil, nil)
)

// collector reads the proxy's counters at scrape time.
type collector struct{ p *Proxy }

// Collector returns the proxy's metrics as a Prometheus collector.
func (p *Proxy) Collector() prometheus.Collector { return collector{p} }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descConns, descRejected, descUpstream, descPanics, descActive, descParked, descRequests, descUpdates,
		descKafkaBuf, descKafkaLimit, descKafkaRefused, descKafkaTables, descReady} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	s := &c.p.stats
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v int64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v))
	}
	counter(descConns, s.connections.Load())
	counter(descRejected, s.rejectedConns.Load(), "limit")
	counter(descRejected, s.rejectedPerSource.Load(), "per_source")
	counter(descRejected, s.rejectedNotSteered.Load(), "not_steered")
	counter(descUpstream, s.upstreamConns.Load())
	counter(descPanics, s.panics.Load())
	gauge(descActive, c.p.conns.Load())
	parked := 0
	if c.p.poller != nil {
		parked = c.p.poller.Parked()
	}
	gauge(descParked, int64(parked))
	counter(descRequests, s.httpAllowed.Load(), "http", "allowed")
	counter(descRequests, s.httpDenied.Load(), "http", "denied")
	counter(descRequests, s.kafkaAllowed.Load(), "kafka", "allowed")
	counter(descRequests, s.kafkaDenied.Load(), "kafka", "denied")
	counter(descRequests, s.httpAudited.Load(), "http", "audit")
	counter(descRequests, s.kafkaAudited.Load(), "kafka", "audit")
	counter(descUpdates, s.acks.Load(), "ack")
	counter(descUpdates, s.nacks.Load(), "nack")
	b := c.p.kafkaMem
	gauge(descKafkaBuf, b.Used())
	gauge(descKafkaLimit, b.Limit())
	counter(descKafkaRefused, b.Refused())
	gauge(descKafkaTables, int64(c.p.topicIDs.Len()))
	ready := int64(0)
	if c.p.Ready() {
		ready = 1
	}
	gauge(descReady, ready)
}

// Registry returns a registry with the proxy's metrics, the Go runtime's
// and the process's, and extra collectors (e.g. the flow forwarder's).
func (p *Proxy) Registry(extra ...prometheus.Collector) *prometheus.Registry {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(p.Collector(), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(extra...)
	return reg
}
