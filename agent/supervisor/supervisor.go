// Package supervisor keeps the node's Go proxy running for the agent: it
// adopts a proxy that answers on the admin socket, starts one otherwise (in
// its own session, so it outlives agent restarts), and restarts the one it
// started when it exits. On Config.Restart it starts a new proxy while the
// running one serves: the new one takes the listener sockets over (the
// proxy's hand-over socket), and the old one drains and exits, so a
// restart or an upgrade of the binary fails no request.
package supervisor

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/l7gate/l7gate/agentapi"
)

// Config says how to run the Go proxy.
type Config struct {
	// Executable of l7gate (default: this process's executable).
	Executable string
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

// Run keeps a Go proxy running until ctx ends: it adopts one that answers
// on the admin socket, starts one otherwise, and starts a new one if the
// proxy it started exits. The proxy keeps running when Run returns.
func Run(ctx context.Context, cfg Config) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	exe := cfg.Executable
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			log.Error("find l7gate executable", "error", err)
			return
		}
	}
	var exited chan struct{} // the proxy we started; nil when none
	adopted := false
	const minBackoff = 500 * time.Millisecond
	backoff := minBackoff
	var startedAt time.Time
	start := func(why string) {
		ch, err := startProxy(cfg, exe, log, why, why == startFresh)
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
			if !adopted {
				log.Info("adopted the running proxy", "admin", agentapi.ProxyAdminSocket(cfg.RunDir))
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
func startProxy(cfg Config, exe string, log *slog.Logger, why string, inherit bool) (chan struct{}, error) {
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
	cmd := exec.Command(exe, args...)
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
	writePIDFile(agentapi.ProxyPIDFile(cfg.RunDir), cmd.Process.Pid, log)
	log.Info("started proxy", "pid", cmd.Process.Pid, "why", why, "log", logf.Name(), "cgroup", cfg.Cgroup)
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
