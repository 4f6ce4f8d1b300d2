package scale

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/l7gate/l7gate/k8s"
)

// RunConfig is one measurement: N nodes, P pods, M policies.
type RunConfig struct {
	Nodes, Pods, Policies int
	// PolicyChanges and PodChanges are made one at a time, each waited
	// for (ChangeTimeout) before the next.
	PolicyChanges, PodChanges int
	ChangeTimeout             time.Duration
	SharedCompute             bool
	// FullAgents: how many agents run the whole source (the others are
	// light agents, light.go); 0: all.
	FullAgents int
	// StatusNodesLimit: the agents' k8s.ElectionConfig.StatusNodesLimit.
	StatusNodesLimit int
	// AgentUser is impersonated by the agents (the chart's service account).
	AgentUser string
	// ProfileDir: when set, CPU profiles of the policy-change phase go
	// there: this process's (kube-apiserver and etcd, which run in it, and
	// the driver) as apiserver-<run>-policy-cpu.pprof, the agents' process's
	// as agents-<run>-policy-cpu.pprof.
	ProfileDir string
	Logf       func(format string, args ...any)
}

// childProcess is the running agents.
type childProcess struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	tr    *tracker
	done  chan error
}

// tracker collects what the child reports and what the API shows.
type tracker struct {
	mu     sync.Mutex
	impls  [][]agentEvent // per agent
	latest []agentEvent
	stats  chan *childStats
	errs   []string
	// status: per policy ("ns/name"), when the lowest observedGeneration
	// over the agents' nodes changed.
	status map[string][]genAt
	// reported: the same for the nodes' own reports (report ConfigMaps).
	reported map[string][]genAt
}

type genAt struct {
	At  time.Time
	Gen int64
}

func newTracker(n int) *tracker {
	return &tracker{impls: make([][]agentEvent, n), latest: make([]agentEvent, n), stats: make(chan *childStats, 1),
		status: map[string][]genAt{}, reported: map[string][]genAt{}}
}

func (t *tracker) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 1<<20), 256<<20)
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), linePrefix)
		if !ok {
			continue
		}
		var e agentEvent
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.mu.Lock()
			t.errs = append(t.errs, "bad line from agents: "+err.Error())
			t.mu.Unlock()
			continue
		}
		switch e.Ev {
		case "impl":
			t.mu.Lock()
			if e.Agent >= 0 && e.Agent < len(t.impls) {
				t.impls[e.Agent] = append(t.impls[e.Agent], e)
				t.latest[e.Agent] = e
			}
			t.mu.Unlock()
		case "stats":
			select {
			case t.stats <- e.Stats:
			default:
			}
		case "error":
			t.mu.Lock()
			t.errs = append(t.errs, fmt.Sprintf("agent %d: %s", e.Agent, e.Err))
			t.mu.Unlock()
		}
	}
}

// all reports whether every agent's latest view satisfies ok.
func (t *tracker) all(ok func(agentEvent) bool) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, e := range t.latest {
		if e.Rev == 0 || !ok(e) {
			return false
		}
	}
	return true
}

// lastFirst returns, over agents, the latest of each agent's first view
// satisfying ok after since (false if an agent has none).
func (t *tracker) lastFirst(since time.Time, ok func(agentEvent) bool) (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var last time.Time
	for _, evs := range t.impls {
		i := slices.IndexFunc(evs, func(e agentEvent) bool { return e.T >= since.UnixNano() && ok(e) })
		if i < 0 {
			return time.Time{}, false
		}
		if at := time.Unix(0, evs[i].T); at.After(last) {
			last = at
		}
	}
	return last, true
}

// statusReached returns when policy key's status first showed gen on
// every node.
func (t *tracker) statusReached(key string, gen int64) (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, g := range t.status[key] {
		if g.Gen >= gen {
			return g.At, true
		}
	}
	return time.Time{}, false
}

// noteReported records when every node's report first showed gen.
func (t *tracker) noteReported(key string, gen int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	h := t.reported[key]
	if len(h) == 0 || h[len(h)-1].Gen != gen {
		t.reported[key] = append(h, genAt{At: time.Now(), Gen: gen})
	}
}

// reportedAt returns when every node's report first showed gen.
func (t *tracker) reportedAt(key string, gen int64) (time.Time, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, g := range t.reported[key] {
		if g.Gen >= gen {
			return g.At, true
		}
	}
	return time.Time{}, false
}

func (t *tracker) noteStatus(key string, gen int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	h := t.status[key]
	if len(h) == 0 || h[len(h)-1].Gen != gen {
		t.status[key] = append(h, genAt{At: time.Now(), Gen: gen})
	}
}

func (t *tracker) errors() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.errs)
}

// statusGeneration is the generation a policy's status shows every node
// implemented: the Implemented condition's when there is one (more nodes
// than status.nodes lists; 0 unless True), else the lowest over
// status.nodes.
func statusGeneration(u *unstructured.Unstructured, nodes []string) int64 {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] != k8s.ConditionImplemented {
			continue
		}
		if m["status"] != "True" {
			return 0
		}
		switch g := m["observedGeneration"].(type) {
		case int64:
			return g
		case float64:
			return int64(g)
		}
		return 0
	}
	return minObservedGeneration(u, nodes)
}

// minObservedGeneration is the lowest status.nodes[n].observedGeneration
// over nodes (0 when a node has none).
func minObservedGeneration(u *unstructured.Unstructured, nodes []string) int64 {
	min := int64(-1)
	for _, n := range nodes {
		v, ok, _ := unstructured.NestedFieldNoCopy(u.Object, "status", "nodes", n, "observedGeneration")
		g := int64(0)
		if ok {
			switch x := v.(type) {
			case int64:
				g = x
			case float64:
				g = int64(x)
			}
		}
		if min < 0 || g < min {
			min = g
		}
	}
	return max(min, 0)
}

// scaleRunLabel marks the Nodes of a run (its agents' status node
// selector).
const scaleRunLabel = "scale.l7gate.io/run"

// dropOtherReports deletes the reports (k8s.NodeReportName) of nodes not
// in nodes.
func dropOtherReports(ctx context.Context, dyn dynamic.Interface, nodes []string) error {
	keep := map[string]bool{}
	for _, n := range nodes {
		keep[k8s.NodeReportName(n)] = true
	}
	res := dyn.Resource(configMapsResource).Namespace(k8s.NodeReportNamespace(""))
	l, err := res.List(ctx, metav1.ListOptions{LabelSelector: k8s.NodeReportSelector()})
	if err != nil {
		return fmt.Errorf("list node reports: %w", err)
	}
	for _, u := range l.Items {
		if !keep[u.GetName()] {
			if err := res.Delete(ctx, u.GetName(), metav1.DeleteOptions{}); err != nil {
				return fmt.Errorf("delete node report: %w", err)
			}
		}
	}
	return nil
}

// nodeReports follows the nodes' reports (ConfigMaps): per policy
// ("ns/name"), each node's reported generation.
type nodeReports struct {
	mu    sync.Mutex
	nodes map[string]bool
	gens  map[string]map[string]int64 // policy → node → generation
}

// configMapsResource: the nodes' reports are ConfigMaps.
var configMapsResource = schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}

func newNodeReports(nodes []string) *nodeReports {
	r := &nodeReports{nodes: map[string]bool{}, gens: map[string]map[string]int64{}}
	for _, n := range nodes {
		r.nodes[n] = true
	}
	return r
}

// note reads one node's report and records in tr, per policy, when the
// lowest generation over the nodes changed.
func (r *nodeReports) note(u *unstructured.Unstructured, tr *tracker) {
	node, gens := k8s.NodeReportGenerations(u)
	if !r.nodes[node] {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, g := range gens {
		kind, key, ok := strings.Cut(k, "/")
		if !ok || kind != "CiliumNetworkPolicy" {
			continue
		}
		if r.gens[key] == nil {
			r.gens[key] = map[string]int64{}
		}
		r.gens[key][node] = g
		low := int64(-1)
		for n := range r.nodes {
			if v := r.gens[key][n]; low < 0 || v < low {
				low = v
			}
		}
		tr.noteReported(key, max(low, 0))
	}
}

// startPhaseProfiles starts the CPU profiles of a phase (RunConfig.
// ProfileDir) and returns what stops them; without dir it does nothing.
func startPhaseProfiles(dir, run string, c *childProcess, logf func(string, ...any)) func() {
	if dir == "" {
		return func() {}
	}
	self := filepath.Join(dir, "apiserver-"+run+"-policy-cpu.pprof")
	f, err := os.Create(self)
	if err != nil {
		logf("no profile: %v", err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		logf("no profile of this process: %v", err)
		f.Close()
		f = nil
	}
	if _, err := io.WriteString(c.stdin, "cpuprofile "+filepath.Join(dir, "agents-"+run+"-policy-cpu.pprof")+"\n"); err != nil {
		logf("no profile of the agents: %v", err)
	}
	return func() {
		if f != nil {
			pprof.StopCPUProfile()
			f.Close()
		}
		io.WriteString(c.stdin, "cpuprofile \n")
	}
}

// phaseMark is the state at the start or end of a phase.
type phaseMark struct {
	at        time.Time
	requests  requestTotals
	watch     requestTotals
	stats     *childStats
	childCPU  time.Duration
	selfCPU   time.Duration
	childRSS  int64
	loadavg   string
	bytesRead []int64
}

func (c *childProcess) askStats(ctx context.Context) (*childStats, error) {
	if _, err := io.WriteString(c.stdin, "stats\n"); err != nil {
		return nil, fmt.Errorf("ask agents for stats: %w", err)
	}
	select {
	case s := <-c.tr.stats:
		return s, nil
	case err := <-c.done:
		return nil, fmt.Errorf("agents exited: %v", err)
	case <-time.After(2 * time.Minute):
		return nil, errors.New("agents did not answer stats")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func mark(ctx context.Context, client kubernetes.Interface, c *childProcess) (phaseMark, error) {
	m := phaseMark{at: time.Now(), loadavg: loadavg()}
	raw, err := client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return m, fmt.Errorf("read apiserver metrics: %w", err)
	}
	if m.requests, err = parseRequestTotals(raw); err != nil {
		return m, err
	}
	if m.watch, err = parseWatchTotals(raw); err != nil {
		return m, err
	}
	if m.stats, err = c.askStats(ctx); err != nil {
		return m, err
	}
	m.childCPU, _ = processCPU(c.cmd.Process.Pid)
	m.selfCPU, _ = processCPU(os.Getpid())
	m.childRSS, _ = processRSS(c.cmd.Process.Pid)
	return m, nil
}

// processCPU is a process's user+system time from /proc.
func processCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond, nil // USER_HZ is 100 on Linux
}

// processRSS is VmRSS in bytes.
func processRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, errors.New("no VmRSS")
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// Populate writes the namespaces, nodes and pods the runs share: pods are
// spread over nodes round robin.
func Populate(ctx context.Context, admin *rest.Config, nodes, pods int) error {
	client, err := kubernetes.NewForConfig(fastConfig(admin))
	if err != nil {
		return err
	}
	for i := range namespaces {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: nsName(i), Labels: map[string]string{"team": fmt.Sprintf("team-%d", i%5)}}}
		if _, err := client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create namespace: %w", err)
		}
	}
	work := func(n int, f func(i int) error) error {
		var wg sync.WaitGroup
		errc := make(chan error, 16)
		next := make(chan int)
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					if err := f(i); err != nil {
						select {
						case errc <- err:
						default:
						}
					}
				}
			}()
		}
	feed:
		for i := range n {
			select {
			case next <- i:
			case err := <-errc:
				errc <- err
				break feed
			}
		}
		close(next)
		wg.Wait()
		select {
		case err := <-errc:
			return err
		default:
			return nil
		}
	}
	if err := work(nodes, func(i int) error {
		n, err := client.CoreV1().Nodes().Create(ctx, newNode(i), metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create node: %w", err)
		}
		nodeStatus(n, i)
		_, err = client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		return err
	}); err != nil {
		return err
	}
	return work(pods, func(i int) error {
		p, err := client.CoreV1().Pods(nsName(i)).Create(ctx, newPod(i, nodes), metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create pod: %w", err)
		}
		runningStatus(p, i)
		_, err = client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
		return err
	})
}

// fastConfig is admin without client-side rate limits (the driver's).
func fastConfig(admin *rest.Config) *rest.Config {
	c := rest.CopyConfig(admin)
	c.QPS, c.Burst = -1, 0
	return c
}

// Result is one run's numbers (the JSON the report is made from).
type Result struct {
	Nodes    int `json:"nodes"`
	Pods     int `json:"pods"`
	Policies int `json:"policies"`
	// FullAgents ran the whole source; the other Nodes-FullAgents were
	// light agents (own watches and status writer, agent 0's view).
	FullAgents int `json:"fullAgents"`
	// StatusNodesListed: the most entries of status.nodes in a policy at
	// the end; PolicyObjectBytes: the largest policy object (JSON, with
	// managedFields: what a policy watch carries).
	StatusNodesListed int `json:"statusNodesListed"`
	PolicyObjectBytes int `json:"policyObjectBytes"`
	// StatusNodesLimit the agents ran with (0: the default).
	StatusNodesLimit int `json:"statusNodesLimit,omitempty"`
	// Policy changes: written → every agent implemented and the policy's
	// status shows every node at the new generation.
	PolicyChanges  int     `json:"policyChanges"`
	ConvergeP50Ms  float64 `json:"convergeP50Ms"`
	ConvergeP99Ms  float64 `json:"convergeP99Ms"`
	ImplementP50Ms float64 `json:"implementP50Ms"`
	ImplementP99Ms float64 `json:"implementP99Ms"`
	// Reported: written → every node's own report (its ConfigMap)
	// shows the new generation, before the elected agent merges them.
	ReportedP50Ms float64 `json:"reportedP50Ms"`
	ReportedP99Ms float64 `json:"reportedP99Ms"`
	TimedOut      int     `json:"timedOut"`
	// Writes: API writes by agents per policy change (apiserver metrics);
	// WritesPerNode divides by N.
	Writes        float64 `json:"writes"`
	WritesPerNode float64 `json:"writesPerNode"`
	// Of Writes: to the nodes' reports, and to the policies'
	// status (by the agents themselves before, by the elected one after).
	NodeStatusWrites   float64 `json:"nodeStatusWrites"`
	PolicyStatusWrites float64 `json:"policyStatusWrites"`
	// Conflicts: 409 answers during the policy changes (all requests).
	Conflicts float64 `json:"conflicts"`
	// StatusConflicts: of Conflicts, on status writes.
	StatusConflicts float64 `json:"statusConflicts"`
	// Retries: agents' write attempts that did not succeed (client side),
	// per policy change; Gets: agents' GETs per policy change.
	Retries float64 `json:"retries"`
	Gets    float64 `json:"gets"`
	// WriteFailures: "status not written" warnings over the run.
	WriteFailures int `json:"writeFailures"`
	// Requests per policy change by "VERB resource[/sub] code".
	RequestsPerPolicyChange map[string]float64 `json:"requestsPerPolicyChange"`
	// What the API server sent to all its watchers per policy change
	// (apiserver_watch_events_total, apiserver_watch_events_sizes), by
	// resource: events, and KiB.
	APIServerWatchEventsPerPolicyChange map[string]float64 `json:"apiserverWatchEventsPerPolicyChange,omitempty"`
	APIServerWatchKiBPerPolicyChange    map[string]float64 `json:"apiserverWatchKiBPerPolicyChange,omitempty"`
	// NodeReportBytes: agent 0's report ConfigMap at the end (JSON, with
	// managedFields: what each of its writes decodes, validates, stores
	// and sends to the elected agent); of it, managedFields.
	NodeReportBytes              int `json:"nodeReportBytes,omitempty"`
	NodeReportManagedFieldsBytes int `json:"nodeReportManagedFieldsBytes,omitempty"`
	// Watch traffic one agent received, mean over agents.
	WatchBytesPerPolicyChange  float64 `json:"watchBytesPerPolicyChange"`
	WatchEventsPerPolicyChange float64 `json:"watchEventsPerPolicyChange"`
	// By resource: "bytes/events" one agent received per change.
	WatchPerPolicyChangeByResource map[string]string `json:"watchPerPolicyChangeByResource,omitempty"`
	WatchPerPodChangeByResource    map[string]string `json:"watchPerPodChangeByResource,omitempty"`
	// Pod changes (a label change that moves the pod to another identity):
	// written → every agent implemented.
	PodChanges              int     `json:"podChanges"`
	PodConvergeP50Ms        float64 `json:"podConvergeP50Ms"`
	PodConvergeP99Ms        float64 `json:"podConvergeP99Ms"`
	WatchBytesPerPodChange  float64 `json:"watchBytesPerPodChange"`
	WatchEventsPerPodChange float64 `json:"watchEventsPerPodChange"`
	// WireBytesPerPodChange: bytes read from the agent's connection (TLS
	// and HTTP/2 framing included).
	WireBytesPerPodChange float64 `json:"wireBytesPerPodChange"`
	// WritesDuringPodChanges: agents' writes during the pod changes (want 0).
	WritesDuringPodChanges int `json:"writesDuringPodChanges"`
	PodObjectBytes         int `json:"podObjectBytes"`
	// WatchContentTypes: each watch's encoding, by resource.
	WatchContentTypes map[string]string `json:"watchContentTypes,omitempty"`
	// Agent CPU per agent per change (ms), and memory per agent.
	AgentCPUMsPerPolicyChange float64 `json:"agentCpuMsPerPolicyChange"`
	AgentCPUMsPerPodChange    float64 `json:"agentCpuMsPerPodChange"`
	AgentRSSMiB               float64 `json:"agentRssMiB"`
	// AgentsRSSMiB: the whole agents' process (full and light agents).
	AgentsRSSMiB float64 `json:"agentsRssMiB"`
	// FullWatchBytesPerPodChange: WatchBytesPerPodChange over the full
	// agents only (their informers' watches).
	FullWatchBytesPerPodChange float64 `json:"fullWatchBytesPerPodChange"`
	AgentHeapMiB               float64 `json:"agentHeapMiB"`
	// APIServerCPUMsPerPolicyChange: this process (kube-apiserver, etcd,
	// the driver) per policy change.
	APIServerCPUMsPerPolicyChange float64 `json:"apiserverCpuMsPerPolicyChange"`
	APIServerCPUMsPerPodChange    float64 `json:"apiserverCpuMsPerPodChange"`
	// One policy computation of the whole view (ms), the agents' shared one.
	ComputeMs     float64 `json:"computeMs"`
	SharedCompute bool    `json:"sharedCompute"`
	// Start-up: agents started → every agent implemented its first view,
	// → every policy's status showed every node; writes and 409s meanwhile.
	StartupSyncS     float64 `json:"startupSyncS"`
	StartupStatusS   float64 `json:"startupStatusS"`
	StartupWrites    float64 `json:"startupWrites"`
	StartupConflicts float64 `json:"startupConflicts"`
	// Of StartupConflicts: on status writes, and all by request.
	StartupStatusConflicts float64            `json:"startupStatusConflicts"`
	StartupConflictsBy     map[string]float64 `json:"startupConflictsBy,omitempty"`
	LoadAvg                []string           `json:"loadavg"`
	DurationS              float64            `json:"durationS"`
	Errors                 []string           `json:"errors,omitempty"`
}

func percentile(ds []time.Duration, p float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*p+0.999999) - 1
	i = min(max(i, 0), len(s)-1)
	return float64(s[i].Microseconds()) / 1000
}

// Run runs one measurement against the API server admin reaches, with the
// agents started by startChild.
func Run(ctx context.Context, admin *rest.Config, cfg RunConfig, startChild func(agentsConfig) (*exec.Cmd, error)) (*Result, error) {
	start := time.Now()
	if cfg.ChangeTimeout <= 0 {
		cfg.ChangeTimeout = 2 * time.Minute
	}
	logf := cfg.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if cfg.FullAgents <= 0 || cfg.FullAgents > cfg.Nodes {
		cfg.FullAgents = cfg.Nodes
	}
	res := &Result{Nodes: cfg.Nodes, Pods: cfg.Pods, Policies: cfg.Policies, SharedCompute: cfg.SharedCompute,
		FullAgents: cfg.FullAgents, StatusNodesLimit: cfg.StatusNodesLimit, LoadAvg: []string{loadavg()}}
	fast := fastConfig(admin)
	client, err := kubernetes.NewForConfig(fast)
	if err != nil {
		return nil, err
	}
	dyn, err := dynamic.NewForConfig(fast)
	if err != nil {
		return nil, err
	}
	run := fmt.Sprintf("n%d", cfg.Nodes)
	if cfg.FullAgents < cfg.Nodes {
		run = fmt.Sprintf("n%dk%d", cfg.Nodes, cfg.FullAgents)
	}
	if cfg.StatusNodesLimit != 0 {
		run += fmt.Sprintf("l%d", max(cfg.StatusNodesLimit, 0))
	}
	for j := range cfg.Policies {
		ns, _ := policyRef(run, j)
		if _, err := dyn.Resource(k8s.CNPResource()).Namespace(ns).Create(ctx, newPolicy(run, j), metav1.CreateOptions{}); err != nil {
			return nil, fmt.Errorf("create policy: %w", err)
		}
	}
	// The next run on this cluster starts without this run's policies.
	defer func() {
		for j := range cfg.Policies {
			ns, name := policyRef(run, j)
			dyn.Resource(k8s.CNPResource()).Namespace(ns).Delete(context.WithoutCancel(ctx), name, metav1.DeleteOptions{})
		}
	}()
	if raw, err := client.CoreV1().Pods(nsName(0)).Get(ctx, podName(0), metav1.GetOptions{}); err == nil {
		b, _ := json.Marshal(raw)
		res.PodObjectBytes = len(b)
	}

	nodes := make([]string, cfg.Nodes)
	for i := range nodes {
		nodes[i] = nodeName(i)
	}
	// The reports of nodes without an agent in this run (a larger N
	// before, on this cluster) go, as when those nodes are deleted: the
	// merged status counts every Node that has a report, and a node that
	// reports nothing for a policy has not implemented it.
	if err := dropOtherReports(ctx, dyn, nodes); err != nil {
		return nil, err
	}
	// The merged status counts the Nodes that should run an agent: this
	// run's, by a label the agents' status node selector names (as the
	// chart passes the DaemonSet's nodeSelector), not the cluster's other
	// nodes (a larger N's), which run none here.
	nodeLabel := map[string]any{"metadata": map[string]any{"labels": map[string]any{scaleRunLabel: run}}}
	labelPatch, _ := json.Marshal(nodeLabel)
	for _, n := range nodes {
		if _, err := client.CoreV1().Nodes().Patch(ctx, n, types.MergePatchType, labelPatch, metav1.PatchOptions{}); err != nil {
			return nil, fmt.Errorf("label node %s: %w", n, err)
		}
	}
	tr := newTracker(cfg.Nodes)
	// The driver's own view of policy status: one watch.
	inf := dynamicinformer.NewFilteredDynamicSharedInformerFactory(dyn, 0, metav1.NamespaceAll, nil).ForResource(k8s.CNPResource()).Informer()
	onObj := func(o any) {
		if u, ok := o.(*unstructured.Unstructured); ok {
			tr.noteStatus(u.GetNamespace()+"/"+u.GetName(), statusGeneration(u, nodes))
		}
	}
	inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: onObj, UpdateFunc: func(_, o any) { onObj(o) }})
	ictx, icancel := context.WithCancel(ctx)
	defer icancel()
	go inf.Run(ictx.Done())
	// And of the nodes' reports: when every node's report showed a
	// generation, before the elected agent merged them.
	reports := newNodeReports(nodes)
	rinf := dynamicinformer.NewFilteredDynamicSharedInformerFactory(dyn, 0, k8s.NodeReportNamespace(""), func(o *metav1.ListOptions) {
		o.LabelSelector = k8s.NodeReportSelector()
	}).ForResource(configMapsResource).Informer()
	onReport := func(o any) {
		if u, ok := o.(*unstructured.Unstructured); ok {
			reports.note(u, tr)
		}
	}
	rinf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: onReport, UpdateFunc: func(_, o any) { onReport(o) }})
	go rinf.Run(ictx.Done())

	acfg := agentsConfig{Host: admin.Host, BearerToken: admin.BearerToken, CAData: admin.TLSClientConfig.CAData,
		ServerName: admin.TLSClientConfig.ServerName, Impersonate: cfg.AgentUser, Nodes: nodes,
		SharedCompute: cfg.SharedCompute, FullAgents: cfg.FullAgents, StatusNodesLimit: cfg.StatusNodesLimit,
		StatusNodeSelector: scaleRunLabel + "=" + run, QPS: 20, Burst: 40}
	before, err := client.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil, err
	}
	reqStart, err := parseRequestTotals(before)
	if err != nil {
		return nil, err
	}
	cmd, err := startChild(acfg)
	if err != nil {
		return nil, err
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	agentsStart := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start agents: %w", err)
	}
	ch := &childProcess{cmd: cmd, stdin: stdin, tr: tr, done: make(chan error, 1)}
	go tr.read(stdout)
	go func() { ch.done <- cmd.Wait() }()
	defer func() {
		stdin.Close()
		select {
		case <-ch.done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-ch.done
		}
	}()

	wait := func(what string, limit time.Duration, cond func() bool) bool {
		deadline := time.Now().Add(limit)
		for !cond() {
			if time.Now().After(deadline) || ctx.Err() != nil {
				logf("timed out waiting for %s", what)
				return false
			}
			select {
			case err := <-ch.done:
				ch.done <- err
				logf("agents exited while waiting for %s: %v", what, err)
				return false
			case <-time.After(20 * time.Millisecond):
			}
		}
		return true
	}
	allPolicies := func(e agentEvent) bool { return len(e.Policies) == cfg.Policies }
	if !wait("every agent's first view", 30*time.Minute, func() bool { return tr.all(allPolicies) }) {
		return nil, fmt.Errorf("agents never synced: %v", tr.errors())
	}
	res.StartupSyncS = time.Since(agentsStart).Seconds()
	logf("every agent synced after %v (load %s)", time.Since(agentsStart).Round(time.Millisecond), loadavg())
	statusAll := func(gen int64) func() bool {
		return func() bool {
			for j := range cfg.Policies {
				ns, name := policyRef(run, j)
				if _, ok := tr.statusReached(ns+"/"+name, gen); !ok {
					return false
				}
			}
			return true
		}
	}
	// Start-up ends when every node's own report shows every policy too:
	// the merged Implemented condition counts the nodes that reported,
	// so it can say True before a node's first report is written (a
	// clean-clone run counted that late create as a policy change's
	// write: 4.25 node writes per change for 4 nodes).
	reportedAll := func() bool {
		for j := range cfg.Policies {
			ns, name := policyRef(run, j)
			if _, ok := tr.reportedAt(ns+"/"+name, 1); !ok {
				return false
			}
		}
		return true
	}
	if wait("every policy's status on every node", 10*time.Minute, func() bool { return statusAll(1)() && reportedAll() }) {
		res.StartupStatusS = time.Since(agentsStart).Seconds()
	} else {
		res.Errors = append(res.Errors, "start-up status never showed every node")
	}
	m0, err := mark(ctx, client, ch)
	if err != nil {
		return nil, err
	}
	startup := m0.requests.sub(reqStart)
	res.StartupWrites = startup.sum(agentStatusWrite)
	res.StartupConflicts = startup.sum(func(k requestKey) bool { return k.Code == "409" })
	res.StartupStatusConflicts = startup.sum(func(k requestKey) bool { return k.Code == "409" && agentStatusWrite(k) })
	for _, k := range startup.sortedKeys() {
		if k.Code == "409" {
			if res.StartupConflictsBy == nil {
				res.StartupConflictsBy = map[string]float64{}
			}
			res.StartupConflictsBy[k.String()] = startup[k]
		}
	}
	logf("start-up status after %.1fs: %v writes, %v conflicts", res.StartupStatusS, res.StartupWrites, res.StartupConflicts)

	// Policy changes.
	stopProfiles := startPhaseProfiles(cfg.ProfileDir, run, ch, logf)
	var conv, impl, reported []time.Duration
	for k := 1; k <= cfg.PolicyChanges; k++ {
		j := (k - 1) % cfg.Policies
		ns, name := policyRef(run, j)
		patch, _ := json.Marshal(map[string]any{"spec": policySpec(j, k)})
		written := time.Now()
		u, err := dyn.Resource(k8s.CNPResource()).Namespace(ns).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{})
		if err != nil {
			return nil, fmt.Errorf("change policy: %w", err)
		}
		gen := u.GetGeneration()
		key := ns + "/" + name
		has := func(e agentEvent) bool { return e.Policies[key] >= k }
		ok := wait(fmt.Sprintf("policy change %d", k), cfg.ChangeTimeout, func() bool {
			_, st := tr.statusReached(key, gen)
			return st && tr.all(has)
		})
		if !ok {
			res.TimedOut++
			continue
		}
		at, _ := tr.lastFirst(written, has)
		impl = append(impl, at.Sub(written))
		if rt, ok := tr.reportedAt(key, gen); ok {
			reported = append(reported, rt.Sub(written))
		}
		st, _ := tr.statusReached(key, gen)
		if st.After(at) {
			at = st
		}
		conv = append(conv, at.Sub(written))
		time.Sleep(200 * time.Millisecond)
	}
	stopProfiles()
	m1, err := mark(ctx, client, ch)
	if err != nil {
		return nil, err
	}
	res.PolicyChanges = cfg.PolicyChanges
	res.ConvergeP50Ms, res.ConvergeP99Ms = percentile(conv, 0.5), percentile(conv, 0.99)
	res.ImplementP50Ms, res.ImplementP99Ms = percentile(impl, 0.5), percentile(impl, 0.99)
	res.ReportedP50Ms, res.ReportedP99Ms = percentile(reported, 0.5), percentile(reported, 0.99)
	pc := float64(max(cfg.PolicyChanges, 1))
	pol := m1.requests.sub(m0.requests)
	res.Writes = pol.sum(agentStatusWrite) / pc
	res.NodeStatusWrites = pol.sum(nodeStatusWrite) / pc
	res.PolicyStatusWrites = pol.sum(policyStatusWrite) / pc
	res.WritesPerNode = res.Writes / float64(cfg.Nodes)
	res.Conflicts = pol.sum(func(k requestKey) bool { return k.Code == "409" })
	res.StatusConflicts = pol.sum(func(k requestKey) bool { return k.Code == "409" && agentStatusWrite(k) })
	res.RequestsPerPolicyChange = map[string]float64{}
	for _, k := range pol.sortedKeys() {
		res.RequestsPerPolicyChange[k.String()] = pol[k] / pc
	}
	res.APIServerWatchEventsPerPolicyChange, res.APIServerWatchKiBPerPolicyChange = map[string]float64{}, map[string]float64{}
	for k, v := range m1.watch.sub(m0.watch) {
		switch k.Verb {
		case "events":
			res.APIServerWatchEventsPerPolicyChange[k.Resource] += v / pc
		case "bytes":
			res.APIServerWatchKiBPerPolicyChange[k.Resource] += v / pc / 1024
		}
	}
	attempts, failed, gets := 0, 0, 0
	for _, a := range m1.stats.Agents {
		for _, w := range a.Writes {
			if w.Resource == "events" {
				continue
			}
			attempts++
			if w.Code < 200 || w.Code > 299 {
				failed++
			}
		}
	}
	for i, a := range m1.stats.Agents {
		gets += requestsWhere(a, func(k reqKey) bool { return k.Verb == "GET" }) -
			requestsWhere(m0.stats.Agents[i], func(k reqKey) bool { return k.Verb == "GET" })
	}
	res.Retries = float64(failed) / pc
	res.Gets = float64(gets) / pc
	res.WatchBytesPerPolicyChange, res.WatchEventsPerPolicyChange = watchPerAgent(m0.stats, m1.stats, pc)
	res.WatchPerPolicyChangeByResource = watchByResource(m0.stats, m1.stats, pc)
	res.AgentCPUMsPerPolicyChange = float64((m1.childCPU - m0.childCPU).Milliseconds()) / pc / float64(cfg.Nodes)
	res.APIServerCPUMsPerPolicyChange = float64((m1.selfCPU - m0.selfCPU).Milliseconds()) / pc
	logf("policy changes: converge p50 %.0f ms p99 %.0f ms, %.1f writes/change, %v conflicts (load %s)",
		res.ConvergeP50Ms, res.ConvergeP99Ms, res.Writes, res.Conflicts, loadavg())
	res.LoadAvg = append(res.LoadAvg, loadavg())

	// Pod changes: a label change that gives the pod another identity.
	var podConv []time.Duration
	for k := 1; k <= cfg.PodChanges; k++ {
		i := (k * 7919) % cfg.Pods
		ns, name := nsName(i), podName(i)
		mk := run + "-" + strconv.Itoa(k)
		patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]string{
			markLabel: mk, "app": appName(k + 7)}}})
		written := time.Now()
		if _, err := client.CoreV1().Pods(ns).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			return nil, fmt.Errorf("change pod: %w", err)
		}
		key := ns + "/" + name
		has := func(e agentEvent) bool { return e.Pods[key] == mk }
		if !wait(fmt.Sprintf("pod change %d", k), cfg.ChangeTimeout, func() bool { return tr.all(has) }) {
			res.TimedOut++
			continue
		}
		at, _ := tr.lastFirst(written, has)
		podConv = append(podConv, at.Sub(written))
		time.Sleep(200 * time.Millisecond)
	}
	m2, err := mark(ctx, client, ch)
	if err != nil {
		return nil, err
	}
	res.PodChanges = cfg.PodChanges
	pdc := float64(max(cfg.PodChanges, 1))
	res.PodConvergeP50Ms, res.PodConvergeP99Ms = percentile(podConv, 0.5), percentile(podConv, 0.99)
	res.WatchBytesPerPodChange, res.WatchEventsPerPodChange = watchPerAgent(m1.stats, m2.stats, pdc)
	res.WatchPerPodChangeByResource = watchByResource(m1.stats, m2.stats, pdc)
	var wire int64
	for i, a := range m2.stats.Agents {
		wire += a.WireRead - m1.stats.Agents[i].WireRead
		for _, w := range a.Writes {
			if w.Resource != "events" {
				res.WritesDuringPodChanges++
			}
		}
	}
	if len(m2.stats.Agents) > 0 {
		res.WatchContentTypes = m2.stats.Agents[0].WatchTypes
	}
	res.WireBytesPerPodChange = float64(wire) / float64(cfg.Nodes) / pdc
	res.AgentCPUMsPerPodChange = float64((m2.childCPU - m1.childCPU).Milliseconds()) / pdc / float64(cfg.Nodes)
	res.APIServerCPUMsPerPodChange = float64((m2.selfCPU - m1.selfCPU).Milliseconds()) / pdc
	res.AgentRSSMiB = float64(m2.childRSS) / float64(cfg.Nodes) / (1 << 20)
	res.AgentsRSSMiB = float64(m2.childRSS) / (1 << 20)
	res.FullWatchBytesPerPodChange, _ = watchPerAgent(firstAgents(m1.stats, cfg.FullAgents), firstAgents(m2.stats, cfg.FullAgents), pdc)
	res.AgentHeapMiB = float64(m2.stats.HeapInuse) / float64(cfg.Nodes) / (1 << 20)
	if m2.stats.Computes > 0 {
		res.ComputeMs = float64(m2.stats.ComputeNanos) / float64(m2.stats.Computes) / 1e6
	}
	for msg, n := range m2.stats.Logs {
		if strings.Contains(msg, "not written") {
			res.WriteFailures += n
		}
	}
	logf("pod changes: converge p50 %.0f ms p99 %.0f ms, %.0f watch bytes/agent/change (load %s)",
		res.PodConvergeP50Ms, res.PodConvergeP99Ms, res.WatchBytesPerPodChange, loadavg())
	res.LoadAvg = append(res.LoadAvg, loadavg())
	// What users see: the policies' status size, and how many nodes it
	// lists.
	for j := range cfg.Policies {
		ns, name := policyRef(run, j)
		u, err := dyn.Resource(k8s.CNPResource()).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("read policy: %w", err)
		}
		listed, _, _ := unstructured.NestedMap(u.Object, "status", "nodes")
		res.StatusNodesListed = max(res.StatusNodesListed, len(listed))
		b, _ := json.Marshal(u.Object)
		res.PolicyObjectBytes = max(res.PolicyObjectBytes, len(b))
	}
	if u, err := dyn.Resource(configMapsResource).Namespace(k8s.NodeReportNamespace("")).Get(ctx, k8s.NodeReportName(nodes[0]), metav1.GetOptions{}); err == nil {
		b, _ := json.Marshal(u.Object)
		res.NodeReportBytes = len(b)
		mf, _, _ := unstructured.NestedFieldNoCopy(u.Object, "metadata", "managedFields")
		b, _ = json.Marshal(mf)
		res.NodeReportManagedFieldsBytes = len(b)
	}
	res.Errors = append(res.Errors, tr.errors()...)
	res.DurationS = time.Since(start).Seconds()
	return res, nil
}

// agentStatusWrite selects the agents' policy status writes: to a
// policy's status, or to a node's report.
func agentStatusWrite(k requestKey) bool { return policyStatusWrite(k) || nodeStatusWrite(k) }

func policyStatusWrite(k requestKey) bool {
	if !isWriteVerb(k.Verb) {
		return false
	}
	switch k.Resource {
	case "ciliumnetworkpolicies", "ciliumclusterwidenetworkpolicies":
		return k.Subresource == "status"
	}
	return false
}

func nodeStatusWrite(k requestKey) bool {
	// (The agents write no other ConfigMaps.)
	return isWriteVerb(k.Verb) && (k.Resource == "configmaps" || k.Resource == "policynodestatuses")
}

func requestsWhere(a agentStats, keep func(reqKey) bool) int {
	n := 0
	for _, r := range a.Requests {
		if keep(r.reqKey) {
			n += r.N
		}
	}
	return n
}

// firstAgents is s with only its first n agents.
func firstAgents(s *childStats, n int) *childStats {
	c := *s
	c.Agents = c.Agents[:min(n, len(c.Agents))]
	return &c
}

// watchPerAgent is the mean watch bytes and events one agent received
// between two stats, per change.
func watchPerAgent(a, b *childStats, changes float64) (float64, float64) {
	var bytes, events int64
	for i := range b.Agents {
		for r, v := range b.Agents[i].WatchBytes {
			bytes += v - a.Agents[i].WatchBytes[r]
		}
		for r, v := range b.Agents[i].WatchEvents {
			events += v - a.Agents[i].WatchEvents[r]
		}
	}
	n := float64(len(b.Agents))
	return float64(bytes) / n / changes, float64(events) / n / changes
}

// watchByResource is, per resource, "bytes/events" one agent received per
// change (mean over agents; bookmarks included).
func watchByResource(a, b *childStats, changes float64) map[string]string {
	bytes, events := map[string]int64{}, map[string]int64{}
	for i := range b.Agents {
		for r, v := range b.Agents[i].WatchBytes {
			bytes[r] += v - a.Agents[i].WatchBytes[r]
		}
		for r, v := range b.Agents[i].WatchEvents {
			events[r] += v - a.Agents[i].WatchEvents[r]
		}
	}
	out := map[string]string{}
	n := float64(len(b.Agents)) * changes
	for r := range bytes {
		out[r] = fmt.Sprintf("%.0f/%.2f", float64(bytes[r])/n, float64(events[r])/n)
	}
	return out
}
