package k8s

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/source"
)

// testStatusOncePerBatch: nodes that implement a change one after
// another, their reports arriving over more than aggregateQuiet in all
// but closer together than it, cost the policy one merged status write
// (the settled batch), not one partial write and then the whole one; and
// that write comes after the last node reported (Implemented True never
// early).
func testStatusOncePerBatch(ctx context.Context, t *testing.T, c *cluster) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// A cluster of our own: the earlier tests' nodes and reports go.
	if err := c.client.CoreV1().Nodes().DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := reportsOf(c).DeleteCollection(ctx); err != nil {
		t.Fatal(err)
	}
	nodes := []string{"batch-1", "batch-2", "batch-3", "batch-4", "batch-5"}
	for _, n := range nodes {
		if _, err := c.client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	mustCreateNamespace(ctx, t, c, "batch", nil)
	mustCreatePod(ctx, t, c, "batch", "api", map[string]string{"app": "api"}, "198.18.0.70", nil)
	mustCreatePod(ctx, t, c, "batch", "web", map[string]string{"app": "web"}, "198.18.0.71", nil)
	cnps := c.dyn.Resource(CNPResource()).Namespace("batch")
	if _, err := cnps.Create(ctx, cnp("batch", "settled", httpPolicy(8080, "/a/.*")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	srcClient, srcDyn, _ := agentClients(t, c)
	src, err := NewSource(SourceConfig{Client: srcClient, Dynamic: srcDyn, Node: "batch-1", Debounce: 50 * time.Millisecond, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan source.Update)
	go src.Run(ctx, ch)
	up := &updates{t: t, ch: ch}

	// A status nodes limit of 1: the Implemented condition counts the
	// nodes, as in a cluster larger than the default limit.
	election := ElectionConfig{LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 500 * time.Millisecond, StatusNodesLimit: 1}
	writers := map[string]*StatusWriter{}
	var logs []*requestLog
	for _, n := range nodes {
		client, dyn, log := agentClients(t, c)
		w, err := NewStatusWriter(StatusWriterConfig{Client: client, Dynamic: dyn, Node: n, Source: src, Election: election, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		go w.Run(ctx)
		writers[n], logs = w, append(logs, log)
	}
	const statusPath = "PATCH /apis/cilium.io/v2/namespaces/batch/ciliumnetworkpolicies/settled/status 200"
	statusWrites := func() int {
		n := 0
		for _, l := range logs {
			n += l.count(func(k string) bool { return k == statusPath })
		}
		return n
	}
	implemented := func(gen int64, msg string) func(map[string]any) bool {
		return func(st map[string]any) bool {
			c := findCondition(st, ConditionImplemented)
			return c != nil && fmt.Sprint(c["observedGeneration"]) == fmt.Sprint(gen) && c["message"] == msg
		}
	}

	// Generation 1, every node at once: one agent is elected and writes it.
	u, _ := up.await("the settled policy", func(_ source.Update, s *policy.Snapshot) bool { return l7Path(s, "batch", "api", 8080) == "/a/.*" })
	for _, n := range nodes {
		writers[n].Implemented(ctx, 1, u, nil)
	}
	waitStatus(ctx, t, c, CNPResource(), "batch", "settled", implemented(1, "5 of 5 nodes implemented generation 1"))

	// Generation 2, the nodes one after another, gap apart: 4 gaps make
	// more than aggregateQuiet (the fixed wait before a partial write
	// once was a second), each well within it.
	gap := aggregateQuiet * 3 / 10
	specPatch, _ := json.Marshal(map[string]any{"spec": cnp("", "", httpPolicy(8080, "/b/.*")).Object["spec"]})
	if _, err := cnps.Patch(ctx, "settled", types.MergePatchType, specPatch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	before := statusWrites()
	u, _ = up.await("generation 2", func(_ source.Update, s *policy.Snapshot) bool { return l7Path(s, "batch", "api", 8080) == "/b/.*" })
	for i, n := range nodes {
		if i > 0 {
			time.Sleep(gap)
		}
		if i == len(nodes)-1 {
			// Fail closed: until the last node reported, the status
			// never says generation 2 is implemented.
			o, err := cnps.Get(ctx, "settled", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			st, _ := o.Object["status"].(map[string]any)
			if c := findCondition(st, ConditionImplemented); c != nil && c["status"] == "True" && fmt.Sprint(c["observedGeneration"]) == "2" {
				t.Errorf("Implemented %v before %s reported generation 2", c, n)
			}
		}
		writers[n].Implemented(ctx, 2, u, nil)
	}
	st := waitStatus(ctx, t, c, CNPResource(), "batch", "settled", implemented(2, "5 of 5 nodes implemented generation 2"))
	if condStatus(st, ConditionImplemented) != "True" {
		t.Errorf("Implemented %v: want True once every node reported", findCondition(st, ConditionImplemented))
	}
	// (Anything else written would follow at once: a short look.)
	time.Sleep(aggregateTick * 4)
	if n := statusWrites() - before; n != 1 {
		t.Errorf("%d merged status writes for generation 2 (reports %v apart over %v): want 1, once the reports settled", n, gap, gap*time.Duration(len(nodes)-1))
	}
	if s := fmt.Sprint(st["nodes"]); strings.Contains(s, "batch-") {
		t.Errorf("status.nodes %s: want no node listed (every node implemented, more nodes than the limit)", s)
	}
}
