package agent

import (
	"fmt"
	"log/slog"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/l7gate/l7gate/internal/testutil"
	"github.com/l7gate/l7gate/policy"
)

// scaleObjects: local pods (veths here) and cluster pods with 500 label
// sets, a server with an L7 CNP (extra HTTP rule number rule), and a
// namespace-wide L3/L4 CNP — the shape of make bench's control-plane
// phase.
func scaleObjects(tb testing.TB, local, cluster, rule int) (string, map[string]int) {
	var b strings.Builder
	veths := map[string]int{}
	pod := func(name string, ip string, set int) {
		fmt.Fprintf(&b, "apiVersion: v1\nkind: Pod\nmetadata: {name: %s, namespace: bench, labels: {app: app%d, tier: t%d}}\nstatus: {podIP: %s}\n---\n", name, set%500, set%7, ip)
	}
	pod("server", "198.18.10.2", 9999)
	veths["bench/server"] = 2
	b.WriteString("apiVersion: v1\nkind: Pod\nmetadata: {name: server, namespace: bench, labels: {app: server}}\nstatus: {podIP: 198.18.10.2}\n---\n")
	for i := range local {
		name := fmt.Sprintf("local%d", i)
		pod(name, fmt.Sprintf("198.18.%d.%d", 64+i/250, 1+i%250), i)
		veths["bench/"+name] = 100 + i
	}
	for i := range cluster {
		pod(fmt.Sprintf("cluster%d", i), fmt.Sprintf("198.19.%d.%d", i/250, 1+i%250), i)
	}
	fmt.Fprintf(&b, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-l7, namespace: bench}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {tier: t1}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/"}, {method: GET, path: "/extra/%d"}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ns-l4, namespace: bench}
spec:
  endpointSelector: {}
  ingress:
  - fromEndpoints: [{matchLabels: {tier: t2}}]
    toPorts:
    - ports: [{port: "9090", protocol: TCP}]
`, rule)
	delete(veths, "bench/server") // the server pod is written twice: keep the second (duplicate ignored)
	veths["bench/server"] = 2
	return b.String(), veths
}

// BenchmarkPolicyChange: a CNP change (one more HTTP rule on the
// server's L7 CNP) at 1000 local endpoints and 10k cluster pods, from the
// source update to the revision implemented (compute, xDS push to the
// fake proxy that ACKs at once, datapath sync to the fake datapath): the
// agent-internal time of issue 19's control-plane row. Decode: the
// source's cost of decoding the objects again (the folder source today).
func BenchmarkPolicyChange(b *testing.B) {
	for _, sc := range []struct{ local, cluster int }{{100, 1000}, {1000, 10000}} {
		b.Run(fmt.Sprintf("local=%d/cluster=%d", sc.local, sc.cluster), func(b *testing.B) {
			text, veths := scaleObjects(b, sc.local, sc.cluster, 0)
			h := newHarness(b, veths)
			h.start()
			objs, _ := policy.Decode("scale.yaml", []byte(text))
			h.sendObjects(objs)
			h.await("first revision", anyReport)
			var lat, dec []time.Duration
			b.ResetTimer()
			for i := range b.N {
				text, _ := scaleObjects(b, sc.local, sc.cluster, i+1)
				t0 := time.Now()
				objs, _ := policy.Decode("scale.yaml", []byte(text))
				dec = append(dec, time.Since(t0))
				start := time.Now()
				h.sendObjects(objs)
				h.await("revision", anyReport)
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			slices.Sort(lat)
			slices.Sort(dec)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[(len(lat)-1)*99/100].Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(dec[len(dec)/2].Microseconds())/1000, "decode-p50-ms")
		})
	}
}

// TestTookIncludesCompute: the "policy implemented" line's took is the
// agent's work on the revision, its compute included (issue 19's row
// "agent pick-up → implemented" reads it; it used to start after the
// compute). The clock jumps an hour whenever the compute reads it.
func TestTookIncludesCompute(t *testing.T) {
	h := newHarness(t, starwarsVeths())
	var logs syncBuffer
	h.logger = slog.New(slog.NewTextHandler(&logs, nil))
	var offset atomic.Int64
	h.now = func() time.Time {
		pc := make([]uintptr, 1)
		if runtime.Callers(2, pc) == 1 {
			f, _ := runtime.CallersFrames(pc).Next()
			if strings.HasSuffix(f.Function, ".(*Agent).compute") {
				offset.Add(int64(time.Hour))
			}
		}
		return time.Now().Add(time.Duration(offset.Load()))
	}
	h.start()
	h.send("../examples/starwars/objects.yaml", "../examples/starwars/policy-l7.yaml")
	h.await("revision 1", anyReport)
	// (logged just after the report)
	var line string
	for deadline := time.Now().Add(10 * time.Second); line == "" && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		for _, l := range strings.Split(logs.String(), "\n") {
			if strings.Contains(l, `msg="policy implemented" revision=1 `) {
				line = l
			}
		}
	}
	m := regexp.MustCompile(` took=(\S+) split=[0-9.]+/([0-9.]+)/`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("no took and split in %q", line)
	}
	took, err := time.ParseDuration(m[1])
	if err != nil {
		t.Fatal(err)
	}
	compute, _ := strconv.ParseFloat(m[2], 64)
	if compute < float64(time.Hour/time.Millisecond) {
		t.Fatalf("split's compute %v ms, want the clock's hour: %q", compute, line)
	}
	if took < time.Hour {
		t.Errorf("took %v, want at least the compute's hour: %q", took, line)
	}
	split := regexp.MustCompile(` split=(\S+)`).FindStringSubmatch(line)
	if split == nil || strings.Count(split[1], "/") != 8 {
		t.Errorf("split has not 9 fields (received/compute/find/sync/push/inforce/ports/services/status): %q", line)
	}
}

// syncBuffer is a bytes.Buffer for concurrent writers.
type syncBuffer = testutil.LogBuffer
