package k8s

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/apiserver/pkg/storage/etcd3/testserver"
	"k8s.io/apiserver/pkg/storage/storagebackend"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	kubeapiserver "k8s.io/kubernetes/cmd/kube-apiserver/app/testing"

	"github.com/l7gate/l7gate/deploy"
	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/source"
)

const testNode = "node-a"

// cluster is a real kube-apiserver with its etcd, both on 127.0.0.1.
type cluster struct {
	cfg    *rest.Config
	client kubernetes.Interface
	dyn    dynamic.Interface
}

// freeLoopbackPort returns a port free on 127.0.0.1 right now.
func freeLoopbackPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startCluster starts etcd and kube-apiserver in-process. Called once per
// test run (TestCluster), since it costs ~6s and ~280 MiB.
func startCluster(t *testing.T) *cluster {
	t.Helper()
	ecfg := testserver.NewTestConfig(t)
	clientURL := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(freeLoopbackPort(t)))}
	peerURL := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(freeLoopbackPort(t)))}
	ecfg.ListenClientUrls, ecfg.AdvertiseClientUrls = []url.URL{clientURL}, []url.URL{clientURL}
	ecfg.ListenPeerUrls, ecfg.AdvertisePeerUrls = []url.URL{peerURL}, []url.URL{peerURL}
	ecfg.InitialCluster = ecfg.InitialClusterFromName(ecfg.Name)
	etcd := testserver.RunEtcd(t, ecfg)
	sc := storagebackend.NewDefaultConfig(path.Join("/l7gate-test", "registry"), nil)
	sc.Transport.ServerList = etcd.Endpoints()
	srv := kubeapiserver.StartTestServerOrDie(t, kubeapiserver.NewDefaultTestServerOptions(), []string{
		"--bind-address=127.0.0.1",
		"--allow-privileged=true", // as real clusters run: the agent container is privileged by default
		"--endpoint-reconciler-type=none",
		"--disable-admission-plugins=ServiceAccount",
		"--authorization-mode=RBAC",
		"--enable-priority-and-fairness=false",
	}, sc)
	t.Cleanup(srv.TearDownFn)
	c := &cluster{cfg: srv.ClientConfig}
	var err error
	if c.client, err = kubernetes.NewForConfig(c.cfg); err != nil {
		t.Fatal(err)
	}
	if c.dyn, err = dynamic.NewForConfig(c.cfg); err != nil {
		t.Fatal(err)
	}
	return c
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// TestCluster runs everything that needs the API server against one
// instance.
func TestCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a kube-apiserver")
	}
	// kube-apiserver's test server finds its testdata via runtime.Caller.
	if _, file, _, _ := runtime.Caller(0); !filepath.IsAbs(file) {
		t.Skip("built with -trimpath: the kube-apiserver test server cannot find its testdata")
	}
	start := time.Now()
	c := startCluster(t)
	t.Logf("kube-apiserver and etcd up in %v", time.Since(start).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// Without the Cilium CRDs the source waits: a view without policies
	// would lift enforcement.
	early, err := NewSource(SourceConfig{Client: c.client, Dynamic: c.dyn, Node: testNode, SyncWarning: 500 * time.Millisecond, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	earlyCtx, earlyCancel := context.WithCancel(ctx)
	defer earlyCancel()
	earlyCh := make(chan source.Update, 1)
	go early.Run(earlyCtx, earlyCh)
	select {
	case <-earlyCh:
		t.Fatal("the source sent a view before the cilium.io CRDs existed")
	case <-time.After(1500 * time.Millisecond):
	}

	// The CRDs for real: created when absent, left alone when present.
	crds, err := deploy.CRDs()
	if err != nil {
		t.Fatal(err)
	}
	if err := EnsureCRDs(ctx, c.dyn, crds, testLogger(t)); err != nil {
		t.Fatalf("ensure crds: %v", err)
	}
	// Poll until the CRD lists before creating objects.
	for {
		if _, err := c.dyn.Resource(CNPResource()).Namespace("default").List(ctx, metav1.ListOptions{}); err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("ciliumnetworkpolicies never listed")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := EnsureCRDs(ctx, c.dyn, crds, testLogger(t)); err != nil {
		t.Fatalf("ensure crds again: %v", err)
	}
	select {
	case u := <-earlyCh:
		if len(u.Errors) != 0 {
			t.Errorf("first view: %v", u.Errors)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no view after the CRDs were created")
	}
	earlyCancel()

	applyAgentRBAC(ctx, t, c)
	t.Run("Manifests", func(t *testing.T) { testManifests(ctx, t, c) })
	t.Run("SourceAndStatus", func(t *testing.T) { testSourceAndStatus(ctx, t, c) })
	t.Run("StatusAcrossNodes", func(t *testing.T) { testStatusAcrossNodes(ctx, t, c) })
	t.Run("ImplementedCountsNodes", func(t *testing.T) { testImplementedCountsNodes(ctx, t, c) })
	t.Run("StatusOncePerBatch", func(t *testing.T) { testStatusOncePerBatch(ctx, t, c) })
	t.Run("ReportNamespaceRefused", func(t *testing.T) { testReportNamespaceRefused(ctx, t, c) })
}

// testManifests applies the rendered manifests (default values and with
// Envoy off) with server-side apply and dry-run.
func testManifests(ctx context.Context, t *testing.T, c *cluster) {
	resources := map[string]schema.GroupVersionResource{
		"ServiceAccount":     {Version: "v1", Resource: "serviceaccounts"},
		"ConfigMap":          {Version: "v1", Resource: "configmaps"},
		"Namespace":          {Version: "v1", Resource: "namespaces"},
		"ClusterRole":        {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"},
		"ClusterRoleBinding": {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"},
		"Role":               {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "roles"},
		"RoleBinding":        {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "rolebindings"},
		"DaemonSet":          {Group: "apps", Version: "v1", Resource: "daemonsets"},
	}
	for _, tc := range []struct {
		name string
		opts deploy.Options
	}{
		{"default", deploy.Options{}},
		{"no-envoy", deploy.Options{Namespace: "default", ReleaseName: "gate", Values: map[string]any{
			"envoy": map[string]any{"enabled": false}, "crds": map[string]any{"agentCreates": true},
			"agent": map[string]any{"privileged": false}, "policyStatus": false}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := deploy.Render(deploy.Chart(), tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(out), 4096)
			kinds := map[string]bool{}
			for {
				var u unstructured.Unstructured
				if err := dec.Decode(&u.Object); err != nil {
					if errors.Is(err, io.EOF) {
						break
					}
					t.Fatal(err)
				}
				if len(u.Object) == 0 {
					continue
				}
				gvr, ok := resources[u.GetKind()]
				if !ok {
					t.Fatalf("no resource known for kind %s", u.GetKind())
				}
				var ri dynamic.ResourceInterface = c.dyn.Resource(gvr)
				if u.GetNamespace() != "" {
					ri = c.dyn.Resource(gvr).Namespace(u.GetNamespace())
				}
				// kubectl apply --server-side --dry-run=server; apply rejects
				// fields the schema does not declare.
				if _, err := ri.Apply(ctx, u.GetName(), &u, metav1.ApplyOptions{FieldManager: "l7gate-test", Force: true, DryRun: []string{metav1.DryRunAll}}); err != nil {
					t.Errorf("%s %s rejected: %v", u.GetKind(), u.GetName(), err)
				}
				kinds[u.GetKind()] = true
			}
			if !kinds["DaemonSet"] || !kinds["ClusterRole"] {
				t.Errorf("rendered kinds %v: want a DaemonSet and RBAC", kinds)
			}
		})
	}
}

// applyAgentRBAC creates the chart's RBAC and the reports' Namespace (default
// values) for real: the source and the status writer run as the agent's
// service account, so the tests check the RBAC is enough.
func applyAgentRBAC(ctx context.Context, t *testing.T, c *cluster) {
	t.Helper()
	out, err := deploy.Render(deploy.Chart(), deploy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(out), 4096)
	for {
		var u unstructured.Unstructured
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return
			}
			t.Fatal(err)
		}
		if u.GetKind() == "Namespace" { // the nodes' reports' (the Role there)
			if _, err := c.dyn.Resource(schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}).Create(ctx, &u, metav1.CreateOptions{}); err != nil {
				t.Fatalf("create Namespace %s: %v", u.GetName(), err)
			}
			continue
		}
		res := map[string]string{"ClusterRole": "clusterroles", "ClusterRoleBinding": "clusterrolebindings",
			"Role": "roles", "RoleBinding": "rolebindings"}[u.GetKind()]
		if res == "" {
			continue
		}
		gvr := schema.GroupVersionResource{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: res}
		var ri dynamic.ResourceInterface = c.dyn.Resource(gvr)
		if u.GetNamespace() != "" {
			ri = c.dyn.Resource(gvr).Namespace(u.GetNamespace())
		}
		if _, err := ri.Create(ctx, &u, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create %s %s: %v", u.GetKind(), u.GetName(), err)
		}
	}
}

func mustCreateNamespace(ctx context.Context, t *testing.T, c *cluster, name string, labels map[string]string) {
	t.Helper()
	_, err := c.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

// mustCreatePod creates a pod and sets its status as a kubelet would.
func mustCreatePod(ctx context.Context, t *testing.T, c *cluster, ns, name string, labels map[string]string, ip string, mod func(*corev1.Pod)) *corev1.Pod {
	t.Helper()
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: corev1.PodSpec{NodeName: testNode, Containers: []corev1.Container{{Name: "app", Image: "app:1",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}}}
	if mod != nil {
		mod(p)
	}
	p, err := c.client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if ip == "" {
		return p
	}
	p.Status.Phase = corev1.PodRunning
	p.Status.PodIP = ip
	p.Status.PodIPs = []corev1.PodIP{{IP: ip}}
	p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "app", Image: "app:1", Ready: true,
		State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}}}}
	p, err = c.client.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func cnp(ns, name, spec string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	js := fmt.Sprintf(`{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":%q,"namespace":%q},"spec":%s}`, name, ns, spec)
	if err := json.Unmarshal([]byte(js), &u.Object); err != nil {
		panic(err)
	}
	return u
}

func httpPolicy(port int, path string) string {
	return fmt.Sprintf(`{"endpointSelector":{"matchLabels":{"app":"api"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"app":"web"}}],
		"toPorts":[{"ports":[{"port":"%d","protocol":"TCP"}],"rules":{"http":[{"method":"GET","path":%q}]}}]}]}`, port, path)
}

// updates follows a running source's updates.
type updates struct {
	t  *testing.T
	ch chan source.Update
	// last is the newest update seen.
	last source.Update
}

// await reads updates until cond holds, within a bound.
func (u *updates) await(what string, cond func(source.Update, *policy.Snapshot) bool) (source.Update, *policy.Snapshot) {
	u.t.Helper()
	deadline := time.After(20 * time.Second)
	check := func(up source.Update) *policy.Snapshot {
		snap, err := policy.Compute(up.Objects, policy.NewIdentityAllocator())
		if err != nil {
			u.t.Fatalf("compute: %v", err)
		}
		if cond(up, snap) {
			return snap
		}
		return nil
	}
	if u.last.Objects != nil {
		if snap := check(u.last); snap != nil {
			return u.last, snap
		}
	}
	for {
		select {
		case up := <-u.ch:
			u.last = up
			if snap := check(up); snap != nil {
				return up, snap
			}
		case <-deadline:
			u.t.Fatalf("timed out waiting for: %s (last update: %d policies, errors %v)", what, len(u.last.Objects.Policies), u.last.Errors)
		}
	}
}

// quiet asserts no update arrives for d.
func (u *updates) quiet(what string, d time.Duration) {
	u.t.Helper()
	select {
	case up := <-u.ch:
		u.t.Errorf("%s caused an update (digest %s → %s)", what, u.last.Digest, up.Digest)
		u.last = up
	case <-time.After(d):
	}
}

func hasPolicy(up source.Update, name string) bool {
	return slices.ContainsFunc(up.Objects.Policies, func(p policy.Policy) bool { return p.Name() == name })
}

func endpoint(snap *policy.Snapshot, ns, name string) (policy.Endpoint, bool) {
	for _, ep := range snap.Endpoints {
		if ep.Namespace == ns && ep.Name == name {
			return ep, true
		}
	}
	return policy.Endpoint{}, false
}

// l7Path returns the HTTP path rule on an endpoint's ingress port, or "".
func l7Path(snap *policy.Snapshot, ns, name string, port uint16) string {
	ep, ok := endpoint(snap, ns, name)
	if !ok {
		return ""
	}
	pol := snap.Policy(ep.Identity)
	if pol == nil {
		return ""
	}
	set := pol.Ingress.L7Set(policy.ProtoTCP, port)
	if set == nil {
		return ""
	}
	for _, r := range set.Rules {
		if r.HTTP != nil {
			return r.HTTP.Path
		}
	}
	return ""
}

// awaitReported waits until the status writer has processed revision rev
// (written, or found unchanged); earlier revisions may be skipped (only
// the newest pending one is kept).
func awaitReported(t *testing.T, reported <-chan uint64, rev uint64) {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case r := <-reported:
			if r >= rev {
				return
			}
		case <-timeout:
			t.Fatalf("status writer never reported revision %d", rev)
		}
	}
}

func testSourceAndStatus(ctx context.Context, t *testing.T, c *cluster) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if _, err := c.client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: testNode}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	mustCreateNamespace(ctx, t, c, "shop", map[string]string{"team": "shop"})
	mustCreatePod(ctx, t, c, "shop", "api", map[string]string{"app": "api"}, "198.18.0.10", nil)
	mustCreatePod(ctx, t, c, "shop", "web", map[string]string{"app": "web"}, "198.18.0.11", nil)
	mustCreatePod(ctx, t, c, "shop", "pending", map[string]string{"app": "web"}, "", nil)
	mustCreatePod(ctx, t, c, "shop", "hostnet", map[string]string{"app": "agent"}, "198.18.0.2", func(p *corev1.Pod) { p.Spec.HostNetwork = true })
	cnps := c.dyn.Resource(CNPResource()).Namespace("shop")
	if _, err := cnps.Create(ctx, cnp("shop", "api-http", httpPolicy(8080, "/v1/.*")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// The agent's identity: only what the chart's ClusterRole grants.
	asAgent := rest.CopyConfig(c.cfg)
	asAgent.Impersonate = rest.ImpersonationConfig{UserName: "system:serviceaccount:kube-system:l7gate"}
	agentClient, err := kubernetes.NewForConfig(asAgent)
	if err != nil {
		t.Fatal(err)
	}
	agentDyn, err := dynamic.NewForConfig(asAgent)
	if err != nil {
		t.Fatal(err)
	}
	src, err := NewSource(SourceConfig{Client: agentClient, Dynamic: agentDyn, Node: testNode, Debounce: 50 * time.Millisecond, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	reported := make(chan uint64, 64)
	w, err := NewStatusWriter(StatusWriterConfig{Client: agentClient, Dynamic: agentDyn, Node: testNode, Source: src, Logger: testLogger(t),
		Reported: func(rev uint64) {
			select {
			case reported <- rev:
			default:
			}
		}})
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan source.Update)
	srcDone := make(chan error, 1)
	go func() { srcDone <- src.Run(ctx, ch) }()
	go w.Run(ctx)
	defer func() {
		cancel()
		if err := <-srcDone; err != nil {
			t.Errorf("source: %v", err)
		}
	}()
	up := &updates{t: t, ch: ch}
	var rev uint64
	implement := func(u source.Update) uint64 {
		rev++
		w.Implemented(ctx, rev, u, nil)
		return rev
	}

	t0 := time.Now()
	first, snap := up.await("first view with the policy", func(u source.Update, s *policy.Snapshot) bool {
		return hasPolicy(u, "shop/api-http") && l7Path(s, "shop", "api", 8080) == "/v1/.*"
	})
	t.Logf("first update after %v", time.Since(t0).Round(time.Millisecond))
	if len(first.Errors) != 0 {
		t.Errorf("errors: %v", first.Errors)
	}
	if ep, ok := endpoint(snap, "shop", "api"); !ok || len(ep.IPs) != 1 || ep.IPs[0].String() != "198.18.0.10" {
		t.Errorf("endpoint shop/api: %+v", ep)
	}
	if ep, ok := endpoint(snap, "shop", "pending"); !ok || len(ep.IPs) != 0 {
		t.Errorf("pod without an IP: %+v %v (want an endpoint without IPs)", ep, ok)
	}
	if _, ok := endpoint(snap, "shop", "hostnet"); ok {
		t.Error("hostNetwork pod is an endpoint")
	}
	if id := snap.IdentityOf(netipMust("198.18.0.11")); id < 256 {
		t.Errorf("web's IP has identity %d, want a cluster identity", id)
	}
	r1 := implement(first)

	// Status: Valid=True, the revision implemented on this node.
	waitStatus(ctx, t, c, CNPResource(), "shop", "api-http", func(st map[string]any) bool {
		return condStatus(st, ConditionValid) == "True" && fmt.Sprint(nodeField(st, "revision")) == fmt.Sprint(r1) && nodeField(st, "ok") == true
	})

	t.Run("NoChurn", func(t *testing.T) {
		// Metadata-only, status-only and irrelevant pod changes: no update.
		obj, err := cnps.Get(ctx, "api-http", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		obj.SetAnnotations(map[string]string{"note": "x"})
		if _, err := cnps.Update(ctx, obj, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		p, err := c.client.CoreV1().Pods("shop").Get(ctx, "api", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: corev1.PodReady, Status: corev1.ConditionTrue})
		if _, err := c.client.CoreV1().Pods("shop").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		up.quiet("annotation and pod condition changes", time.Second)
		// The same content again as a new revision: no status write.
		before, _ := cnps.Get(ctx, "api-http", metav1.GetOptions{})
		r := implement(up.last)
		awaitReported(t, reported, r)
		after, _ := cnps.Get(ctx, "api-http", metav1.GetOptions{})
		if before.GetResourceVersion() != after.GetResourceVersion() {
			t.Error("an unchanged policy's status was rewritten")
		}
	})

	t.Run("Update", func(t *testing.T) {
		obj, err := cnps.Get(ctx, "api-http", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		obj.Object["spec"] = cnp("", "", httpPolicy(9090, "/v2/.*")).Object["spec"]
		if _, err := cnps.Update(ctx, obj, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		u, _ := up.await("the updated rule", func(_ source.Update, s *policy.Snapshot) bool {
			return l7Path(s, "shop", "api", 9090) == "/v2/.*" && l7Path(s, "shop", "api", 8080) == ""
		})
		r := implement(u)
		waitStatus(ctx, t, c, CNPResource(), "shop", "api-http", func(st map[string]any) bool {
			return fmt.Sprint(nodeField(st, "revision")) == fmt.Sprint(r) && fmt.Sprint(nodeField(st, "observedGeneration")) == fmt.Sprint(2)
		})
	})

	t.Run("InvalidPolicy", func(t *testing.T) {
		bad := cnp("shop", "typo", `{"endpointSelector":{"matchLabels":{"app":"web"}},"ingress":[{"toPortz":[{"ports":[{"port":"80"}]}]}]}`)
		if _, err := cnps.Create(ctx, bad, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		u, s := up.await("the invalid policy reported", func(u source.Update, _ *policy.Snapshot) bool { return len(u.Errors) > 0 })
		var oe *policy.ObjectError
		if len(u.Errors) != 1 || !errors.As(u.Errors[0], &oe) || oe.Object.Name != "typo" || !strings.Contains(oe.Err.Error(), "spec.ingress[0].toPortz") {
			t.Fatalf("errors %v: want one naming spec.ingress[0].toPortz of shop/typo", u.Errors)
		}
		if !hasPolicy(u, "shop/api-http") || l7Path(s, "shop", "api", 9090) == "" {
			t.Error("the valid policy must still apply")
		}
		// The invalid one applies only as its fail-closed stand-in: the
		// pods it selects are held in ingress default-deny.
		if i := slices.IndexFunc(u.Objects.Policies, func(p policy.Policy) bool { return p.Name() == "shop/typo" }); i < 0 || u.Objects.Policies[i].Invalid == "" {
			t.Error("the invalid policy is not held fail-closed")
		}
		if !strings.Contains(u.Errors[0].Error(), "held in default-deny (ingress)") {
			t.Errorf("error %v does not say what stands in for the policy", u.Errors[0])
		}
		implement(u)
		st := waitStatus(ctx, t, c, CNPResource(), "shop", "typo", func(st map[string]any) bool {
			return condStatus(st, ConditionValid) == "False"
		})
		if msg := condMessage(st, ConditionValid); !strings.Contains(msg, "spec.ingress[0].toPortz") || !strings.Contains(msg, "unknown field") {
			t.Errorf("Valid condition message %q: want the field and the reason", msg)
		}
		if nodeField(st, "ok") != false || !strings.Contains(fmt.Sprint(nodeField(st, "error")), "toPortz") {
			t.Errorf("node status %v", st["nodes"])
		}
		waitEvent(ctx, t, c, "shop", "typo", eventInvalid)
	})

	t.Run("InvalidUpdateKeepsLastValid", func(t *testing.T) {
		obj, err := cnps.Get(ctx, "api-http", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		obj.Object["spec"] = cnp("", "", httpPolicy(9090, "(")).Object["spec"]
		if _, err := cnps.Update(ctx, obj, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		u, _ := up.await("the invalid update reported", func(u source.Update, _ *policy.Snapshot) bool {
			return slices.ContainsFunc(u.Errors, func(e error) bool { return strings.Contains(e.Error(), "shop/api-http") })
		})
		snap, err := policy.Compute(u.Objects, policy.NewIdentityAllocator())
		if err != nil {
			t.Fatal(err)
		}
		if l7Path(snap, "shop", "api", 9090) != "/v2/.*" {
			t.Error("the last valid version of shop/api-http is not in force")
		}
		i := slices.IndexFunc(u.Errors, func(e error) bool { return strings.Contains(e.Error(), "shop/api-http") })
		if !strings.Contains(u.Errors[i].Error(), "the last valid version stays in force") {
			t.Errorf("error %v", u.Errors[i])
		}
		implement(u)
		waitStatus(ctx, t, c, CNPResource(), "shop", "api-http", func(st map[string]any) bool {
			return condStatus(st, ConditionValid) == "False" && strings.Contains(condMessage(st, ConditionValid), "last valid version")
		})
	})

	t.Run("KubeAPIServer", func(t *testing.T) {
		ready := true
		for _, es := range []*discoveryv1.EndpointSlice{
			{ObjectMeta: metav1.ObjectMeta{Name: "kubernetes", Namespace: "default", Labels: map[string]string{"kubernetes.io/service-name": "kubernetes"}},
				AddressType: discoveryv1.AddressTypeIPv4, Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"203.0.113.10"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}}},
			// another slice of the same Service: a backend of the
			// kubernetes Service, not the kube-apiserver entity (anyone
			// allowed to write EndpointSlices could add one)
			{ObjectMeta: metav1.ObjectMeta{Name: "kubernetes-extra", Namespace: "default", Labels: map[string]string{"kubernetes.io/service-name": "kubernetes"}},
				AddressType: discoveryv1.AddressTypeIPv4, Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"203.0.113.20"}}}},
		} {
			if _, err := c.client.DiscoveryV1().EndpointSlices("default").Create(ctx, es, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		_, s := up.await("the kube-apiserver address", func(_ source.Update, s *policy.Snapshot) bool {
			return s.IdentityOf(netipMust("203.0.113.10")) == policy.IdentityKubeAPIServer
		})
		if id := s.IdentityOf(netipMust("203.0.113.20")); id != policy.IdentityWorld {
			t.Errorf("an address of another slice has identity %d", id)
		}
	})

	t.Run("Services", func(t *testing.T) {
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", Labels: map[string]string{"tier": "front"}},
			Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"}, Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}}}
		created, err := c.client.CoreV1().Services("shop").Create(ctx, svc, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// No EndpointSlice controller runs in this test server: write the
		// slice as it would.
		name, port := "http", int32(8080)
		ready := true
		es := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "web-x1", Namespace: "shop", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
			AddressType: discoveryv1.AddressTypeIPv4, Ports: []discoveryv1.EndpointPort{{Name: &name, Port: &port}},
			Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"198.18.0.11"}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}}}
		es, err = c.client.DiscoveryV1().EndpointSlices("shop").Create(ctx, es, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		frontend := func(u source.Update) string {
			fs, _ := policy.ServiceFrontends(u.Objects, testNode)
			for _, f := range fs {
				if f.Service == "shop/web" {
					var bs []string
					for _, b := range f.Backends {
						bs = append(bs, b.Address.String())
					}
					return f.Address.String() + " → " + strings.Join(bs, " ")
				}
			}
			return ""
		}
		want := created.Spec.ClusterIP + ":80 → 198.18.0.11:8080"
		up.await("the Service's frontend", func(u source.Update, _ *policy.Snapshot) bool { return frontend(u) == want })
		// The controller rewrites slices with new annotations: no update.
		es.Annotations = map[string]string{"endpoints.kubernetes.io/last-change-trigger-time": time.Now().Format(time.RFC3339)}
		if _, err := c.client.DiscoveryV1().EndpointSlices("shop").Update(ctx, es, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		up.quiet("an EndpointSlice annotation", time.Second)
		if err := c.client.CoreV1().Services("shop").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		up.await("the Service gone", func(u source.Update, _ *policy.Snapshot) bool { return frontend(u) == "" })
	})

	t.Run("Clusterwide", func(t *testing.T) {
		ccnp := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
			"metadata": map[string]any{"name": "hosts"},
			"specs": []any{
				map[string]any{"endpointSelector": map[string]any{"matchLabels": map[string]any{"app": "web"}},
					"egress": []any{map[string]any{"toEntities": []any{"world"}}}},
				map[string]any{"nodeSelector": map[string]any{"matchLabels": map[string]any{"role": "edge"}},
					"ingress": []any{map[string]any{"fromEntities": []any{"cluster"}}}},
			}}}
		if _, err := c.dyn.Resource(CCNPResource()).Create(ctx, ccnp, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		u, _ := up.await("the clusterwide policy", func(u source.Update, _ *policy.Snapshot) bool { return hasPolicy(u, "hosts") })
		r := implement(u)
		st := waitStatus(ctx, t, c, CCNPResource(), "", "hosts", func(st map[string]any) bool {
			return fmt.Sprint(nodeField(st, "revision")) == fmt.Sprint(r)
		})
		if condStatus(st, ConditionValid) != "True" || condStatus(st, ConditionSupported) != "False" ||
			!strings.Contains(condMessage(st, ConditionSupported), "specs[1].nodeSelector") {
			t.Errorf("conditions %v: want Valid, and Supported=False naming specs[1].nodeSelector", st["conditions"])
		}
		waitEvent(ctx, t, c, "default", "hosts", eventUnsupported)
	})

	t.Run("NetworkPolicy", func(t *testing.T) {
		np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "web-in", Namespace: "shop"},
			Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}
		if _, err := c.client.NetworkingV1().NetworkPolicies("shop").Create(ctx, np, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		u, _ := up.await("the NetworkPolicy", func(u source.Update, s *policy.Snapshot) bool {
			ep, ok := endpoint(s, "shop", "web")
			return hasPolicy(u, "shop/web-in") && ok && s.Policy(ep.Identity) != nil && s.Policy(ep.Identity).Ingress.Enforced
		})
		implement(u)
	})

	t.Run("Nodes", func(t *testing.T) {
		// Another node's address becomes remote-node; a heartbeat does not
		// cause an update.
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-b"}}
		n, err := c.client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "198.18.200.2"}, {Type: corev1.NodeHostName, Address: "node-b"}}
		if n, err = c.client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		u, _ := up.await("the node address", func(_ source.Update, s *policy.Snapshot) bool {
			return s.IdentityOf(netip.MustParseAddr("198.18.200.2")) == policy.IdentityRemoteNode
		})
		implement(u)
		n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.Now()}}
		if _, err := c.client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		up.quiet("a node heartbeat", time.Second)
	})

	t.Run("TerminatingPod", func(t *testing.T) {
		mustCreatePod(ctx, t, c, "shop", "old", map[string]string{"app": "old"}, "198.18.0.20",
			func(p *corev1.Pod) { p.Finalizers = []string{"l7gate.test/hold"} })
		up.await("the new pod", func(_ source.Update, s *policy.Snapshot) bool {
			ep, ok := endpoint(s, "shop", "old")
			return ok && len(ep.IPs) == 1
		})
		if err := c.client.CoreV1().Pods("shop").Delete(ctx, "old", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		// Terminating but running: still an endpoint, until a new pod
		// takes its IP.
		mustCreatePod(ctx, t, c, "shop", "new", map[string]string{"app": "new"}, "198.18.0.20", nil)
		up.await("the IP handed to the new pod", func(_ source.Update, s *policy.Snapshot) bool {
			oldEP, oldOK := endpoint(s, "shop", "old")
			newEP, newOK := endpoint(s, "shop", "new")
			return oldOK && len(oldEP.IPs) == 0 && newOK && len(newEP.IPs) == 1
		})
		// Every container exited: no longer an endpoint.
		p, err := c.client.CoreV1().Pods("shop").Get(ctx, "old", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.Status.ContainerStatuses[0].State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0,
			StartedAt: metav1.Now(), FinishedAt: metav1.Now()}}
		p.Status.ContainerStatuses[0].Ready = false
		if _, err := c.client.CoreV1().Pods("shop").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		up.await("the terminated pod gone", func(_ source.Update, s *policy.Snapshot) bool {
			_, ok := endpoint(s, "shop", "old")
			return !ok
		})
		p, _ = c.client.CoreV1().Pods("shop").Get(ctx, "old", metav1.GetOptions{})
		p.Finalizers = nil
		if _, err := c.client.CoreV1().Pods("shop").Update(ctx, p, metav1.UpdateOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
	})

	t.Run("Delete", func(t *testing.T) {
		if err := cnps.Delete(ctx, "api-http", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := cnps.Delete(ctx, "typo", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		up.await("the policies gone", func(u source.Update, s *policy.Snapshot) bool {
			return !hasPolicy(u, "shop/api-http") && len(u.Errors) == 0 && l7Path(s, "shop", "api", 9090) == ""
		})
	})
}

func waitStatus(ctx context.Context, t *testing.T, c *cluster, gvr schema.GroupVersionResource, ns, name string, cond func(map[string]any) bool) map[string]any {
	t.Helper()
	var ri dynamic.ResourceInterface = c.dyn.Resource(gvr)
	if ns != "" {
		ri = c.dyn.Resource(gvr).Namespace(ns)
	}
	deadline := time.Now().Add(20 * time.Second)
	var st map[string]any
	for time.Now().Before(deadline) {
		obj, err := ri.Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		st, _, _ = unstructured.NestedMap(obj.Object, "status")
		if st != nil && cond(st) {
			return st
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s %s/%s: status never matched; last %v", gvr.Resource, ns, name, st)
	return nil
}

func findCondition(st map[string]any, typ string) map[string]any {
	conds, _ := st["conditions"].([]any)
	for _, c := range conds {
		if m, ok := c.(map[string]any); ok && m["type"] == typ {
			return m
		}
	}
	return nil
}

func condStatus(st map[string]any, typ string) any { return findCondition(st, typ)["status"] }
func condMessage(st map[string]any, typ string) string {
	return fmt.Sprint(findCondition(st, typ)["message"])
}

func nodeField(st map[string]any, field string) any {
	v, _, _ := unstructured.NestedFieldNoCopy(st, "nodes", testNode, field)
	return v
}

func waitEvent(ctx context.Context, t *testing.T, c *cluster, ns, name, reason string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		evs, err := c.client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs.Items {
			if e.Reason == reason && e.Source.Host == testNode {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("no %s event for %s/%s", reason, ns, name)
}
