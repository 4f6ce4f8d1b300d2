package agent

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"testing"

	"github.com/l7gate/l7gate/policy"
)

// podMemProfile: TestDeletedPodsFreeTheirMemory writes a heap profile
// (inuse_space) here after the pods are deleted.
var podMemProfile = flag.String("podmem.profile", "", "TestDeletedPodsFreeTheirMemory: write a heap profile taken after the pods are deleted to this file")

const podMemPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: bench}
spec:
  endpointSelector: {matchLabels: {app: svc-1}}
  ingress:
  - fromEndpoints: [{matchLabels: {tier: remote}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/api/.*"}]
`

// podMemPods is n pods of the controlplane bench phase's kind (500 label
// sets), from the address 198.19.0.1 on.
func podMemPods(n int) []byte {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: syn-%d\n  namespace: bench\n  labels:\n    app: svc-%d\n    tier: remote\nstatus:\n  podIP: 198.19.%d.%d\n", i, i%500, i/250, 1+i%250)
	}
	return []byte(b.String())
}

func heapAfterGC() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestDeletedPodsFreeTheirMemory: n cluster pods added reach the
// datapath's ipcache, and once deleted their addresses leave it and the
// agent's live heap returns to what it was before them, within a bound
// far below one retained per-pod item (the agent holds ~1.7 KB per pod;
// a leak of a copy of the pods, of their ipcache entries or of an
// endpoints memo is 40-216 B per pod).
func TestDeletedPodsFreeTheirMemory(t *testing.T) {
	const n = 6000
	const boundPerPod = 24 // bytes of live heap per deleted pod
	pol, errs := policy.DecodeObjects("policy.yaml", []byte(podMemPolicy))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	h := newHarness(t, nil)
	h.start()
	withPods := func(pods []byte) *policy.Objects {
		parts := []*policy.Objects{pol}
		if pods != nil {
			p, errs := policy.DecodeObjects("pods.yaml", pods)
			if len(errs) > 0 {
				t.Fatal(errs)
			}
			parts = append(parts, p)
		}
		objs, errs := policy.MergeAll(parts...)
		for _, e := range errs {
			if len(e) > 0 {
				t.Fatal(e)
			}
		}
		return objs
	}
	inIPCache := func(a netip.Addr) bool {
		h.dp.mu.Lock()
		defer h.dp.mu.Unlock()
		for _, e := range h.dp.ipcache {
			if e.Prefix.Contains(a) {
				return true
			}
		}
		return false
	}
	last := netip.MustParseAddr(fmt.Sprintf("198.19.%d.%d", (n-1)/250, 1+(n-1)%250))
	round := func(i int) {
		h.sendObjects(withPods(podMemPods(n)))
		h.await("the pods", anyReport)
		if !inIPCache(last) {
			t.Fatalf("round %d: %s (the last pod) is not in the datapath's ipcache", i, last)
		}
		h.sendObjects(withPods(nil))
		h.await("the pods deleted", anyReport)
		if inIPCache(last) {
			t.Fatalf("round %d: %s (a deleted pod) is still in the datapath's ipcache", i, last)
		}
	}
	// What the fakes keep is not the agent's: the fake xDS server keeps
	// every state it was given (the real one the last), the fake
	// datapath's ipcache keeps the room deleted entries had.
	heap := func() uint64 {
		h.xds.mu.Lock()
		h.xds.states = slices.Clone(h.xds.states[len(h.xds.states)-1:])
		h.xds.mu.Unlock()
		h.dp.mu.Lock()
		h.dp.ipcache = slices.Clone(h.dp.ipcache)
		h.dp.mu.Unlock()
		return heapAfterGC()
	}
	// A first round: the agent's one-time state (proxies' ports, the
	// flow ring, the identities of the pods' label sets) is in the base.
	h.sendObjects(withPods(nil))
	h.await("the view without pods", anyReport)
	round(0)
	base := heap()
	round(1)
	round(2)
	after := heap()
	if *podMemProfile != "" {
		f, err := os.Create(*podMemProfile)
		if err != nil {
			t.Fatal(err)
		}
		if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	perPod := (float64(after) - float64(base)) / n
	t.Logf("live heap %d → %d B after %d pods added and deleted twice more: %.1f B per pod", base, after, n, perPod)
	if perPod > boundPerPod {
		t.Fatalf("%.1f B of live heap per deleted pod stays held (bound %d B): deleted pods leak", perPod, boundPerPod)
	}
}
