package agent

import (
	"net/netip"
	"testing"

	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/policy"
)

// TestFlowPeersShareLabels: the flow index's pods of one identity share
// one label list (read-only, as the endpoints are), not a copy each, and
// it keeps the snapshot's endpoints and ipcache, not copies.
func TestFlowPeersShareLabels(t *testing.T) {
	const id = flow.Identity(1000)
	ls := policy.NewLabels(policy.Label{Source: policy.SourceK8s, Key: "app", Value: "web"})
	snap := &policy.Snapshot{
		Identities: []policy.IdentityInfo{{ID: id, Labels: ls.Strings()}},
		Endpoints: []policy.Endpoint{
			{Namespace: "a", Name: "p1", Identity: id, IPs: []netip.Addr{netip.MustParseAddr("198.19.0.1")}},
			{Namespace: "a", Name: "p2", Identity: id, IPs: []netip.Addr{netip.MustParseAddr("198.19.0.2")}},
		},
		IPCache: []policy.IPCacheEntry{{Prefix: netip.MustParsePrefix("198.19.0.1/32"), Identity: id}, {Prefix: netip.MustParsePrefix("198.19.0.2/32"), Identity: id}},
	}
	x := buildFlowPeers(snap, map[flow.Identity]policy.Labels{id: ls})
	e1, e2 := x.byIP[netip.MustParseAddr("198.19.0.1")], x.byIP[netip.MustParseAddr("198.19.0.2")]
	if e1 == nil || e2 == nil || len(e1.Labels) == 0 || e1.Labels[0] != "k8s:app=web" {
		t.Fatalf("endpoints %+v %+v", e1, e2)
	}
	if &e1.Labels[0] != &e2.Labels[0] {
		t.Error("two pods of one identity have a label list each")
	}
	if &x.endpoints[0] != &snap.Endpoints[0] {
		t.Error("the flow index copied the snapshot's endpoints")
	}
	if &x.ipcache[0] != &snap.IPCache[0] {
		t.Error("the flow index copied the snapshot's ipcache")
	}
}
