// Command l7gate-bench is `make bench`: it builds a node network namespace
// with server and client pod namespaces behind veths (198.18.0.0/15 only),
// runs the real `l7gate agent` (which starts the Go proxy) inside it with a
// private bpffs, and measures, in one run on one machine, each path next to
// its baseline: direct (no policy), L3/L4 policy, L7 policy through the Go
// proxy, and HAProxy. It writes bench/results/<date>.json, <date>.md,
// latest.md and PNG charts. Needs root. See bench/README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l7gate/l7gate/bpf"
)

func main() {
	// Children get Pdeathsig, which fires when the *thread* that started
	// them exits; inNS threads exit by design. Keep the main goroutine (which
	// starts every child) on the main thread, which lives as long as we do.
	runtime.LockOSThread()
	if len(os.Args) > 1 && os.Args[1] == "serve" {
		if err := serveMain(os.Args[2:]); err != nil {
			log.Fatal(err)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "otlp-sink" {
		if err := otlpSinkMain(os.Args[2:]); err != nil {
			log.Fatal(err)
		}
		return
	}
	if err := benchMain(); err != nil {
		log.Fatal(err)
	}
}

type config struct {
	out      string
	keepDur  time.Duration
	shortDur time.Duration
	only     map[string]bool
	quick    bool
	keepLogs bool

	cpLocal, cpCluster, cpChanges int
	cpBudget                      time.Duration
	repo                          string
	// h2Rounds: interleaved direct/L7 rounds of the HTTP/2 and gRPC phase.
	h2Rounds int
	// kafkaRounds: interleaved direct/L7 rounds of the kafka phase.
	kafkaRounds int
	// kafkaBinB: a second l7gate binary whose Go proxy the kafka phase
	// measures in the same rounds as the first (path l7b), swapped in by
	// a proxy hand-over (SIGHUP to the agent) before each L7 run.
	kafkaBinB string
	// v6Rounds: interleaved IPv4/IPv6 rounds of the keepalive6 phase.
	v6Rounds int
	// v6Direct: measure the direct path over both families too (control).
	v6Direct bool
	// agentArgs are extra arguments for the agent (e.g.
	// --proxy-arg=--http2-path=nethttp).
	agentArgs []string
	// newConnRounds: interleaved direct/L7/HAProxy rounds of the newconn
	// phase.
	newConnRounds int
	// fixedRounds, fixedDur: interleaved rounds of the fixedrate phase and
	// the length of each path's run in a round.
	fixedRounds int
	fixedDur    time.Duration
	// bin: a prebuilt l7gate binary to run instead of building one (to
	// compare two builds in alternating invocations).
	bin string
	// proxyOnly: the agent starts the Go proxy from a proxy-only build
	// (-tags l7gate_proxyonly, agent --proxy-executable).
	proxyOnly bool
	// relay: measure the splice relay (a -tags l7gate_benchrelay build of
	// cmd/l7gate whose proxy only copies bytes, proxy/benchrelay.go) as
	// path "relay" in the keepalive, fixedrate, newconn, h2grpc and kafka phases, in
	// the same rounds as direct and L7; the agent hands its proxy over to
	// the relay build for the relay's runs and back.
	relay bool
	// haproxyRedirect: run HAProxy on the datapath's redirect path (its
	// listener in the socket map for its runs) instead of as a reverse
	// proxy in the node namespace.
	haproxyRedirect bool
	// maxConnsPerSource: the Go proxy's --max-connections-per-source (the
	// proxyrss phase opens 10000 connections from the client pod, one
	// identity; the proxy's default of 8192 resets the rest at accept).
	maxConnsPerSource int
}

// want reports whether any of phases runs.
func (c *config) want(phases ...string) bool {
	if len(c.only) == 0 {
		return true
	}
	for _, p := range phases {
		if c.only[p] {
			return true
		}
	}
	return false
}

// phases, in the priority order.
var allPhases = []string{"keepalive", "keepalive6", "fixedrate", "newconn", "h2grpc", "datapath", "controlplane", "kafka", "proxyrss", "otlp", "dns", "accesslogoff"}

func benchMain() error {
	var cfg config
	var only string
	flag.StringVar(&cfg.out, "out", "bench/results", "directory for <date>.json, <date>.md, latest.md and the PNG charts")
	flag.DurationVar(&cfg.keepDur, "duration", 10*time.Second, "duration of each wrk keep-alive run")
	flag.DurationVar(&cfg.shortDur, "short-duration", 5*time.Second, "duration of every other load run")
	flag.StringVar(&only, "only", "", "comma-separated phases to run (default all): "+strings.Join(allPhases, ","))
	flag.BoolVar(&cfg.quick, "quick", false, "2 s runs, fewer changes (a smoke test, not numbers)")
	flag.BoolVar(&cfg.keepLogs, "keep-logs", false, "copy the agent, proxy, server and HAProxy logs next to the report (always done when something failed)")
	flag.IntVar(&cfg.cpLocal, "cp-local-pods", 1000, "control plane: synthetic local-looking pods")
	flag.IntVar(&cfg.cpCluster, "cp-cluster-pods", 10000, "control plane: synthetic cluster pods")
	flag.IntVar(&cfg.cpChanges, "cp-changes", 30, "control plane: CNP changes to time at the largest scale (bounded by -cp-budget)")
	flag.DurationVar(&cfg.cpBudget, "cp-budget", 100*time.Second, "control plane: stop timing changes at the largest scale after this long (one change is always timed)")
	flag.IntVar(&cfg.h2Rounds, "h2-rounds", 5, "interleaved direct/L7 rounds of the h2grpc phase (ratios per round, median and range reported)")
	flag.IntVar(&cfg.kafkaRounds, "kafka-rounds", 5, "interleaved direct/L7 rounds of the kafka phase (ratios per round, median and range reported)")
	flag.IntVar(&cfg.newConnRounds, "newconn-rounds", 3, "interleaved direct/L7/HAProxy rounds of the newconn phase (ratios per round, median and range reported)")
	flag.IntVar(&cfg.fixedRounds, "fixedrate-rounds", 5, "interleaved rounds of the fixedrate phase (added latency per adjacent direct/path pair, median and range reported)")
	flag.DurationVar(&cfg.fixedDur, "fixedrate-duration", 3*time.Second, "length of each path's 1000 req/s run in a fixedrate round")
	flag.StringVar(&cfg.kafkaBinB, "kafka-bin-b", "", "kafka phase: also measure the Go proxy of this prebuilt l7gate binary (path l7b) in every round, next to the first binary's (l7); the agent hands over between them (SIGHUP) before each L7 run")
	flag.StringVar(&cfg.bin, "l7gate-bin", "", "run this prebuilt l7gate binary instead of building ./cmd/l7gate (e.g. to alternate a base and a new build)")
	flag.IntVar(&cfg.v6Rounds, "v6-rounds", 5, "interleaved IPv4/IPv6 rounds of the keepalive6 phase (ratios per round, median and range reported)")
	flag.BoolVar(&cfg.v6Direct, "v6-direct", true, "keepalive6: measure the direct path (no policy, no proxy) over both families in the same rounds, as the control")
	flag.Func("agent-arg", "extra argument for the agent (repeatable), e.g. -agent-arg=--proxy-arg=--http2-path=nethttp", func(v string) error {
		cfg.agentArgs = append(cfg.agentArgs, v)
		return nil
	})
	flag.BoolVar(&cfg.relay, "relay", true, "measure the splice relay (-tags l7gate_benchrelay build: the Go proxy's accept and upstream dial, then io.Copy both ways, no policy) as path relay in the keepalive, fixedrate, newconn, h2grpc and kafka phases")
	flag.BoolVar(&cfg.haproxyRedirect, "haproxy-redirect", true, "run HAProxy on the datapath's redirect path (its listener in the sk_lookup socket map for its runs, connecting to the original destination from the node's address) instead of as a reverse proxy on the node's address")
	flag.IntVar(&cfg.maxConnsPerSource, "max-connections-per-source", 16384, "the Go proxy's --max-connections-per-source (proxyrss opens 10000 connections from one pod; the proxy's default is 8192)")
	flag.BoolVar(&cfg.proxyOnly, "proxy-only-build", true, "start the Go proxy from a proxy-only build of cmd/l7gate (-tags l7gate_proxyonly, the agent's --proxy-executable), as make build and the image ship it: the same proxy code without the agent's packages linked; false: from the agent's binary (for -kafka-bin-b; with -l7gate-bin the agent picks the l7gate-proxy next to it, if any, as the product does)")
	rerender := flag.String("report-from", "", "only re-render <date>.md, latest.md and the charts from an existing <date>.json (no root needed)")
	pin := flag.Bool("pin", true, "pin load generators to CPU 1 and the proxies to CPU 0")
	flag.Parse()
	if *rerender != "" {
		return rerenderReport(*rerender)
	}
	if !*pin || runtime.NumCPU() < 2 {
		proxyCPU, loadCPU = allCPUs(), allCPUs()
	}
	if cfg.quick {
		cfg.keepDur, cfg.shortDur, cfg.fixedDur = 2*time.Second, 2*time.Second, 2*time.Second
	}
	cfg.only = map[string]bool{}
	for _, p := range strings.Split(only, ",") {
		if p = strings.TrimSpace(p); p != "" {
			cfg.only[p] = true
		}
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root: creates network namespaces, veths and a bpffs, and loads BPF programs")
	}
	for _, tool := range []string{"ip", "go", "wrk", "h2load", "haproxy", "taskset", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("needs %s (run hack/install-bench-deps.sh)", tool)
		}
	}
	cfg.repo = repoRoot()
	if !filepath.IsAbs(cfg.out) {
		cfg.out = filepath.Join(cfg.repo, cfg.out)
	}
	if err := os.MkdirAll(cfg.out, 0o755); err != nil {
		return err
	}
	raiseNofile(1 << 17)

	cl := &cleanups{}
	defer cl.run()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sig
		log.Printf("%v: cleaning up", s)
		cancel()
		cl.run()
		os.Exit(130)
	}()

	start := time.Now().UTC()
	res := &Results{Date: start.Format(time.RFC3339), GoVersion: runtime.Version(), CPUs: runtime.NumCPU(), Kernel: kernel(),
		Pinning:   fmt.Sprintf("load generators (wrk, h2load, the Go clients of this process) on CPU %s; the Go proxy and HAProxy on CPU %s (taskset, all threads); upstream servers and the agent unpinned", loadCPU, proxyCPU),
		Durations: fmt.Sprintf("wrk keep-alive %v per path; fixed rate %v per path and round; other load runs %v", cfg.keepDur, cfg.fixedDur, cfg.shortDur)}
	if proxyCPU == loadCPU {
		res.Pinning = "nothing pinned (-pin=false or a single CPU)"
	}
	tmp, err := os.MkdirTemp("", "l7gate-bench-")
	if err != nil {
		return err
	}
	cl.add(func() { os.RemoveAll(tmp) })

	err = runAll(ctx, &cfg, cl, tmp, res)
	if err != nil {
		res.Errors = append(res.Errors, "aborted: "+err.Error())
		log.Printf("error: %v", err)
	}
	res.TotalSeconds = time.Since(start).Seconds()
	stamp := start.Format("2006-01-02T150405Z")
	if len(res.Errors) > 0 || cfg.keepLogs {
		// Keep the logs of a failed run next to its report.
		logs := filepath.Join(cfg.out, stamp+"-logs")
		os.MkdirAll(logs, 0o755)
		for _, pat := range []string{"*.log", "*.cfg", "run/*.log"} {
			m, _ := filepath.Glob(filepath.Join(tmp, pat))
			for _, f := range m {
				if data, err := os.ReadFile(f); err == nil {
					// the proxy's access log is one line per request: keep the tail
					if len(data) > 256<<10 {
						data = data[len(data)-256<<10:]
					}
					os.WriteFile(filepath.Join(logs, filepath.Base(f)), data, 0o644)
				}
			}
		}
		res.Logs = logs
	}
	// Stop everything before writing (numbers are done).
	cl.run()
	if werr := writeReport(cfg.out, stamp, res); werr != nil {
		return werr
	}
	log.Printf("wrote %s", filepath.Join(cfg.out, stamp+".md"))
	return err
}

func kernel() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

// pinSelf pins every thread of this process to cpus (threads created later
// inherit it).
func pinSelf(cpus string) {
	if runtime.NumCPU() < 2 {
		return
	}
	sh("taskset", "-apc", cpus, strconv.Itoa(os.Getpid()))
}

func runAll(ctx context.Context, cfg *config, cl *cleanups, tmp string, res *Results) error {
	bin := filepath.Join(tmp, "l7gate")
	if cfg.bin != "" {
		log.Printf("using l7gate %s", cfg.bin)
		if err := copyFile(cfg.bin, bin); err != nil {
			return err
		}
	} else {
		log.Printf("building l7gate")
		build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/l7gate")
		build.Dir = cfg.repo
		if out, err := build.CombinedOutput(); err != nil {
			return fmt.Errorf("go build: %v: %s", err, out)
		}
	}
	proxyA := bin // the Go proxy's executable
	if cfg.proxyOnly {
		proxyA = filepath.Join(tmp, "l7gate-proxyonly")
		build := exec.CommandContext(ctx, "go", "build", "-tags", "l7gate_proxyonly", "-o", proxyA, "./cmd/l7gate")
		build.Dir = cfg.repo
		if out, err := build.CombinedOutput(); err != nil {
			return fmt.Errorf("go build -tags l7gate_proxyonly: %v: %s", err, out)
		}
	}
	if cfg.kafkaBinB != "" && cfg.proxyOnly {
		return errors.New("-kafka-bin-b and -proxy-only-build both choose the proxy executable")
	}
	if cfg.relay && cfg.want("keepalive", "fixedrate", "newconn", "h2grpc", "kafka") {
		// The splice relay: the same proxy command, built with the tag
		// that replaces the per-protocol serve step by a byte copy.
		relay := filepath.Join(tmp, "l7gate-proxy-relay")
		tags := "l7gate_benchrelay"
		if cfg.proxyOnly {
			tags += ",l7gate_proxyonly"
		}
		log.Printf("building the splice relay (-tags %s)", tags)
		build := exec.CommandContext(ctx, "go", "build", "-tags", tags, "-o", relay, "./cmd/l7gate")
		build.Dir = cfg.repo
		if out, err := build.CombinedOutput(); err != nil {
			return fmt.Errorf("go build -tags %s: %v: %s", tags, err, out)
		}
	} else {
		cfg.relay = false
	}
	switch {
	case cfg.kafkaBinB != "" || cfg.relay:
		// The agent starts (and, on SIGHUP, hands over to) the proxy from
		// l7gate-proxy, which handOverTo replaces with a copy of the Go
		// proxy's binary (a), -kafka-bin-b's (b) or the relay's.
		cp := [][2]string{{proxyA, "l7gate-proxy-a"}, {proxyA, "l7gate-proxy"}}
		if cfg.kafkaBinB != "" {
			cp = append(cp, [2]string{cfg.kafkaBinB, "l7gate-proxy-b"})
		}
		for _, c := range cp {
			if err := copyFile(c[0], filepath.Join(tmp, c[1])); err != nil {
				return err
			}
		}
		cfg.agentArgs = append(cfg.agentArgs, "--proxy-executable="+filepath.Join(tmp, "l7gate-proxy"))
	case cfg.proxyOnly:
		cfg.agentArgs = append(cfg.agentArgs, "--proxy-executable="+proxyA)
	}
	if cfg.maxConnsPerSource > 0 {
		// --max-connections too: its default follows the proxy's
		// RLIMIT_NOFILE (9680 under this machine's hard limit of 20000),
		// and proxyrss opens 10000; as before, the descriptor limit, not
		// the proxy's, is what cuts (the proxy warns).
		cfg.agentArgs = append(cfg.agentArgs, fmt.Sprintf("--proxy-arg=--max-connections-per-source=%d", cfg.maxConnsPerSource),
			fmt.Sprintf("--proxy-arg=--max-connections=%d", cfg.maxConnsPerSource))
	}
	n, err := newNode(cl, tmp, bin)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(n.src, "objects.yaml"), []byte(objectsYAML), 0o644); err != nil {
		return err
	}
	if err := n.startServer(); err != nil {
		return err
	}
	res.AgentArgs = cfg.agentArgs
	if err := n.startAgent(cfg.agentArgs...); err != nil {
		return err
	}
	if _, err := n.waitImplemented(0, 60*time.Second); err != nil {
		return err
	}
	pinSelf(loadCPU)
	dial, err := newNSDialer(ctx, n.clientNS, 4)
	if err != nil {
		return err
	}
	s := &scenario{n: n, cfg: cfg, res: res, dial: dial, current: "none", proxyBin: "a"}
	log.Printf("topology up: %s (agent pid %d, proxy pid %d)", n.prefix, n.agent.Process.Pid, n.proxyPID())
	if err := s.startHAProxy(cl); err != nil {
		res.Errors = append(res.Errors, "haproxy: "+err.Error())
	}
	if cfg.want("proxyrss") {
		// The idle target: the proxy right after it started, with
		// the 100 rules, before any load phase grew its heap.
		if err := s.proxyIdleFresh(); err != nil {
			res.Errors = append(res.Errors, "proxyrss (fresh idle): "+err.Error())
		}
	}

	steps := []struct {
		phase string
		f     func(context.Context) error
	}{
		{"keepalive", s.keepAlive},
		{"keepalive6", s.keepAlive6},
		{"fixedrate", s.fixedRate},
		{"newconn", s.newConns},
		{"h2grpc", s.h2grpc},
		{"datapath", s.datapath},
		{"controlplane", s.controlPlane},
		{"kafka", s.kafka},
		{"proxyrss", s.proxyRSS},
		{"otlp", s.otlpOverhead},
		{"dns", s.dnsPhase},
		// last: it replaces the agent's proxy by one started by hand
		// (--access-log none, no FQDN learning), which later phases
		// would measure instead
		{"accesslogoff", s.accessLogOff},
	}
	for _, st := range steps {
		if !cfg.want(st.phase) {
			res.Missing = append(res.Missing, st.phase+": not run (-only)")
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		log.Printf("phase %s", st.phase)
		t := time.Now()
		if err := st.f(ctx); err != nil {
			log.Printf("phase %s failed: %v", st.phase, err)
			res.Errors = append(res.Errors, st.phase+": "+err.Error())
			res.Missing = append(res.Missing, st.phase+": failed (see errors)")
		}
		log.Printf("phase %s took %v", st.phase, time.Since(t).Round(time.Second))
		if s.hapT != nil {
			// the next phase finds the Go proxy's listener in the map
			if err := s.hapT.detach(s.n.proxyPID()); err != nil {
				return err
			}
		}
	}
	return nil
}

// startHAProxy starts HAProxy on the datapath's redirect path
// (hapTransparent) or, when that fails, as a reverse proxy in the node
// namespace; res.HAProxyMode says which.
func (s *scenario) startHAProxy(cl *cleanups) error {
	var terr error
	if s.cfg.haproxyRedirect {
		terr = func() error {
			h, err := startHAProxyTransparent(cl, s.n)
			if err != nil {
				return err
			}
			s.hapT, s.hap, s.res.HAProxyMode = h, h.cmd, "redirect"
			// try it once: it must answer through the redirect
			if err := s.use("haproxy"); err != nil {
				return err
			}
			r, err := runWrk(context.Background(), s.n.dir, s.n.clientNS, s.url("haproxy"), 4, time.Second, false, h.cmd.Process.Pid)
			if err == nil && (r.Requests == 0 || r.Non2xx > 0 || r.ProxyCPUSec == 0) {
				err = fmt.Errorf("a 1 s run through it: %d requests, %d non-2xx, HAProxy CPU %.3f s", r.Requests, r.Non2xx, r.ProxyCPUSec)
			}
			if derr := s.use("direct"); err == nil {
				err = derr
			}
			if err != nil {
				s.hapT, s.hap = nil, nil
				h.cmd.Process.Kill()
				return err
			}
			log.Printf("haproxy on the redirect path (pid %d, proxy port %d in its runs)", h.cmd.Process.Pid, h.port)
			return nil
		}()
		if terr == nil {
			return nil
		}
		log.Printf("haproxy on the redirect path: %v; falling back to a reverse proxy", terr)
		s.res.Errors = append(s.res.Errors, "haproxy on the redirect path (fell back to a reverse proxy): "+terr.Error())
	}
	hap, err := startHAProxy(cl, s.n)
	if err != nil {
		return err
	}
	s.hap, s.res.HAProxyMode = hap, "reverse"
	return nil
}

// scenario holds the running topology and which policy is in force.
type scenario struct {
	n    *node
	cfg  *config
	res  *Results
	dial *nsDialer
	hap  *exec.Cmd
	// hapT: HAProxy on the redirect path (nil: hap is a reverse proxy)
	hapT    *hapTransparent
	current string
	// proxyBin: which executable the agent's proxy runs: "a" (the Go
	// proxy), "b" (-kafka-bin-b) or "relay".
	proxyBin string
}

// paths: "direct" (agent running, no policy), "l4" (L3/L4 policy only),
// "l7" (100 HTTP rules through the Go proxy), "haproxy" (no policy;
// HAProxy reverse proxy in the node namespace with the same 100 ACLs).
func (s *scenario) use(path string) error {
	want := map[string]string{"direct": "none", "haproxy": "none", "l4": "l4", "l7": "l7", "l7-1k": "l7-1k", "relay": "l7", "l7b": "l7"}[path]
	if s.hapT != nil {
		if path == "haproxy" {
			want = "l7-host"
		} else if err := s.hapT.detach(s.n.proxyPID()); err != nil {
			return err
		}
	}
	// The relay runs on the L7 policy's redirect (the datapath sends the
	// flows to the proxy port) with the relay build as the proxy.
	handedOver := false
	if want == "l7" || want == "l7-1k" {
		bin := "a"
		switch path {
		case "relay":
			bin = "relay"
		case "l7b":
			bin = "b"
		}
		var err error
		if handedOver, err = s.proxyRuns(bin); err != nil {
			return err
		}
	}
	if handedOver {
		// A proxy process that just started is slower for its first
		// seconds (heap, goroutine stacks): warm the new one up, whichever
		// build it is, before it is measured.
		defer s.warmUp()
	}
	if want == s.current {
		return s.attachHAProxy(path)
	}
	var y string
	switch want {
	case "l4":
		y = policyYAML(false, 0, "")
	case "l7":
		y = policyYAML(true, 100, "")
	case "l7-host":
		// HAProxy on the redirect path: the L7 policy (so the datapath
		// redirects to the proxy port) and the node allowed in (HAProxy's
		// upstream connections leave from the node's address)
		y = policyYAML(true, 100, "") + hostAllowRule
	case "l7-1k":
		y = policyYAML(true, 1000, "")
	}
	if err := s.n.setPolicy(y); err != nil {
		return err
	}
	s.current = want
	if pid := s.n.proxyPID(); pid > 0 {
		pinPID(pid, proxyCPU)
	}
	time.Sleep(300 * time.Millisecond)
	return s.attachHAProxy(path)
}

// attachHAProxy puts HAProxy's listener in the socket map for its runs on
// the redirect path.
func (s *scenario) attachHAProxy(path string) error {
	if path != "haproxy" || s.hapT == nil {
		return nil
	}
	return s.hapT.attach()
}

// proxyRuns hands the agent's proxy over to executable bin ("a", "b" or
// "relay", see runAll) unless it runs that already; it reports whether it
// did.
func (s *scenario) proxyRuns(bin string) (bool, error) {
	if bin == s.proxyBin {
		return false, nil
	}
	if err := s.n.handOverTo(filepath.Join(s.n.dir, "l7gate-proxy-"+bin)); err != nil {
		return false, fmt.Errorf("proxy of binary %s: %w", bin, err)
	}
	s.proxyBin = bin
	if pid := s.n.proxyPID(); pid > 0 {
		pinPID(pid, proxyCPU)
	}
	return true, nil
}

// warmUp runs 1 s of keep-alive HTTP through the L7 redirect (the proxy
// just handed over to).
func (s *scenario) warmUp() {
	runWrk(context.Background(), s.n.dir, s.n.clientNS, s.url("l7"), 64, time.Second, false, 0)
}

func (s *scenario) proxyPIDFor(path string) int {
	switch path {
	case "l7", "l7-1k", "relay", "l7b":
		pid := s.n.proxyPID()
		pinPID(pid, proxyCPU)
		return pid
	case "haproxy":
		if s.hap != nil {
			return s.hap.Process.Pid
		}
	}
	return 0
}

func (s *scenario) url(path string) string {
	if path == "haproxy" && s.hapT == nil {
		return fmt.Sprintf("http://%s:%d%s", nodeIP, haproxyPort, benchPath)
	}
	return fmt.Sprintf("http://%s:%d%s", serverIP, httpPort, benchPath)
}

func (s *scenario) addr(path string) string {
	if path == "haproxy" && s.hapT == nil {
		return net.JoinHostPort(nodeIP, strconv.Itoa(haproxyPort))
	}
	return net.JoinHostPort(serverIP, strconv.Itoa(httpPort))
}

func (s *scenario) httpPaths() []string {
	if s.hap == nil {
		return []string{"direct", "l4", "l7"}
	}
	return []string{"direct", "l4", "l7", "haproxy"}
}

// rounds of the keep-alive and fixed-rate measurements: the paths are
// measured in interleaved rounds (order reversed every other round) and the
// best round of each path is kept, so a slow spell of this shared machine
// does not land on one path only.
const rounds = 2

func roundOrder(paths []string, round int) []string {
	o := slices.Clone(paths)
	if round%2 == 1 {
		slices.Reverse(o)
	}
	return o
}

// withRelay inserts the splice relay after the L7 path when -relay is on.
func (s *scenario) withRelay(paths []string) []string {
	if !s.cfg.relay {
		return paths
	}
	i := slices.Index(paths, "l7")
	return slices.Insert(slices.Clone(paths), i+1, "relay")
}

// relayRounds returns the relay's rounds of one measurement, created on
// first use (nil when -relay is off).
func (s *scenario) relayRounds(name, unit string) *relayRounds {
	if !s.cfg.relay {
		return nil
	}
	if s.res.Relay == nil {
		s.res.Relay = map[string]*relayRounds{}
	}
	if s.res.Relay[name] == nil {
		s.res.Relay[name] = &relayRounds{Unit: unit, VsDirect: &pairRounds{}, L7VsRelay: &pairRounds{}}
	}
	return s.res.Relay[name]
}

func (s *scenario) keepAlive(ctx context.Context) error {
	s.res.KeepAlive = map[string]*wrkResult{}
	rr := s.relayRounds("keepalive", "req/s")
	defer s.proxyRuns("a") // the Go proxy again for the phases after (controlplane does not call use)
	for round := range rounds {
		got := map[string]*wrkResult{}
		for _, p := range roundOrder(s.withRelay(s.httpPaths()), round) {
			if err := s.use(p); err != nil {
				return err
			}
			// short warm-up, then the measured run
			runWrk(ctx, s.n.dir, s.n.clientNS, s.url(p), 64, time.Second, false, 0)
			r, err := runWrk(ctx, s.n.dir, s.n.clientNS, s.url(p), 64, s.cfg.keepDur, false, s.proxyPIDFor(p))
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			log.Printf("  keep-alive round %d %-8s %9.0f req/s p50 %6.0fus p99 %6.0fus p99.9 %6.0fus cpu/1000 %.4fs non2xx %d errors %d", round, p, r.ReqPerSec, r.P50us, r.P99us, r.P999us, r.ProxyCPUPer1000, r.Non2xx, r.Errors)
			got[p] = r
			prev := s.res.KeepAlive[p]
			var all []float64
			if prev != nil {
				all = prev.Rounds
			}
			if prev == nil || r.ReqPerSec > prev.ReqPerSec {
				s.res.KeepAlive[p] = r
			}
			s.res.KeepAlive[p].Rounds = append(all, r.ReqPerSec)
		}
		if rr != nil {
			rr.add(got["direct"].reqs(), got["l7"].reqs(), got["relay"].reqs(), got["l7"].cpu(), got["relay"].cpu(), loadAvg())
		}
	}
	return nil
}

func (s *scenario) newConns(ctx context.Context) error {
	s.res.NewConns = map[string]*wrkResult{}
	paths := s.withRelay([]string{"direct", "l7"})
	if s.hap != nil {
		paths = append(paths, "haproxy")
	}
	rr := s.relayRounds("newconn", "conn/s")
	defer s.proxyRuns("a") // the Go proxy again for the phases after (controlplane does not call use)
	n := max(s.cfg.newConnRounds, 1)
	if s.cfg.quick {
		n = 1
	}
	s.res.NewConnRounds = &pairRounds{}
	if s.hap != nil {
		s.res.NewConnHAProxyRounds = &pairRounds{}
	}
	for round := range n {
		got := map[string]float64{}
		cpu := map[string]float64{}
		for _, p := range roundOrder(paths, round) {
			if err := s.use(p); err != nil {
				return err
			}
			pid := s.proxyPIDFor(p)
			stop := phaseHook("L7GATE_BENCH_NEWCONN_HOOK", "NEWCONN_PATH", p, pid, 0)
			r, err := runWrk(ctx, s.n.dir, s.n.clientNS, s.url(p), 16, s.cfg.shortDur, true, pid)
			stop()
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			log.Printf("  new conns %-8s %9.0f conn/s p99 %6.0fus proxy cpu/1000 %.4fs errors %d (round %d)", p, r.ReqPerSec, r.P99us, r.ProxyCPUPer1000, r.Errors, round+1)
			got[p], cpu[p] = r.ReqPerSec, r.ProxyCPUPer1000
			prev := s.res.NewConns[p]
			var all []float64
			if prev != nil {
				all = prev.Rounds
			}
			if prev == nil || r.ReqPerSec > prev.ReqPerSec {
				s.res.NewConns[p] = r
			}
			s.res.NewConns[p].Rounds = append(all, r.ReqPerSec)
			time.Sleep(time.Second) // let TIME_WAIT settle a little
		}
		s.res.NewConnRounds.add(got["direct"], got["l7"], loadAvg())
		if hr := s.res.NewConnHAProxyRounds; hr != nil {
			hr.add(got["haproxy"], got["l7"], loadAvg())
		}
		if rr != nil {
			rr.add(got["direct"], got["l7"], got["relay"], cpu["l7"], cpu["relay"], loadAvg())
		}
	}
	return nil
}

func (s *scenario) h2grpc(ctx context.Context) error {
	s.res.H2 = map[string]*h2loadResult{}
	s.res.GRPC = map[string]*rpcResult{}
	h2r, gr := &pairRounds{}, &pairRounds{}
	s.res.H2Rounds, s.res.GRPCRounds = h2r, gr
	n := s.cfg.h2Rounds
	if s.cfg.quick {
		n = 2
	}
	rh, rg := s.relayRounds("h2", "req/s"), s.relayRounds("grpc", "calls/s")
	defer s.proxyRuns("a") // the Go proxy again for the phases after (controlplane does not call use)
	for round := range n {
		h2Round, gRound := map[string]float64{}, map[string]float64{}
		h2CPU, gCPU := map[string]float64{}, map[string]float64{}
		for _, p := range roundOrder(s.withRelay([]string{"direct", "l7"}), round) {
			if err := s.use(p); err != nil {
				return err
			}
			r, err := runH2load(ctx, s.n.clientNS, s.url(p), 16, 10, s.cfg.shortDur, s.proxyPIDFor(p))
			if err != nil {
				return fmt.Errorf("h2load %s: %w", p, err)
			}
			log.Printf("  h2 round %d %-8s %9.0f req/s mean %6.0fus failed %d", round, p, r.ReqPerSec, r.MeanReqUs, r.Failed)
			if prev := s.res.H2[p]; prev == nil || r.ReqPerSec > prev.ReqPerSec {
				s.res.H2[p] = r
			}
			h2Round[p], h2CPU[p] = r.ReqPerSec, r.ProxyCPUPer1000
			pid := s.proxyPIDFor(p)
			cpu0 := procCPU(pid)
			g, err := runGRPC(ctx, s.dial, net.JoinHostPort(serverIP, strconv.Itoa(grpcPort)), 4, 32, s.cfg.shortDur)
			if err != nil {
				return fmt.Errorf("grpc %s: %w", p, err)
			}
			if pid > 0 && g.Calls > 0 {
				g.ProxyCPUPer1000 = (procCPU(pid) - cpu0) / float64(g.Calls) * 1000
			}
			log.Printf("  grpc round %d %-8s %9.0f calls/s p50 %6.0fus p99 %6.0fus cpu/1000 %.4fs errors %d %s", round, p, g.PerSec, g.P50us, g.P99us, g.ProxyCPUPer1000, g.Errors, g.FirstErr)
			if prev := s.res.GRPC[p]; prev == nil || g.PerSec > prev.PerSec {
				s.res.GRPC[p] = g
			}
			gRound[p], gCPU[p] = g.PerSec, g.ProxyCPUPer1000
		}
		load := loadAvg()
		h2r.add(h2Round["direct"], h2Round["l7"], load)
		gr.add(gRound["direct"], gRound["l7"], load)
		if rh != nil {
			rh.add(h2Round["direct"], h2Round["l7"], h2Round["relay"], h2CPU["l7"], h2CPU["relay"], load)
			rg.add(gRound["direct"], gRound["l7"], gRound["relay"], gCPU["l7"], gCPU["relay"], load)
		}
		log.Printf("  round %d: h2 L7/direct %.2f, gRPC L7/direct %.2f, load %s", round, h2r.Ratios[round], gr.Ratios[round], load)
	}
	log.Printf("  h2 L7/direct median %.2f (%.2f-%.2f); gRPC median %.2f (%.2f-%.2f)", h2r.Median, h2r.Min, h2r.Max, gr.Median, gr.Min, gr.Max)
	return nil
}

// loadAvg returns the 1, 5 and 15 minute load averages.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func (s *scenario) datapath(ctx context.Context) error {
	rows, rows6, out, err := runDatapathBench(ctx, s.cfg.repo)
	if err != nil {
		return fmt.Errorf("%w\n%s", err, lastLines(out, 20))
	}
	s.res.Datapath = rows
	for _, r := range rows {
		log.Printf("  datapath %6d %-13s %6.0f ns/pkt x%.3f", r.Entries, r.Path, r.NsPkt, r.XVs10)
	}
	s.res.DatapathIPv6 = rows6
	for _, r := range rows6 {
		log.Printf("  datapath ipv6 %-22s %6.0f ns/pkt v4 %6.0f ns/pkt v6 x%.3f", r.Path, r.NsV4, r.NsV6, r.V6VsV4)
	}
	sizes := []int{10, 1000, 10000, 100000}
	if s.cfg.quick {
		sizes = []int{10, 1000}
	}
	ipt, err := runIptables(ctx, s.n.cl, s.n, sizes, s.cfg.shortDur)
	if err != nil {
		return fmt.Errorf("iptables: %w", err)
	}
	s.res.Iptables = ipt
	for _, r := range ipt {
		log.Printf("  iptables %6d rules %9.0f conn/s cost x%.2f (load %.1fs) %s", r.Rules, r.ConnPerSec, r.CostVs10, r.LoadSec, r.Skipped)
	}
	return nil
}

// controlPlane times CNP changes at three scales: the bare scenario, 1.1k
// synthetic pods, and the 1000 local-looking + 10k cluster pods
// (few changes: each takes the agent tens of seconds there today).
func (s *scenario) controlPlane(ctx context.Context) error {
	tiers := []struct {
		local, cluster, changes int
		budget                  time.Duration
	}{
		{0, 0, 30, 45 * time.Second},
		{100, 1000, 30, 60 * time.Second},
		{s.cfg.cpLocal, s.cfg.cpCluster, s.cfg.cpChanges, s.cfg.cpBudget},
	}
	if s.cfg.quick {
		tiers = tiers[:2]
		tiers[0].changes, tiers[1].changes = 5, 3
	}
	s.current = "l7-cp"
	for _, t := range tiers {
		r, err := runControlPlane(ctx, s.n, t.local, t.cluster, t.changes, t.budget, s.cfg.out)
		if err != nil {
			return fmt.Errorf("%d+%d pods: %w", t.local, t.cluster, err)
		}
		s.res.ControlPlane = append(s.res.ControlPlane, r)
		log.Printf("  control plane %d+%d pods: %d changes e2e p50 %.1fms p99 %.1fms; agent took p50 %.1fms p99 %.1fms; initial %.0fms; agent RSS %d→%d KiB (%.0f B/pod; %d KiB before the collection), live heap %d→%d KiB (%.0f B/pod)",
			t.local, t.cluster, r.Changes, r.E2EP50ms, r.E2EP99ms, r.TookP50ms, r.TookP99ms, r.InitialImplMs, r.AgentRSSBeforeKiB, r.AgentRSSAfterKiB, r.RSSPerPodBytes, r.RawRSSAfterKiB,
			r.HeapBeforeBytes>>10, r.HeapAfterBytes>>10, r.HeapPerPodBytes)
		if len(r.Split) > 0 {
			var parts []string
			for _, name := range append([]string{"source"}, splitNames...) {
				if v, ok := r.Split[name]; ok {
					parts = append(parts, fmt.Sprintf("%s %.1f/%.1f", name, v[0], v[1]))
				}
			}
			log.Printf("  control plane %d+%d pods split p50/p99 ms: %s; agent CPU %.1f ms per change", t.local, t.cluster, strings.Join(parts, ", "), r.AgentCPUPerChangeMs)
		}
	}
	return nil
}

func (s *scenario) kafka(ctx context.Context) error {
	s.res.Kafka = map[string]*rpcResult{}
	kr := &pairRounds{}
	s.res.KafkaRounds = kr
	n := s.cfg.kafkaRounds
	if s.cfg.quick {
		n = 2
	}
	paths := s.withRelay([]string{"direct", "l7"})
	var krB *pairRounds
	if s.cfg.kafkaBinB != "" {
		paths = append(paths, "l7b")
		krB = &pairRounds{}
		s.res.KafkaRoundsB = krB
	}
	rr := s.relayRounds("kafka", "msg/s")
	defer s.proxyRuns("a") // the Go proxy again for the phases after (controlplane does not call use)
	for round := range n {
		perSec := map[string]float64{}
		cpuPer := map[string]float64{}
		for _, p := range roundOrder(paths, round) {
			if err := s.use(p); err != nil {
				return fmt.Errorf("kafka %s: %w", p, err)
			}
			pid := s.proxyPIDFor(p)
			srv := s.n.server.Process.Pid
			self := os.Getpid()
			agent := s.n.agent.Process.Pid
			cpu0, srv0, self0, ag0, cs0 := procCPU(pid), procCPU(srv), procCPU(self), procCPU(agent), procCtxt(pid)
			stop := kafkaHook(p, pid, srv)
			r, err := runKafka(ctx, s.dial, net.JoinHostPort(serverIP, strconv.Itoa(kafkaPort)), 8, 10, 100, s.cfg.shortDur)
			stop()
			if err != nil {
				return fmt.Errorf("kafka %s: %w", p, err)
			}
			if r.Calls > 0 {
				per := func(d float64) float64 { return d / float64(r.Calls) * 1000 }
				if pid > 0 {
					r.ProxyCPUPer1000 = per(procCPU(pid) - cpu0)
					r.ProxyCtxtPerCall = float64(procCtxt(pid)-cs0) / float64(r.Calls)
				}
				r.ServerCPUPer1000 = per(procCPU(srv) - srv0)
				r.ClientCPUPer1000 = per(procCPU(self) - self0)
				r.AgentCPUPer1000 = per(procCPU(agent) - ag0)
			}
			log.Printf("  kafka round %d %-8s %9.0f produce/s %9.0f msg/s p50 %6.0fus p99 %6.0fus cpu-s/1000: proxy %.4f server %.4f client %.4f agent %.4f; proxy ctxt/produce %.2f errors %d %s",
				round, p, r.PerSec, r.MsgPerSec, r.P50us, r.P99us, r.ProxyCPUPer1000, r.ServerCPUPer1000, r.ClientCPUPer1000, r.AgentCPUPer1000, r.ProxyCtxtPerCall, r.Errors, r.FirstErr)
			if prev := s.res.Kafka[p]; prev == nil || r.MsgPerSec > prev.MsgPerSec {
				s.res.Kafka[p] = r
			}
			perSec[p], cpuPer[p] = r.MsgPerSec, r.ProxyCPUPer1000
		}
		load := loadAvg()
		kr.add(perSec["direct"], perSec["l7"], load)
		if rr != nil {
			rr.add(perSec["direct"], perSec["l7"], perSec["relay"], cpuPer["l7"], cpuPer["relay"], load)
			log.Printf("  round %d: kafka relay/direct %.2f, L7/relay %.2f", round, rr.VsDirect.Ratios[round], rr.L7VsRelay.Ratios[round])
		}
		log.Printf("  round %d: kafka L7/direct %.2f, load %s", round, kr.Ratios[round], load)
		if krB != nil {
			krB.add(perSec["direct"], perSec["l7b"], load)
			log.Printf("  round %d: kafka L7(b)/direct %.2f, L7(b)/L7 %.2f", round, krB.Ratios[round], ratio(perSec["l7b"], perSec["l7"]))
		}
	}
	log.Printf("  kafka L7/direct median %.2f (%.2f-%.2f)", kr.Median, kr.Min, kr.Max)
	if krB != nil {
		log.Printf("  kafka L7(b)/direct median %.2f (%.2f-%.2f)", krB.Median, krB.Min, krB.Max)
	}
	return nil
}

// kafkaHook runs $L7GATE_BENCH_KAFKA_HOOK (a shell command; PROXY_PID,
// SERVER_PID and KAFKA_PATH in its environment) while a Kafka round runs,
// e.g. perf record or strace -c on the proxy; the returned func stops it
// (SIGINT) and waits.
func kafkaHook(path string, proxyPID, serverPID int) func() {
	return phaseHook("L7GATE_BENCH_KAFKA_HOOK", "KAFKA_PATH", path, proxyPID, serverPID)
}

// phaseHook runs the shell command in $env (PROXY_PID, SERVER_PID and
// pathVar=path in its environment) while one path of a phase is measured;
// the returned func stops it (SIGINT to its process group) and waits.
// L7GATE_BENCH_NEWCONN_HOOK runs during each newconn run (NEWCONN_PATH
// direct, l7 or haproxy; PROXY_PID the Go proxy's or HAProxy's, 0 for
// direct), e.g. `strace -c -f -p $PROXY_PID`.
func phaseHook(env, pathVar, path string, proxyPID, serverPID int, extraEnv ...string) func() {
	h := os.Getenv(env)
	if h == "" {
		return func() {}
	}
	cmd := exec.Command("sh", "-c", h)
	cmd.Env = append(os.Environ(), fmt.Sprintf("PROXY_PID=%d", proxyPID), fmt.Sprintf("SERVER_PID=%d", serverPID), pathVar+"="+path)
	cmd.Env = append(cmd.Env, extraEnv...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		log.Printf("%s: %v", env, err)
		return func() {}
	}
	time.Sleep(500 * time.Millisecond) // let perf/strace attach
	return func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGINT)
		cmd.Wait()
	}
}

// copyFile copies an executable (a prebuilt l7gate) to dst.
func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("l7gate binary: %w", err)
	}
	if err := os.WriteFile(dst, data, 0o755); err != nil {
		return fmt.Errorf("l7gate binary: %w", err)
	}
	return nil
}

// rssResult: the Go proxy's resident memory.
type rssResult struct {
	// FreshIdleKiB: idle with 100 rules right after the topology came up,
	// before any load phase (0: not measured); FreshIdlePID is that
	// proxy's pid.
	FreshIdleKiB int64 `json:"freshIdleKiB,omitempty"`
	FreshIdlePID int   `json:"freshIdlePid,omitempty"`
	// IdleKiB: idle with 100 rules after the load phases.
	IdleKiB      int64 `json:"idleKiB"`
	IdleConns    int   `json:"idleConns"`
	WithConnsKiB int64 `json:"withIdleConnsKiB"`
	// ConnRules: the HTTP rules in force while the connections were open
	// (1000 since wave 14; older runs: 100).
	ConnRules int `json:"connRules,omitempty"`
	// BeforeConnsKiB: at ConnRules rules right before opening connections.
	BeforeConnsKiB int64   `json:"beforeConnsKiB"`
	PerConnBytes   float64 `json:"perConnBytes"`
	Rules1kKiB     int64   `json:"with1kRulesKiB"`
	ConnErr        string  `json:"connError,omitempty"`
	// MaxConnsPerSource: the proxy's --max-connections-per-source.
	MaxConnsPerSource int `json:"maxConnectionsPerSource,omitempty"`
}

// proxyIdleFresh measures the Go proxy's RSS idle with the 100 HTTP rules
// right after it started (the idle target), before the load
// phases grow its heap.
func (s *scenario) proxyIdleFresh() error {
	if err := s.use("l7"); err != nil {
		return err
	}
	time.Sleep(2 * time.Second)
	pid := s.n.proxyPID()
	if s.res.ProxyRSS == nil {
		s.res.ProxyRSS = &rssResult{}
	}
	s.res.ProxyRSS.FreshIdleKiB, s.res.ProxyRSS.FreshIdlePID = procRSSKiB(pid), pid
	s.proxyMemSnapshot(pid, "fresh-idle")
	log.Printf("  proxy RSS idle right after start (100 rules): %d KiB (pid %d)", s.res.ProxyRSS.FreshIdleKiB, pid)
	return nil
}

func (s *scenario) proxyRSS(ctx context.Context) error {
	if err := s.use("l7"); err != nil {
		return err
	}
	pid := s.n.proxyPID()
	// 10000 client connections and their 10000 upstream connections
	if err := sh("prlimit", "--pid", strconv.Itoa(pid), "--nofile=65536:65536"); err != nil {
		// (no CAP_SYS_RESOURCE: the proxy keeps its limit, and 10000
		// connections and their upstreams may not fit in it)
		log.Printf("  proxy descriptor limit not raised: %v", err)
	}
	time.Sleep(2 * time.Second)
	r := s.res.ProxyRSS
	if r == nil {
		r = &rssResult{}
	}
	r.IdleKiB, r.MaxConnsPerSource = procRSSKiB(pid), s.cfg.maxConnsPerSource
	s.proxyMemSnapshot(pid, "idle")
	if err := s.use("l7-1k"); err != nil {
		return err
	}
	time.Sleep(2 * time.Second)
	r.Rules1kKiB = procRSSKiB(pid)
	s.proxyMemSnapshot(pid, "rules1k")
	// The second memory target: 10k idle connections with 1000
	// rules in force.
	r.ConnRules = 1000
	r.BeforeConnsKiB = r.Rules1kKiB
	want := 10000
	if s.cfg.quick {
		want = 1000
	}
	closeAll, got, err := openIdle(ctx, s.dial, s.addr("l7"), benchPath, want)
	defer closeAll()
	r.IdleConns = got
	if err != nil {
		r.ConnErr = err.Error()
	}
	time.Sleep(2 * time.Second)
	r.WithConnsKiB = procRSSKiB(pid)
	s.proxyMemSnapshot(pid, "conns")
	if got > 0 {
		r.PerConnBytes = float64(r.WithConnsKiB-r.BeforeConnsKiB) * 1024 / float64(got)
	}
	s.res.ProxyRSS = r
	log.Printf("  proxy RSS fresh idle %d KiB, idle after load %d KiB, 1k rules %d KiB, %d idle conns at 1k rules %d KiB (%.0f B/conn) %s", r.FreshIdleKiB, r.IdleKiB, r.Rules1kKiB, got, r.WithConnsKiB, r.PerConnBytes, r.ConnErr)
	return nil
}

// accessLogOff re-measures keep-alive direct and L7 with a Go proxy started
// with --access-log none (the agent-started proxy writes one JSON line per
// request to proxy.log; HAProxy logs nothing). The agent is killed, the
// proxy replaced, and the agent restarted: it adopts the running proxy.
func (s *scenario) accessLogOff(ctx context.Context) error {
	if err := s.use("l7"); err != nil {
		return err
	}
	n := s.n
	n.agent.Process.Kill()
	n.agent.Wait()
	if pid := n.proxyPID(); pid > 0 {
		syscall.Kill(pid, syscall.SIGKILL)
		for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
			time.Sleep(50 * time.Millisecond)
		}
	}
	os.Remove(filepath.Join(n.run, "proxy-admin.sock"))
	// A proxy needs a cgroup of its own: the agent trusts from-proxy marks
	// only from the cgroups of the proxies it takes listeners from, never
	// the root's (started there, the agent failed the endpoint closed and
	// the L7 path dropped everything: "trust the Go proxy's cgroup 1").
	group, err := proxyCgroup(n.cl, "l7gate-bench-nolog-"+strconv.Itoa(os.Getpid()))
	if err != nil {
		return err
	}
	cmd, err := startProcIn(n.cl, group, filepath.Join(n.run, "proxy-nolog.log"), "ip", "netns", "exec", n.nodeNS, "taskset", "-c", proxyCPU,
		n.bin, "proxy", "--xds-socket", filepath.Join(n.run, "xds.sock"), "--admin-socket", filepath.Join(n.run, "proxy-admin.sock"),
		"--node", "bench", "--bpffs", n.bpffs, "--access-log", "none")
	if err != nil {
		return err
	}
	os.WriteFile(filepath.Join(n.run, "proxy.pid"), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644)
	time.Sleep(500 * time.Millisecond)
	if err := n.startAgent(s.cfg.agentArgs...); err != nil {
		return err
	}
	if _, err := n.waitImplemented(0, 60*time.Second); err != nil {
		return err
	}
	if err := waitTCP(n.clientNS, s.addr("l7"), 20*time.Second); err != nil {
		return err
	}
	time.Sleep(time.Second)
	s.res.AccessLogOff = map[string]*wrkResult{}
	for _, p := range []string{"direct", "l7"} {
		if err := s.use(p); err != nil {
			return err
		}
		runWrk(ctx, n.dir, n.clientNS, s.url(p), 64, time.Second, false, 0)
		pid := 0
		if p == "l7" {
			pid = cmd.Process.Pid
		}
		r, err := runWrk(ctx, n.dir, n.clientNS, s.url(p), 64, s.cfg.keepDur, false, pid)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		log.Printf("  keep-alive (access log off) %-8s %9.0f req/s p50 %6.0fus p99 %6.0fus cpu/1000 %.4fs non2xx %d", p, r.ReqPerSec, r.P50us, r.P99us, r.ProxyCPUPer1000, r.Non2xx)
		s.res.AccessLogOff[p] = r
	}
	return nil
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// haproxyConfig is HAProxy's configuration with the same 100 method +
// path rules as the Go proxy's as ACLs (allow if any matches, else 403),
// one thread, one server connection per client connection, no logging.
func haproxyConfig(bind, server string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `global
    nbthread 1
    maxconn 9000
    log stderr format raw local0 emerg
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
    http-reuse never
frontend fe
    bind %s
    acl get method GET
`, bind)
	for i := range 100 {
		fmt.Fprintf(&b, "    acl r%d path_reg ^%s$\n", i, httpRulePath(i))
	}
	for i := range 100 {
		fmt.Fprintf(&b, "    http-request allow if get r%d\n", i)
	}
	fmt.Fprintf(&b, "    http-request deny deny_status 403\n    default_backend be\nbackend be\n    server s1 %s\n", server)
	return b.String()
}

// startHAProxy runs HAProxy (Debian) in the node namespace as a reverse
// proxy on nodeIP:8080 in front of the server (haproxyConfig), pinned to
// proxyCPU: the fallback when it cannot run on the redirect path
// (startHAProxyTransparent).
func startHAProxy(cl *cleanups, n *node) (*exec.Cmd, error) {
	cfgPath := filepath.Join(n.dir, "haproxy.cfg")
	cfg := haproxyConfig(fmt.Sprintf("%s:%d", nodeIP, haproxyPort), fmt.Sprintf("%s:%d", serverIP, httpPort))
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	if out, err := exec.Command("haproxy", "-c", "-f", cfgPath).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("haproxy -c: %v: %s", err, out)
	}
	cmd, err := startProc(cl, filepath.Join(n.dir, "haproxy.log"), "ip", "netns", "exec", n.nodeNS, "taskset", "-c", proxyCPU, "haproxy", "-db", "-f", cfgPath)
	if err != nil {
		return nil, err
	}
	if err := waitTCP(n.clientNS, net.JoinHostPort(nodeIP, strconv.Itoa(haproxyPort)), 10*time.Second); err != nil {
		return nil, err
	}
	return cmd, nil
}

// proxyCgroup creates a cgroup v2 directory for a proxy the bench starts by
// hand, removed (once its processes are gone) by the cleanup stack.
func proxyCgroup(cl *cleanups, name string) (*os.File, error) {
	mount, err := bpf.Cgroup2Mount()
	if err != nil {
		return nil, fmt.Errorf("proxy cgroup: %w", err)
	}
	dir, _, err := bpf.CreateProxyCgroup(mount, name)
	if err != nil {
		return nil, fmt.Errorf("proxy cgroup: %w", err)
	}
	f, err := os.Open(dir)
	if err != nil {
		os.Remove(dir)
		return nil, fmt.Errorf("proxy cgroup: %w", err)
	}
	cl.add(func() {
		f.Close()
		for i := 0; i < 100; i++ {
			if err := os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	return f, nil
}

// proxyMemSnapshot saves what the Go proxy's memory is at one step of the
// proxyrss phase next to the report: its /proc status and smaps_rollup
// (anonymous vs file-backed pages), and a heap profile from the admin
// socket (after a collection), as proxymem-<step>.{txt,heap}.
func (s *scenario) proxyMemSnapshot(pid int, step string) {
	os.MkdirAll(s.cfg.out, 0o755)
	base := filepath.Join(s.cfg.out, fmt.Sprintf("proxymem-%d-%s", pid, step))
	var b strings.Builder
	for _, f := range []string{"status", "smaps_rollup"} {
		if data, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, f)); err == nil {
			fmt.Fprintf(&b, "== /proc/%d/%s\n%s\n", pid, f, data)
		}
	}
	os.WriteFile(base+".txt", []byte(b.String()), 0o644)
	sock := filepath.Join(s.n.run, "proxy-admin.sock")
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	resp, err := hc.Get("http://proxy/debug/pprof/heap?gc=1")
	if err != nil {
		log.Printf("  heap profile %s: %v", step, err)
		return
	}
	defer resp.Body.Close()
	if data, err := io.ReadAll(resp.Body); err == nil && resp.StatusCode == 200 {
		os.WriteFile(base+".heap", data, 0o644)
	}
}
