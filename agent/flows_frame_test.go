package agent

import (
	"net/netip"
	"testing"

	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/bpftranslate"
	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/policy"
)

// TestFlowOfNonIPv4Frame: a frame the datapath refuses before reading an
// IPv4 header (IPv6, another ethertype, a VLAN tag) has no addresses: the
// record carries none (the event's zero 0.0.0.0 and the world identity
// it resolves to would show as "0.0.0.0 (world) -> 0.0.0.0 (world)").
func TestFlowOfNonIPv4Frame(t *testing.T) {
	var a Agent
	zero := netip.AddrPortFrom(netip.IPv4Unspecified(), 0)
	for _, reason := range []bpf.Reason{bpf.ReasonUnsupported, bpf.ReasonUnsupportedEtherType, bpf.ReasonVLAN, bpf.ReasonEtherTypeMismatch} {
		r := a.flowOf(bpf.Event{Src: zero, Dst: zero, SrcIdentity: 2, DstIdentity: 2, Dropped: true, Reason: reason, Direction: bpf.Egress})
		if r.Source.IsValid() || r.Destination.IsValid() || r.SrcIdentity != 0 || r.DstIdentity != 0 || r.Verdict != flow.VerdictDenied || r.Reason != reason.String() {
			t.Errorf("%s: %s", reason, flow.AppendJSON(nil, r))
		}
	}
	// on an attached endpoint's veth, the pod's side is known
	a.attached = map[int]bpftranslate.LocalEndpoint{7: {Endpoint: policy.Endpoint{Namespace: "default", Name: "xwing", Identity: 258}, Ifindex: 7}}
	r := a.flowOf(bpf.Event{Src: zero, Dst: zero, SrcIdentity: 2, DstIdentity: 2, Dropped: true, Reason: bpf.ReasonUnsupported, Direction: bpf.Egress, Endpoint: 7})
	if r.SrcIdentity != 258 || r.DstIdentity != 0 || r.Endpoint != "default/xwing" || r.Source.IsValid() {
		t.Errorf("from an attached pod: %s", flow.AppendJSON(nil, r))
	}
	// an IPv4 drop keeps its addresses
	src, dst := netip.MustParseAddrPort("198.18.1.11:4000"), netip.MustParseAddrPort("198.18.1.10:80")
	r = a.flowOf(bpf.Event{Src: src, Dst: dst, SrcIdentity: 257, DstIdentity: 256, Dropped: true, Reason: bpf.ReasonDefault, Protocol: 6})
	if r.Source != src || r.Destination != dst || r.SrcIdentity != 257 {
		t.Errorf("IPv4 drop: %s", flow.AppendJSON(nil, r))
	}
}
