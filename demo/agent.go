package demo

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"syscall"
	"time"
)

// AgentConfig is how the demo starts `l7gate agent`.
type AgentConfig struct {
	// Executable is the l7gate binary.
	Executable string
	// NodeNS is the namespace the agent runs in.
	NodeNS string
	// Folders passed to the agent.
	SourceDir, BPFFS, RunDir, StateDir string
	// LogFile receives the agent's stdout and stderr.
	LogFile string
	// LogLevel is passed as --log-level when set.
	LogLevel string
	// SocketLBCgroup is passed as --socket-lb-cgroup (a path under the
	// cgroup v2 root); empty turns socket load balancing off: the demo
	// never attaches it to the machine's root cgroup.
	SocketLBCgroup string
	// ServiceMap, when set, is a listening socket the agent serves the
	// service map on (passed as fd 3: --service-map-address fd:3).
	ServiceMap *os.File
	// Detach lets the agent outlive this process (--keep).
	Detach bool
	Log    *slog.Logger
}

// Agent is a running `l7gate agent`.
type Agent struct {
	cfg  AgentConfig
	proc *process
}

// AgentStatus is the part of `l7gate status -o json` the demo reads.
type AgentStatus struct {
	Ready               bool     `json:"ready"`
	Revision            int64    `json:"revision"`
	ImplementedRevision int64    `json:"implementedRevision"`
	Errors              []string `json:"errors"`
}

// UnmarshalJSON reads the fields the demo needs (revisions may be numbers
// or numeric strings) and ignores the rest.
func (s *AgentStatus) UnmarshalJSON(b []byte) error {
	var raw struct {
		Ready               bool            `json:"ready"`
		Revision            json.RawMessage `json:"revision"`
		ImplementedRevision json.RawMessage `json:"implementedRevision"`
		Errors              []string        `json:"errors"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	rev := func(name string, m json.RawMessage) (int64, error) {
		if len(m) == 0 || string(m) == "null" {
			return 0, nil
		}
		t := bytes.Trim(m, `"`)
		n, err := strconv.ParseInt(string(t), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: want an integer, not %s", name, m)
		}
		return n, nil
	}
	var err1, err2 error
	s.Ready, s.Errors = raw.Ready, raw.Errors
	s.Revision, err1 = rev("revision", raw.Revision)
	s.ImplementedRevision, err2 = rev("implementedRevision", raw.ImplementedRevision)
	return errors.Join(err1, err2)
}

// StartAgent runs `ip netns exec <node> <exe> agent --source ... --node demo`
// in its own process group.
func StartAgent(cfg AgentConfig) (*Agent, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	logf, err := os.OpenFile(cfg.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("agent log: %w", err)
	}
	defer logf.Close()
	args := []string{"netns", "exec", cfg.NodeNS, cfg.Executable}
	if cfg.LogLevel != "" {
		args = append(args, "--log-level", cfg.LogLevel)
	}
	args = append(args, "agent",
		"--source", cfg.SourceDir, "--bpffs", cfg.BPFFS,
		"--run-dir", cfg.RunDir, "--state-dir", cfg.StateDir, "--node", "demo")
	if cfg.SocketLBCgroup != "" {
		args = append(args, "--socket-lb-cgroup", cfg.SocketLBCgroup)
	} else {
		args = append(args, "--socket-lb=false")
	}
	if cfg.ServiceMap != nil {
		args = append(args, "--service-map-address", "fd:3")
	}
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if cfg.ServiceMap != nil {
		cmd.ExtraFiles = []*os.File{cfg.ServiceMap} // fd 3
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if !cfg.Detach {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGTERM
	}
	p, err := startProcess("agent", cmd, cfg.LogFile)
	if err != nil {
		return nil, err
	}
	cfg.Log.Debug("agent started", "pid", cmd.Process.Pid, "netns", cfg.NodeNS, "log", cfg.LogFile)
	return &Agent{cfg: cfg, proc: p}, nil
}

// LogFile is where the agent's output goes.
func (a *Agent) LogFile() string { return a.cfg.LogFile }

// Status runs `l7gate status --run-dir <run> -o json`.
func (a *Agent) Status(ctx context.Context) (AgentStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, a.cfg.Executable, "status", "--run-dir", a.cfg.RunDir, "-o", "json")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var st AgentStatus
	if jerr := json.Unmarshal(stdout.Bytes(), &st); jerr != nil {
		if err != nil {
			return st, fmt.Errorf("status: %w: %s", err, bytes.TrimSpace(stderr.Bytes()))
		}
		return st, fmt.Errorf("status output: %w", jerr)
	}
	return st, nil
}

// WaitImplemented polls the agent's status until implementedRevision
// equals revision and revision is above after (and, when ready is set,
// the agent reports ready). Errors the agent reports are passed to
// onErrors once per distinct list. It fails at once when the agent exits.
func (a *Agent) WaitImplemented(ctx context.Context, after int64, ready bool, timeout time.Duration, onErrors func([]string)) (AgentStatus, error) {
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last AgentStatus
	var lastErr error
	var shown []string
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		if a.proc.exited() {
			return last, fmt.Errorf("agent exited: %v", a.proc.err)
		}
		st, err := a.Status(wctx)
		if err == nil {
			last, lastErr = st, nil
			if len(st.Errors) > 0 && !slices.Equal(st.Errors, shown) && onErrors != nil {
				shown = slices.Clone(st.Errors)
				onErrors(st.Errors)
			}
			if st.ImplementedRevision == st.Revision && st.Revision > after && (!ready || st.Ready) {
				return st, nil
			}
		} else {
			lastErr = err
		}
		select {
		case <-wctx.Done():
			if err := ctx.Err(); err != nil {
				return last, err
			}
			if lastErr != nil {
				return last, fmt.Errorf("agent not ready after %s: %w", timeout, lastErr)
			}
			return last, fmt.Errorf("agent did not implement a revision above %d within %s (ready %v, revision %d, implementedRevision %d)",
				after, timeout, last.Ready, last.Revision, last.ImplementedRevision)
		case <-tick.C:
		}
	}
}

// Stop sends the agent SIGTERM and waits up to grace, then kills its
// process group.
func (a *Agent) Stop(grace time.Duration) {
	a.proc.stop(grace)
}

// Exited reports whether the agent process has ended, and how.
func (a *Agent) Exited() (bool, error) {
	if a.proc.exited() {
		return true, a.proc.err
	}
	return false, nil
}
