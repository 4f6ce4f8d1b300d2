package scale

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/apiserver/pkg/storage/etcd3/testserver"
	"k8s.io/apiserver/pkg/storage/storagebackend"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	kubeapiserver "k8s.io/kubernetes/cmd/kube-apiserver/app/testing"

	"github.com/l7gate/l7gate/deploy"
	"github.com/l7gate/l7gate/k8s"
)

var (
	flagNodes    = flag.String("scale.nodes", "", "TestScale: comma-separated node counts N, or N/K with K full agents; empty skips TestScale")
	flagPods     = flag.Int("scale.pods", 10000, "TestScale: pods (P)")
	flagPolicies = flag.Int("scale.policies", 10, "TestScale: CiliumNetworkPolicies")
	flagPolChg   = flag.Int("scale.policy-changes", 20, "TestScale: policy changes per N")
	flagPodChg   = flag.Int("scale.pod-changes", 20, "TestScale: pod changes per N")
	flagOut      = flag.String("scale.out", "../results", "TestScale: results folder")
	flagLabel    = flag.String("scale.label", "", "TestScale: what was measured (e.g. a commit), written into the report")
	flagShared   = flag.Bool("scale.shared-compute", true, "TestScale: compute each view once for all agents")
	flagTimeout  = flag.Duration("scale.change-timeout", 2*time.Minute, "TestScale: wait for one change at most this long")
	flagFull     = flag.Int("scale.full-agents", 2, "TestScale: agents that run the whole source; the others are light agents (bench/scale/light.go); 0: all")
	flagLimit    = flag.Int("scale.status-nodes-limit", 0, "TestScale: the agents' status nodes limit (k8s.ElectionConfig.StatusNodesLimit; 0: default, -1: list every node)")
	flagProfile  = flag.String("scale.profile", "", "TestScale: write CPU profiles of the policy changes (apiserver-<run>-policy-cpu.pprof: this process, API server and etcd; agents-<run>-policy-cpu.pprof) and the agents' heap profile (agents-N<n>-K<k>-L<l>-heap.pprof) into this folder")
)

// agentsEnv carries the child's config file: the test binary re-runs
// itself as the agents' process.
const agentsEnv = "L7GATE_SCALE_AGENTS"

// agentUser is the chart's service account, which the agents impersonate.
const agentUser = "system:serviceaccount:kube-system:l7gate"

// TestScaleAgentsProcess is the child: it runs the simulated agents until
// its stdin closes. It skips unless started by Run.
func TestScaleAgentsProcess(t *testing.T) {
	p := os.Getenv(agentsEnv)
	if p == "" {
		t.Skip("the agents' process of TestScale (started by it)")
	}
	quietKlog(t)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var cfg agentsConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	if err := runAgents(context.Background(), cfg, os.Stdin, os.Stdout, os.Stderr); err != nil {
		t.Fatal(err)
	}
}

// TestScale is `make scale`: for each N in -scale.nodes, a fresh API
// server, P pods, N agents; writes bench/results/scale-<time>.{json,md}.
func TestScale(t *testing.T) {
	if *flagNodes == "" {
		t.Skip("run by `make scale` (-scale.nodes=10,50,200)")
	}
	skipUnlessUsable(t)
	quietKlog(t)
	rep := newReport(*flagLabel, runtime.NumCPU())
	// Each entry is N, N/K or N/K/L: N agents of which K run the whole
	// source (default -scale.full-agents), with status nodes limit L
	// (default -scale.status-nodes-limit).
	type runSpec struct{ n, full, limit int }
	var specs []runSpec
	for _, s := range strings.Split(*flagNodes, ",") {
		parts := strings.Split(strings.TrimSpace(s), "/")
		vals := []int{0, *flagFull, *flagLimit}
		bad := len(parts) > 3
		for i, p := range parts[:min(len(parts), 3)] {
			v, err := strconv.Atoi(p)
			bad = bad || err != nil
			vals[i] = v
		}
		n, k := vals[0], vals[1]
		if bad || n <= 0 || k < 0 {
			t.Fatalf("-scale.nodes: %q (want N, N/K or N/K/L)", s)
		}
		if k == 0 || k > n {
			k = n
		}
		specs = append(specs, runSpec{n, k, vals[2]})
	}
	// One cluster for every N: its pods (the slow part to write) are
	// spread over the largest N's nodes; each run has its own policies.
	maxN := 0
	for _, sp := range specs {
		maxN = max(maxN, sp.n)
	}
	cl := newScaleCluster(t, maxN, *flagPods)
	for _, sp := range specs {
		n := sp.n
		t.Run(fmt.Sprintf("N=%d/K=%d/L=%d", n, sp.full, sp.limit), func(t *testing.T) {
			res := cl.run(t, RunConfig{Nodes: n, Pods: *flagPods, Policies: *flagPolicies, PolicyChanges: *flagPolChg,
				PodChanges: *flagPodChg, ChangeTimeout: *flagTimeout, SharedCompute: *flagShared, FullAgents: sp.full, StatusNodesLimit: sp.limit})
			rep.Runs = append(rep.Runs, res)
			js, _ := json.Marshal(res)
			t.Logf("result: %s", js)
			// Write after every N: a long run that dies keeps what it has.
			if md, err := rep.Write(*flagOut); err != nil {
				t.Error(err)
			} else {
				t.Logf("report: %s", md)
			}
		})
	}
	fmt.Print(rep.Markdown())
}

// TestScaleSmall runs the harness at a small N and asserts the properties
// that are counts, not times: every change converges (the policy's status
// shows every node), 0 conflicts, at most one status write per node per
// policy change and a few merged writes to the policy, none for pod
// changes; with more nodes than the status lists, the status lists none
// when every node is fine (its Implemented condition counts them).
func TestScaleSmall(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a kube-apiserver")
	}
	skipUnlessUsable(t)
	quietKlog(t)
	const n = 4
	res := newScaleCluster(t, n, 400).run(t, RunConfig{Nodes: n, Pods: 400, Policies: 3, PolicyChanges: 4, PodChanges: 3,
		ChangeTimeout: time.Minute, SharedCompute: false, FullAgents: 2, StatusNodesLimit: 2})
	js, _ := json.MarshalIndent(res, "", "  ")
	t.Logf("result: %s", js)
	if res.TimedOut > 0 || len(res.Errors) > 0 {
		t.Errorf("%d changes timed out; errors %v", res.TimedOut, res.Errors)
	}
	// At start-up the agents race once to create the election's Lease
	// (N-1 AlreadyExists answers); no status write may conflict.
	if res.Conflicts != 0 || res.StartupStatusConflicts != 0 {
		t.Errorf("conflicts: %v during policy changes, %v status writes at start-up (%v); want 0", res.Conflicts, res.StartupStatusConflicts, res.StartupConflictsBy)
	}
	if res.Retries != 0 || res.WriteFailures != 0 {
		t.Errorf("failed writes: %v per change, %d given up; want 0", res.Retries, res.WriteFailures)
	}
	// Each node writes its own report once per change; the elected agent
	// merges them into the policy's status in a few writes, not one per
	// node.
	if res.NodeStatusWrites > n {
		t.Errorf("%v node status writes per policy change; want at most one per node (%d)", res.NodeStatusWrites, n)
	}
	if res.PolicyStatusWrites > n/2 {
		t.Errorf("%v writes to the policy's status per change; want the nodes' reports merged (at most %d)", res.PolicyStatusWrites, n/2)
	}
	if res.PolicyStatusWrites < 1 {
		t.Errorf("%v writes to the policy's status per change: every change must reach it", res.PolicyStatusWrites)
	}
	if res.WritesDuringPodChanges != 0 {
		t.Errorf("%d agent writes during pod changes; want none (no policy's status changed)", res.WritesDuringPodChanges)
	}
	// More nodes than the status lists (limit 2): every node implemented
	// every change without error, so the Implemented condition counts them
	// and status.nodes lists none.
	if res.StatusNodesListed != 0 {
		t.Errorf("status.nodes lists %d nodes with 4 nodes over the limit of 2, all fine; want none", res.StatusNodesListed)
	}
	// Each node report reaches the elected agent's watch (and the
	// driver's): the API server's own count shows it.
	if ev := res.APIServerWatchEventsPerPolicyChange["configmaps"]; ev < n || res.NodeReportBytes == 0 {
		t.Errorf("the API server sent %.1f configmaps (report) watch events per policy change, a report is %d bytes: the counting is broken", ev, res.NodeReportBytes)
	}
	if res.WatchEventsPerPodChange < 1 {
		t.Errorf("%.2f watch events per agent per pod change: the counting is broken", res.WatchEventsPerPodChange)
	}
}

// quietKlog sets klog's verbosity to 0 unless -v was given: the
// kube-apiserver test server's ktesting package defaults it to 5, which
// logs every request (and every trace) of the API server and of the
// agents' client-go. At N = 50 that was megabytes a minute on stderr and
// API server CPU spent formatting them, which a real API server (-v=0..2)
// does not spend.
func quietKlog(t testing.TB) {
	t.Helper()
	f := flag.Lookup("v")
	if f == nil {
		return
	}
	set := false
	flag.Visit(func(g *flag.Flag) { set = set || g.Name == "v" })
	if set {
		return
	}
	if err := f.Value.Set("0"); err != nil {
		t.Fatalf("klog verbosity: %v", err)
	}
}

func skipUnlessUsable(t testing.TB) {
	// kube-apiserver's test server finds its testdata via runtime.Caller.
	if _, file, _, _ := runtime.Caller(0); !filepath.IsAbs(file) {
		t.Skip("built with -trimpath: the kube-apiserver test server cannot find its testdata")
	}
}

// scaleCluster is a running API server with the CRDs, the chart's RBAC
// and the shared pods.
type scaleCluster struct {
	admin *rest.Config
}

// newScaleCluster starts etcd and kube-apiserver, installs the CRDs and
// the chart's RBAC and writes the nodes and pods.
func newScaleCluster(t *testing.T, nodes, pods int) *scaleCluster {
	start := time.Now()
	admin := startCluster(t)
	t.Logf("kube-apiserver and etcd up in %v", time.Since(start).Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	dyn, err := dynamic.NewForConfig(admin)
	if err != nil {
		t.Fatal(err)
	}
	crds, err := deploy.CRDs()
	if err != nil {
		t.Fatal(err)
	}
	if err := k8s.EnsureCRDs(ctx, dyn, crds, nil); err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := dyn.Resource(k8s.CNPResource()).Namespace("default").List(ctx, metav1.ListOptions{}); err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("ciliumnetworkpolicies never listed")
		}
		time.Sleep(100 * time.Millisecond)
	}
	applyAgentRBAC(ctx, t, dyn)
	start = time.Now()
	if err := Populate(ctx, admin, nodes, pods); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %d nodes and %d pods in %v (load %s)", nodes, pods, time.Since(start).Round(time.Second), loadavg())
	return &scaleCluster{admin: admin}
}

// run runs one measurement with the agents in a child process.
func (c *scaleCluster) run(t *testing.T, cfg RunConfig) *Result {
	cfg.Logf = t.Logf
	cfg.AgentUser = agentUser
	if *flagProfile != "" {
		pdir, err := filepath.Abs(*flagProfile)
		if err != nil {
			t.Fatal(err)
		}
		cfg.ProfileDir = pdir
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Hour)
	defer cancel()
	admin := c.admin
	dir := t.TempDir()
	var stderr *os.File
	res, err := Run(ctx, admin, cfg, func(acfg agentsConfig) (*exec.Cmd, error) {
		b, err := json.Marshal(acfg)
		if err != nil {
			return nil, err
		}
		p := filepath.Join(dir, "agents.json")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			return nil, err
		}
		if stderr, err = os.Create(filepath.Join(dir, "agents.log")); err != nil {
			return nil, err
		}
		args := []string{"-test.run=^TestScaleAgentsProcess$", "-test.timeout=0", "-test.count=1"}
		if *flagProfile != "" {
			pdir, err := filepath.Abs(*flagProfile)
			if err != nil {
				return nil, err
			}
			base := filepath.Join(pdir, fmt.Sprintf("agents-N%d-K%d-L%d", cfg.Nodes, cfg.FullAgents, max(cfg.StatusNodesLimit, 0)))
			// The CPU profile covers the policy changes only (Run).
			args = append(args, "-test.memprofile="+base+"-heap.pprof")
		}
		cmd := exec.Command(os.Args[0], args...)
		cmd.Env = append(os.Environ(), agentsEnv+"="+p)
		cmd.Stderr = stderr
		return cmd, nil
	})
	if stderr != nil {
		stderr.Close()
		if log, _ := os.ReadFile(stderr.Name()); len(log) > 0 {
			if len(log) > 8000 {
				log = log[len(log)-8000:]
			}
			t.Logf("agents' log (tail):\n%s", log)
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// freeLoopbackPort returns a port free on 127.0.0.1 right now.
func freeLoopbackPort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startCluster starts etcd and kube-apiserver in-process (the recipe of
// k8s/cluster_test.go) and returns an admin client config.
func startCluster(t testing.TB) *rest.Config {
	t.Helper()
	ecfg := testserver.NewTestConfig(t)
	clientURL := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(freeLoopbackPort(t)))}
	peerURL := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(freeLoopbackPort(t)))}
	ecfg.ListenClientUrls, ecfg.AdvertiseClientUrls = []url.URL{clientURL}, []url.URL{clientURL}
	ecfg.ListenPeerUrls, ecfg.AdvertisePeerUrls = []url.URL{peerURL}, []url.URL{peerURL}
	ecfg.InitialCluster = ecfg.InitialClusterFromName(ecfg.Name)
	etcd := testserver.RunEtcd(t, ecfg)
	sc := storagebackend.NewDefaultConfig(path.Join("/l7gate-scale", "registry"), nil)
	sc.Transport.ServerList = etcd.Endpoints()
	srv := kubeapiserver.StartTestServerOrDie(t, kubeapiserver.NewDefaultTestServerOptions(), []string{
		"--bind-address=127.0.0.1",
		"--endpoint-reconciler-type=none",
		"--disable-admission-plugins=ServiceAccount",
		"--authorization-mode=RBAC",
		"--enable-priority-and-fairness=false",
		// Many agents' requests at once: the defaults (400/200) are per
		// apiserver of a real cluster, which has more than two cores.
		"--max-requests-inflight=2000",
		"--max-mutating-requests-inflight=1000",
	}, sc)
	t.Cleanup(srv.TearDownFn)
	return srv.ClientConfig
}

// applyAgentRBAC creates the chart's RBAC and the reports' Namespace (default
// values): the agents run with what the chart grants.
func applyAgentRBAC(ctx context.Context, t testing.TB, dyn dynamic.Interface) {
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
			if _, err := dyn.Resource(schema.GroupVersionResource{Version: "v1", Resource: "namespaces"}).Create(ctx, &u, metav1.CreateOptions{}); err != nil {
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
		var ri dynamic.ResourceInterface = dyn.Resource(gvr)
		if u.GetNamespace() != "" {
			ri = dyn.Resource(gvr).Namespace(u.GetNamespace())
		}
		if _, err := ri.Create(ctx, &u, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create %s %s: %v", u.GetKind(), u.GetName(), err)
		}
	}
}
