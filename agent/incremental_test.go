package agent

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/policy"
)

// wholeSyncs hides the fake's partial writes (UpdatePolicy,
// UpdateIPCache): the agent can only sync whole maps.
type wholeSyncs struct{ Datapath }

// changeObjects: local pods l0..l5 (present when live[i]), cluster pods,
// and the policies picked by cnps (bit i: template i).
func changeObjects(live []bool, tier []int, ipShift []int, cluster, cnps, rule int) string {
	var b strings.Builder
	for i, on := range live {
		if on {
			fmt.Fprintf(&b, "apiVersion: v1\nkind: Pod\nmetadata: {name: l%d, namespace: ns, labels: {app: a%d, tier: t%d}}\nstatus: {podIP: 198.18.%d.%d}\n---\n", i, i, tier[i], 1+ipShift[i], 1+i)
		}
	}
	for i := range cluster {
		fmt.Fprintf(&b, "apiVersion: v1\nkind: Pod\nmetadata: {name: c%d, namespace: ns, labels: {app: c, tier: t%d}}\nstatus: {podIP: 198.19.0.%d}\n---\n", i, i%3, 1+i)
	}
	templates := []string{
		`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7, namespace: ns}
spec:
  endpointSelector: {matchLabels: {app: a0}}
  ingress:
  - fromEndpoints: [{matchLabels: {tier: t1}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/r%d"}]
`,
		`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l4, namespace: ns}
spec:
  endpointSelector: {matchLabels: {tier: t0}}
  ingress:
  - fromEndpoints: [{matchLabels: {tier: t2}}]
    toPorts:
    - ports: [{port: "9%03d", protocol: TCP}]
`,
		`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: egress, namespace: ns}
spec:
  endpointSelector: {matchLabels: {tier: t1}}
  egress:
  - toEndpoints: [{matchLabels: {tier: t0}}]
  - toCIDR: [198.20.%d.0/24]
  egressDeny:
  - toEndpoints: [{matchLabels: {app: c}}]
    toPorts:
    - ports: [{port: "22", protocol: TCP}]
`,
		`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: all, namespace: ns}
spec:
  endpointSelector: {}
  ingress:
  - fromEntities: [cluster]
    toPorts:
    - ports: [{port: "53", protocol: UDP}]
`,
	}
	for i, t := range templates {
		if cnps&(1<<i) == 0 {
			continue
		}
		if strings.Contains(t, "%") {
			t = fmt.Sprintf(t, rule)
		}
		b.WriteString(t + "---\n")
	}
	return b.String()
}

// TestIncrementalSyncEqualsWholeSync: after random sequences of CNP and
// pod changes (policies added, changed, removed; pods relabelled, moved to
// other IPs, gone and back; cluster pods added and removed), the maps an
// agent that writes only the changed endpoints and prefixes keeps are
// exactly those of an agent that syncs the whole maps every time.
func TestIncrementalSyncEqualsWholeSync(t *testing.T) {
	veths := map[string]int{}
	for i := range 6 {
		veths[fmt.Sprintf("ns/l%d", i)] = 30 + i
	}
	inc := newHarness(t, veths)
	whole := newHarness(t, veths)
	whole.datapath = wholeSyncs{whole.dp}
	inc.start()
	whole.start()
	rng := rand.New(rand.NewPCG(19, 6))
	live := []bool{true, true, true, true, true, true}
	tier := []int{0, 1, 2, 0, 1, 2}
	shift := make([]int, 6)
	cluster, cnps, rule := 5, 0b1111, 0
	for step := range 60 {
		switch rng.IntN(6) {
		case 0:
			cnps ^= 1 << rng.IntN(4)
		case 1:
			rule = rng.IntN(4)
		case 2:
			tier[rng.IntN(6)] = rng.IntN(3)
		case 3:
			shift[rng.IntN(6)] = rng.IntN(3)
		case 4:
			i := 1 + rng.IntN(5)
			live[i] = !live[i]
		case 5:
			cluster = rng.IntN(10)
		}
		text := changeObjects(live, tier, shift, cluster, cnps, rule)
		for _, h := range []*harness{inc, whole} {
			objs, errs := policy.Decode("objs.yaml", []byte(text))
			if len(errs) > 0 {
				t.Fatal(errs)
			}
			h.sendObjects(objs)
			h.await(fmt.Sprintf("revision %d", step+1), func(r report) bool { return r.rev == uint64(step+1) })
		}
		if got, want := inc.dp.mapsText(), whole.dp.mapsText(); got != want {
			t.Fatalf("step %d (cnps %04b rule %d tiers %v shifts %v live %v cluster %d): incremental maps\n%s\nwhole sync\n%s",
				step, cnps, rule, tier, shift, live, cluster, got, want)
		}
	}
	if n := inc.dp.countLog("update policy"); n == 0 {
		t.Error("the incremental agent never wrote a partial policy update")
	}
	if n := whole.dp.countLog("update policy"); n != 0 {
		t.Errorf("the whole-sync agent wrote %d partial updates", n)
	}
}

// TestDirCompareSharedArrays: a sync compares the same pair of shared
// arrays for many endpoints; the memo answers per pair (array and length
// on both sides), so an endpoint whose own array differs from what is in
// force is still found, and so is one compared against another array of
// the same length.
func TestDirCompareSharedArrays(t *testing.T) {
	entries := func(port uint16, n int) []bpf.PolicyEntry {
		out := make([]bpf.PolicyEntry, n)
		for i := range out {
			out[i] = bpf.PolicyEntry{Peer: bpf.Identity(1000 + i), Protocol: 6, Port: port, Verdict: bpf.VerdictAllow}
		}
		return out
	}
	dir := func(e []bpf.PolicyEntry) bpf.DirectionPolicy { return bpf.DirectionPolicy{Enforced: true, Entries: e} }
	oldShared, newShared := entries(80, 50), entries(80, 50)
	otherOld := entries(80, 50)
	otherOld[49].Port = 81
	changed := entries(80, 50)
	changed[0].Verdict = bpf.VerdictDeny
	c := newDirCompare()
	for i := range 3 {
		if !c.equal(dir(oldShared), dir(newShared)) {
			t.Fatalf("call %d: equal shared arrays compared unequal", i)
		}
		if c.equal(dir(otherOld), dir(newShared)) {
			t.Fatalf("call %d: an array with another last entry compared equal", i)
		}
		if c.equal(dir(oldShared), dir(changed)) {
			t.Fatalf("call %d: a changed verdict compared equal", i)
		}
		if c.equal(dir(oldShared[:49]), dir(newShared)) || !c.equal(dir(oldShared[:49]), dir(newShared[:49])) {
			t.Fatalf("call %d: a prefix of the same arrays compared wrong", i)
		}
		if c.equal(bpf.DirectionPolicy{Entries: oldShared}, dir(newShared)) {
			t.Fatalf("call %d: another Enforced compared equal", i)
		}
	}
}
