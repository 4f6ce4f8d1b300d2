package scale

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/l7gate/l7gate/deploy"
	"github.com/l7gate/l7gate/k8s"
)

// BenchmarkReportWrite measures what one node's report write costs the
// API server (issue 22): each iteration is one PATCH of one of 50 per-node
// objects, as a policy change makes every node write its report. The
// number that matters is cpu-ms/write: the CPU of this process (the
// kube-apiserver and etcd run in it, with the client, whose share is a
// JSON encoding of the patch and a decoding of the answer) per write,
// less sensitive to the machine's load than the wall time. Run:
//
//	go test -run '^$' -bench ReportWrite -benchtime 600x ./bench/scale/
//
// Cases: the PolicyNodeStatus CRD with an entry per policy (today's
// report; one entry changes per write), the same CRD with one entry
// (a constant-size report), a per-node ConfigMap holding the same report
// as JSON (JSON and protobuf clients), a per-node Lease's renewTime, and
// a GET of a Lease (a non-elected agent's poll of the election).
func BenchmarkReportWrite(b *testing.B) {
	skipUnlessUsable(b)
	quietKlog(b)
	admin := startCluster(b)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	dyn, err := dynamic.NewForConfig(admin)
	if err != nil {
		b.Fatal(err)
	}
	crds, err := deploy.CRDs()
	if err != nil {
		b.Fatal(err)
	}
	if err := k8s.EnsureCRDs(ctx, dyn, crds, nil); err != nil {
		b.Fatal(err)
	}
	for ctx.Err() == nil {
		if _, err := dyn.Resource(k8s.PolicyNodeStatusResource()).List(ctx, metav1.ListOptions{}); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	client, err := kubernetes.NewForConfig(admin)
	if err != nil {
		b.Fatal(err)
	}
	pcfg := rest.CopyConfig(admin)
	pcfg.ContentType = "application/vnd.kubernetes.protobuf"
	pcfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	pclient, err := kubernetes.NewForConfig(pcfg)
	if err != nil {
		b.Fatal(err)
	}
	const objects = 50
	run := 0
	bench := func(name string, setup func(i int) error, write func(i, n int) error) {
		run++
		b.Run(name, func(b *testing.B) {
			for i := range objects {
				if err := setup(i); err != nil && !apierrors.IsAlreadyExists(err) {
					b.Fatal(err)
				}
			}
			// Warm up (caches, connections).
			for i := range objects {
				if err := write(i, 1); err != nil {
					b.Fatal(err)
				}
			}
			cpu0, _ := processCPU(os.Getpid())
			start := time.Now()
			b.ResetTimer()
			for n := range b.N {
				if err := write(n%objects, n+2); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			cpu1, _ := processCPU(os.Getpid())
			b.ReportMetric(float64((cpu1-cpu0).Microseconds())/1000/float64(b.N), "cpu-ms/write")
			b.ReportMetric(float64(time.Since(start).Microseconds())/1000/float64(b.N), "wall-ms/write")
			b.Logf("%s: load %s", name, loadavg())
		})
	}
	entry := func(p, gen int) map[string]any {
		return map[string]any{"uid": fmt.Sprintf("0c8a1f2e-5b7d-4c1e-9a3f-%012d", p), "ok": true, "enforcing": true,
			"revision": int64(1000 + gen), "observedGeneration": int64(gen), "lastUpdated": time.Now().UTC().Format(time.RFC3339)}
	}
	entries := func(pols, gen int) map[string]any {
		m := map[string]any{}
		for p := range pols {
			m[fmt.Sprintf("CiliumNetworkPolicy/scale-ns-%02d/policy-%03d", p%20, p)] = entry(p, gen)
		}
		return m
	}
	pns := dyn.Resource(k8s.PolicyNodeStatusResource())
	for _, pols := range []int{1, 10, 50} {
		prefix := fmt.Sprintf("w%d-crd%d-", run, pols)
		bench(fmt.Sprintf("crd/policies=%d", pols), func(i int) error {
			u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "l7gate.io/v1alpha1", "kind": "PolicyNodeStatus",
				"metadata": map[string]any{"name": fmt.Sprintf("%s%04d", prefix, i)},
				"status":   map[string]any{"policies": entries(pols, 1)}}}
			_, err := pns.Create(ctx, u, metav1.CreateOptions{FieldManager: "l7gate-agent"})
			return err
		}, func(i, n int) error {
			// What writeNodeStatus sends after one policy's change: that
			// entry, whole.
			p := n % pols
			patch, _ := json.Marshal(map[string]any{"status": map[string]any{"policies": map[string]any{
				fmt.Sprintf("CiliumNetworkPolicy/scale-ns-%02d/policy-%03d", p%20, p): entry(p, n)}}})
			_, err := pns.Patch(ctx, fmt.Sprintf("%s%04d", prefix, i), types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "l7gate-agent"})
			return err
		})
	}
	for _, c := range []struct {
		name string
		cl   kubernetes.Interface
	}{{"json", client}, {"protobuf", pclient}} {
		for _, pols := range []int{1, 10} {
			prefix := fmt.Sprintf("w%d-cm%d-%s-", run, pols, c.name)
			cms := c.cl.CoreV1().ConfigMaps("default")
			report := func(gen int) string {
				b, _ := json.Marshal(entries(pols, gen))
				return string(b)
			}
			bench(fmt.Sprintf("configmap-%s/policies=%d", c.name, pols), func(i int) error {
				_, err := cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s%04d", prefix, i)},
					Data: map[string]string{"report": report(1)}}, metav1.CreateOptions{FieldManager: "l7gate-agent"})
				return err
			}, func(i, n int) error {
				patch, _ := json.Marshal(map[string]any{"data": map[string]any{"report": report(n)}})
				_, err := cms.Patch(ctx, fmt.Sprintf("%s%04d", prefix, i), types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "l7gate-agent"})
				return err
			})
		}
		prefix := fmt.Sprintf("w%d-lease-%s-", run, c.name)
		leases := c.cl.CoordinationV1().Leases("default")
		bench("lease-"+c.name, func(i int) error {
			holder := strings.TrimSuffix(prefix, "-")
			_, err := leases.Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s%04d", prefix, i)},
				Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder}}, metav1.CreateOptions{FieldManager: "l7gate-agent"})
			return err
		}, func(i, n int) error {
			patch, _ := json.Marshal(map[string]any{"spec": map[string]any{"renewTime": metav1.NewMicroTime(time.Unix(int64(n), 0))}})
			_, err := leases.Patch(ctx, fmt.Sprintf("%s%04d", prefix, i), types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "l7gate-agent"})
			return err
		})
		// What a non-elected agent's poll of the election's Lease costs
		// (a GET of one Lease; not a write).
		bench("lease-get-"+c.name, func(int) error { return nil }, func(i, _ int) error {
			_, err := leases.Get(ctx, fmt.Sprintf("%s%04d", prefix, i), metav1.GetOptions{})
			return err
		})
	}
}
