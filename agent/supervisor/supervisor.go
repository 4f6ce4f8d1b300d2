// Package supervisor keeps the node's Go proxy running for the agent: it
// adopts a proxy that answers on the admin socket (and replaces one of
// another version, as a hitless restart does), starts one otherwise (in
// its own session, so it outlives agent restarts), and restarts the one it
// started when it exits. On Config.Restart it starts a new proxy while the
// running one serves: the new one takes the listener sockets over (the
// proxy's hand-over socket), and the old one drains and exits, so a
// restart or an upgrade of the binary fails no request.
package supervisor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/l7gate/l7gate/agentapi"
)

// Config says how to run the Go proxy.
type Config struct {
	// Executable the proxy is started from; empty: ProxyExecutableName
	// (the proxy-only build) in the directory of this process's
	// executable when that file exists, else this process's executable.
	// Chosen and checked at every start (a crash's restart and a
	// hand-over too).
	Executable string
	// Version is this agent's version stamp. When set, an executable
	// other than this process's own file is started only if `EXE version`
	// prints exactly this: a mismatch starts no proxy from it (for the
	// default l7gate-proxy, this process's executable is started instead).
	// A running proxy adopted is asked for its version too (GET /version
	// on its admin socket); one of another version, or one too old to
	// answer, is replaced as on Restart.
	Version string
	// Args are extra arguments for `l7gate proxy`.
	Args []string
	// RunDir holds the sockets, the pid file and the proxy's log.
	RunDir string
	// Node is the node name the proxy subscribes to xDS with.
	Node string
	// Cgroup, when set, is the cgroup v2 directory the proxy is started
	// in (a leaf of its own: the datapath believes from-proxy marks only
	// from sockets of the proxies' cgroups).
	Cgroup string
	Logger *slog.Logger
	// Restart, when set, asks for a hitless restart (say, after the
	// l7gate binary was upgraded): a new proxy is started next to the
	// running one and takes its listeners over.
	Restart <-chan struct{}
	// Listeners, when set, returns duplicates of the proxy's sockets by
	// proxy port (its TCP listeners and a dns port's UDP sockets, of both
	// families) that a proxy started after a crash inherits
	// (--inherit-listener, one per socket), so connections queued in their
	// backlog and datagrams in their buffers while no proxy ran are
	// served. A hand-over restart gets them from the running proxy instead.
	Listeners func() (map[uint16][]*os.File, error)
}

// proxyAlive reports whether a proxy answers on the admin socket.
func proxyAlive(runDir string) bool {
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", agentapi.ProxyAdminSocket(runDir))
	}}}
	resp, err := client.Get("http://proxy/stats/prometheus")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return true
}

// proxyVersion asks the proxy on the admin socket for its version (GET
// /version): "" when it answers 404 (a proxy from before the handler, or
// one without a version stamp).
func proxyVersion(runDir string) (string, error) {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", agentapi.ProxyAdminSocket(runDir))
	}}}
	resp, err := client.Get("http://proxy/version")
	if err != nil {
		return "", fmt.Errorf("proxy version: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256))
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return "", nil
	case err != nil:
		return "", fmt.Errorf("proxy version: %w", err)
	case resp.StatusCode != http.StatusOK:
		return "", fmt.Errorf("proxy version: %s", resp.Status)
	}
	return strings.TrimSpace(string(body)), nil
}

// Run keeps a Go proxy running until ctx ends: it adopts one that answers
// on the admin socket (replacing one of another version: Config.Version),
// starts one otherwise, and starts a new one if the
// proxy it started exits. The proxy keeps running when Run returns.
func Run(ctx context.Context, cfg Config) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var exited chan struct{} // the proxy we started; nil when none
	adopted := false
	const minBackoff = 500 * time.Millisecond
	backoff := minBackoff
	var startedAt time.Time
	start := func(why string) {
		ch, err := startProxy(cfg, log, why, why == startFresh)
		if err != nil {
			log.Error("start proxy", "error", err)
			return
		}
		// A proxy we started before, handing over now, exits on its own:
		// only the newest one is watched.
		exited, adopted, startedAt = ch, false, time.Now()
	}
	for {
		wait := 2 * time.Second
		switch {
		case exited != nil:
			select {
			case <-exited:
				log.Warn("proxy exited; restarting it", "log", agentapi.ProxyLog(cfg.RunDir))
				exited = nil
				if time.Since(startedAt) > time.Minute {
					backoff = minBackoff // it ran a while: not a crash loop
				}
				wait = backoff
				if backoff < 10*time.Second {
					backoff *= 2
				}
			default:
			}
		case proxyAlive(cfg.RunDir):
			if adopted {
				break
			}
			v, err := proxyVersion(cfg.RunDir)
			switch {
			case cfg.Version == "":
				log.Info("adopted the running proxy", "admin", agentapi.ProxyAdminSocket(cfg.RunDir))
				adopted = true
			case err != nil:
				// Alive a moment ago: ask again at the next poll.
				log.Warn("adopting the running proxy: cannot read its version; trying again", "error", err)
			case v != cfg.Version:
				// A proxy left running by an agent of another version
				// (an upgrade, a rollback): replaced as a hitless restart
				// replaces one. Once only: if the start fails, the
				// adopted proxy serves on rather than none.
				if v == "" {
					v = "none (too old to report one)"
				}
				log.Warn("adopted a proxy of another version; replacing it (hand-over)", "proxy_version", v, "agent_version", cfg.Version,
					"admin", agentapi.ProxyAdminSocket(cfg.RunDir))
				adopted = true
				start("adopted proxy of version " + v + ", the agent " + cfg.Version + " (hand-over)")
			default:
				log.Info("adopted the running proxy", "admin", agentapi.ProxyAdminSocket(cfg.RunDir), "version", v)
				adopted = true
			}
		default:
			adopted = false
			start(startFresh)
			if exited != nil {
				wait = 200 * time.Millisecond
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-cfg.Restart:
			// Hitless: the new proxy takes the running one's listeners
			// over the hand-over socket; the old one drains and exits.
			start("restart requested (hand-over)")
		case <-exited: // nil (never ready) when no proxy of ours runs
			// A crash is noticed at once: connections wait in the backlog
			// of the held sockets (or retransmit their SYNs) meanwhile.
		case <-time.After(wait):
		}
	}
}

const startFresh = "no proxy running"

// startProxy starts `l7gate proxy` in its own session (and cgroup) and
// returns a channel closed when it exits. inherit passes it the held
// listener sockets (Config.Listeners).
func startProxy(cfg Config, log *slog.Logger, why string, inherit bool) (chan struct{}, error) {
	exe, err := chooseExecutable(cfg, log)
	if err != nil {
		return nil, err
	}
	defer exe.file.Close()
	args := append([]string{"proxy",
		"--xds-socket", agentapi.XDSSocket(cfg.RunDir),
		"--admin-socket", agentapi.ProxyAdminSocket(cfg.RunDir),
		"--node", cfg.Node,
		"--flow-socket", agentapi.FlowSocket(cfg.RunDir),
		"--agent-socket", agentapi.StatusSocket(cfg.RunDir),
	}, cfg.Args...)
	var extra []*os.File
	if inherit && cfg.Listeners != nil {
		files, err := cfg.Listeners()
		if err != nil {
			log.Warn("no held listeners for the new proxy", "error", err)
		}
		for _, port := range slices.Sorted(maps.Keys(files)) {
			for _, f := range files[port] {
				// ExtraFiles[i] is fd 3+i in the child.
				args = append(args, fmt.Sprintf("--inherit-listener=%d:%d", port, 3+len(extra)))
				extra = append(extra, f)
			}
		}
		defer func() {
			for _, f := range extra {
				f.Close()
			}
		}()
	}
	logf, err := os.OpenFile(agentapi.ProxyLog(cfg.RunDir), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("proxy log: %w", err)
	}
	cmd := exec.Command(exe.path, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = extra
	// Its own session: an agent restart (or its process group being
	// signalled) must not take the proxy and its connections down.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	var cgroup *os.File
	if cfg.Cgroup != "" {
		// Started inside its cgroup, so every socket it opens is the
		// proxy's from the first.
		if cgroup, err = os.Open(cfg.Cgroup); err != nil {
			logf.Close()
			return nil, fmt.Errorf("open proxy cgroup: %w", err)
		}
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(cgroup.Fd())
	}
	err = cmd.Start()
	if cgroup != nil {
		cgroup.Close()
	}
	if err != nil {
		logf.Close()
		return nil, err
	}
	// The file checked is the file running: one replaced at that path
	// since (an upgrade racing this start) is stopped at once.
	if err := exe.isImageOf(cmd.Process.Pid); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		logf.Close()
		return nil, err
	}
	writePIDFile(agentapi.ProxyPIDFile(cfg.RunDir), cmd.Process.Pid, log)
	log.Info("started proxy", "pid", cmd.Process.Pid, "why", why, "executable", exe.path, "executable_why", exe.why,
		"log", logf.Name(), "cgroup", cfg.Cgroup)
	ch := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(ch) }()
	return ch, nil
}

// writePIDFile replaces the pid file at once (a temporary file renamed
// over it): a reader never sees it empty or half written.
func writePIDFile(path string, pid int, log *slog.Logger) {
	tmp := path + ".tmp"
	err := os.WriteFile(tmp, []byte(strconv.Itoa(pid)+"\n"), 0o644)
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		log.Warn("write proxy pid file", "error", err)
	}
}

// ProxyExecutableName is the proxy-only build's file name (make build:
// bin/l7gate-proxy; the image: /usr/local/bin/l7gate-proxy). The agent
// starts the one next to its own executable unless told otherwise.
const ProxyExecutableName = "l7gate-proxy"

// proxyExecutable is an executable chosen for a proxy start, open: the
// version checked is that of this very file.
type proxyExecutable struct {
	path string
	why  string // why this one: logged with every start
	file *os.File
	info os.FileInfo
	// verify: the started process must run this file (Config.Version
	// set: the file was checked).
	verify bool
}

// isImageOf reports an error unless pid runs this file (when verified).
func (e *proxyExecutable) isImageOf(pid int) error {
	if !e.verify {
		return nil
	}
	st, err := os.Stat(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return fmt.Errorf("proxy executable of pid %d: %w", pid, err)
	}
	if !os.SameFile(st, e.info) {
		return fmt.Errorf("proxy executable %s was replaced while the proxy started: stopped it", e.path)
	}
	return nil
}

// chooseExecutable picks the executable of the next proxy (see
// Config.Executable) and checks its version (Config.Version).
func chooseExecutable(cfg Config, log *slog.Logger) (*proxyExecutable, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find the agent's executable: %w", err)
	}
	return chooseExecutableBeside(cfg, self, log)
}

// chooseExecutableBeside is chooseExecutable for an agent whose executable
// is self.
func chooseExecutableBeside(cfg Config, self string, log *slog.Logger) (*proxyExecutable, error) {
	if cfg.Executable != "" {
		return openExecutable(cfg.Executable, "the configured proxy executable", cfg.Version)
	}
	sibling := filepath.Join(filepath.Dir(self), ProxyExecutableName)
	why := "no " + ProxyExecutableName + " next to the agent: the agent's own executable"
	if _, err := os.Stat(sibling); err == nil {
		e, err := openExecutable(sibling, "the proxy-only build next to the agent", cfg.Version)
		if err == nil {
			return e, nil
		}
		// A stale or broken l7gate-proxy never runs; the agent's own
		// binary (its version by definition) serves instead.
		log.Error("not starting the proxy from "+sibling+"; starting the agent's own executable instead", "error", err)
		why = ProxyExecutableName + " next to the agent refused (" + err.Error() + "): the agent's own executable"
	} else if !errors.Is(err, fs.ErrNotExist) {
		log.Warn("no proxy-only build next to the agent", "path", sibling, "error", err)
	}
	return openExecutable(self, why, cfg.Version)
}

// openExecutable opens path and, unless it is this process's own file,
// runs it (through the open file) with `version`: it must print version.
func openExecutable(path, why, version string) (*proxyExecutable, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("proxy executable: %w", err)
	}
	info, err := f.Stat()
	if err == nil && !info.Mode().IsRegular() {
		err = errors.New("not a regular file")
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("proxy executable %s: %w", path, err)
	}
	e := &proxyExecutable{path: path, why: why, file: f, info: info, verify: version != ""}
	if self, err := os.Stat("/proc/self/exe"); version == "" || err == nil && os.SameFile(self, info) {
		return e, nil // the agent's own file: its version by definition
	}
	ctx, cancel := context.WithTimeout(context.Background(), versionTimeout)
	defer cancel()
	// The open file itself runs (the fd is inherited until the exec), so
	// what is checked cannot be swapped under the check.
	cmd := exec.CommandContext(ctx, fmt.Sprintf("/proc/self/fd/%d", f.Fd()), "version")
	cmd.Args[0] = path
	out, err := cmd.Output()
	got := strings.TrimSpace(string(out))
	switch {
	case err != nil:
		f.Close()
		return nil, fmt.Errorf("proxy executable %s: no version (%s version: %w); the agent is version %s: not starting it", path, path, err, version)
	case got != version:
		f.Close()
		return nil, fmt.Errorf("proxy executable %s is version %q, the agent version %q: not starting it", path, got, version)
	}
	return e, nil
}

// versionTimeout bounds `EXE version`.
const versionTimeout = 10 * time.Second
