package agent

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// ProxyConfig says how the agent gets its Go proxy.
type ProxyConfig struct {
	// Start: start `l7gate proxy` when none is running, and restart it if
	// it dies. The proxy runs in its own session, so it survives agent
	// restarts; a running one is adopted.
	Start bool
	// Executable of l7gate (default: this process's executable).
	Executable string
	// Args are extra arguments for `l7gate proxy`.
	Args []string
}

// proxyAlive reports whether a proxy answers on the admin socket.
func proxyAlive(runDir string) bool {
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", ProxyAdminSocket(runDir))
	}}}
	resp, err := client.Get("http://proxy/stats/prometheus")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return true
}

// ProxyPIDFile holds the pid of the proxy the agent started.
func ProxyPIDFile(runDir string) string { return filepath.Join(runDir, "proxy.pid") }

// superviseProxy keeps a Go proxy running (when configured to): it adopts
// one that answers on the admin socket, starts one otherwise, and starts
// a new one if the proxy it started exits.
func (a *Agent) superviseProxy(ctx context.Context) {
	if !a.cfg.Proxy.Start {
		return
	}
	exe := a.cfg.Proxy.Executable
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			a.log.Error("find l7gate executable", "error", err)
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
				a.log.Warn("proxy exited; restarting it", "log", filepath.Join(a.cfg.RunDir, "proxy.log"))
				exited = nil
				wait = backoff
				if backoff < 10*time.Second {
					backoff *= 2
				}
			default:
			}
		case proxyAlive(a.cfg.RunDir):
			if !adopted {
				a.log.Info("adopted the running proxy", "admin", ProxyAdminSocket(a.cfg.RunDir))
				adopted = true
			}
		default:
			adopted = false
			args := append([]string{"proxy",
				"--xds-socket", XDSSocket(a.cfg.RunDir),
				"--admin-socket", ProxyAdminSocket(a.cfg.RunDir),
				"--node", a.cfg.Node,
				"--bpffs", a.cfg.BPFFS,
			}, a.cfg.Proxy.Args...)
			logf, err := os.OpenFile(filepath.Join(a.cfg.RunDir, "proxy.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
			if err != nil {
				a.log.Error("proxy log", "error", err)
				return
			}
			cmd := exec.Command(exe, args...)
			cmd.Stdout, cmd.Stderr = logf, logf
			// Its own session: an agent restart (or its process group being
			// signalled) must not take the proxy and its connections down.
			cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
			if err := cmd.Start(); err != nil {
				logf.Close()
				a.log.Error("start proxy", "error", err)
				break
			}
			os.WriteFile(ProxyPIDFile(a.cfg.RunDir), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644)
			a.log.Info("started proxy", "pid", cmd.Process.Pid, "log", logf.Name())
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
