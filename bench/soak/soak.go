// Package soak is `make soak`: the real agent, datapath and Go proxy on a
// node in network namespaces (demo.NewTopology), carrying keep-alive
// HTTP/1.1, h2c, gRPC (grpc-go) and Kafka (franz-go against kfake) clients
// and a new-connection loop through L7 policy for a bounded time, while
// policies change continuously, an allow/deny flip is checked by a denied
// client, pods come and go, the proxy is handed over to a new process
// (SIGHUP to the agent) every HandOverEvery, SIGKILLed every CrashEvery,
// and the agent is SIGKILLed and restarted once. Run returns what every
// client saw, by phase, and the agent's and the proxy's RSS, goroutines
// and open fds over time; WriteReport turns that into Markdown and an SVG
// chart.
//
// Requests are attributed to a phase by the time they were in flight: a
// request overlapping a proxy crash window (kill → the restarted proxy
// serves, + 3 s) is "proxy crash", one overlapping the agent's restart
// "agent kill", one overlapping a hand-over (SIGHUP → the old proxy
// exited, + 3 s) "hand-over", the rest "steady". Only the crash window may
// see failures (the requests in flight on connections the killed proxy
// held); a denied request that got through is a failure of any phase.
package soak

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing/fstest"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/l7gate/l7gate/agentapi"
	"github.com/l7gate/l7gate/demo"
	"github.com/l7gate/l7gate/policy"
)

// Config configures Run.
type Config struct {
	// Executable is the l7gate binary (agent, proxy).
	Executable string
	// Duration bounds the run (the traffic; setup and teardown add ~30 s).
	Duration time.Duration
	// HandOverEvery: SIGHUP to the agent (a new proxy process takes the
	// listeners over) this often; 0: never.
	HandOverEvery time.Duration
	// CrashEvery: SIGKILL to the proxy this often (the first at
	// min(45 s, Duration/3)); 0: never.
	CrashEvery time.Duration
	// KillAgent: SIGKILL the agent once, at Duration/2 + 15 s, and start
	// it again 2 s later.
	KillAgent bool
	// PolicyUpdates is the number of policy object changes per 10 minutes
	// (scaled to Duration); 0: no churn.
	PolicyUpdates int
	// FlipEvery: flip the xwing's allow policy and add or remove a pod this
	// often, each checked once the agent implemented it; 0: never.
	FlipEvery time.Duration
	// DrainTimeout is passed to the proxy (--drain-timeout).
	DrainTimeout time.Duration
	// TempDir holds the work dir ("" = os.TempDir()).
	TempDir string
	Log     *slog.Logger
}

// Client kinds.
const (
	cHTTP1 = iota
	cH2C
	cNewConn
	cGRPC
	cKafka
	cXwing
	cPods
	nClients
)

var clientNames = [nClients]string{"HTTP/1.1 keep-alive", "HTTP/2 (h2c)", "new connections", "gRPC (grpc-go)", "Kafka (franz-go)", "xwing flips (new conns)", "pods that come and go"}

// Outcomes.
const (
	oOK     = iota // an allowed request answered as allowed
	oDenied        // a denied request answered as denied (403, PERMISSION_DENIED, TOPIC_AUTHORIZATION_FAILED, or an L3 drop)
	oFailed        // an allowed request that failed
	oLeaked        // a denied request that got through
	nOutcomes
)

// Phases, by priority.
const (
	pSteady = iota
	pHandOver
	pAgentKill
	pCrash
	nPhases
)

var phaseNames = [nPhases]string{"steady", "hand-over", "agent kill", "proxy crash"}

type record struct {
	start, end int64 // since the run's start, ns
	client     uint8
	outcome    uint8
}

// Event is one hand-over, crash, agent kill, flip or pod change.
type Event struct {
	Kind       string
	Start, End time.Duration // since the run's start
	Note       string
}

// Sample is one look at the agent and the proxy.
type Sample struct {
	At                               time.Duration
	AgentRSS, ProxyRSS               int64 // bytes; -1: unknown
	AgentFDs, ProxyFDs               int
	AgentGoroutines, ProxyGoroutines int
	AgentPID, ProxyPID               int
	OK, Failed                       int // requests that ended in the interval before At
}

// Result is what a run saw.
type Result struct {
	Config   Config
	Started  time.Time
	Took     time.Duration
	Records  []record
	Events   []Event
	Samples  []Sample
	Errors   []string // sampled errors: "at client: error"
	Problems []string // setup or check problems that are not request outcomes
	// PolicyWrites is the number of policy object changes written;
	// Revisions the agent revisions implemented (the last one seen).
	PolicyWrites int
	Revisions    uint64
	// ServerBypass counts requests the L7 rules deny that reached the
	// deathstar's HTTP or gRPC server.
	ServerBypass int64
}

const (
	deathstarIP = "198.18.1.10"
	nodeAddr    = "198.18.255.254"
)

const objectsYAML = `apiVersion: v1
kind: Namespace
metadata: {name: default}
---
apiVersion: v1
kind: Pod
metadata: {name: deathstar, namespace: default, labels: {org: empire, class: deathstar}}
status: {podIP: 198.18.1.10}
---
apiVersion: v1
kind: Pod
metadata: {name: tiefighter, namespace: default, labels: {org: empire, class: tiefighter}}
status: {podIP: 198.18.1.11}
---
apiVersion: v1
kind: Pod
metadata: {name: xwing, namespace: default, labels: {org: alliance, class: xwing}}
status: {podIP: 198.18.1.12}
`

// rule1: empire ships may land (HTTP), check health (gRPC) and produce
// announcements (Kafka); everything else on those ports is denied by L7.
const policyYAML = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: rule1, namespace: default}
spec:
  endpointSelector: {matchLabels: {org: empire, class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: POST, path: /v1/request-landing}]
    - ports: [{port: "50051", protocol: TCP}]
      rules:
        http: [{method: POST, path: /grpc.health.v1.Health/Check}]
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka: [{role: produce, topic: empire-announce}]
`

// flipYAML lets the alliance land too (while it is in force).
const flipYAML = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: soak-flip, namespace: default}
spec:
  endpointSelector: {matchLabels: {org: empire, class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: alliance, class: xwing}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: POST, path: /v1/request-landing}]
`

const stepsYAML = "description: soak\nsteps:\n- name: soak\n  checks: []\n"

type soak struct {
	cfg  Config
	log  *slog.Logger
	t0   time.Time
	topo *demo.Topology
	dirs map[string]string

	agentMu  sync.Mutex
	agentCmd *exec.Cmd
	agentLog *os.File

	recMu   sync.Mutex
	records []record
	errs    []string
	errN    [nClients]int
	probs   []string

	evMu   sync.Mutex
	events []Event

	bypass atomic.Int64

	// paused: the policy writer holds churn while a flip is implemented.
	policyWrites int
	churnVer     []int
	pods         map[string]string // churn pod name → IP
}

// Run runs a soak and removes everything it created before it returns.
func Run(ctx context.Context, cfg Config) (res *Result, err error) {
	if cfg.Executable == "" || cfg.Duration <= 0 {
		return nil, errors.New("soak: executable and duration are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 10 * time.Second
	}
	exe, err := filepath.Abs(cfg.Executable)
	if err != nil {
		return nil, fmt.Errorf("executable: %w", err)
	}
	cfg.Executable = exe
	s := &soak{cfg: cfg, log: cfg.Log, pods: map[string]string{}}
	sc, err := demo.LoadScenario(fstest.MapFS{
		"objects/starwars.yaml": {Data: []byte(objectsYAML)},
		"steps.yaml":            {Data: []byte(stepsYAML)},
	}, "soak")
	if err != nil {
		return nil, fmt.Errorf("scenario: %w", err)
	}
	work, err := os.MkdirTemp(cfg.TempDir, "l7gate-soak-")
	if err != nil {
		return nil, fmt.Errorf("work dir: %w", err)
	}
	topo, err := demo.NewTopology(ctx, sc, demo.TopologyConfig{WorkDir: work, Forwarding: true, Log: cfg.Log})
	if err != nil {
		return nil, fmt.Errorf("topology: %w", err)
	}
	s.topo = topo
	cleanupCtx := context.WithoutCancel(ctx)
	defer func() {
		s.stopAgent(syscall.SIGTERM, 10*time.Second)
		for name := range s.pods {
			exec.Command("ip", "netns", "del", s.podNS(name)).Run()
		}
		if s.dirs != nil {
			unix.Unmount(s.dirs["bpffs"], unix.MNT_DETACH)
		}
		if cerr := topo.Close(cleanupCtx); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cleanup: %w", cerr))
		}
	}()
	s.dirs = map[string]string{}
	for _, d := range []string{"source", "run", "state", "bpffs"} {
		s.dirs[d] = filepath.Join(work, d)
		if err := os.Mkdir(s.dirs[d], 0o700); err != nil {
			return nil, fmt.Errorf("work dir: %w", err)
		}
	}
	if err := unix.Mount("bpf", s.dirs["bpffs"], "bpf", 0, "mode=0700"); err != nil {
		return nil, fmt.Errorf("mount bpffs: %w", err)
	}
	if err := topo.TrackProxyCgroup(s.dirs["run"]); err != nil {
		return nil, err
	}
	for name, data := range map[string]string{"objects.yaml": objectsYAML, "rule1.yaml": policyYAML} {
		if err := writeAtomic(filepath.Join(s.dirs["source"], name), []byte(data)); err != nil {
			return nil, err
		}
	}
	if err := s.writeChurn(0); err != nil {
		return nil, err
	}
	srvCtx, stopServers := context.WithCancel(ctx)
	defer stopServers()
	if err := s.serve(srvCtx); err != nil {
		return nil, err
	}
	if err := s.startAgent(); err != nil {
		return nil, err
	}
	if _, err := s.waitDigest(ctx, 60*time.Second); err != nil {
		return nil, fmt.Errorf("agent: %w\nagent log:\n%s", err, tailFile(filepath.Join(work, "agent.log"), 30))
	}

	res = &Result{Config: cfg}
	s.t0 = time.Now()
	res.Started = s.t0
	runCtx, stop := context.WithTimeout(ctx, cfg.Duration)
	defer stop()
	var wg sync.WaitGroup
	s.startClients(runCtx, &wg)
	var samples []Sample
	wg.Go(func() { samples = s.sample(runCtx) })
	var policyWG sync.WaitGroup
	policyWG.Go(func() { s.policyLoop(runCtx) })
	s.schedule(runCtx)
	<-runCtx.Done()
	policyWG.Wait()
	wg.Wait()
	res.Took = time.Since(s.t0)
	if st, err := agentapi.FetchStatus(ctx, s.dirs["run"]); err == nil {
		res.Revisions = st.ImplementedRevision
	}
	s.recMu.Lock()
	res.Records, res.Errors, res.Problems = s.records, s.errs, s.probs
	s.recMu.Unlock()
	s.evMu.Lock()
	res.Events = s.events
	s.evMu.Unlock()
	res.Samples = samples
	res.PolicyWrites = s.policyWrites
	res.ServerBypass = s.bypass.Load()
	return res, nil
}

func (s *soak) since() time.Duration { return time.Since(s.t0) }

func (s *soak) problem(format string, args ...any) {
	msg := fmt.Sprintf("%6.1fs ", s.since().Seconds()) + fmt.Sprintf(format, args...)
	s.log.Warn("soak problem", "msg", msg)
	s.recMu.Lock()
	s.probs = append(s.probs, msg)
	s.recMu.Unlock()
}

func (s *soak) event(e Event) {
	s.log.Info("soak event", "kind", e.Kind, "start", e.Start.Round(time.Millisecond), "took", (e.End - e.Start).Round(time.Millisecond), "note", e.Note)
	s.evMu.Lock()
	s.events = append(s.events, e)
	s.evMu.Unlock()
}

func (s *soak) record(client int, start time.Time, outcome int, err error) {
	r := record{start: int64(start.Sub(s.t0)), end: int64(time.Since(s.t0)), client: uint8(client), outcome: uint8(outcome)}
	s.recMu.Lock()
	defer s.recMu.Unlock()
	s.records = append(s.records, r)
	if err != nil && (outcome == oFailed || outcome == oLeaked) && s.errN[client] < 8 {
		s.errN[client]++
		s.errs = append(s.errs, fmt.Sprintf("%6.1fs %s: %v", time.Duration(r.end).Seconds(), clientNames[client], err))
	}
}

// ---- namespaces ----

// inNS runs f on an OS thread in the named network namespace (sockets f
// creates stay there); the thread is switched back, or discarded.
func inNS(ns string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(orig)
		fd, err := unix.Open(filepath.Join("/run/netns", ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		err = f()
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

func nsDialer(ns string, timeout time.Duration) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := inNS(ns, func() error {
			d := net.Dialer{Timeout: timeout}
			d.SetMultipathTCP(false)
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

func (s *soak) podNS(name string) string {
	if hn := s.topo.Host("default/" + name); hn != nil {
		return hn.NS
	}
	return s.topo.Prefix + "-default-" + name
}

// ---- servers ----

// serve starts the deathstar's HTTP (HTTP/1.1 and h2c), gRPC and Kafka
// servers in its namespace, in this process.
func (s *soak) serve(ctx context.Context) error {
	ns := s.podNS("deathstar")
	var hl, gl net.Listener
	var kc *kfake.Cluster
	err := inNS(ns, func() error {
		var lc net.ListenConfig
		lc.SetMultipathTCP(false)
		var err error
		if hl, err = lc.Listen(ctx, "tcp4", deathstarIP+":80"); err != nil {
			return err
		}
		if gl, err = lc.Listen(ctx, "tcp4", deathstarIP+":50051"); err != nil {
			return err
		}
		kc, err = demo.NewKafkaBroker(ctx, deathstarIP+":9092", []string{"empire-announce", "deathstar-plans"})
		return err
	})
	if err != nil {
		return fmt.Errorf("deathstar servers: %w", err)
	}
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	ds := demo.DeathstarHandler("deathstar")
	hs := &http.Server{Protocols: &p, ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !(r.Method == http.MethodPost && r.URL.Path == "/v1/request-landing") {
			s.bypass.Add(1)
		}
		ds.ServeHTTP(w, r)
	})}
	gs := demo.NewGRPCServer("deathstar")
	go hs.Serve(hl)
	go gs.Serve(gl)
	go func() {
		<-ctx.Done()
		hs.Close()
		gs.Stop()
		kc.Close()
	}()
	return nil
}

// ---- the agent ----

const agentMetrics = "127.0.0.1:19962"

func (s *soak) startAgent() error {
	s.agentMu.Lock()
	defer s.agentMu.Unlock()
	f, err := os.OpenFile(filepath.Join(s.topo.WorkDir(), "agent.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command("ip", "netns", "exec", s.topo.Node, s.cfg.Executable, "agent",
		"--source", s.dirs["source"], "--bpffs", s.dirs["bpffs"], "--run-dir", s.dirs["run"], "--state-dir", s.dirs["state"],
		"--node", "soak", "--socket-lb=false", "--metrics-address", agentMetrics,
		"--proxy-arg=--drain-timeout="+s.cfg.DrainTimeout.String())
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start agent: %w", err)
	}
	s.agentCmd, s.agentLog = cmd, f
	return nil
}

func (s *soak) stopAgent(sig syscall.Signal, grace time.Duration) {
	s.agentMu.Lock()
	defer s.agentMu.Unlock()
	if s.agentCmd == nil {
		return
	}
	done := make(chan struct{})
	go func() { s.agentCmd.Wait(); close(done) }()
	s.agentCmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(grace):
		s.agentCmd.Process.Kill()
		<-done
	}
	s.agentLog.Close()
	s.agentCmd, s.agentLog = nil, nil
}

func (s *soak) agentPID() int {
	s.agentMu.Lock()
	defer s.agentMu.Unlock()
	if s.agentCmd == nil {
		return 0
	}
	return s.agentCmd.Process.Pid
}

func (s *soak) proxyPID() int {
	b, err := os.ReadFile(agentapi.ProxyPIDFile(s.dirs["run"]))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

func alive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	if err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	// A zombie (exited, not yet reaped) counts as gone.
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	if i := strings.LastIndexByte(string(b), ')'); i > 0 && i+2 < len(b) && b[i+2] == 'Z' {
		return false
	}
	return true
}

// sourceDigest is the source folder's digest as source.Folder computes it
// (source.FolderDigest: sha256 over every file's path and the sha256 of
// its content; this package's layer may not import source).
func sourceDigest(dir string) (string, error) {
	files, err := policy.ListFiles(dir)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		sum := sha256.Sum256(data)
		h.Write([]byte(f))
		h.Write([]byte{0})
		h.Write(sum[:])
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// waitDigest waits until the agent implemented the source folder as it
// is now (nothing may write to it meanwhile).
func (s *soak) waitDigest(ctx context.Context, timeout time.Duration) (*agentapi.Status, error) {
	want, err := sourceDigest(s.dirs["source"])
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(timeout)
	var last *agentapi.Status
	var lastErr error
	for {
		sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		st, err := agentapi.FetchStatus(sctx, s.dirs["run"])
		cancel()
		if err == nil {
			last, lastErr = st, nil
			if st.Ready && st.SourceDigest == want && st.ImplementedRevision == st.Revision {
				return st, nil
			}
		} else {
			lastErr = err
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			if lastErr != nil {
				return nil, fmt.Errorf("agent status: %w", lastErr)
			}
			return nil, fmt.Errorf("agent did not implement the source within %s (revision %d, implemented %d, digest match %v)",
				timeout, last.Revision, last.ImplementedRevision, last.SourceDigest == want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func writeAtomic(file string, data []byte) error {
	tmp := filepath.Join(filepath.Dir(file), "."+filepath.Base(file)+".tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, file)
}

// ---- clients ----

func httpClient(ns string, keepAlive, h2c bool) *http.Client {
	tr := &http.Transport{DisableKeepAlives: !keepAlive, DialContext: nsDialer(ns, 3*time.Second), MaxIdleConnsPerHost: 2}
	if h2c {
		var p http.Protocols
		p.SetUnencryptedHTTP2(true)
		tr.Protocols = &p
	}
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// landing sends the i-th request of an HTTP client: every 10th is the
// PUT the L7 rule denies.
func landing(ctx context.Context, c *http.Client, i int) (int, error) {
	method, path := "POST", "/v1/request-landing"
	denied := i%10 == 9
	if denied {
		method, path = "PUT", "/v1/exhaust-port"
	}
	req, _ := http.NewRequestWithContext(ctx, method, "http://"+deathstarIP+":80"+path, nil)
	resp, err := c.Do(req)
	if err != nil {
		return oFailed, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	switch {
	case err != nil:
		return oFailed, err
	case denied && resp.StatusCode == 403 && string(body) == "Access denied":
		return oDenied, nil
	case denied:
		return oLeaked, fmt.Errorf("PUT exhaust-port answered %d %.40q", resp.StatusCode, body)
	case resp.StatusCode == 200 && string(body) == "Ship landed\n":
		return oOK, nil
	}
	return oFailed, fmt.Errorf("POST request-landing answered %d %.40q", resp.StatusCode, body)
}

// endedRun reports whether the run's context ended — or reached its
// deadline: a request context derived from it has its own timer, which
// can fire (DeadlineExceeded) before the run's own, so ctx.Err() alone
// can still be nil for a request the end of the run cut off.
func endedRun(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	dl, ok := ctx.Deadline()
	return ok && !time.Now().Before(dl)
}

// loop runs do every `every` until ctx ends (at most max times).
func (s *soak) loop(ctx context.Context, wg *sync.WaitGroup, client int, every time.Duration, max int, do func(ctx context.Context, i int) (int, error)) {
	wg.Go(func() {
		for i := 0; i < max; i++ {
			select {
			case <-ctx.Done():
				return
			case <-time.After(every):
			}
			start := time.Now()
			out, err := do(ctx, i)
			if out == oFailed && endedRun(ctx) {
				return // cut off by the end of the run
			}
			s.record(client, start, out, err)
		}
	})
}

func (s *soak) startClients(ctx context.Context, wg *sync.WaitGroup) {
	tie := s.podNS("tiefighter")
	const max = 1_000_000
	for _, c := range []struct {
		kind           int
		keepAlive, h2c bool
		every          time.Duration
	}{{cHTTP1, true, false, 20 * time.Millisecond}, {cH2C, true, true, 20 * time.Millisecond}, {cNewConn, false, false, 40 * time.Millisecond}} {
		hc := httpClient(tie, c.keepAlive, c.h2c)
		s.loop(ctx, wg, c.kind, c.every, max, func(ctx context.Context, i int) (int, error) { return landing(ctx, hc, i) })
	}

	cc, err := grpc.NewClient("passthrough:///"+deathstarIP+":50051", grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return nsDialer(tie, 3*time.Second)(ctx, "tcp", addr)
		}))
	if err != nil {
		s.problem("grpc client: %v", err)
	} else {
		hc := healthpb.NewHealthClient(cc)
		s.loop(ctx, wg, cGRPC, 30*time.Millisecond, max, func(ctx context.Context, i int) (int, error) {
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if i%10 == 9 {
				_, err := hc.List(rctx, &healthpb.HealthListRequest{})
				switch status.Code(err) {
				case codes.PermissionDenied:
					return oDenied, nil
				case codes.OK:
					return oLeaked, errors.New("Health/List answered OK")
				}
				return oFailed, err
			}
			r, err := hc.Check(rctx, &healthpb.HealthCheckRequest{})
			if err != nil {
				return oFailed, err
			}
			if r.Status != healthpb.HealthCheckResponse_SERVING {
				return oFailed, fmt.Errorf("health %v", r.Status)
			}
			return oOK, nil
		})
		go func() { <-ctx.Done(); cc.Close() }()
	}

	kopts := []kgo.Opt{kgo.SeedBrokers(deathstarIP + ":9092"), kgo.DisableIdempotentWrite(), kgo.RecordDeliveryTimeout(20 * time.Second),
		kgo.Dialer(func(ctx context.Context, network, host string) (net.Conn, error) {
			return nsDialer(tie, 3*time.Second)(ctx, network, host)
		}), kgo.ProducerLinger(0), kgo.MetadataMinAge(250 * time.Millisecond)}
	prod, err1 := kgo.NewClient(kopts...)
	deny, err2 := kgo.NewClient(kopts...)
	if err := errors.Join(err1, err2); err != nil {
		s.problem("kafka client: %v", err)
		return
	}
	s.loop(ctx, wg, cKafka, 30*time.Millisecond, max, func(ctx context.Context, i int) (int, error) {
		rctx, cancel := context.WithTimeout(ctx, 25*time.Second)
		defer cancel()
		if i%10 == 9 {
			err := deny.ProduceSync(rctx, &kgo.Record{Topic: "deathstar-plans", Value: []byte("plans")}).FirstErr()
			switch {
			case errors.Is(err, kerr.TopicAuthorizationFailed):
				return oDenied, nil
			case err == nil:
				return oLeaked, errors.New("produce to deathstar-plans succeeded")
			}
			return oFailed, err
		}
		if err := prod.ProduceSync(rctx, &kgo.Record{Topic: "empire-announce", Value: fmt.Appendf(nil, "announcement %d", i)}).FirstErr(); err != nil {
			return oFailed, err
		}
		return oOK, nil
	})
	go func() { <-ctx.Done(); prod.Close(); deny.Close() }()
}

// ---- events ----

// schedule runs the hand-overs, crashes and the agent kill until ctx ends.
func (s *soak) schedule(ctx context.Context) {
	type ev struct {
		at   time.Duration
		kind string
	}
	var evs []ev
	d := s.cfg.Duration
	var special []time.Duration
	if s.cfg.CrashEvery > 0 {
		for at := min(45*time.Second, d/3); at < d-10*time.Second; at += s.cfg.CrashEvery {
			evs = append(evs, ev{at, "proxy crash"})
			special = append(special, at)
		}
	}
	if s.cfg.KillAgent {
		at := d/2 + 15*time.Second
		if at >= d-10*time.Second {
			at = d / 2
		}
		evs = append(evs, ev{at, "agent kill"})
		special = append(special, at)
	}
	if s.cfg.HandOverEvery > 0 {
		for at := s.cfg.HandOverEvery; at < d-5*time.Second; at += s.cfg.HandOverEvery {
			if slices.ContainsFunc(special, func(x time.Duration) bool { return (x - at).Abs() < 8*time.Second }) {
				continue
			}
			evs = append(evs, ev{at, "hand-over"})
		}
	}
	slices.SortFunc(evs, func(a, b ev) int { return int(a.at - b.at) })
	for _, e := range evs {
		select {
		case <-ctx.Done():
			return
		case <-time.After(e.at - s.since()):
		}
		switch e.kind {
		case "hand-over":
			s.handOver(ctx)
		case "proxy crash":
			s.crash(ctx)
		case "agent kill":
			s.killAgent(ctx)
		}
	}
}

func (s *soak) handOver(ctx context.Context) {
	old := s.proxyPID()
	start := s.since()
	pid := s.agentPID()
	if pid == 0 || !alive(old) {
		s.problem("hand-over: agent %d, proxy %d not running", pid, old)
		return
	}
	syscall.Kill(pid, syscall.SIGHUP)
	deadline := time.Now().Add(s.cfg.DrainTimeout + 30*time.Second)
	for alive(old) {
		if time.Now().After(deadline) || ctx.Err() != nil {
			s.problem("hand-over: old proxy %d still runs %s after SIGHUP", old, (s.since() - start).Round(time.Millisecond))
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	now := s.proxyPID()
	note := fmt.Sprintf("proxy %d → %d", old, now)
	if now == old {
		s.problem("hand-over: the proxy pid is still %d", old)
	}
	s.event(Event{Kind: "hand-over", Start: start, End: s.since(), Note: note})
}

func (s *soak) crash(ctx context.Context) {
	old := s.proxyPID()
	start := s.since()
	if !alive(old) {
		s.problem("crash: proxy %d not running", old)
		return
	}
	syscall.Kill(old, syscall.SIGKILL)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if now := s.proxyPID(); now != old && alive(now) && s.proxyReady() {
			s.event(Event{Kind: "proxy crash", Start: start, End: s.since(), Note: fmt.Sprintf("proxy %d killed, %d ready", old, now)})
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			s.problem("crash: no proxy ready %s after killing %d", (s.since() - start).Round(time.Millisecond), old)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *soak) killAgent(ctx context.Context) {
	start := s.since()
	s.stopAgent(syscall.SIGKILL, 5*time.Second)
	select {
	case <-ctx.Done():
	case <-time.After(2 * time.Second):
	}
	if err := s.startAgent(); err != nil {
		s.problem("agent restart: %v", err)
		return
	}
	// The restarted agent is back when it reports ready with a revision
	// implemented (policy churn goes on meanwhile).
	deadline := time.Now().Add(60 * time.Second)
	for {
		sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		st, err := agentapi.FetchStatus(sctx, s.dirs["run"])
		cancel()
		if err == nil && st.Ready && st.ImplementedRevision > 0 {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			s.problem("agent restart: not ready after %s", (s.since() - start).Round(time.Millisecond))
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.event(Event{Kind: "agent kill", Start: start, End: s.since(), Note: fmt.Sprintf("agent %d killed, restarted", s.agentPID())})
}

// proxyReady asks the proxy's admin socket for /ready.
func (s *soak) proxyReady() bool {
	c := http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", agentapi.ProxyAdminSocket(s.dirs["run"]))
		}}}
	resp, err := c.Get("http://proxy/ready")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == 200
}

// ---- policies and pods ----

const churnPolicies = 20

// writeChurn rewrites the churn file with n more policy changes (round
// robin over churnPolicies CNPs): even ones add a GET path to the
// deathstar's L7 rules on port 80 (the proxy's configuration changes),
// odd ones move a port of a policy that selects no pod here.
func (s *soak) writeChurn(n int) error {
	if s.churnVer == nil {
		s.churnVer = make([]int, churnPolicies)
	}
	for range n {
		s.churnVer[s.policyWrites%churnPolicies]++
		s.policyWrites++
	}
	var b strings.Builder
	for i, v := range s.churnVer {
		if i > 0 {
			b.WriteString("---\n")
		}
		if i%2 == 0 {
			fmt.Fprintf(&b, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: churn-%d, namespace: default}
spec:
  endpointSelector: {matchLabels: {org: empire, class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: /churn/%d/v%d}]
`, i, i, v)
		} else {
			fmt.Fprintf(&b, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: churn-%d, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: ghost-%d}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts:
    - ports: [{port: "%d", protocol: TCP}]
`, i, i, 1000+v%5000)
		}
	}
	return writeAtomic(filepath.Join(s.dirs["source"], "churn.yaml"), []byte(b.String()))
}

func (s *soak) writePods() error {
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(s.pods)) {
		org, class := "empire", "trooper"
		if strings.HasPrefix(name, "rebel") {
			org, class = "alliance", "rebel"
		}
		fmt.Fprintf(&b, "apiVersion: v1\nkind: Pod\nmetadata: {name: %s, namespace: default, labels: {org: %s, class: %s}}\nstatus: {podIP: %s}\n---\n", name, org, class, s.pods[name])
	}
	return writeAtomic(filepath.Join(s.dirs["source"], "pods.yaml"), []byte(b.String()))
}

// policyLoop writes policy changes every 200 ms (at the rate that gives
// cfg.PolicyUpdates per 10 minutes) and, every FlipEvery, pauses them to
// flip the xwing's policy and add or remove a pod, waits until the agent
// implemented exactly that, and checks it while the churn goes on.
func (s *soak) policyLoop(ctx context.Context) {
	target := float64(s.cfg.PolicyUpdates) * float64(s.cfg.Duration) / float64(10*time.Minute)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	nextFlip := s.cfg.FlipEvery
	flipped, podSeq := false, 0
	var checks sync.WaitGroup
	defer checks.Wait()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if s.cfg.PolicyUpdates > 0 {
			due := int(target*float64(s.since())/float64(s.cfg.Duration)) - s.policyWrites
			if due > 0 {
				if err := s.writeChurn(min(due, churnPolicies)); err != nil {
					s.problem("churn: %v", err)
				}
			}
		}
		if s.cfg.FlipEvery <= 0 || s.since() < nextFlip {
			continue
		}
		nextFlip += s.cfg.FlipEvery
		checks.Wait() // a check never sees the state change under it
		flipped = !flipped
		start := s.since()
		if flipped {
			if err := writeAtomic(filepath.Join(s.dirs["source"], "flip.yaml"), []byte(flipYAML)); err != nil {
				s.problem("flip: %v", err)
			}
		} else {
			os.Remove(filepath.Join(s.dirs["source"], "flip.yaml"))
		}
		// A pod comes (troopers may land, rebels may not) or goes.
		var added, removed string
		var rebelStop chan struct{}
		var rebelWG sync.WaitGroup
		if len(s.pods) == 0 {
			podSeq++
			name := fmt.Sprintf("trooper-%d", podSeq)
			if podSeq%2 == 0 {
				name = fmt.Sprintf("rebel-%d", podSeq)
			}
			ip := fmt.Sprintf("198.18.2.%d", podSeq%200+1)
			if err := s.addPodNS(ctx, name, ip, podSeq); err != nil {
				s.problem("add pod %s: %v", name, err)
			} else {
				s.pods[name] = ip
				added = name
				if strings.HasPrefix(name, "rebel") {
					// Enforced from its first packet: before and while the
					// agent learns the pod, it never reaches the deathstar.
					rebelStop = make(chan struct{})
					rebelWG.Go(func() { s.probeDenied(ctx, cPods, s.podNS(name), rebelStop) })
				}
			}
		} else {
			for name := range s.pods {
				removed = name
			}
			delete(s.pods, removed)
		}
		if err := s.writePods(); err != nil {
			s.problem("pods: %v", err)
		}
		_, err := s.waitDigest(ctx, 60*time.Second)
		if rebelStop != nil {
			close(rebelStop)
			rebelWG.Wait()
		}
		if removed != "" {
			exec.Command("ip", "netns", "del", s.podNS(removed)).Run()
		}
		if err != nil {
			if ctx.Err() == nil {
				s.problem("flip/pods not implemented: %v", err)
			}
			continue
		}
		kind := "flip: xwing denied"
		if flipped {
			kind = "flip: xwing allowed"
		}
		note := ""
		if added != "" {
			note = "pod " + added + " added"
		} else if removed != "" {
			note = "pod " + removed + " removed"
		}
		s.event(Event{Kind: kind, Start: start, End: s.since(), Note: note})
		allowed := flipped
		checks.Go(func() { s.checkFlip(ctx, allowed, added) })
	}
}

func (s *soak) addPodNS(ctx context.Context, name, ip string, seq int) error {
	ns := s.podNS(name)
	dev := fmt.Sprintf("lxcsoak%d", seq)
	for _, args := range [][]string{
		{"netns", "add", ns},
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", s.topo.Node, "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", ns},
		{"-n", s.topo.Node, "addr", "add", nodeAddr + "/32", "dev", dev},
		{"-n", s.topo.Node, "link", "set", dev, "up"},
		{"-n", s.topo.Node, "route", "add", ip + "/32", "dev", dev},
		{"-n", ns, "addr", "add", ip + "/32", "dev", "eth0"},
		{"-n", ns, "link", "set", "eth0", "up"},
		{"-n", ns, "route", "add", nodeAddr + "/32", "dev", "eth0"},
		{"-n", ns, "route", "add", "default", "via", nodeAddr, "dev", "eth0"},
	} {
		if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
			exec.Command("ip", "netns", "del", ns).Run()
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	return nil
}

// probeDenied opens new connections to the deathstar from ns until stop:
// each one must be dropped (a connection that opens is a leak).
func (s *soak) probeDenied(ctx context.Context, client int, ns string, stop chan struct{}) {
	dial := nsDialer(ns, 500*time.Millisecond)
	for i := 0; i < 1000; i++ {
		select {
		case <-stop:
			return
		case <-ctx.Done():
			return
		default:
		}
		start := time.Now()
		c, err := dial(ctx, "tcp", deathstarIP+":80")
		if err == nil {
			c.Close()
			s.record(client, start, oLeaked, fmt.Errorf("%s connected to the deathstar", ns))
			continue
		}
		s.record(client, start, oDenied, nil)
		time.Sleep(50 * time.Millisecond)
	}
}

// checkFlip checks the state the agent just implemented: the xwing lands
// (allowed) or cannot connect (denied), a new trooper lands and is denied
// the exhaust port, a new rebel cannot connect.
func (s *soak) checkFlip(ctx context.Context, allowed bool, added string) {
	xw := s.podNS("xwing")
	if allowed {
		hc := httpClient(xw, false, false)
		for i := range 5 {
			start := time.Now()
			out, err := landing(ctx, hc, i)
			s.record(cXwing, start, out, err)
		}
		start := time.Now()
		out, err := landing(ctx, hc, 9) // the L7 rule still denies the PUT
		s.record(cXwing, start, out, err)
	} else {
		stop := make(chan struct{})
		time.AfterFunc(2*time.Second, func() { close(stop) })
		s.probeDenied(ctx, cXwing, xw, stop)
	}
	if added == "" {
		return
	}
	ns := s.podNS(added)
	if strings.HasPrefix(added, "rebel") {
		stop := make(chan struct{})
		time.AfterFunc(2*time.Second, func() { close(stop) })
		s.probeDenied(ctx, cPods, ns, stop)
		return
	}
	hc := httpClient(ns, false, false)
	for i := range 10 {
		start := time.Now()
		out, err := landing(ctx, hc, i)
		s.record(cPods, start, out, err)
	}
}

// ---- resources ----

func (s *soak) sample(ctx context.Context) []Sample {
	var out []Sample
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	lastN := 0
	for i := 0; i < 100000; i++ {
		select {
		case <-ctx.Done():
			return out
		case <-tick.C:
		}
		sm := Sample{At: s.since(), AgentPID: s.agentPID(), ProxyPID: s.proxyPID()}
		sm.AgentRSS, sm.AgentFDs = procStats(sm.AgentPID)
		sm.ProxyRSS, sm.ProxyFDs = procStats(sm.ProxyPID)
		sm.AgentGoroutines = goroutines(func(ctx context.Context) (net.Conn, error) {
			return nsDialer(s.topo.Node, time.Second)(ctx, "tcp", agentMetrics)
		}, "/metrics")
		sm.ProxyGoroutines = goroutines(func(ctx context.Context) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", agentapi.ProxyAdminSocket(s.dirs["run"]))
		}, "/stats/prometheus")
		s.recMu.Lock()
		for _, r := range s.records[lastN:] {
			switch r.outcome {
			case oOK, oDenied:
				sm.OK++
			default:
				sm.Failed++
			}
		}
		lastN = len(s.records)
		s.recMu.Unlock()
		out = append(out, sm)
	}
	return out
}

// procStats reads a process's RSS (bytes) and open fds; -1 when unknown.
func procStats(pid int) (int64, int) {
	if pid <= 0 {
		return -1, -1
	}
	rss := int64(-1)
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				f := strings.Fields(v)
				if len(f) > 0 {
					kb, _ := strconv.ParseInt(f[0], 10, 64)
					rss = kb * 1024
				}
			}
		}
	}
	fds := -1
	if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); err == nil {
		fds = len(ents)
	}
	return rss, fds
}

// goroutines reads go_goroutines from a Prometheus endpoint; -1 when
// unknown.
func goroutines(dial func(context.Context) (net.Conn, error), path string) int {
	c := http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) }}}
	resp, err := c.Get("http://x" + path)
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "go_goroutines "); ok {
			n, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return int(n)
			}
		}
	}
	return -1
}

func tailFile(file string, n int) string {
	b, _ := os.ReadFile(file)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
