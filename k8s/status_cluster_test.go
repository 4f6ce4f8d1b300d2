package k8s

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/source"
)

// requestLog counts an agent's requests by method, resource path and
// status code.
type requestLog struct {
	mu    sync.Mutex
	codes map[string]int
}

func (l *requestLog) count(pred func(key string) bool) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for k, v := range l.codes {
		if pred(k) {
			n += v
		}
	}
	return n
}

type loggingTransport struct {
	next http.RoundTripper
	log  *requestLog
}

func (t *loggingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.next.RoundTrip(r)
	code := 0
	if resp != nil {
		code = resp.StatusCode
	}
	t.log.mu.Lock()
	t.log.codes[fmt.Sprintf("%s %s %d", r.Method, r.URL.Path, code)]++
	t.log.mu.Unlock()
	return resp, err
}

// agentClients are clients as the chart's service account, with their
// requests counted.
func agentClients(t *testing.T, c *cluster) (kubernetes.Interface, dynamic.Interface, *requestLog) {
	t.Helper()
	cfg := rest.CopyConfig(c.cfg)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:kube-system:l7gate"}
	log := &requestLog{codes: map[string]int{}}
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { return &loggingTransport{next: rt, log: log} })
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return client, dyn, log
}

// reportStore reads and deletes the nodes' report ConfigMaps by node.
type reportStore struct{ ri dynamic.ResourceInterface }

func reportsOf(c *cluster) reportStore {
	return reportStore{c.dyn.Resource(configMapResource).Namespace(DefaultReportNamespace)}
}

func (r reportStore) Get(ctx context.Context, node string, o metav1.GetOptions) (*unstructured.Unstructured, error) {
	return r.ri.Get(ctx, reportName(node), o)
}

func (r reportStore) Delete(ctx context.Context, node string, o metav1.DeleteOptions) error {
	return r.ri.Delete(ctx, reportName(node), o)
}

func (r reportStore) DeleteCollection(ctx context.Context) error {
	return r.ri.DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: reportLabel})
}

func nodeFieldOf(st map[string]any, node, field string) any {
	v, _, _ := unstructured.NestedFieldNoCopy(st, "nodes", node, field)
	return v
}

// testStatusAcrossNodes: several agents report through their
// PolicyNodeStatus; the elected one merges them into the policy's status
// (status.nodes per node, conditions), without conflicts; another takes
// over when it stops; a deleted node's entry goes; a restarted agent
// rewrites nothing unchanged; without the CRD, agents patch the policy
// directly.
func testStatusAcrossNodes(ctx context.Context, t *testing.T, c *cluster) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	nodes := []string{"node-x", "node-y"}
	for _, n := range nodes {
		if _, err := c.client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Earlier tests' node: it reports nothing here.
	pns := reportsOf(c)
	if err := pns.Delete(ctx, testNode, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	mustCreateNamespace(ctx, t, c, "multi", nil)
	mustCreatePod(ctx, t, c, "multi", "api", map[string]string{"app": "api"}, "198.18.0.40", nil)
	mustCreatePod(ctx, t, c, "multi", "web", map[string]string{"app": "web"}, "198.18.0.41", nil)
	cnps := c.dyn.Resource(CNPResource()).Namespace("multi")
	if _, err := cnps.Create(ctx, cnp("multi", "shared", httpPolicy(8080, "/a/.*")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	srcClient, srcDyn, _ := agentClients(t, c)
	src, err := NewSource(SourceConfig{Client: srcClient, Dynamic: srcDyn, Node: nodes[0], Debounce: 50 * time.Millisecond, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan source.Update)
	go src.Run(ctx, ch)
	up := &updates{t: t, ch: ch}

	election := ElectionConfig{LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 500 * time.Millisecond}
	type agentW struct {
		w      *StatusWriter
		log    *requestLog
		cancel context.CancelFunc
		done   chan struct{}
		rev    uint64
		// reported receives each revision the writer processed.
		reported chan uint64
	}
	start := func(node string) *agentW {
		client, dyn, log := agentClients(t, c)
		reported := make(chan uint64, 64)
		w, err := NewStatusWriter(StatusWriterConfig{Client: client, Dynamic: dyn, Node: node, Source: src, Election: election, Logger: testLogger(t),
			Reported: func(rev uint64) {
				select {
				case reported <- rev:
				default:
				}
			}})
		if err != nil {
			t.Fatal(err)
		}
		wctx, wcancel := context.WithCancel(ctx)
		a := &agentW{w: w, log: log, cancel: wcancel, done: make(chan struct{}), reported: reported}
		go func() { defer close(a.done); w.Run(wctx) }()
		return a
	}
	agents := map[string]*agentW{}
	for _, n := range nodes {
		agents[n] = start(n)
	}
	implement := func(u source.Update, failures []source.EndpointFailure, names ...string) {
		for _, n := range names {
			a := agents[n]
			a.rev++
			a.w.Implemented(ctx, a.rev, u, failures)
		}
	}
	conflicts := func() int {
		n := 0
		for _, a := range agents {
			n += a.log.count(func(k string) bool {
				if strings.HasSuffix(k, " 409") {
					t.Logf("409: %s", k)
					return true
				}
				return false
			})
		}
		return n
	}

	u, _ := up.await("the shared policy", func(_ source.Update, s *policy.Snapshot) bool { return l7Path(s, "multi", "api", 8080) == "/a/.*" })
	implement(u, nil, nodes...)
	st := waitStatus(ctx, t, c, CNPResource(), "multi", "shared", func(st map[string]any) bool {
		return fmt.Sprint(nodeFieldOf(st, "node-x", "observedGeneration")) == "1" && fmt.Sprint(nodeFieldOf(st, "node-y", "observedGeneration")) == "1" &&
			condStatus(st, ConditionValid) == "True"
	})
	if nodeFieldOf(st, "node-x", "revision") == nil || nodeFieldOf(st, "node-y", "ok") != true {
		t.Errorf("status.nodes %v: want each node's revision and ok", st["nodes"])
	}
	// The earlier tests' node exists but reports nothing here: it is
	// pending, not left out.
	if nodeFieldOf(st, testNode, "ok") != false || nodeFieldOf(st, testNode, "error") != pendingNoReport {
		t.Errorf("status.nodes %v: want %s listed as pending", st["nodes"], testNode)
	}
	// Each node's report is its own object, owned by its Node; the
	// policy's status is written by the aggregator only.
	for _, n := range nodes {
		o, err := pns.Get(ctx, n, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("report of %s: %v", n, err)
		}
		if refs := o.GetOwnerReferences(); len(refs) != 1 || refs[0].Kind != "Node" || refs[0].Name != n {
			t.Errorf("report of %s owners %v: want its Node", n, refs)
		}
	}
	// A node's report is created once, then patched with what changed
	// (not applied whole: that cost the API server twice the CPU).
	for _, n := range nodes {
		o, _ := pns.Get(ctx, n, metav1.GetOptions{})
		for _, mf := range o.GetManagedFields() {
			if mf.Manager == nodeFieldManager && mf.Operation != metav1.ManagedFieldsOperationUpdate {
				t.Errorf("report of %s written by %s with %s; want create and merge patch (Update)", n, mf.Manager, mf.Operation)
			}
		}
	}
	obj, err := cnps.Get(ctx, "shared", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range obj.GetManagedFields() {
		if mf.Subresource == "status" && mf.Manager != aggregatorManager {
			t.Errorf("status written by %q: only %s writes a policy's status", mf.Manager, aggregatorManager)
		}
	}

	// A new generation, and node-y with an endpoint failing closed: Valid
	// stays True (the policy is valid), node-y's entry names the endpoint.
	obj.Object["spec"] = cnp("", "", httpPolicy(8080, "/b/.*")).Object["spec"]
	if _, err := cnps.Update(ctx, obj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	u, _ = up.await("generation 2", func(_ source.Update, s *policy.Snapshot) bool { return l7Path(s, "multi", "api", 8080) == "/b/.*" })
	implement(u, nil, "node-x")
	implement(u, []source.EndpointFailure{{Endpoint: "multi/api", Step: "datapath policy", Directions: []string{"ingress"}, Error: "map full",
		Policies: []source.PolicyRef{{Kind: "CiliumNetworkPolicy", Name: "multi/shared"}}}}, "node-y")
	st = waitStatus(ctx, t, c, CNPResource(), "multi", "shared", func(st map[string]any) bool {
		return fmt.Sprint(nodeFieldOf(st, "node-x", "observedGeneration")) == "2" && fmt.Sprint(nodeFieldOf(st, "node-y", "observedGeneration")) == "2"
	})
	if condStatus(st, ConditionValid) != "True" || nodeFieldOf(st, "node-y", "ok") != false ||
		!strings.Contains(fmt.Sprint(nodeFieldOf(st, "node-y", "error")), "multi/api: datapath policy: map full") || nodeFieldOf(st, "node-x", "ok") != true {
		t.Errorf("status %v: want Valid, node-y not ok naming multi/api, node-x ok", st)
	}

	// node-y's endpoint recovers: its entry loses the error, in its own
	// report and in the policy's status.
	implement(u, nil, "node-y")
	waitStatus(ctx, t, c, CNPResource(), "multi", "shared", func(st map[string]any) bool {
		return nodeFieldOf(st, "node-y", "ok") == true && nodeFieldOf(st, "node-y", "error") == nil
	})
	if o, err := pns.Get(ctx, "node-y", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	} else if e := nodeStatusEntries(o)["CiliumNetworkPolicy/multi/shared"]; !e.OK || e.Error != "" {
		t.Errorf("node-y's report after its endpoint recovered: %+v; want ok without an error", e)
	}
	// Created, then patched: the agent owns status.policies as one atomic
	// map, so managedFields names the map and none of its entries (listing
	// every entry's fields was 44% of the object, which each write
	// decodes, merges and stores again; make scale).
	for _, n := range nodes {
		o, err := pns.Get(ctx, n, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		owned := false
		for _, mf := range o.GetManagedFields() {
			if mf.Manager != nodeFieldManager || mf.FieldsV1 == nil {
				continue
			}
			fields := string(mf.FieldsV1.Raw)
			if strings.Contains(fields, "CiliumNetworkPolicy/") || strings.Contains(fields, "f:observedGeneration") {
				t.Errorf("report of %s: %s's managedFields name the entries: %s", n, mf.Manager, fields)
			}
			owned = owned || strings.Contains(fields, `"f:policies":{}`)
		}
		if !owned {
			t.Errorf("report of %s: managedFields %+v; want %s owning status.policies whole", n, o.GetManagedFields(), nodeFieldManager)
		}
	}

	// The leader stops: the other node takes over and merges generation 3.
	lease, err := c.client.CoordinationV1().Leases("kube-system").Get(ctx, defaultLeaseName, metav1.GetOptions{})
	if err != nil || lease.Spec.HolderIdentity == nil {
		t.Fatalf("lease: %v %v", lease, err)
	}
	leader := *lease.Spec.HolderIdentity
	other := map[string]string{"node-x": "node-y", "node-y": "node-x"}[leader]
	if other == "" {
		t.Fatalf("lease held by %q, not one of %v", leader, nodes)
	}
	agents[leader].cancel()
	<-agents[leader].done
	obj, _ = cnps.Get(ctx, "shared", metav1.GetOptions{})
	obj.Object["spec"] = cnp("", "", httpPolicy(8080, "/c/.*")).Object["spec"]
	if _, err := cnps.Update(ctx, obj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	u, _ = up.await("generation 3", func(_ source.Update, s *policy.Snapshot) bool { return l7Path(s, "multi", "api", 8080) == "/c/.*" })
	implement(u, nil, other)
	waitStatus(ctx, t, c, CNPResource(), "multi", "shared", func(st map[string]any) bool {
		return fmt.Sprint(nodeFieldOf(st, other, "observedGeneration")) == "3" && fmt.Sprint(nodeFieldOf(st, leader, "observedGeneration")) == "2"
	})

	// The stopped node's report is deleted while its Node stays: the
	// node is pending (listed, not ok), not left out.
	if err := pns.Delete(ctx, leader, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitStatus(ctx, t, c, CNPResource(), "multi", "shared", func(st map[string]any) bool {
		return nodeFieldOf(st, leader, "ok") == false && nodeFieldOf(st, leader, "error") == pendingNoReport && nodeFieldOf(st, other, "ok") == true
	})
	// The node is deleted (the garbage collector, which this API server
	// runs without, would delete its PolicyNodeStatus with it): its entry
	// goes.
	if err := c.client.CoreV1().Nodes().Delete(ctx, leader, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitStatus(ctx, t, c, CNPResource(), "multi", "shared", func(st map[string]any) bool {
		return nodeFieldOf(st, leader, "ok") == nil && nodeFieldOf(st, other, "ok") == true
	})

	// A restarted agent that implements what it reported before writes
	// nothing.
	before, err := pns.Get(ctx, other, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	agents[other].cancel()
	<-agents[other].done
	agents[other] = start(other)
	implement(u, nil, other)
	awaitReported(t, agents[other].reported, agents[other].rev)
	after, err := pns.Get(ctx, other, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if before.GetResourceVersion() != after.GetResourceVersion() {
		t.Errorf("a restarted agent rewrote an unchanged report: %v then %v", before.Object["status"], after.Object["status"])
	}
	// A second policy, then gone: its entry goes from the node's report
	// (a patch that removes it), the other entry stays.
	if _, err := cnps.Create(ctx, cnp("multi", "extra", httpPolicy(8081, "/x")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ux, _ := up.await("the extra policy", func(_ source.Update, s *policy.Snapshot) bool { return l7Path(s, "multi", "api", 8081) == "/x" })
	implement(ux, nil, other)
	waitStatus(ctx, t, c, CNPResource(), "multi", "extra", func(st map[string]any) bool {
		return fmt.Sprint(nodeFieldOf(st, other, "observedGeneration")) == "1"
	})
	if err := cnps.Delete(ctx, "extra", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	ux, _ = up.await("the extra policy gone", func(_ source.Update, s *policy.Snapshot) bool { return l7Path(s, "multi", "api", 8081) == "" })
	implement(ux, nil, other)
	awaitReported(t, agents[other].reported, agents[other].rev)
	o, err := pns.Get(ctx, other, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if e := nodeStatusEntries(o); e["CiliumNetworkPolicy/multi/extra"].UID != "" || e["CiliumNetworkPolicy/multi/shared"].ObservedGeneration != 3 {
		t.Errorf("report of %s after the extra policy went: %v; want no multi/extra, multi/shared at generation 3", other, e)
	}
	// The report deleted under a running agent (by hand): the next change
	// creates it again, whole and owned by the Node.
	if err := pns.Delete(ctx, other, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// (A merge patch of the spec: the aggregator writes the status
	// meanwhile, an update of what was read could conflict.)
	specPatch, _ := json.Marshal(map[string]any{"spec": cnp("", "", httpPolicy(8080, "/d/.*")).Object["spec"]})
	if _, err := cnps.Patch(ctx, "shared", types.MergePatchType, specPatch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	u, _ = up.await("generation 4", func(_ source.Update, s *policy.Snapshot) bool { return l7Path(s, "multi", "api", 8080) == "/d/.*" })
	implement(u, nil, other)
	awaitReported(t, agents[other].reported, agents[other].rev)
	o, err = pns.Get(ctx, other, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("report of %s not written again: %v", other, err)
	}
	if e := nodeStatusEntries(o); e["CiliumNetworkPolicy/multi/shared"].ObservedGeneration != 4 || e["CiliumClusterwideNetworkPolicy/hosts"].UID == "" {
		t.Errorf("report of %s written again: %v; want every entry (multi/shared at generation 4, hosts)", other, e)
	}
	if refs := o.GetOwnerReferences(); len(refs) != 1 || refs[0].Kind != "Node" || refs[0].Name != other {
		t.Errorf("report of %s written again with owners %v: want its Node", other, refs)
	}
	waitStatus(ctx, t, c, CNPResource(), "multi", "shared", func(st map[string]any) bool {
		return fmt.Sprint(nodeFieldOf(st, other, "observedGeneration")) == "4"
	})
	if n := conflicts(); n != 0 {
		t.Errorf("%d requests answered 409 Conflict; want none", n)
	}

	// A cluster in the middle of an upgrade: node-old runs an agent of the
	// version before, which reports in a PolicyNodeStatus. Its report
	// counts, for what it says.
	legacy := c.dyn.Resource(PolicyNodeStatusResource())
	if _, err := c.client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-old"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cur, err := cnps.Get(ctx, "shared", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := legacy.Create(ctx, &unstructured.Unstructured{Object: map[string]any{"apiVersion": "l7gate.io/v1alpha1", "kind": "PolicyNodeStatus",
		"metadata": map[string]any{"name": "node-old"},
		"status": map[string]any{"policies": map[string]any{"CiliumNetworkPolicy/multi/shared": map[string]any{
			"uid": string(cur.GetUID()), "ok": true, "enforcing": true, "revision": int64(7), "observedGeneration": int64(3)}}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitStatus(ctx, t, c, CNPResource(), "multi", "shared", func(st map[string]any) bool {
		return fmt.Sprint(nodeFieldOf(st, "node-old", "observedGeneration")) == "3" && nodeFieldOf(st, "node-old", "ok") == true
	})
	// node-old's agent is upgraded. Before its first report it deletes
	// the old one (an elected agent of the version before reads only
	// those: it shows the node pending, not what this agent no longer
	// keeps), and its own report replaces it.
	agents["node-old"] = start("node-old")
	implement(u, nil, "node-old")
	awaitReported(t, agents["node-old"].reported, agents["node-old"].rev)
	if _, err := legacy.Get(ctx, "node-old", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("the upgraded agent's PolicyNodeStatus: %v; want it deleted", err)
	}
	waitStatus(ctx, t, c, CNPResource(), "multi", "shared", func(st map[string]any) bool {
		return fmt.Sprint(nodeFieldOf(st, "node-old", "observedGeneration")) == "4" && nodeFieldOf(st, "node-old", "ok") == true
	})
	agents["node-old"].cancel()
	<-agents["node-old"].done

	// Without the PolicyNodeStatus CRD (gone after the upgrade), reports
	// and their merge go on: node-z's agent, elected once the others
	// stopped, reports and merges.
	agents[other].cancel()
	<-agents[other].done
	crds := c.dyn.Resource(schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"})
	if err := crds.Delete(ctx, "policynodestatuses.l7gate.io", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		_, err := legacy.List(ctx, metav1.ListOptions{})
		if err != nil && apierrors.IsNotFound(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the CRD is still served: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := c.client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-z"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	agents["node-z"] = start("node-z")
	implement(u, nil, "node-z")
	waitStatus(ctx, t, c, CNPResource(), "multi", "shared", func(st map[string]any) bool {
		return fmt.Sprint(nodeFieldOf(st, "node-z", "observedGeneration")) == "4"
	})
}
