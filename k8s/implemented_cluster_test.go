package k8s

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/l7gate/l7gate/deploy"
	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/source"
)

// testImplementedCountsNodes: the Implemented condition counts the nodes
// that should run an agent (the Node objects), not the nodes that
// reported: a node whose agent never wrote its PolicyNodeStatus is
// pending and named, and a deleted node's lingering report counts for
// nothing.
func testImplementedCountsNodes(ctx context.Context, t *testing.T, c *cluster) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// The tests before deleted the PolicyNodeStatus CRD.
	crds, err := deploy.CRDs()
	if err != nil {
		t.Fatal(err)
	}
	if err := EnsureCRDs(ctx, c.dyn, crds, testLogger(t)); err != nil {
		t.Fatal(err)
	}
	pns := c.dyn.Resource(PolicyNodeStatusResource())
	for deadline := time.Now().Add(30 * time.Second); ; {
		if _, err := pns.List(ctx, metav1.ListOptions{}); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("policynodestatuses never listed: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The election's Lease lives in kube-system (the earlier tests'
	// kube-apiserver made it by now; alone, this test does).
	if _, err := c.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kube-system"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	// A cluster of our own: the earlier tests' nodes and reports go.
	if err := c.client.CoreV1().Nodes().DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := pns.DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := reportsOf(c).DeleteCollection(ctx); err != nil {
		t.Fatal(err)
	}
	createNode := func(name string, labels map[string]string) {
		t.Helper()
		if _, err := c.client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{"impl-1", "impl-2", "impl-3"} {
		createNode(n, nil)
	}
	mustCreateNamespace(ctx, t, c, "implcount", nil)
	mustCreatePod(ctx, t, c, "implcount", "api", map[string]string{"app": "api"}, "198.18.0.60", nil)
	mustCreatePod(ctx, t, c, "implcount", "web", map[string]string{"app": "web"}, "198.18.0.61", nil)
	cnps := c.dyn.Resource(CNPResource()).Namespace("implcount")
	if _, err := cnps.Create(ctx, cnp("implcount", "counted", httpPolicy(8080, "/a/.*")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	srcClient, srcDyn, _ := agentClients(t, c)
	src, err := NewSource(SourceConfig{Client: srcClient, Dynamic: srcDyn, Node: "impl-1", Debounce: 50 * time.Millisecond, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan source.Update)
	go src.Run(ctx, ch)
	up := &updates{t: t, ch: ch}

	// A status nodes limit of 1: with more nodes, the Implemented
	// condition counts them. Nodes labelled l7gate.test/no-agent run no
	// agent (as with a DaemonSet nodeSelector).
	election := ElectionConfig{LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second,
		RetryPeriod: 500 * time.Millisecond, StatusNodesLimit: 1, StatusNodeSelector: "!l7gate.test/no-agent"}
	type agentW struct {
		w      *StatusWriter
		rev    uint64
		cancel context.CancelFunc
		done   chan struct{}
	}
	agents := map[string]*agentW{}
	start := func(node string) {
		client, dyn, _ := agentClients(t, c)
		w, err := NewStatusWriter(StatusWriterConfig{Client: client, Dynamic: dyn, Node: node, Source: src, Election: election, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		wctx, wcancel := context.WithCancel(ctx)
		a := &agentW{w: w, cancel: wcancel, done: make(chan struct{})}
		go func() { defer close(a.done); w.Run(wctx) }()
		agents[node] = a
	}
	implement := func(u source.Update, names ...string) {
		for _, n := range names {
			a := agents[n]
			a.rev++
			a.w.Implemented(ctx, a.rev, u, nil)
		}
	}
	implemented := func(gen int64, prefix string) func(map[string]any) bool {
		return func(st map[string]any) bool {
			c := findCondition(st, ConditionImplemented)
			return c != nil && fmt.Sprint(c["observedGeneration"]) == fmt.Sprint(gen) && strings.HasPrefix(fmt.Sprint(c["message"]), prefix)
		}
	}

	// Three nodes, two agents reporting: two of three implemented, and the
	// third is named.
	start("impl-1")
	start("impl-2")
	u, _ := up.await("the counted policy", func(_ source.Update, s *policy.Snapshot) bool {
		return l7Path(s, "implcount", "api", 8080) == "/a/.*"
	})
	implement(u, "impl-1", "impl-2")
	st := waitStatus(ctx, t, c, CNPResource(), "implcount", "counted", implemented(1, "2 of "))
	if condStatus(st, ConditionImplemented) != "False" || !strings.HasPrefix(condMessage(st, ConditionImplemented), "2 of 3 nodes implemented generation 1") ||
		!strings.Contains(condMessage(st, ConditionImplemented), "impl-3") {
		t.Errorf("Implemented %v with 3 nodes, 2 reporting: want False, \"2 of 3 nodes implemented generation 1\" naming impl-3", findCondition(st, ConditionImplemented))
	}
	if nodeFieldOf(st, "impl-3", "ok") != false || !strings.Contains(fmt.Sprint(nodeFieldOf(st, "impl-3", "error")), "no report") {
		t.Errorf("status.nodes %v: want impl-3 listed as pending (no report)", st["nodes"])
	}

	// The third agent reports: every node implemented generation 1.
	start("impl-3")
	implement(u, "impl-3")
	st = waitStatus(ctx, t, c, CNPResource(), "implcount", "counted", implemented(1, "3 of "))
	if condStatus(st, ConditionImplemented) != "True" || condMessage(st, ConditionImplemented) != "3 of 3 nodes implemented generation 1" || len(mapOf(st["nodes"])) != 0 {
		t.Errorf("status %v: want Implemented True, 3 of 3, and no node listed", st)
	}

	// impl-3 is deleted; its report lingers (this API server runs no
	// garbage collector; in a cluster, until it runs). Generation 2,
	// implemented by the two nodes left: 2 of 2, the lingering report
	// (generation 1) neither counted nor listed.
	agents["impl-3"].cancel()
	<-agents["impl-3"].done
	if err := c.client.CoreV1().Nodes().Delete(ctx, "impl-3", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := reportsOf(c).Get(ctx, "impl-3", metav1.GetOptions{}); err != nil {
		t.Fatalf("impl-3's report: %v", err)
	}
	// (A merge patch of the spec: the aggregator writes the status
	// meanwhile, an update of what was read could conflict.)
	specPatch, _ := json.Marshal(map[string]any{"spec": cnp("", "", httpPolicy(8080, "/b/.*")).Object["spec"]})
	if _, err := cnps.Patch(ctx, "counted", types.MergePatchType, specPatch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	u, _ = up.await("generation 2", func(_ source.Update, s *policy.Snapshot) bool { return l7Path(s, "implcount", "api", 8080) == "/b/.*" })
	implement(u, "impl-1", "impl-2")
	st = waitStatus(ctx, t, c, CNPResource(), "implcount", "counted", implemented(2, "2 of "))
	if condStatus(st, ConditionImplemented) != "True" || condMessage(st, ConditionImplemented) != "2 of 2 nodes implemented generation 2" || nodeFieldOf(st, "impl-3", "ok") != nil {
		t.Errorf("status %v: want Implemented True, 2 of 2 (impl-3 deleted), impl-3 not listed", st)
	}

	// A node outside the selector runs no agent: not counted. A new node
	// inside it is pending until its agent reports; labelled out of the
	// selector, it no longer counts.
	createNode("impl-4", map[string]string{"l7gate.test/no-agent": "true"})
	createNode("impl-5", nil)
	st = waitStatus(ctx, t, c, CNPResource(), "implcount", "counted", implemented(2, "2 of 3 "))
	if condStatus(st, ConditionImplemented) != "False" || condMessage(st, ConditionImplemented) != "2 of 3 nodes implemented generation 2; 1 node has not reported: impl-5" ||
		nodeFieldOf(st, "impl-5", "error") != pendingNoReport || nodeFieldOf(st, "impl-4", "ok") != nil {
		t.Errorf("status %v: want Implemented False naming impl-5 (impl-4 runs no agent), impl-5 listed as pending", st)
	}
	patch := []byte(`{"metadata":{"labels":{"l7gate.test/no-agent":"true"}}}`)
	if _, err := c.client.CoreV1().Nodes().Patch(ctx, "impl-5", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	st = waitStatus(ctx, t, c, CNPResource(), "implcount", "counted", implemented(2, "2 of 2 "))
	if condStatus(st, ConditionImplemented) != "True" || nodeFieldOf(st, "impl-5", "ok") != nil {
		t.Errorf("status %v: want Implemented True, 2 of 2, impl-5 no longer listed", st)
	}
}

func mapOf(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}
