package agent

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/l7gate/l7gate/policy"
)

// TestFlowIndexNextEqualsNew: over random pod, label and policy changes,
// the index a revision builds from the last one (sharing its peers when
// identities, endpoints and ipcache are unchanged) attributes exactly as
// one built from scratch, and a policy-only change shares the peers.
func TestFlowIndexNextEqualsNew(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 19))
	alloc := policy.NewIdentityAllocator()
	pods := map[int]string{} // pod number → app label
	for i := range 40 {
		pods[i] = fmt.Sprintf("a%d", i%6)
	}
	rule := 0
	var prev *flowIndex
	shared := 0
	for step := range 80 {
		switch rng.IntN(4) {
		case 0:
			pods[rng.IntN(60)] = fmt.Sprintf("a%d", rng.IntN(8))
		case 1:
			delete(pods, rng.IntN(60))
		default:
			rule++
		}
		var b strings.Builder
		for _, i := range slices.Sorted(maps.Keys(pods)) {
			app := pods[i]
			fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Pod\nmetadata: {name: p%d, namespace: ns, labels: {app: %s}}\nstatus: {podIP: 198.18.1.%d}\n", i, app, i+1)
		}
		fmt.Fprintf(&b, "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: c, namespace: ns}\nspec:\n  endpointSelector: {matchLabels: {app: a1}}\n  egress:\n  - toCIDR: [198.51.100.0/24]\n  - toEndpoints: [{matchLabels: {app: a2}}]\n    toPorts: [{ports: [{port: \"%d\", protocol: TCP}]}]\n", 1000+rule)
		objs, errs := policy.Decode("x.yaml", []byte(b.String()))
		if len(errs) > 0 {
			t.Fatal(errs)
		}
		snap, err := policy.Compute(objs, alloc)
		if err != nil {
			t.Fatal(err)
		}
		want := newFlowIndex("node", snap, nil, nil)
		got := nextFlowIndex(prev, "node", snap, nil, nil)
		for _, c := range []struct {
			what      string
			got, want any
		}{
			{"byIP", got.byIP, want.byIP}, {"byIdentity", got.byIdentity, want.byIdentity},
			{"hostIDs", got.hostIDs, want.hostIDs}, {"prefixes", got.prefixes, want.prefixes},
		} {
			if !reflect.DeepEqual(c.got, c.want) {
				t.Fatalf("step %d: %s differs from a fresh index", step, c.what)
			}
		}
		if prev != nil && got.flowPeers == prev.flowPeers {
			shared++
		}
		prev = got
	}
	if shared < 20 {
		t.Fatalf("peers shared in only %d of 80 revisions", shared)
	}
}

// BenchmarkFlowIndex: the flow index of a revision after a CNP change at
// 1000 local / 10k cluster pods: built from scratch (rebuild, as every
// revision did) and from the last revision's (next).
func BenchmarkFlowIndex(b *testing.B) {
	alloc := policy.NewIdentityAllocator()
	snaps := make([]*policy.Snapshot, 2)
	for i := range snaps {
		text, _ := scaleObjects(b, 1000, 10000, i)
		objs, _ := policy.Decode("scale.yaml", []byte(text))
		var err error
		if snaps[i], err = policy.Compute(objs, alloc); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("rebuild", func(b *testing.B) {
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			newFlowIndex("node", snaps[i%2], nil, nil)
		}
	})
	b.Run("next", func(b *testing.B) {
		b.ReportAllocs()
		x := newFlowIndex("node", snaps[0], nil, nil)
		for i := 0; b.Loop(); i++ {
			x = nextFlowIndex(x, "node", snaps[i%2], nil, nil)
		}
	})
}
