package metrics

import (
	"bytes"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"

	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/observe"
)

// records: a datapath default-deny drop, a redirect, an allowed and a
// denied HTTP request (ingress), a denied Kafka produce (egress).
func records() []*flow.Record {
	ap := netip.MustParseAddrPort
	dd := flow.Provenance{Policy: "default/rule1", Kind: flow.KindDefaultDeny}
	allow := flow.Provenance{Policy: "default/rule1", Kind: flow.KindAllow}
	return []*flow.Record{
		{Observer: flow.ObserverDatapath, Protocol: "tcp", Source: ap("198.18.1.11:4000"), Destination: ap("198.18.1.10:80"), SrcIdentity: 257, DstIdentity: 256,
			Verdict: flow.VerdictDenied, Reason: "default", DecidedBy: []flow.Provenance{dd}},
		{Observer: flow.ObserverDatapath, Protocol: "tcp", Source: ap("198.18.1.12:4001"), Destination: ap("198.18.1.10:80"), SrcIdentity: 258, DstIdentity: 256,
			Verdict: flow.VerdictRedirected, Reason: "policy", DecidedBy: []flow.Provenance{allow}},
		{Observer: flow.ObserverProxy, Protocol: "http", Method: "POST", Path: "/v1/request-landing", Status: 200, LatencyMS: 2, Verdict: flow.VerdictAllowed,
			SrcIdentity: 258, DstIdentity: 256, DecidedBy: []flow.Provenance{allow}},
		{Observer: flow.ObserverProxy, Protocol: "http", Method: "PUT", Path: "/v1/exhaust-port", Status: 403, Verdict: flow.VerdictDenied,
			SrcIdentity: 258, DstIdentity: 256, DecidedBy: []flow.Provenance{dd}},
		{Observer: flow.ObserverProxy, Protocol: "kafka", Direction: flow.Egress, APIKey: "produce", ErrorCode: 29, Verdict: flow.VerdictDenied,
			SrcIdentity: 258, DstIdentity: 2},
	}
}

// TestExposition: flows and control-plane events counted under Hubble's
// and l7gate's names and labels, in an exposition that a pedantic
// registry accepts and `promtool check metrics` passes (skipped without
// promtool).
func TestExposition(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	f := NewFlows(reg)
	a := NewAgent(reg)
	for i, r := range records() {
		f.Consume(observe.Event{Seq: uint64(i), Record: r})
	}
	a.WatchPipeline(func() observe.Stats { return observe.Stats{Processed: 5, LostQueue: 1, Capacity: 16, Kept: 5} },
		SinkLosses{Sink: "otlp", Stats: func() (uint64, uint64) { return 3, 2 }})
	a.Received(7)
	a.Computed(20*time.Millisecond, nil)
	a.Implemented(7, 150*time.Millisecond, 3, 1, map[string]int{"ipcache": 10, "policy": 4}, 1)
	a.Pushed("node-a", "ack")
	a.Pushed("node-a", "nack")

	for name, want := range map[string]float64{
		`hubble_drop_total{protocol="TCP",reason="POLICY_DENIED"}`:                                           1,
		`hubble_drop_total{protocol="HTTP",reason="POLICY_DENIED"}`:                                          1,
		`hubble_http_requests_total{method="PUT",protocol="HTTP/1.1",reporter="server",status="403"}`:        1,
		`hubble_policy_verdicts_total{action="forwarded",direction="ingress",match="l7/http"}`:               1,
		`hubble_policy_verdicts_total{action="dropped",direction="ingress",match="l7/http"}`:                 1,
		`hubble_policy_verdicts_total{action="dropped",direction="ingress",match="none"}`:                    1,
		`hubble_policy_verdicts_total{action="redirected",direction="ingress",match="l3-l4"}`:                1,
		`l7gate_kafka_requests_total{api_key="produce",error_code="29",reporter="client",verdict="dropped"}`: 1,
		`l7gate_flows_lost_total{stage="otlp"}`:                                                              2,
		`l7gate_flows_delivered_total{sink="otlp"}`:                                                          3,
		`l7gate_endpoints{state="failing"}`:                                                                  1,
		`l7gate_xds_push_results_total{consumer="node-a",result="nack"}`:                                     1,
	} {
		if got := sample(t, reg, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	body := exposition(t, reg)
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not installed (Debian package prometheus; hack/install-deps.sh)")
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s\n%s", err, out, body)
	}
}

func exposition(t *testing.T, reg *prometheus.Registry) []byte {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

// sample is the value of one series, written as in the exposition
// (labels sorted).
func sample(t *testing.T, reg *prometheus.Registry, series string) float64 {
	t.Helper()
	name, _, _ := strings.Cut(series, "{")
	body := exposition(t, reg)
	for _, line := range strings.Split(string(body), "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			var v float64
			if _, err := fmt.Sscan(rest, &v); err == nil {
				return v
			}
		}
	}
	if n, err := testutil.GatherAndCount(reg, name); err == nil && n == 0 {
		t.Errorf("no %s series at all", name)
	}
	return -1
}
