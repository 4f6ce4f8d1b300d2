package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"
)

// TestPodMemoEqualsFullCompute: over random changes of pods (labels,
// service accounts, IPs, duplicates, host network, phase, added and
// removed), namespace labels and policies, and identities forgotten by
// Sweep and Release, a compute that reuses the last compute's pod labels
// and identities gives exactly the snapshot a compute without the memo
// gives (same allocator history, so the same numbers). The memo of the
// whole pod pass (endpointsMemo) is checked alike: node names and named
// ports change too.
func TestPodMemoEqualsFullCompute(t *testing.T) {
	rng := rand.New(rand.NewPCG(19, 7))
	objs := benchObjects(20, 300)
	memo, full := NewIdentityAllocator(), NewIdentityAllocator()
	now := time.Unix(0, 0)
	hits := 0
	// toFQDNs: an egress section of the first policy selects *.example.
	// through the names cache, whose names and addresses change (FQDN
	// identities, and which ipcache entries sort last: sortIPCache's
	// memo).
	sel, err := CompileDNSPattern("*.example")
	if err != nil {
		t.Fatal(err)
	}
	objs.Policies[0].Rules[0].Allow[Egress] = append(objs.Policies[0].Rules[0].Allow[Egress], Section{Path: "spec.egress[9]", Index: 9, Peers: Peers{FQDNs: []DNSSelector{sel}}})
	var names StaticFQDNCache
	for step := range 300 {
		switch rng.IntN(14) {
		case 9: // a pod's address changed (the ipcache's order)
			p := &objs.Pods[rng.IntN(len(objs.Pods))]
			p.IPs = []netip.Addr{netip.AddrFrom4([4]byte{198, 19, byte(rng.IntN(4)), byte(rng.IntN(250))})}
		case 10: // a policy's CIDR peer changed (sometimes a pod's address)
			ps := &objs.Policies[rng.IntN(len(objs.Policies))].Rules[0].Allow[Ingress][2].Peers.CIDRs[0]
			ps.Prefix = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(rng.IntN(200)), 0, 0}), 16)
			if rng.IntN(3) == 0 {
				ps.Prefix = netip.PrefixFrom(objs.Pods[rng.IntN(len(objs.Pods))].IPs[0], 32)
			}
		case 11: // DNS names: one answered, changed or expired (sometimes a pod's or a CIDR's address)
			names = slices.Clone(names)
			ip := netip.AddrFrom4([4]byte{203, 0, 113, byte(rng.IntN(40))})
			if rng.IntN(4) == 0 {
				ip = objs.Pods[rng.IntN(len(objs.Pods))].IPs[0]
			}
			switch n := fmt.Sprintf("n%d.example", rng.IntN(6)); {
			case len(names) > 0 && rng.IntN(3) == 0:
				names = slices.Delete(names, 0, 1)
			default:
				names = append(names, FQDNName{Name: n, IPs: []netip.Addr{ip}})
			}
		case 12: // a pod's named ports (a new slice, or an equal one)
			p := &objs.Pods[rng.IntN(len(objs.Pods))]
			p.NamedPorts = []NamedPort{{Name: []string{"http", "grpc"}[rng.IntN(2)], Protocol: ProtoTCP, Port: uint16(8000 + rng.IntN(3))}}
		case 13: // a pod's node
			p := &objs.Pods[rng.IntN(len(objs.Pods))]
			p.NodeName = fmt.Sprintf("node%d", rng.IntN(3))
		case 0: // a pod's labels
			p := &objs.Pods[rng.IntN(len(objs.Pods))]
			l := map[string]string{"app": fmt.Sprintf("app%d", rng.IntN(45)), "tier": fmt.Sprintf("tier%d", rng.IntN(5))}
			p.Labels = l
		case 1: // a pod's labels rewritten with the same content (a new map)
			p := &objs.Pods[rng.IntN(len(objs.Pods))]
			l := map[string]string{}
			for k, v := range p.Labels {
				l[k] = v
			}
			p.Labels = l
		case 2: // a namespace's labels
			ns := &objs.Namespaces[rng.IntN(len(objs.Namespaces))]
			ns.Labels = map[string]string{"team": fmt.Sprintf("t%d", rng.IntN(9))}
		case 3: // service account, host network, phase
			p := &objs.Pods[rng.IntN(len(objs.Pods))]
			switch rng.IntN(3) {
			case 0:
				p.ServiceAccount = fmt.Sprintf("sa%d", rng.IntN(3))
			case 1:
				p.HostNetwork = !p.HostNetwork
			case 2:
				p.Phase = []string{"", "Running", "Succeeded", "Failed"}[rng.IntN(4)]
			}
		case 4: // a pod added (sometimes with an IP another pod has)
			i := len(objs.Pods) + step*1000
			ip := netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)})
			if rng.IntN(3) == 0 {
				ip = objs.Pods[rng.IntN(len(objs.Pods))].IPs[0]
			}
			objs.Pods = append(objs.Pods, Pod{Namespace: fmt.Sprintf("ns%d", rng.IntN(50)), Name: fmt.Sprintf("new%d", i),
				Labels: map[string]string{"app": fmt.Sprintf("app%d", rng.IntN(45))}, IPs: []netip.Addr{ip},
				NamedPorts: []NamedPort{{Name: "http", Protocol: ProtoTCP, Port: uint16(8000 + rng.IntN(3))}}})
		case 5: // a pod removed
			i := rng.IntN(len(objs.Pods))
			objs.Pods = slices.Delete(objs.Pods, i, i+1)
		case 6: // a policy changed
			objs.Policies[0].Rules[0].Allow[Ingress][1].Ports[0].L7.HTTP[1].Path = fmt.Sprintf("/api/v1/change%d", step)
		case 7: // identities forgotten
			now = now.Add(time.Hour)
			memo.Sweep(nil, now, time.Minute)
			full.Sweep(nil, now, time.Minute)
		case 8:
			p := objs.Pods[rng.IntN(len(objs.Pods))]
			var nsl map[string]string
			for _, ns := range objs.Namespaces {
				if ns.Name == p.Namespace {
					nsl = ns.Labels
				}
			}
			ls := SecurityLabels(p.Namespace, p.Labels, nsl, p.ServiceAccount)
			memo.Release(ls)
			full.Release(ls)
		}
		if memo.pods != nil {
			hits++
		}
		full.pods = nil  // no memo: every pod's labels built and allocated
		full.eps = nil   // every pod passed over
		full.strs = nil  // every identity's label strings built
		full.order = nil // and the ipcache sorted
		got, err := ComputeWith(objs, memo, Options{FQDNCache: names})
		if err != nil {
			t.Fatal(err)
		}
		want, err := ComputeWith(objs, full, Options{FQDNCache: names})
		if err != nil {
			t.Fatal(err)
		}
		// (the part UpdateFQDN keeps names each snapshot's own allocator)
		if got.inc != nil && want.inc != nil {
			got.inc.alloc, want.inc.alloc = nil, nil
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("step %d: the snapshot with the memos differs from the full compute", step)
		}
		if !reflect.DeepEqual(memo.State(), full.State()) {
			t.Fatalf("step %d: allocator state differs", step)
		}
	}
	if memo.epsReused < 30 || memo.epsReused == 300 {
		t.Fatalf("the pod pass was reused in %d of 300 computes", memo.epsReused)
	}
	if memo.orderReused < 50 {
		t.Fatalf("the ipcache order was reused in only %d of 300 computes", memo.orderReused)
	}
	if hits < 50 {
		t.Fatalf("the memo was used in only %d of 150 computes", hits)
	}
}

// BenchmarkRecomputeScale: make bench's control-plane shape (11k pods
// with 500 label sets, a few policies), one policy's HTTP rule changed per
// compute, with the pod memo and without (memo=off: every pod's security
// labels built, sorted and keyed again, as before the memo).
func BenchmarkRecomputeScale(b *testing.B) {
	for _, on := range []bool{false, true} {
		b.Run(fmt.Sprintf("memo=%v", on), func(b *testing.B) {
			objs := benchObjects(20, 11000)
			for i := range objs.Pods {
				objs.Pods[i].Labels = map[string]string{"app": fmt.Sprintf("svc-%d", i%500), "tier": "remote"}
			}
			alloc := NewIdentityAllocator()
			if _, err := Compute(objs, alloc); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				objs.Policies[0].Rules[0].Allow[Ingress][1].Ports[0].L7.HTTP[1].Path = fmt.Sprintf("/api/v1/change%d", i)
				if !on {
					alloc.pods, alloc.eps = nil, nil
				}
				if _, err := Compute(objs, alloc); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// TestDirectionKeyDistinct: identities share a built direction only when
// their keys are equal, so inputs that differ give different keys — rule
// references whose digits run together, port names that look like the
// numbers after them, ingress and egress.
func TestDirectionKeyDistinct(t *testing.T) {
	cases := []struct {
		dir   Direction
		subj  []ruleRef
		ports []NamedPort
	}{
		{Ingress, []ruleRef{{1, 12}}, nil},
		{Ingress, []ruleRef{{11, 2}}, nil},
		{Ingress, []ruleRef{{1, 1}, {2, 0}}, nil},
		{Ingress, []ruleRef{{1, 12}, {0, 0}}, nil},
		{Egress, []ruleRef{{1, 12}}, nil},
		{Ingress, []ruleRef{{1, 12}}, []NamedPort{{Name: "a", Protocol: ProtoTCP, Port: 80}}},
		{Ingress, []ruleRef{{1, 12}}, []NamedPort{{Name: "a6", Protocol: ProtoTCP, Port: 80}}},
		{Ingress, []ruleRef{{1, 12}}, []NamedPort{{Name: "a", Protocol: ProtoUDP, Port: 80}}},
		{Ingress, []ruleRef{{1, 12}}, []NamedPort{{Name: "a", Protocol: ProtoTCP, Port: 8}}},
		{Ingress, []ruleRef{{1, 12}}, []NamedPort{{Name: "a", Protocol: ProtoTCP, Port: 80}, {Name: "b", Protocol: ProtoTCP, Port: 81}}},
		{Ingress, nil, nil},
		{Egress, nil, nil},
	}
	seen := map[string]int{}
	for i, c := range cases {
		k := string(directionKey(nil, c.dir, c.subj, c.ports))
		if j, dup := seen[k]; dup {
			t.Errorf("cases %d and %d have the same key %q", j, i, k)
		}
		seen[k] = i
	}
	// On egress the named ports are not part of the policy (the peers'
	// ports are): equal keys.
	a := string(directionKey(nil, Egress, []ruleRef{{0, 1}}, []NamedPort{{Name: "a", Protocol: ProtoTCP, Port: 80}}))
	if b := string(directionKey(nil, Egress, []ruleRef{{0, 1}}, nil)); a != b {
		t.Errorf("egress keys differ by the subject's named ports: %q, %q", a, b)
	}
}
