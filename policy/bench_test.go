package policy

import (
	"fmt"
	"net/netip"
	"testing"
)

// benchObjects builds a cluster of nEndpoints pods in 50 namespaces, with
// label sets that repeat (as replicas of deployments do), and nPolicies
// CiliumNetworkPolicies mixing L3, L4, CIDR, deny and HTTP rules.
func benchObjects(nPolicies, nEndpoints int) *Objects {
	objs := &Objects{}
	const namespaces = 50
	for i := range namespaces {
		objs.Namespaces = append(objs.Namespaces, Namespace{Name: fmt.Sprintf("ns%d", i), Labels: map[string]string{"team": fmt.Sprintf("t%d", i%7)}})
	}
	for i := range nEndpoints {
		ns := i % namespaces
		app := (i / namespaces) % 40 // 40 apps per namespace
		objs.Pods = append(objs.Pods, Pod{
			Namespace: fmt.Sprintf("ns%d", ns), Name: fmt.Sprintf("pod%d", i), ServiceAccount: "default",
			Labels: map[string]string{"app": fmt.Sprintf("app%d", app), "tier": fmt.Sprintf("tier%d", app%4)},
			IPs:    []netip.Addr{netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})},
		})
	}
	for i := range nPolicies {
		ns := fmt.Sprintf("ns%d", i%namespaces)
		app := fmt.Sprintf("app%d", (i/namespaces)%40)
		peer := Selector{Requirements: []Requirement{{Source: SourceAny, Key: "app", Operator: OpIn, Values: []string{fmt.Sprintf("app%d", (i+1)%40)}}, namespaceRequirement(ns)}}
		tier := Selector{Requirements: []Requirement{{Source: SourceAny, Key: "tier", Operator: OpIn, Values: []string{"tier1", "tier2"}}, namespaceRequirement(ns)}}
		subject := Selector{Requirements: []Requirement{{Source: SourceAny, Key: "app", Operator: OpIn, Values: []string{app}}, namespaceRequirement(ns)}}
		r := Rule{Path: "spec", Subject: subject}
		r.Allow[Ingress] = []Section{
			{Path: "spec.ingress[0]", Index: 0, Peers: Peers{Selectors: []Selector{peer}}, Ports: []PortRule{{Ports: []PortSpec{{Protocol: ProtoTCP, Port: 8080, EndPort: 8080}}}}},
			{Path: "spec.ingress[1]", Index: 1, Peers: Peers{Selectors: []Selector{tier}}, Ports: []PortRule{{Ports: []PortSpec{{Protocol: ProtoTCP, Port: 80, EndPort: 80}},
				L7: &L7Rules{Parser: ParserHTTP, HTTP: []HTTPRule{{Method: "GET", Path: "/api/.*"}, {Method: "POST", Path: fmt.Sprintf("/api/v1/p%d", i)}}}}}},
			{Path: "spec.ingress[2]", Index: 2, Peers: Peers{CIDRs: []CIDRSelector{{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i % 200), 0, 0}), 16)}}}},
		}
		r.Deny[Ingress] = []Section{{Path: "spec.ingressDeny[0]", Index: 0, Peers: Peers{Entities: []string{"world"}}, Ports: []PortRule{{Ports: []PortSpec{{Protocol: ProtoTCP, Port: 22, EndPort: 22}}}}}}
		r.Allow[Egress] = []Section{{Path: "spec.egress[0]", Index: 0, Peers: Peers{Selectors: []Selector{{Requirements: []Requirement{namespaceRequirement(ns)}}}}}}
		objs.Policies = append(objs.Policies, Policy{Ref: ObjectRef{Kind: string(KindCNP), Namespace: ns, Name: fmt.Sprintf("p%d", i)}, Kind: KindCNP, Rules: []Rule{r}})
	}
	return objs
}

// BenchmarkCompute computes the IR for 1000 policies and 10k endpoints.
func BenchmarkCompute(b *testing.B) {
	objs := benchObjects(1000, 10000)
	b.ReportAllocs()
	var snap *Snapshot
	for b.Loop() {
		var err error
		snap, err = Compute(objs, NewIdentityAllocator())
		if err != nil {
			b.Fatal(err)
		}
	}
	entries := 0
	for _, p := range snap.Policies {
		entries += len(p.Ingress.Entries) + len(p.Egress.Entries)
	}
	b.ReportMetric(float64(len(snap.Identities)), "identities")
	b.ReportMetric(float64(entries), "entries")
}

// BenchmarkTrackerApply is what every Kubernetes source update costs
// before the computation: the tracker's pass over a 10k-pod view.
func BenchmarkTrackerApply(b *testing.B) {
	objs := benchObjects(10, 10000)
	t := NewTracker()
	b.ReportAllocs()
	for b.Loop() {
		t.Apply(objs, nil)
	}
}

// BenchmarkRecompute is the agent's steady state: one allocator across
// computes, the same 10k pods, one policy's HTTP rule changed each time.
func BenchmarkRecompute(b *testing.B) {
	objs := benchObjects(1000, 10000)
	alloc := NewIdentityAllocator()
	if _, err := Compute(objs, alloc); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		objs.Policies[0].Rules[0].Allow[Ingress][1].Ports[0].L7.HTTP[1].Path = fmt.Sprintf("/api/v1/change%d", i)
		if _, err := Compute(objs, alloc); err != nil {
			b.Fatal(err)
		}
	}
}
