package scale

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"regexp"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2"

	"github.com/l7gate/l7gate/k8s"
	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/source"
)

// agentsConfig is what the child process needs to run the agents.
type agentsConfig struct {
	Host        string `json:"host"`
	BearerToken string `json:"bearerToken"`
	CAData      []byte `json:"caData"`
	ServerName  string `json:"serverName"`
	// Impersonate is the agents' user (the chart's service account).
	Impersonate string   `json:"impersonate"`
	Nodes       []string `json:"nodes"`
	// SharedCompute computes each distinct view once for all agents (they
	// all see the same cluster): on 2 cores, N agents computing the same
	// 10k-pod view one after another would measure the simulation, not a
	// cluster whose nodes compute in parallel. The cost of one computation
	// is reported on its own.
	SharedCompute bool `json:"sharedCompute"`
	// FullAgents: agents 0..FullAgents-1 run the whole source; the others
	// are light agents (light.go). 0: every agent is full.
	FullAgents int `json:"fullAgents"`
	// StatusNodesLimit is the agents' k8s.ElectionConfig.StatusNodesLimit
	// (0: the default).
	StatusNodesLimit int `json:"statusNodesLimit"`
	// StatusNodeSelector is the agents' k8s.ElectionConfig.StatusNodeSelector:
	// this run's nodes (the cluster has the largest run's).
	StatusNodeSelector string `json:"statusNodeSelector"`
	// ParallelSync bounds agents doing their first list at once.
	ParallelSync int     `json:"parallelSync"`
	QPS          float32 `json:"qps"`
	Burst        int     `json:"burst"`
}

// Lines the child writes on stdout carry this prefix; the rest is test
// output.
const linePrefix = "L7SCALE "

// agentEvent is one line from the child.
type agentEvent struct {
	Ev    string `json:"ev"`
	Agent int    `json:"agent,omitempty"`
	T     int64  `json:"t,omitempty"` // unix nanoseconds
	Rev   uint64 `json:"rev,omitempty"`
	// Policies: change number per scale policy ("ns/name") in the view.
	Policies map[string]int `json:"policies,omitempty"`
	// Pods: the scale-mark label per marked pod ("ns/name").
	Pods map[string]string `json:"pods,omitempty"`
	// Stats (ev "stats").
	Stats *childStats `json:"stats,omitempty"`
	Err   string      `json:"err,omitempty"`
}

// childStats is what the child reports when asked.
type childStats struct {
	Agents []agentStats `json:"agents"`
	// HeapInuse after a GC, bytes.
	HeapInuse uint64 `json:"heapInuse"`
	// Computes and ComputeNanos: policy computations done and their time.
	Computes     int   `json:"computes"`
	ComputeNanos int64 `json:"computeNanos"`
	// Logs counts warnings and errors logged by the agents, by message.
	Logs map[string]int `json:"logs"`
}

type agentStats struct {
	Requests    []requestCount    `json:"requests"`
	WatchBytes  map[string]int64  `json:"watchBytes"`
	WatchEvents map[string]int64  `json:"watchEvents"`
	WatchTypes  map[string]string `json:"watchTypes"`
	WireRead    int64             `json:"wireRead"`
	WireWritten int64             `json:"wireWritten"`
	// Writes since the previous stats.
	Writes []objectWrite `json:"writes"`
}

type requestCount struct {
	reqKey
	N int `json:"n"`
}

var changeRE = regexp.MustCompile(`/change-(\d+)/`)

// markLabel on a pod is reported by every agent that implemented it.
const markLabel = "scale-mark"

// marks extracts the scale markers of a view.
func marks(u source.Update) (map[string]int, map[string]string) {
	pols := map[string]int{}
	pods := map[string]string{}
	if u.Objects == nil {
		return pols, pods
	}
	for _, p := range u.Objects.Policies {
		for _, r := range p.Rules {
			for _, s := range r.Allow[policy.Ingress] {
				for _, pr := range s.Ports {
					if pr.L7 == nil {
						continue
					}
					for _, h := range pr.L7.HTTP {
						if m := changeRE.FindStringSubmatch(h.Path); m != nil {
							n, _ := strconv.Atoi(m[1])
							pols[p.Name()] = max(pols[p.Name()], n)
						}
					}
				}
			}
		}
	}
	for _, p := range u.Objects.Pods {
		if v, ok := p.Labels[markLabel]; ok {
			pods[p.Namespace+"/"+p.Name] = v
		}
	}
	return pols, pods
}

// sharedComputer computes each view once, by digest.
type sharedComputer struct {
	mu    sync.Mutex
	alloc *policy.IdentityAllocator
	views map[string]*computed
	order []string
	n     int
	nanos int64
}

type computed struct {
	done chan struct{}
	snap *policy.Snapshot
	err  error
}

func newSharedComputer() *sharedComputer {
	return &sharedComputer{alloc: policy.NewIdentityAllocator(), views: map[string]*computed{}}
}

func (c *sharedComputer) compute(u source.Update) (*policy.Snapshot, error) {
	c.mu.Lock()
	v, ok := c.views[u.Digest]
	if !ok {
		v = &computed{done: make(chan struct{})}
		c.views[u.Digest] = v
		c.order = append(c.order, u.Digest)
		if len(c.order) > 8 {
			delete(c.views, c.order[0])
			c.order = c.order[1:]
		}
	}
	c.mu.Unlock()
	if ok {
		<-v.done
		return v.snap, v.err
	}
	c.mu.Lock() // one allocator: computations run one at a time
	// Timed once the lock is held: waiting for another view's computation
	// is not this one's cost.
	start := time.Now()
	v.snap, v.err = policy.Compute(u.Objects, c.alloc)
	c.n++
	c.nanos += time.Since(start).Nanoseconds()
	c.mu.Unlock()
	close(v.done)
	return v.snap, v.err
}

// logCounter counts warnings and errors by message and passes records on.
type logCounter struct {
	mu     sync.Mutex
	counts map[string]int
	next   slog.Handler
}

type countingHandler struct {
	c     *logCounter
	attrs []slog.Attr
	group string
}

func (h *countingHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (h *countingHandler) Handle(ctx context.Context, r slog.Record) error {
	h.c.mu.Lock()
	h.c.counts[r.Message]++
	first := h.c.counts[r.Message] <= 3
	h.c.mu.Unlock()
	if first && h.c.next != nil {
		return h.c.next.WithAttrs(h.attrs).Handle(ctx, r)
	}
	return nil
}
func (h *countingHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &countingHandler{c: h.c, attrs: append(append([]slog.Attr{}, h.attrs...), as...), group: h.group}
}
func (h *countingHandler) WithGroup(g string) slog.Handler { return h }

// runAgents runs one simulated agent per node until ctx ends or cmds
// closes, answering "stats" lines on cmds with a stats event.
func runAgents(ctx context.Context, cfg agentsConfig, cmds io.Reader, out io.Writer, stderr io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var outMu sync.Mutex
	emit := func(e agentEvent) {
		b, _ := json.Marshal(e)
		outMu.Lock()
		fmt.Fprintf(out, "%s%s\n", linePrefix, b)
		outMu.Unlock()
	}
	logs := &logCounter{counts: map[string]int{}, next: slog.NewTextHandler(stderr, nil)}
	// client-go logs through klog, process-wide: this process is only the
	// agents, so count its warnings with theirs.
	klog.SetSlogLogger(slog.New(&countingHandler{c: logs}))
	shared := newSharedComputer()
	if cfg.ParallelSync <= 0 {
		cfg.ParallelSync = 8
	}
	syncSem := make(chan struct{}, cfg.ParallelSync)
	counters := make([]*apiCounters, len(cfg.Nodes))
	lastWrites := make([]int, len(cfg.Nodes))
	full := cfg.FullAgents
	if full <= 0 || full > len(cfg.Nodes) {
		full = len(cfg.Nodes)
	}
	hub := newViewHub()
	var src0 *k8s.Source
	var wg sync.WaitGroup
	for i, node := range cfg.Nodes {
		counters[i] = newAPICounters()
		client, dyn, err := agentClients(cfg, counters[i])
		if err != nil {
			return err
		}
		var pub *viewHub
		var src *k8s.Source
		if i < full {
			if src, err = k8s.NewSource(k8s.SourceConfig{Client: client, Dynamic: dyn, Node: node, Logger: newAgentLogger(logs, node)}); err != nil {
				return err
			}
			if i == 0 {
				pub, src0 = hub, src
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if src != nil {
				err = runAgent(ctx, cfg, i, node, client, dyn, src, pub, shared, logs, syncSem, emit)
			} else {
				err = runLightAgent(ctx, cfg, i, node, client, dyn, src0, hub, logs, emit)
			}
			if err != nil && ctx.Err() == nil {
				emit(agentEvent{Ev: "error", Agent: i, Err: err.Error()})
			}
		}()
	}
	go func() {
		defer cancel()
		sc := bufio.NewScanner(cmds)
		var prof *os.File
		for sc.Scan() {
			if path, ok := strings.CutPrefix(sc.Text(), "cpuprofile "); ok {
				// The policy phase's CPU profile (Run, ProfileDir).
				if prof != nil {
					pprof.StopCPUProfile()
					prof.Close()
					prof = nil
				}
				if path != "" {
					f, err := os.Create(path)
					if err == nil && pprof.StartCPUProfile(f) == nil {
						prof = f
					} else if f != nil {
						f.Close()
					}
				}
				emit(agentEvent{Ev: "profile", T: time.Now().UnixNano()})
				continue
			}
			if sc.Text() != "stats" {
				continue
			}
			st := &childStats{Logs: map[string]int{}}
			for i, c := range counters {
				snap := c.snapshot()
				as := agentStats{WatchBytes: snap.WatchBytes, WatchEvents: snap.WatchEvents, WatchTypes: snap.WatchTypes, WireRead: snap.WireRead,
					WireWritten: snap.WireWritten, Writes: c.writesSince(lastWrites[i])}
				lastWrites[i] = snap.Writes
				for k, n := range snap.Requests {
					as.Requests = append(as.Requests, requestCount{reqKey: k, N: n})
				}
				st.Agents = append(st.Agents, as)
			}
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			st.HeapInuse = ms.HeapInuse
			shared.mu.Lock()
			st.Computes, st.ComputeNanos = shared.n, shared.nanos
			shared.mu.Unlock()
			logs.mu.Lock()
			for k, v := range logs.counts {
				st.Logs[k] = v
			}
			logs.mu.Unlock()
			emit(agentEvent{Ev: "stats", T: time.Now().UnixNano(), Stats: st})
		}
	}()
	wg.Wait()
	return nil
}

// newAgentLogger is an agent's logger: warnings and errors counted.
func newAgentLogger(logs *logCounter, node string) *slog.Logger {
	return slog.New(&countingHandler{c: logs}).With("node", node)
}

// agentClients are one agent's typed and dynamic clients, sharing one
// HTTP client (one connection) as the agent's shared transport gives it,
// counted by c.
func agentClients(cfg agentsConfig, c *apiCounters) (kubernetes.Interface, dynamic.Interface, error) {
	rc := &rest.Config{Host: cfg.Host, BearerToken: cfg.BearerToken, QPS: cfg.QPS, Burst: cfg.Burst, UserAgent: "l7gate-agent",
		TLSClientConfig: rest.TLSClientConfig{CAData: cfg.CAData, ServerName: cfg.ServerName}}
	if cfg.Impersonate != "" {
		rc.Impersonate = rest.ImpersonationConfig{UserName: cfg.Impersonate}
	}
	rc.Dial = countingDialer(c)
	rc.Wrap(func(rt http.RoundTripper) http.RoundTripper { return &countingTransport{next: rt, c: c} })
	// One HTTP client (one connection) for the typed and dynamic clients,
	// as the agent's shared transport gives it.
	hc, err := rest.HTTPClientFor(rc)
	if err != nil {
		return nil, nil, err
	}
	client, err := kubernetes.NewForConfigAndClient(rc, hc)
	if err != nil {
		return nil, nil, err
	}
	dyn, err := dynamic.NewForConfigAndClient(rc, hc)
	if err != nil {
		return nil, nil, err
	}
	return client, dyn, nil
}

// runAgent is one node: the real source and status writer, a stub
// datapath that implements every update at once. With pub, it publishes
// every view it implemented to the light agents.
func runAgent(ctx context.Context, cfg agentsConfig, idx int, node string, client kubernetes.Interface, dyn dynamic.Interface,
	src *k8s.Source, pub *viewHub, shared *sharedComputer, logs *logCounter, syncSem chan struct{}, emit func(agentEvent)) error {
	log := newAgentLogger(logs, node)
	w, err := k8s.NewStatusWriter(k8s.StatusWriterConfig{Client: client, Dynamic: dyn, Node: node, Source: src, Logger: log,
		Election: k8s.ElectionConfig{StatusNodesLimit: cfg.StatusNodesLimit, StatusNodeSelector: cfg.StatusNodeSelector}})
	if err != nil {
		return err
	}
	// Bound the agents doing their first list at once: 200 agents each
	// listing 10k pods together is a start-up storm, not what this
	// measures.
	select {
	case syncSem <- struct{}{}:
	case <-ctx.Done():
		return nil
	}
	held := true
	defer func() {
		if held {
			<-syncSem
		}
	}()
	updates := make(chan source.Update)
	go func() {
		if err := src.Run(ctx, updates); err != nil && ctx.Err() == nil {
			emit(agentEvent{Ev: "error", Agent: idx, Err: "source: " + err.Error()})
		}
	}()
	go w.Run(ctx)
	alloc := policy.NewIdentityAllocator()
	var rev uint64
	var lastPols map[string]int
	var lastPods map[string]string
	for {
		var u source.Update
		select {
		case <-ctx.Done():
			return nil
		case u = <-updates:
		}
		var err error
		if cfg.SharedCompute {
			_, err = shared.compute(u)
		} else {
			_, err = policy.Compute(u.Objects, alloc)
		}
		if err != nil {
			emit(agentEvent{Ev: "error", Agent: idx, Err: "compute: " + err.Error()})
			continue
		}
		rev++
		w.Implemented(ctx, rev, u, nil)
		now := time.Now()
		if held {
			<-syncSem
			held = false
		}
		pols, pods := marks(u)
		if pub != nil {
			pub.publish(u, pols, pods)
		}
		if rev == 1 || !mapsEqual(pols, lastPols) || !mapsEqual(pods, lastPods) {
			emit(agentEvent{Ev: "impl", Agent: idx, T: now.UnixNano(), Rev: rev, Policies: pols, Pods: pods})
			lastPols, lastPods = pols, pods
		}
	}
}

func mapsEqual[V comparable](a, b map[string]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}
