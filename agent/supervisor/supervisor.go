// Package supervisor keeps the node's Go proxy running for the agent: it
// adopts a proxy that answers on the admin socket, starts one otherwise (in
// its own session, so it outlives agent restarts), and restarts the one it
// started when it exits.
package supervisor

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
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
	backoff := 500 * time.Millisecond
	for {
		wait := 2 * time.Second
		switch {
		case exited != nil:
			select {
			case <-exited:
				log.Warn("proxy exited; restarting it", "log", agentapi.ProxyLog(cfg.RunDir))
				exited = nil
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
			args := append([]string{"proxy",
				"--xds-socket", agentapi.XDSSocket(cfg.RunDir),
				"--admin-socket", agentapi.ProxyAdminSocket(cfg.RunDir),
				"--node", cfg.Node,
				"--flow-socket", agentapi.FlowSocket(cfg.RunDir),
			}, cfg.Args...)
			logf, err := os.OpenFile(agentapi.ProxyLog(cfg.RunDir), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
			if err != nil {
				log.Error("proxy log", "error", err)
				return
			}
			cmd := exec.Command(exe, args...)
			cmd.Stdout, cmd.Stderr = logf, logf
			// Its own session: an agent restart (or its process group being
			// signalled) must not take the proxy and its connections down.
			cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
			var cgroup *os.File
			if cfg.Cgroup != "" {
				// Started inside its cgroup, so every socket it opens is
				// the proxy's from the first.
				if cgroup, err = os.Open(cfg.Cgroup); err != nil {
					logf.Close()
					log.Error("open proxy cgroup", "error", err)
					break
				}
				cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(cgroup.Fd())
			}
			err = cmd.Start()
			if cgroup != nil {
				cgroup.Close()
			}
			if err != nil {
				logf.Close()
				log.Error("start proxy", "error", err)
				break
			}
			os.WriteFile(agentapi.ProxyPIDFile(cfg.RunDir), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644)
			log.Info("started proxy", "pid", cmd.Process.Pid, "log", logf.Name(), "cgroup", cfg.Cgroup)
			ch := make(chan struct{})
			exited = ch
			go func() { cmd.Wait(); logf.Close(); close(ch) }()
			wait = 200 * time.Millisecond
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}
