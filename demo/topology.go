package demo

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/l7gate/l7gate/agentapi"
	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/internal/netns"
)

// TopologyConfig configures NewTopology.
type TopologyConfig struct {
	// WorkDir is a folder the topology owns: server logs and state.json
	// (what Down needs to remove a kept topology) go there, and Close
	// removes it.
	WorkDir string
	// Prefix names the namespaces (<prefix>-node, <prefix>-<ns>-<pod>,
	// <prefix>-ext-<name>); empty: "l7d" and 6 random hex digits.
	Prefix string
	// ServerCommand is the argv prefix of a built-in server process, run
	// as `ip netns exec <host ns> <ServerCommand...> --config <json>` (see
	// ServerConfig.Args), e.g. [l7gate demo serve]; ServerEnv is added to
	// its environment.
	ServerCommand []string
	ServerEnv     []string
	// ProbeCommand is the argv prefix of a probe process, run as
	// `<ProbeCommand...> --spec <json>` in the socket-LB cgroup for checks
	// to a Service (services.go), e.g. [l7gate demo probe]; ProbeEnv is
	// added to its environment.
	ProbeCommand []string
	ProbeEnv     []string
	// Forwarding sets ip_forward=1 in the node namespace, so that it routes
	// between hosts as a node does. The redirect's own sysctls and policy
	// routing are the agent's business.
	Forwarding bool
	// Detach lets the server processes outlive this process (--keep);
	// otherwise they get SIGTERM when it dies.
	Detach bool
	Log    *slog.Logger
}

// Topology is the network a scenario runs on: a node namespace, one
// namespace per host behind a veth, and the built-in server processes.
type Topology struct {
	Prefix string
	// Node is the node namespace's name.
	Node  string
	sc    *Scenario
	cfg   TopologyConfig
	hosts map[string]*HostNS
	// order: hosts as the scenario lists them
	order   []*HostNS
	servers []*process
	led     *ledger
	log     *slog.Logger
	// lbCgroup: the socket-LB cgroup's path, once created (CreateLBCgroup).
	lbCgroup string
	// net is the node namespace and the hosts' veths (internal/netns);
	// the ledger records its namespaces for Close and Down.
	net *netns.Topology
}

// HostNS is where a host lives.
type HostNS struct {
	Host *Host
	// NS is the host's network namespace, HostDev its veth in the node
	// namespace.
	NS, HostDev string
	Log         string // the server's log file, if it serves
}

// process is a child process and its exit.
type process struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}
	err  error // valid after done
	log  string
}

func startProcess(name string, cmd *exec.Cmd, log string) (*process, error) {
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, done: make(chan struct{}), log: log}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits up to grace, then kills the process group.
func (p *process) stop(grace time.Duration) {
	if p.exited() {
		return
	}
	pid := p.cmd.Process.Pid
	syscall.Kill(pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
	}
	// Whatever it left in its group (it was started with Setpgid).
	syscall.Kill(-pid, syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(2 * time.Second):
	}
}

var devChars = regexp.MustCompile(`[^a-z0-9]`)

// devName is "<kind><name>" if that fits in an interface name and is
// unused, else "<kind><index>".
func devName(kind, name string, i int, used map[string]bool) string {
	n := kind + devChars.ReplaceAllString(strings.ToLower(name), "")
	if len(n) > 15 || used[n] {
		n = fmt.Sprintf("%s%d", kind, i)
	}
	used[n] = true
	return n
}

// NewTopology creates the scenario's namespaces and veths and starts its
// built-in servers. On error everything created so far is removed.
func NewTopology(ctx context.Context, sc *Scenario, cfg TopologyConfig) (t *Topology, err error) {
	if cfg.WorkDir == "" {
		return nil, errors.New("topology: no work dir")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Prefix == "" {
		cfg.Prefix = netns.RandomPrefix("l7d")
	}
	led, err := newLedger(cfg.WorkDir)
	if err != nil {
		return nil, err
	}
	t = &Topology{Prefix: cfg.Prefix, Node: cfg.Prefix + "-node", sc: sc, cfg: cfg, hosts: map[string]*HostNS{}, led: led, log: cfg.Log}
	defer func() {
		if err != nil {
			if cerr := t.Close(context.WithoutCancel(ctx)); cerr != nil {
				err = errors.Join(err, cerr)
			}
			t = nil
		}
	}()
	sysctls := map[string]string{}
	if cfg.Forwarding {
		sysctls["ipv4/ip_forward"] = "1"
	}
	// On error, netns.New removes what it made; Close (deferred above)
	// removes what the ledger recorded.
	ncfg := netns.Config{Prefix: cfg.Prefix, NodeAddr: nodeAddr, Sysctls: sysctls, Created: led.addNamespace}
	if slices.ContainsFunc(sc.Hosts, func(h *Host) bool { return h.IP6.IsValid() }) {
		// dual-stack: the node gets an IPv6 address too, the hosts' gateway
		ncfg.NodeAddr6 = nodeAddr6
	}
	t.net, err = netns.New(ctx, ncfg)
	if err != nil {
		return t, err
	}
	used := map[string]bool{}
	for i, h := range sc.Hosts {
		var name, dev string
		if h.Pod != nil {
			name, dev = h.Pod.Namespace+"-"+h.Pod.Name, devName("lxc", h.Pod.Name, i, used)
		} else {
			ext := strings.TrimPrefix(h.Name, "external:")
			name, dev = "ext-"+ext, devName("ext", ext, i, used)
		}
		nh, err := t.net.AddDualHost(ctx, name, dev, h.IP, h.IP6)
		if err != nil {
			return t, fmt.Errorf("host %s: %w", h.Name, err)
		}
		hn := &HostNS{Host: h, NS: nh.NS, HostDev: nh.HostDev}
		t.hosts[h.Name] = hn
		t.order = append(t.order, hn)
	}
	if ncfg.NodeAddr6.IsValid() {
		if err := t.waitIPv6(ctx); err != nil {
			return t, err
		}
	}
	for _, hn := range t.order {
		if len(hn.Host.Serve) > 0 {
			if err := t.startServer(ctx, hn); err != nil {
				return t, err
			}
		}
	}
	return t, nil
}

// waitIPv6 waits (at most 5 s) until no namespace of the topology has a
// tentative IPv6 address: the veths' link-local addresses go through
// duplicate address detection, and until then neighbour discovery between
// a host and the node can fail, so the first IPv6 connection would time
// out.
func (t *Topology) waitIPv6(ctx context.Context) error {
	nss := []string{t.Node}
	for _, hn := range t.order {
		nss = append(nss, hn.NS)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		var busy []string
		for _, ns := range nss {
			out, err := exec.CommandContext(ctx, "ip", "-n", ns, "-6", "addr", "show", "tentative").Output()
			if err != nil {
				return fmt.Errorf("ipv6 addresses of %s: %w", ns, err)
			}
			if len(strings.TrimSpace(string(out))) > 0 {
				busy = append(busy, ns)
			}
		}
		if len(busy) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("ipv6 addresses still tentative after 5s in %s", strings.Join(busy, ", "))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func fileName(s string) string {
	return strings.NewReplacer("/", "-", ":", "-").Replace(s)
}

// startServer starts the host's built-in servers and waits until they
// listen.
func (t *Topology) startServer(ctx context.Context, hn *HostNS) error {
	if len(t.cfg.ServerCommand) == 0 {
		return errors.New("topology: no server command")
	}
	sc := ServerConfig{Host: hn.Host.Name, IP: hn.Host.IP, IP6: hn.Host.IP6, Serve: hn.Host.Serve, Topics: hn.Host.Topics, Zone: hn.Host.Zone}
	args := append([]string{"netns", "exec", hn.NS}, t.cfg.ServerCommand...)
	args = append(args, sc.Args()...)
	hn.Log = filepath.Join(t.cfg.WorkDir, "server-"+fileName(hn.Host.Name)+".log")
	logf, err := os.OpenFile(hn.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("server log: %w", err)
	}
	defer logf.Close() // the child has its own copy
	cmd := exec.Command("ip", args...)
	cmd.Env = append(os.Environ(), t.cfg.ServerEnv...)
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if !t.cfg.Detach {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGTERM
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("server %s: %w", hn.Host.Name, err)
	}
	p, err := startProcess("server "+hn.Host.Name, cmd, hn.Log)
	if err != nil {
		return err
	}
	t.servers = append(t.servers, p)
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(out).ReadString('\n')
		line <- strings.TrimSpace(s)
		io.Copy(io.Discard, out)
	}()
	timer := time.NewTimer(15 * time.Second)
	defer timer.Stop()
	select {
	case s := <-line:
		if s == "ready" {
			t.log.Debug("server ready", "host", hn.Host.Name, "serve", hn.Host.Serve)
			return nil
		}
		<-p.done
		return fmt.Errorf("server %s did not start (%v); its log %s ends:\n%s", hn.Host.Name, p.err, hn.Log, tail(hn.Log, 20))
	case <-timer.C:
		return fmt.Errorf("server %s not ready after 15s; its log %s ends:\n%s", hn.Host.Name, hn.Log, tail(hn.Log, 20))
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Host returns where the named host lives, or nil.
func (t *Topology) Host(name string) *HostNS { return t.hosts[name] }

// Hosts lists the hosts in scenario order.
func (t *Topology) Hosts() []*HostNS { return t.order }

// WorkDir is the topology's folder.
func (t *Topology) WorkDir() string { return t.cfg.WorkDir }

// Close stops the servers and every other process in the topology's
// namespaces, deletes the namespaces (their veths go with them), unmounts
// what was mounted for it and removes the work dir.
func (t *Topology) Close(ctx context.Context) error {
	var wg sync.WaitGroup
	for _, p := range t.servers {
		wg.Go(func() { p.stop(3 * time.Second) })
	}
	wg.Wait()
	return teardown(ctx, t.led.state(), t.log)
}

// Kept describes how to reach a topology that is left running and how to
// remove it.
func (t *Topology) Kept(w io.Writer, removeCmd string) {
	fmt.Fprintf(w, "\nThe topology stays up. Node namespace: %s\n", t.Node)
	for _, hn := range t.order {
		serve := ""
		if len(hn.Host.Serve) > 0 {
			var s []string
			for _, svc := range hn.Host.Serve {
				s = append(s, svc.String())
			}
			serve = " serves " + strings.Join(s, ",")
		}
		fmt.Fprintf(w, "  %-28s %-15s netns %s (node side %s)%s\n", hn.Host.Name, hn.Host.IP, hn.NS, hn.HostDev, serve)
	}
	if ex := t.exampleCommands(); len(ex) > 0 {
		fmt.Fprintf(w, "Try:\n  %s\n", strings.Join(ex, "\n  "))
	}
	fmt.Fprintf(w, "Work dir (logs, agent folders): %s\nRemove it all with:\n  %s\n", t.cfg.WorkDir, removeCmd)
}

// exampleCommands are curl and kcat lines for the checks of
// the last step that has any (at most 4).
func (t *Topology) exampleCommands() []string {
	var out []string
	for i := len(t.sc.Steps) - 1; i >= 0 && len(out) == 0; i-- {
		for _, c := range t.sc.Steps[i].Checks {
			src, dst := t.hosts[c.From], t.hosts[c.To]
			if src == nil || dst == nil || len(out) == 4 {
				continue
			}
			switch {
			case c.HTTP != nil:
				h := ""
				for _, k := range slices.Sorted(maps.Keys(c.HTTP.Headers)) {
					h += fmt.Sprintf(" -H '%s: %s'", k, c.HTTP.Headers[k])
				}
				out = append(out, fmt.Sprintf("ip netns exec %s curl -s -m 3 -X %s%s http://%s:%d%s", src.NS, c.HTTP.Method, h, dst.Host.IP, c.Port, c.HTTP.Path))
			case c.Kafka != nil && c.Kafka.Produce != "":
				out = append(out, fmt.Sprintf("echo hello | ip netns exec %s kcat -P -b %s:%d -t %s", src.NS, dst.Host.IP, c.Port, c.Kafka.Produce))
			case c.Kafka != nil:
				out = append(out, fmt.Sprintf("ip netns exec %s kcat -C -b %s:%d -t %s -e", src.NS, dst.Host.IP, c.Port, c.Kafka.Consume))
			case c.DNS != nil:
				out = append(out, fmt.Sprintf("ip netns exec %s dig @%s -p %d %s A", src.NS, dst.Host.IP, c.Port, c.DNS.Name))
			}
		}
	}
	return out
}

// tail returns the last n lines of a file.
func tail(file string, n int) string {
	data, err := os.ReadFile(file)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "  " + strings.Join(lines, "\n  ")
}

// State is what a topology created, recorded in <work dir>/state.json as
// it goes, so that Down can remove a kept (or orphaned) topology.
type State struct {
	Namespaces []string `json:"namespaces"`
	Mounts     []string `json:"mounts,omitempty"`
	// Cgroups are cgroup v2 directories (the agent's proxy cgroup),
	// removed once their processes are gone.
	Cgroups []string `json:"cgroups,omitempty"`
	WorkDir string   `json:"workDir"`
}

// StateFile is the name of the state file in a work dir.
const StateFile = "state.json"

type ledger struct {
	mu   sync.Mutex
	file string
	st   State
}

func newLedger(workDir string) (*ledger, error) {
	abs, err := filepath.Abs(workDir)
	if err != nil {
		return nil, fmt.Errorf("work dir: %w", err)
	}
	l := &ledger{file: filepath.Join(abs, StateFile), st: State{WorkDir: abs}}
	return l, l.saveLocked()
}

func (l *ledger) addNamespace(ns string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.st.Namespaces = append(l.st.Namespaces, ns)
	return l.saveLocked()
}

func (l *ledger) addMount(dir string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.st.Mounts = append(l.st.Mounts, dir)
	return l.saveLocked()
}

func (l *ledger) addCgroup(dir string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.st.Cgroups = append(l.st.Cgroups, dir)
	return l.saveLocked()
}

// TrackProxyCgroup records the cgroup an agent using runDir starts its Go
// proxy in (agentapi.ProxyCgroupName), so Close removes it after the
// processes. Without a cgroup v2 mount there is nothing to track.
func (t *Topology) TrackProxyCgroup(runDir string) error {
	mount, err := bpf.Cgroup2Mount()
	if err != nil {
		return nil
	}
	return t.led.addCgroup(filepath.Join(mount, agentapi.ProxyCgroupName(runDir)))
}

func (l *ledger) state() State {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.st
	st.Namespaces = append([]string(nil), st.Namespaces...)
	st.Mounts = append([]string(nil), st.Mounts...)
	st.Cgroups = append([]string(nil), st.Cgroups...)
	return st
}

func (l *ledger) saveLocked() error {
	b, err := json.MarshalIndent(l.st, "", "  ")
	if err != nil {
		return fmt.Errorf("state: %w", err)
	}
	return writeFileAtomic(l.file, append(b, '\n'))
}

// writeFileAtomic writes a temporary file beside file and renames it.
func writeFileAtomic(file string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", file, err)
	}
	_, werr := f.Write(data)
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", file, err)
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", file, err)
	}
	if err := os.Rename(f.Name(), file); err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", file, err)
	}
	return nil
}

// Down removes a topology from its state file: it ends every process in
// its namespaces, deletes the namespaces, unmounts its mounts and removes
// the work dir.
func Down(ctx context.Context, workDir string, log *slog.Logger) error {
	data, err := os.ReadFile(filepath.Join(workDir, StateFile))
	if err != nil {
		return fmt.Errorf("not a demo work dir: %w", err)
	}
	var st State
	if err := json.Unmarshal(data, &st); err != nil {
		return fmt.Errorf("%s: %w", StateFile, err)
	}
	abs, err := filepath.Abs(workDir)
	if err != nil {
		return fmt.Errorf("work dir: %w", err)
	}
	if st.WorkDir != abs {
		return fmt.Errorf("%s names work dir %s, not %s", StateFile, st.WorkDir, abs)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return teardown(ctx, st, log)
}

// teardown removes what st records, in order: processes, namespaces,
// mounts, the work dir. It goes on after errors and returns them all.
func teardown(ctx context.Context, st State, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	var errs []error
	// processes first: a cgroup goes once its processes are gone
	if err := netns.KillProcesses(ctx, st.Namespaces, 5*time.Second); err != nil {
		errs = append(errs, err)
	}
	for _, cg := range st.Cgroups {
		if err := removeCgroup(ctx, cg); err != nil {
			errs = append(errs, err)
		}
	}
	if err := netns.Delete(ctx, st.Namespaces, 5*time.Second); err != nil {
		errs = append(errs, err)
	} else {
		log.Debug("deleted namespaces", "netns", st.Namespaces)
	}
	for _, m := range st.Mounts {
		if err := unmount(m); err != nil {
			errs = append(errs, err)
		}
	}
	if st.WorkDir != "" {
		for _, m := range st.Mounts {
			if isMountPoint(m) {
				// RemoveAll would descend into the mount.
				errs = append(errs, fmt.Errorf("%s is still mounted: left %s in place", m, st.WorkDir))
				return errors.Join(errs...)
			}
		}
		if err := os.RemoveAll(st.WorkDir); err != nil {
			errs = append(errs, fmt.Errorf("remove work dir: %w", err))
		}
	}
	return errors.Join(errs...)
}

// removeCgroup removes an empty cgroup directory, waiting (bounded) for
// the kernel to let go of processes that just exited.
func removeCgroup(ctx context.Context, dir string) error {
	for {
		err := os.Remove(dir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) {
			return fmt.Errorf("remove cgroup %s: %w", dir, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("remove cgroup %s: %w", dir, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
