package hubble

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/observe"
	"github.com/l7gate/l7gate/proto/hubble/flowpb"
)

// TestConvertAudit: an audit flow is Hubble's AUDIT verdict, names the
// policy in audit among the deniers (labelled l7gate:audit=true) and says
// so in its summary; it is no drop.
func TestConvertAudit(t *testing.T) {
	r := &flow.Record{Observer: flow.ObserverDatapath, Protocol: "tcp", Source: netip.MustParseAddrPort("198.18.1.11:4000"),
		Destination: netip.MustParseAddrPort("198.18.1.10:80"), SrcIdentity: 257, DstIdentity: 256, Verdict: flow.VerdictAudit, Reason: "policy",
		DecidedBy: []flow.Provenance{{Policy: "ns/p", PolicyKind: flow.KindCNP, Kind: flow.KindDeny, Path: "spec.ingressDeny[0]", Audit: true}}}
	f := Convert(observe.Event{Seq: 1, Record: r}, Options{})
	if f.GetVerdict() != flowpb.Verdict_AUDIT || f.GetDropReasonDesc() != flowpb.DropReason_DROP_REASON_UNKNOWN {
		t.Errorf("verdict %v drop reason %v", f.GetVerdict(), f.GetDropReasonDesc())
	}
	if len(f.GetIngressDeniedBy()) != 1 || f.GetIngressDeniedBy()[0].GetName() != "p" || !slices.Contains(f.GetIngressDeniedBy()[0].GetLabels(), LabelAudit+"=true") {
		t.Errorf("denied by %v", f.GetIngressDeniedBy())
	}
	if !strings.Contains(f.GetSummary(), "audit") {
		t.Errorf("summary %q", f.GetSummary())
	}
}
