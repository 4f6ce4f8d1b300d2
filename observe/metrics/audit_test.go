package metrics

import (
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/observe"
)

// TestAuditFlowsCounted: flows with verdict audit (L3/L4 and L7) are
// counted as Hubble's AUDIT verdict, action="audit", and never as drops.
func TestAuditFlowsCounted(t *testing.T) {
	ap := netip.MustParseAddrPort
	dd := flow.Provenance{Policy: "default/rule1", Kind: flow.KindDefaultDeny, Audit: true}
	reg := prometheus.NewPedanticRegistry()
	f := NewFlows(reg)
	for i, r := range []*flow.Record{
		{Observer: flow.ObserverDatapath, Protocol: "tcp", Source: ap("198.18.1.11:4000"), Destination: ap("198.18.1.10:80"), SrcIdentity: 257, DstIdentity: 256,
			Verdict: flow.VerdictAudit, Reason: "default", DecidedBy: []flow.Provenance{dd}},
		{Observer: flow.ObserverProxy, Protocol: "http", Method: "PUT", Path: "/v1/exhaust-port", Status: 200, Verdict: flow.VerdictAudit,
			SrcIdentity: 258, DstIdentity: 256, DecidedBy: []flow.Provenance{dd}},
	} {
		f.Consume(observe.Event{Seq: uint64(i), Record: r})
	}
	for name, want := range map[string]float64{
		`hubble_policy_verdicts_total{action="audit",direction="ingress",match="none"}`:                1,
		`hubble_policy_verdicts_total{action="audit",direction="ingress",match="l7/http"}`:             1,
		`hubble_flows_processed_total{protocol="TCP",subtype="",type="PolicyVerdict",verdict="AUDIT"}`: 1,
	} {
		if got := sample(t, reg, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if n := testutil.CollectAndCount(f.drops); n != 0 {
		t.Errorf("audit flows counted as %d drop series", n)
	}
}
