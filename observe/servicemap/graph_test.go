package servicemap

import (
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/l7gate/l7gate/flow"
)

// pod is a starwars-like pod endpoint with the labels the agent's
// enrichment gives it (Cilium's "source:key=value", namespace labels
// included).
func pod(ns, name string, labels ...string) *flow.Endpoint {
	ls := []string{
		"k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=" + ns,
		"k8s:io.cilium.k8s.policy.cluster=default",
		"k8s:io.cilium.k8s.policy.serviceaccount=default",
		"k8s:io.kubernetes.pod.namespace=" + ns,
	}
	for _, l := range labels {
		ls = append(ls, "k8s:"+l)
	}
	slices.Sort(ls)
	return &flow.Endpoint{Namespace: ns, Pod: name, Labels: ls}
}

var (
	t0         = time.Date(2026, 12, 6, 19, 0, 0, 0, time.UTC)
	deathstar1 = pod("empire", "deathstar-6fb5694d9f-abcde", "class=deathstar", "org=empire", "pod-template-hash=6fb5694d9f")
	deathstar2 = pod("empire", "deathstar-7c8d9e0f1a-fghij", "class=deathstar", "org=empire", "pod-template-hash=7c8d9e0f1a")
	tiefighter = pod("empire", "tiefighter", "class=tiefighter", "org=empire")
	xwing      = pod("alliance", "xwing", "class=xwing", "org=alliance")
	rule1      = flow.Provenance{Policy: "empire/rule1", PolicyKind: flow.KindCNP, Direction: flow.Ingress, Path: "spec.ingress[0]", Kind: flow.KindAllow}
	rule1DD    = flow.Provenance{Policy: "empire/rule1", PolicyKind: flow.KindCNP, Direction: flow.Ingress, Kind: flow.KindDefaultDeny}
)

func rec(src, dst *flow.Endpoint, v flow.Verdict, by ...flow.Provenance) *flow.Record {
	return &flow.Record{Time: t0, Protocol: "tcp", Direction: flow.Ingress, Source: netip.MustParseAddrPort("198.18.0.2:40000"),
		Destination: netip.MustParseAddrPort("198.18.0.3:80"), SrcIdentity: 300, DstIdentity: 301, Verdict: v, DecidedBy: by,
		SrcEndpoint: src, DstEndpoint: dst, Observer: flow.ObserverDatapath}
}

func TestNodeOfStableLabels(t *testing.T) {
	a, b := NodeOf(deathstar1, 301), NodeOf(deathstar2, 301)
	if a.ID != b.ID {
		t.Errorf("two replicas of one workload (pod-template-hash differs) are two nodes: %q, %q", a.ID, b.ID)
	}
	want := Node{ID: "w:empire/class=deathstar,org=empire", Kind: KindWorkload, Namespace: "empire", Name: "deathstar",
		Labels: []string{"class=deathstar", "org=empire"}}
	if fmt.Sprint(a) != fmt.Sprint(want) {
		t.Errorf("NodeOf(deathstar) = %+v, want %+v", a, want)
	}
	// same labels in another namespace: another workload
	other := pod("rebels", "deathstar-x", "class=deathstar", "org=empire")
	if n := NodeOf(other, 301); n.ID == a.ID {
		t.Errorf("same labels in two namespaces share node %q", n.ID)
	}
	// a controller named in the record wins over labels
	ctl := *deathstar1
	ctl.WorkloadKind, ctl.Workload = "Deployment", "deathstar"
	if n := NodeOf(&ctl, 301); n.ID != "w:empire/deployment/deathstar" || n.Name != "deathstar" {
		t.Errorf("NodeOf(deployment) = %+v", n)
	}
	// no stable labels: the service account, then the namespace
	bare := pod("empire", "bare-1", "pod-template-hash=abc")
	if n := NodeOf(bare, 302); n.ID != "w:empire/serviceaccount=default" {
		t.Errorf("NodeOf(no stable labels) = %+v", n)
	}
	// a pod identity's labels without the pod (the agent knows the
	// identity, not the address): the same workload
	idOnly := &flow.Endpoint{Labels: deathstar1.Labels}
	if n := NodeOf(idOnly, 301); n.ID != a.ID {
		t.Errorf("NodeOf(identity labels only) = %+v, want %s", n, a.ID)
	}
	nolabels := &flow.Endpoint{Namespace: "empire", Pod: "p"}
	if n := NodeOf(nolabels, 302); n.ID != "w:empire/" || n.Name != "(pods without labels)" {
		t.Errorf("NodeOf(no labels) = %+v", n)
	}
}

func TestNodeOfEntities(t *testing.T) {
	for _, tc := range []struct {
		ep     *flow.Endpoint
		id     flow.Identity
		wantID string
		name   string
	}{
		{nil, flow.IdentityWorld, "x:world", "world"},
		{&flow.Endpoint{Labels: []string{"reserved:host"}}, flow.IdentityHost, "x:host", "host"},
		{&flow.Endpoint{Labels: []string{"cidr:203.0.113.0/24", "reserved:world"}}, 16777217, "x:cidr:203.0.113.0/24,reserved:world", "world"},
		{&flow.Endpoint{Labels: []string{"fqdn:*.example.com"}}, 16777218, "x:fqdn:*.example.com", "fqdn:*.example.com"},
		{nil, 0, "x:unknown", "unknown"},
		{nil, 4242, "x:identity/4242", "identity 4242"},
	} {
		n := NodeOf(tc.ep, tc.id)
		if n.ID != tc.wantID || n.Name != tc.name || n.Kind != KindEntity {
			t.Errorf("NodeOf(%+v, %d) = %+v, want id %q name %q", tc.ep, tc.id, n, tc.wantID, tc.name)
		}
	}
}

func TestPolicyOf(t *testing.T) {
	for _, tc := range []struct {
		r    *flow.Record
		want string
	}{
		{rec(xwing, deathstar1, flow.VerdictDenied, rule1DD), "default-deny empire/rule1"},
		{rec(tiefighter, deathstar1, flow.VerdictAllowed, rule1, rule1), "empire/rule1"},
		{&flow.Record{Verdict: flow.VerdictDenied, Reason: "unknown ethertype"}, "unknown ethertype"},
		{&flow.Record{Verdict: flow.VerdictAllowed, Reason: "x"}, ""},
		{&flow.Record{Verdict: "audit", DecidedBy: []flow.Provenance{rule1DD}}, "default-deny empire/rule1"},
	} {
		if got := PolicyOf(tc.r); got != tc.want {
			t.Errorf("PolicyOf(%v %v) = %q, want %q", tc.r.Verdict, tc.r.DecidedBy, got, tc.want)
		}
	}
}

func TestAggregator(t *testing.T) {
	a := NewAggregator(Limits{RecentFlows: 3})
	seq := uint64(0)
	add := func(r *flow.Record) bool {
		seq++
		_, ok := a.Add(seq, r)
		return ok
	}
	// xwing → deathstar dropped by default-deny (both replicas: one edge)
	add(rec(xwing, deathstar1, flow.VerdictDenied, rule1DD))
	add(rec(xwing, deathstar2, flow.VerdictDenied, rule1DD))
	// tiefighter → deathstar: allowed L7 requests, one denied path, one audited
	for i := range 5 {
		r := rec(tiefighter, deathstar1, flow.VerdictAllowed, rule1)
		r.Protocol, r.Method, r.Path, r.Status = "http", "POST", fmt.Sprintf("/v1/request-landing/%d", i), 200
		add(r)
	}
	deny := rec(tiefighter, deathstar2, flow.VerdictDenied, rule1DD)
	deny.Protocol, deny.Method, deny.Path, deny.Status = "http", "PUT", "/v1/exhaust-port", 403
	add(deny)
	add(rec(tiefighter, deathstar1, "audit", rule1DD))
	// the reply direction is not an edge of its own
	reply := rec(deathstar1, tiefighter, flow.VerdictAllowed)
	reply.IsReply = true
	if add(reply) {
		t.Error("a reply record was drawn")
	}

	g := a.Graph()
	var nodes []string
	for _, n := range g.Nodes {
		nodes = append(nodes, n.ID)
	}
	wantNodes := []string{"w:alliance/class=xwing,org=alliance", "w:empire/class=deathstar,org=empire", "w:empire/class=tiefighter,org=empire"}
	if !slices.Equal(nodes, wantNodes) {
		t.Errorf("nodes = %q, want %q", nodes, wantNodes)
	}
	var edges []string
	for _, e := range g.Edges {
		edges = append(edges, fmt.Sprintf("%s→%s %s %q ×%d", e.Source[2:], e.Target[2:], e.Verdict, e.Policy, e.Count))
	}
	wantEdges := []string{
		`alliance/class=xwing,org=alliance→empire/class=deathstar,org=empire denied "default-deny empire/rule1" ×2`,
		`empire/class=tiefighter,org=empire→empire/class=deathstar,org=empire allowed "empire/rule1" ×5`,
		`empire/class=tiefighter,org=empire→empire/class=deathstar,org=empire denied "default-deny empire/rule1" ×1`,
		`empire/class=tiefighter,org=empire→empire/class=deathstar,org=empire audit "default-deny empire/rule1" ×1`,
	}
	if !slices.Equal(edges, wantEdges) {
		t.Errorf("edges:\n%s\nwant:\n%s", fmt.Sprintln(edges), fmt.Sprintln(wantEdges))
	}
	// the allowed edge keeps its last 3 flows, oldest first, with L7 details
	var paths []string
	for _, f := range g.Edges[1].Flows {
		paths = append(paths, f.Method+" "+f.Path)
	}
	if want := []string{"POST /v1/request-landing/2", "POST /v1/request-landing/3", "POST /v1/request-landing/4"}; !slices.Equal(paths, want) {
		t.Errorf("recent flows = %q, want %q", paths, want)
	}
	if f := g.Edges[2].Flows[0]; f.Status != 403 || f.SrcPod != "empire/tiefighter" || f.DstPod != "empire/deathstar-7c8d9e0f1a-fghij" ||
		len(f.DecidedBy) != 1 || f.DecidedBy[0] != rule1DD.String() {
		t.Errorf("denied flow = %+v", f)
	}
	if g.LastSeq != seq-1 {
		t.Errorf("LastSeq = %d, want %d", g.LastSeq, seq-1)
	}
}

func TestAggregatorBounds(t *testing.T) {
	a := NewAggregator(Limits{MaxNodes: 3, MaxEdges: 2, RecentFlows: 1})
	// 2 edges fit
	if _, ok := a.Add(1, rec(xwing, deathstar1, flow.VerdictDenied, rule1DD)); !ok {
		t.Fatal("first edge not drawn")
	}
	u, ok := a.Add(2, rec(tiefighter, deathstar1, flow.VerdictAllowed, rule1))
	if !ok || len(u.Nodes) != 1 || u.Nodes[0].Name != "tiefighter" {
		t.Fatalf("second edge: %v %+v", ok, u)
	}
	// a third edge, and a fourth node, are not drawn but counted
	if _, ok := a.Add(3, rec(tiefighter, deathstar1, flow.VerdictDenied, rule1DD)); ok {
		t.Error("edge beyond MaxEdges drawn")
	}
	// flows on known edges still count
	if u, ok := a.Add(4, rec(xwing, deathstar2, flow.VerdictDenied, rule1DD)); !ok || u.Edge.Count != 2 || len(u.Nodes) != 0 {
		t.Errorf("flow on a known edge: %v %+v", ok, u)
	}
	a2 := NewAggregator(Limits{MaxNodes: 2})
	a2.Add(1, rec(xwing, deathstar1, flow.VerdictDenied))
	if _, ok := a2.Add(2, rec(tiefighter, deathstar1, flow.VerdictDenied)); ok {
		t.Error("node beyond MaxNodes drawn")
	}
	if g := a.Graph(); g.Dropped != 1 || len(g.Edges) != 2 || len(g.Edges[0].Flows) != 1 || g.Edges[0].Flows[0].Seq != 4 {
		t.Errorf("graph = %+v", g)
	}
	if g := a2.Graph(); g.Dropped != 1 || len(g.Nodes) != 2 {
		t.Errorf("graph = %+v", g)
	}
}

// BenchmarkAggregatorAdd: the cost of one flow on one open page (each
// page's stream folds every flow into its own map).
func BenchmarkAggregatorAdd(b *testing.B) {
	recs := []*flow.Record{
		rec(xwing, deathstar1, flow.VerdictDenied, rule1DD),
		rec(tiefighter, deathstar2, flow.VerdictAllowed, rule1),
		rec(tiefighter, deathstar1, flow.VerdictDenied, rule1DD),
	}
	a := NewAggregator(Limits{})
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		a.Add(uint64(i), recs[i%len(recs)])
	}
}
