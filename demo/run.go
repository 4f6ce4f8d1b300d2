package demo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Config configures Run.
type Config struct {
	Scenario *Scenario
	// Executable is the l7gate binary: the agent and `status` run from it.
	Executable string
	// ServerCommand and ServerEnv start the built-in servers (see
	// TopologyConfig); empty: [Executable demo serve].
	ServerCommand []string
	ServerEnv     []string
	// ProbeCommand and ProbeEnv start the probes of checks to Services
	// (see TopologyConfig); empty: [Executable demo probe].
	ProbeCommand []string
	ProbeEnv     []string
	// TempDir is where the work dir is made ("" = os.TempDir()).
	TempDir string
	// Keep leaves everything running at the end (also after a failure or
	// an interrupt) and prints how to reach and remove it.
	Keep bool
	// Probe bounds each check's request; zero: DefaultProbeOptions.
	Probe ProbeOptions
	// StepTimeout bounds the wait for the agent to implement a step's
	// policies; zero: 30 s.
	StepTimeout time.Duration
	// AgentLogLevel is passed to the agent when set.
	AgentLogLevel string
	// ServiceMap, when set, is a TCP listener (made in this process's
	// network namespace, so the host's browser reaches it) the agent
	// serves the live service map on; the URL is printed at the start and
	// with --keep. The caller keeps and closes its own copy.
	ServiceMap net.Listener
	Out        io.Writer
	Log        *slog.Logger

	// AfterStep, if set, runs after each step's checks on the running
	// topology (e.g. a test runs a client suite inside a pod's namespace);
	// its error ends the run.
	AfterStep func(ctx context.Context, step int, topo *Topology) error
}

// Summary is what Run did.
type Summary struct {
	Results []Result
	Failed  int
	WorkDir string
	// Prefix names the topology's namespaces (<prefix>-node, ...).
	Prefix string
	// AgentLog is the agent's log file (removed with the work dir unless
	// kept).
	AgentLog string
}

// Run runs a scenario: topology, agent, then each step's policies and
// checks, printing one line per check to cfg.Out. It returns an error when
// the scenario could not run (the checks' outcome is in the Summary).
// Unless cfg.Keep, everything it created is removed before it returns,
// also when ctx is cancelled.
func Run(ctx context.Context, cfg Config) (sum *Summary, err error) {
	sc := cfg.Scenario
	if sc == nil || cfg.Executable == "" {
		return nil, errors.New("run: scenario and executable are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	if cfg.Probe.ConnectTimeout <= 0 || cfg.Probe.Timeout <= 0 {
		cfg.Probe = DefaultProbeOptions()
	}
	if cfg.StepTimeout <= 0 {
		cfg.StepTimeout = 30 * time.Second
	}
	if len(cfg.ServerCommand) == 0 {
		cfg.ServerCommand = []string{cfg.Executable, "demo", "serve"}
	}
	if len(cfg.ProbeCommand) == 0 {
		cfg.ProbeCommand = []string{cfg.Executable, "demo", "probe"}
	}
	out := cfg.Out
	workDir, err := os.MkdirTemp(cfg.TempDir, "l7gate-demo-")
	if err != nil {
		return nil, fmt.Errorf("work dir: %w", err)
	}
	sum = &Summary{WorkDir: workDir, AgentLog: filepath.Join(workDir, "agent.log")}
	var smFile *os.File
	if cfg.ServiceMap != nil {
		tl, ok := cfg.ServiceMap.(*net.TCPListener)
		if !ok {
			return nil, fmt.Errorf("service map: want a TCP listener, not %T", cfg.ServiceMap)
		}
		if smFile, err = tl.File(); err != nil {
			return nil, fmt.Errorf("service map: %w", err)
		}
		defer smFile.Close() // the agent has its own copy
	}
	fmt.Fprintf(out, "Scenario %s: %d hosts, %d steps\n", sc.Name, len(sc.Hosts), len(sc.Steps))
	if sc.Description != "" {
		fmt.Fprintf(out, "  %s\n", strings.TrimSpace(sc.Description))
	}
	topo, err := NewTopology(ctx, sc, TopologyConfig{
		WorkDir: workDir, ServerCommand: cfg.ServerCommand, ServerEnv: cfg.ServerEnv,
		ProbeCommand: cfg.ProbeCommand, ProbeEnv: cfg.ProbeEnv,
		// The node namespace plays a node whose network routes pod traffic
		// (on a real node the CNI enables forwarding, not the policy agent).
		Forwarding: true,
		Detach:     cfg.Keep, Log: cfg.Log,
	})
	if err != nil {
		// NewTopology removed what it made, work dir included.
		return sum, err
	}
	sum.Prefix = topo.Prefix
	var agent *Agent
	defer func() {
		if (err != nil || sum.Failed > 0) && agent != nil && ctx.Err() == nil {
			note := " (removed at exit; --keep keeps it)"
			if cfg.Keep {
				note = ""
			}
			fmt.Fprintf(out, "\nagent log %s%s ends:\n%s\n", sum.AgentLog, note, tail(sum.AgentLog, 40))
			// The agent starts the proxy with its log in the run dir.
			if pl := filepath.Join(workDir, "run", "proxy.log"); fileExists(pl) {
				fmt.Fprintf(out, "proxy log %s%s ends:\n%s\n", pl, note, tail(pl, 20))
			}
		}
		if cfg.Keep {
			topo.Kept(out, fmt.Sprintf("%s demo down %s", cfg.Executable, workDir))
			if cfg.ServiceMap != nil && agent != nil {
				fmt.Fprintf(out, "Service map (live flows of the agent): %s\n", ServiceMapURL(cfg.ServiceMap))
			}
			return
		}
		if agent != nil {
			agent.Stop(10 * time.Second)
		}
		if cerr := topo.Close(ctx); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cleanup: %w", cerr))
		}
	}()

	dirs := map[string]string{}
	for _, d := range []string{"source", "run", "state", "bpffs"} {
		dirs[d] = filepath.Join(workDir, d)
		if err := os.Mkdir(dirs[d], 0o700); err != nil {
			return sum, fmt.Errorf("work dir: %w", err)
		}
	}
	// `ip netns exec` remounts /sys, so the agent gets a bpffs of its own.
	if err := unix.Mount("bpf", dirs["bpffs"], "bpf", 0, "mode=0700"); err != nil {
		return sum, fmt.Errorf("mount bpffs: %w", err)
	}
	if err := topo.led.addMount(dirs["bpffs"]); err != nil {
		return sum, err
	}
	for _, f := range sc.ObjectFiles {
		name := "objects-" + strings.ReplaceAll(strings.TrimPrefix(f.Path, "objects/"), "/", "-")
		if err := writeFileAtomic(filepath.Join(dirs["source"], name), f.Data); err != nil {
			return sum, err
		}
	}
	policyFile := filepath.Join(dirs["source"], "policies.yaml")
	var written []byte
	apply := func(i int) (bool, error) {
		pf := sc.PolicyFile(i)
		if bytes.Equal(pf, written) {
			return false, nil
		}
		written = pf
		return true, writeFileAtomic(policyFile, pf)
	}
	if _, err := apply(0); err != nil {
		return sum, err
	}
	exe, err := filepath.Abs(cfg.Executable)
	if err != nil {
		return sum, fmt.Errorf("executable: %w", err)
	}
	if err := topo.TrackProxyCgroup(dirs["run"]); err != nil {
		return sum, err
	}
	// Socket load balancing for the checks' probes only (services.go).
	lbCgroup, _, err := topo.CreateLBCgroup()
	if err != nil {
		return sum, err
	}
	agent, err = StartAgent(AgentConfig{
		Executable: exe, NodeNS: topo.Node,
		SourceDir: dirs["source"], BPFFS: dirs["bpffs"], RunDir: dirs["run"], StateDir: dirs["state"],
		LogFile: sum.AgentLog, LogLevel: cfg.AgentLogLevel, Detach: cfg.Keep, Log: cfg.Log, SocketLBCgroup: lbCgroup,
		ServiceMap: smFile,
	})
	if err != nil {
		return sum, err
	}
	if cfg.ServiceMap != nil {
		fmt.Fprintf(out, "Service map: %s\n", ServiceMapURL(cfg.ServiceMap))
	}
	watch := newObserver(dirs["run"])
	showErrors := func(errs []string) {
		for _, e := range errs {
			fmt.Fprintf(out, "  agent error: %s\n", e)
		}
	}
	var rev int64 = math.MinInt64
	for i, st := range sc.Steps {
		fmt.Fprintf(out, "\nStep %d: %s\n", i+1, st.Name)
		after := int64(math.MinInt64)
		if i > 0 {
			after = rev - 1 // unchanged source: the current revision will do
			changed, err := apply(i)
			if err != nil {
				return sum, err
			}
			if changed {
				after = rev
			}
		}
		if len(st.Apply) > 0 {
			fmt.Fprintf(out, "  applied %s\n", strings.Join(st.Apply, ", "))
		}
		start := time.Now()
		status, err := agent.WaitImplemented(ctx, after, i == 0, cfg.StepTimeout, showErrors)
		if err != nil {
			return sum, fmt.Errorf("step %d: %w", i+1, err)
		}
		rev = status.Revision
		fmt.Fprintf(out, "  agent implemented revision %d in %s\n", rev, time.Since(start).Round(time.Millisecond))
		objs, err := sc.ObjectsAt(i)
		if err != nil {
			return sum, fmt.Errorf("step %d: %w", i+1, err)
		}
		for _, c := range st.Checks {
			if err := ctx.Err(); err != nil {
				return sum, err
			}
			watch.mark(ctx)
			r := Result{Step: i + 1, StepName: st.Name, Check: c, Observed: topo.Send(ctx, c, cfg.Probe), Trace: TraceCheck(objs, sc, c)}
			if src, dst := sc.Host(c.From), sc.Host(c.To); src != nil && dst != nil {
				dsts := []netip.AddrPort{netip.AddrPortFrom(dst.Addr(c.Family), c.Port)}
				if dst.Service != nil {
					dsts = dst.backendAddrs(c.Port, c.Family) // whichever the LB picked
				}
				r.DecidedBy = watch.decidedBy(ctx, r.Observed, src.Addr(c.Family), dsts)
				if r.Observed.Verdict == Allowed {
					// forwarded: was it only because a policy is in audit mode?
					if audit := watch.audited(ctx, c.Expect == Audited, src.Addr(c.Family), dsts); len(audit) > 0 {
						r.Observed.Verdict, r.DecidedBy = Audited, audit
					}
				}
			}
			if ctx.Err() != nil {
				return sum, ctx.Err()
			}
			sum.Results = append(sum.Results, r)
			if !r.Passed() {
				sum.Failed++
			}
			fmt.Fprintln(out, r.Line())
		}
		if cfg.AfterStep != nil {
			if err := cfg.AfterStep(ctx, i, topo); err != nil {
				return sum, fmt.Errorf("step %d: %w", i+1, err)
			}
		}
	}
	fmt.Fprintf(out, "\n%d of %d checks passed\n", len(sum.Results)-sum.Failed, len(sum.Results))
	return sum, nil
}

// ServiceMapURL is the page's URL on a service-map listener.
func ServiceMapURL(ln net.Listener) string {
	return "http://" + ln.Addr().String() + "/"
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
