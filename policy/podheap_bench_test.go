package policy

import (
	"flag"
	"fmt"
	"os"
	"reflect"
	"runtime"
	"runtime/pprof"
	"strings"
	"testing"
)

// podHeapProfile: BenchmarkPodHeap writes a heap profile (inuse_space) of
// the 11k-pod pipeline here, taken while it is held.
var podHeapProfile = flag.String("podheap.profile", "", "BenchmarkPodHeap: write a heap profile of the held 11k-pod pipeline to this file")

// syntheticPods is the controlplane bench phase's pods file
// (bench/cmd/l7gate-bench syntheticPodsYAML): local local-looking and
// cluster cluster pods, 500 label sets.
func syntheticPods(local, cluster int) []byte {
	var b strings.Builder
	for i := range local + cluster {
		var ip, kind string
		if i < local {
			ip, kind = fmt.Sprintf("198.18.%d.%d", 64+i/250, 1+i%250), "local"
		} else {
			j := i - local
			ip, kind = fmt.Sprintf("198.19.%d.%d", j/250, 1+j%250), "remote"
		}
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: syn-%s-%d\n  namespace: bench\n  labels:\n    app: svc-%d\n    tier: %s\nstatus:\n  podIP: %s\n",
			kind, i, i%500, kind, ip)
	}
	return []byte(b.String())
}

const podHeapPolicy = `apiVersion: cilium.io/v2
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

const podHeapObjects = `apiVersion: v1
kind: Namespace
metadata: {name: bench}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: bench, labels: {app: client}}
status: {podIP: 198.18.64.250}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: bench, labels: {app: svc-1}}
status: {podIP: 198.18.64.251}
`

// podPipeline is what the agent holds of a folder source's view: the
// folder's decoded files (source.Folder's cache), the tracker, the
// tracker's output (the update the agent computes from and keeps) and
// the snapshot computed from it with the agent's allocator.
type podPipeline struct {
	parts   []*Objects
	tracker *Tracker
	out     *Objects
	alloc   *IdentityAllocator
	snap    *Snapshot
}

// runPodPipeline takes a pods file through the folder source's path
// (DecodeObjects per file, Tracker.ApplyFiles, DeriveEndpointSlices) and the
// agent's compute, then a policy change as the bench makes them (the
// pods' file unchanged: ApplyFiles' memo, Compute's endpoints memo).
func runPodPipeline(tb testing.TB, podsFile []byte) *podPipeline {
	tb.Helper()
	pl := &podPipeline{tracker: NewTracker(), alloc: NewIdentityAllocator()}
	pol, errs := DecodeObjects("/run/l7gate-bench/src/policy.yaml", []byte(podHeapPolicy))
	if len(errs) > 0 {
		tb.Fatal(errs)
	}
	// objects.yaml: the bench's real pods (a second part with pods: the
	// merge's pods are not one file's)
	objs, errs := DecodeObjects("/run/l7gate-bench/src/objects.yaml", []byte(podHeapObjects))
	if len(errs) > 0 {
		tb.Fatal(errs)
	}
	pl.parts = []*Objects{objs, pol}
	if podsFile != nil {
		pods, errs := DecodeObjects("/run/l7gate-bench/src/synthetic-pods.yaml", podsFile)
		if len(errs) > 0 {
			tb.Fatal(errs)
		}
		pl.parts = append(pl.parts, pods)
	}
	for change := range 2 {
		if change == 1 {
			// a policy change: a new policy part, the pods part unchanged
			p, errs := DecodeObjects("/run/l7gate-bench/src/policy.yaml", []byte(strings.Replace(podHeapPolicy, "/api/.*", "/api/v1/cp0/[a-z]+", 1)))
			if len(errs) > 0 {
				tb.Fatal(errs)
			}
			pl.parts[1] = p
		}
		out, errs := pl.tracker.ApplyFiles(pl.parts, make([][]error, len(pl.parts)))
		if len(errs) > 0 {
			tb.Fatal(errs)
		}
		out.DeriveEndpointSlices()
		snap, err := Compute(out, pl.alloc)
		if err != nil {
			tb.Fatal(err)
		}
		pl.out, pl.snap = out, snap
	}
	return pl
}

func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkPodHeap is the live heap per pod of the controlplane bench
// phase's 1000 local-looking + 10000 cluster pods held through the folder
// source's path into the agent's compute (runPodPipeline): the heap held
// with the pods less the heap held without them, after collections, per
// pod. Unlike the agent's RSS growth it does not depend on the heap the
// process had before.
func BenchmarkPodHeap(b *testing.B) {
	const local, cluster = 1000, 10000
	data := syntheticPods(local, cluster)
	if *podHeapProfile != "" {
		defer func(r int) { runtime.MemProfileRate = r }(runtime.MemProfileRate)
		runtime.MemProfileRate = 1
	}
	var perPod float64
	for b.Loop() {
		base0 := liveHeap()
		empty := runPodPipeline(b, nil)
		base1 := liveHeap()
		full := runPodPipeline(b, data)
		held := liveHeap()
		if *podHeapProfile != "" {
			f, err := os.Create(*podHeapProfile)
			if err != nil {
				b.Fatal(err)
			}
			if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
				b.Fatal(err)
			}
			f.Close()
		}
		perPod = (float64(held) - float64(base1) - (float64(base1) - float64(base0))) / (local + cluster)
		if len(full.snap.Endpoints) != local+cluster+2 {
			b.Fatalf("%d endpoints, want %d", len(full.snap.Endpoints), local+cluster+2)
		}
		runtime.KeepAlive(empty)
		runtime.KeepAlive(full)
	}
	b.ReportMetric(perPod, "heapB/pod")
}

// TestPodMemoSharesLabels: the pod memo holds one Labels per identity,
// not one per pod.
func TestPodMemoSharesLabels(t *testing.T) {
	objs := benchObjects(5, 2400) // 2000 label sets
	alloc := NewIdentityAllocator()
	if _, err := Compute(objs, alloc); err != nil {
		t.Fatal(err)
	}
	memo, _ := alloc.podMemoFor()
	if memo == nil || len(memo.list) != len(objs.Pods) {
		t.Fatalf("memo of %d pods", len(objs.Pods))
	}
	first := map[Identity]*Label{}
	for _, e := range memo.list {
		if f, ok := first[e.id]; !ok {
			first[e.id] = &e.ls[0]
		} else if f != &e.ls[0] {
			t.Fatalf("pod %s/%s: its identity %d's labels are a copy of their own", e.key.namespace, e.key.name, e.id)
		}
	}
	if len(first) >= len(memo.list) {
		t.Fatalf("%d identities for %d pods: no identity is shared", len(first), len(memo.list))
	}
}

// TestDecodeObjectsIsDecodeWithoutSummaries: over the golden inputs and a
// pods file, DecodeObjects gives Decode's objects and errors, and no
// summaries.
func TestDecodeObjectsIsDecodeWithoutSummaries(t *testing.T) {
	files, err := ListFiles("testdata")
	if err != nil {
		t.Fatal(err)
	}
	inputs := map[string][]byte{"synthetic-pods.yaml": syntheticPods(10, 30)}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		inputs[f] = data
	}
	summaries := 0
	for name, data := range inputs {
		want, wantErrs := Decode(name, data)
		got, gotErrs := DecodeObjects(name, data)
		summaries += len(want.Summaries)
		if len(got.Summaries) != 0 || len(got.summaryRefs) != 0 {
			t.Errorf("%s: %d summaries", name, len(got.Summaries))
		}
		want.Summaries, want.summaryRefs = nil, nil
		if !reflect.DeepEqual(got, want) || fmt.Sprint(gotErrs) != fmt.Sprint(wantErrs) {
			t.Errorf("%s: DecodeObjects differs from Decode:\n got %+v %v\nwant %+v %v", name, got, gotErrs, want, wantErrs)
		}
	}
	if summaries < len(inputs) {
		t.Fatalf("%d summaries in %d inputs", summaries, len(inputs))
	}
}

// TestIPCacheOrderMemoSharesSnapshot: the ipcache order memo keeps the
// last snapshot's own ipcache (no sorted copy, the computed order as
// positions in it), also after a compute that took it from the memo.
func TestIPCacheOrderMemoSharesSnapshot(t *testing.T) {
	objs := benchObjects(5, 300)
	alloc := NewIdentityAllocator()
	for i := range 2 {
		snap, err := Compute(objs, alloc)
		if err != nil {
			t.Fatal(err)
		}
		m := alloc.ipcacheOrderMemo()
		if m == nil || len(snap.IPCache) < 300 || len(m.perm) != len(snap.IPCache) {
			t.Fatalf("compute %d: memo %v for %d entries", i, m != nil, len(snap.IPCache))
		}
		if &m.out[0] != &snap.IPCache[0] || len(m.out) != len(snap.IPCache) {
			t.Fatalf("compute %d: the memo's sorted ipcache is a copy of the snapshot's", i)
		}
	}
	if alloc.orderReused != 1 {
		t.Fatalf("the order was reused in %d of 2 computes", alloc.orderReused)
	}
}
