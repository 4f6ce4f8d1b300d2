package policy

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

// TestPodMemoSameAsFullDerivation: after random sequences of pod changes
// (labels, service accounts, namespace labels, pods gone and back, labels
// changed in place in the same map, identities swept), a compute with a
// long-lived allocator (which reuses what it derived for unchanged pods)
// equals a compute with a copy of the allocator's assignments and no
// memo.
func TestPodMemoSameAsFullDerivation(t *testing.T) {
	rng := rand.New(rand.NewPCG(19, 2))
	alloc := NewIdentityAllocator()
	const n = 30
	pods := make([]Pod, n)
	for i := range pods {
		pods[i] = Pod{Namespace: fmt.Sprintf("ns%d", i%3), Name: fmt.Sprintf("p%d", i),
			Labels: map[string]string{"app": fmt.Sprintf("a%d", i%5)}, IPs: []netip.Addr{netip.AddrFrom4([4]byte{198, 18, 0, byte(1 + i)})}}
	}
	live := make([]bool, n)
	for i := range live {
		live[i] = true
	}
	nsLabels := []map[string]string{{"team": "x"}, {"team": "y"}, {}}
	hits := 0
	for step := range 200 {
		switch rng.IntN(6) {
		case 0:
			pods[rng.IntN(n)].Labels = map[string]string{"app": fmt.Sprintf("a%d", rng.IntN(7))}
		case 1:
			pods[rng.IntN(n)].Labels["app"] = fmt.Sprintf("a%d", rng.IntN(7)) // in place
		case 2:
			pods[rng.IntN(n)].ServiceAccount = fmt.Sprintf("sa%d", rng.IntN(2))
		case 3:
			nsLabels[rng.IntN(3)]["team"] = fmt.Sprintf("t%d", rng.IntN(3)) // in place
		case 4:
			i := rng.IntN(n)
			live[i] = !live[i]
		case 5:
			// Forget identities not in use now (as the agent's sweep does).
			snap, err := Compute(objsOf(pods, live, nsLabels), alloc)
			if err != nil {
				t.Fatal(err)
			}
			var inUse []Identity
			for _, id := range snap.Identities {
				inUse = append(inUse, id.ID)
			}
			if rng.IntN(2) == 0 {
				inUse = inUse[:len(inUse)/2] // some in use are forgotten too (as Release does)
			}
			alloc.Sweep(inUse, time.Now(), -time.Second)
			alloc.Sweep(inUse, time.Now(), -time.Second)
		}
		before, err := RestoreIdentityAllocator(alloc.State())
		if err != nil {
			t.Fatal(err)
		}
		memo := alloc.podMemos()
		got, err := Compute(objsOf(pods, live, nsLabels), alloc)
		if err != nil {
			t.Fatal(err)
		}
		for ref := range alloc.podMemos() {
			if _, ok := memo[ref]; ok {
				hits++
			}
		}
		want, err := Compute(objsOf(pods, live, nsLabels), before)
		if err != nil {
			t.Fatal(err)
		}
		gj, _ := json.Marshal(got)
		wj, _ := json.Marshal(want)
		if string(gj) != string(wj) {
			t.Fatalf("step %d: with the memo\n%s\nwithout\n%s", step, gj, wj)
		}
	}
	if hits == 0 {
		t.Error("the memo was never used")
	}
}

func objsOf(pods []Pod, live []bool, nsLabels []map[string]string) *Objects {
	o := &Objects{}
	for i, m := range nsLabels {
		o.Namespaces = append(o.Namespaces, Namespace{Name: fmt.Sprintf("ns%d", i), Labels: m})
	}
	for i, p := range pods {
		if live[i] {
			o.Pods = append(o.Pods, p)
		}
	}
	return o
}
