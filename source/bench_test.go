package source

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// benchPods is the shape of make bench's control-plane phase: local and
// cluster pods with 500 label sets in one file.
func benchPods(n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: syn-%d\n  namespace: bench\n  labels:\n    app: svc-%d\n    tier: t\nstatus:\n  podIP: 198.19.%d.%d\n",
			i, i%500, i/250, 1+i%250)
	}
	return b.String()
}

func benchPolicy(i int) string {
	return fmt.Sprintf(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-l7, namespace: bench}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {tier: t}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/"}, {method: GET, path: "/extra/%d"}]
`, i)
}

// cpuTime is the process's user+system CPU time (less sensitive to a
// shared machine's load than wall time).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// writeAtomic writes a file as an editor or kubectl-like tool would: a
// temporary file renamed over the old one.
func writeAtomic(tb testing.TB, name string, data []byte) {
	tb.Helper()
	tmp := filepath.Join(filepath.Dir(name), "."+filepath.Base(name)+".tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(tmp, name); err != nil {
		tb.Fatal(err)
	}
}

// BenchmarkFolderPolicyChange: a CNP file rewritten (atomic rename) in a
// folder that also holds 11k pods, until the folder source delivers the
// update: the source's share of issue 19's file-write → implemented row.
func BenchmarkFolderPolicyChange(b *testing.B) {
	for _, pods := range []int{1000, 11000} {
		b.Run(fmt.Sprintf("pods=%d", pods), func(b *testing.B) {
			dir := b.TempDir()
			writeAtomic(b, filepath.Join(dir, "pods.yaml"), []byte(benchPods(pods)))
			writeAtomic(b, filepath.Join(dir, "policy.yaml"), []byte(benchPolicy(0)))
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			updates := make(chan Update)
			go (&Folder{Dir: dir, Interval: time.Hour}).Run(ctx, updates)
			<-updates
			var lat []time.Duration
			cpu0 := cpuTime()
			b.ResetTimer()
			for i := range b.N {
				t0 := time.Now()
				writeAtomic(b, filepath.Join(dir, "policy.yaml"), []byte(benchPolicy(i+1)))
				for {
					u := <-updates
					if len(u.Objects.Policies) == 1 && strings.Contains(fmt.Sprint(u.Objects.Policies[0].Ref), "server-l7") {
						break
					}
				}
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/1000/float64(b.N), "cpu-ms/op")
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
			b.ReportMetric(float64(lat[(len(lat)-1)*99/100].Microseconds())/1000, "p99-ms")
		})
	}
}
