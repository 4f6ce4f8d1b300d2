package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/l7gate/l7gate/agentapi"
	"github.com/l7gate/l7gate/envoy/als"
	"github.com/l7gate/l7gate/envoy/bootstrap"
	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/redirect"
)

// EnvoyConfig configures Envoy mode.
type EnvoyConfig struct {
	// ProcessName finds Envoy's pid (/proc/PID/comm; default "envoy"): its
	// HTTP listeners are taken into the datapath's socket map.
	ProcessName string
}

// EnvoyBootstrapConfig is the bootstrap an Envoy on this node needs.
func EnvoyBootstrapConfig(node, runDir string) bootstrap.Config {
	return bootstrap.Config{Node: node, XDSSocket: agentapi.XDSSocket(runDir), AccessLogSocket: agentapi.ALSSocket(runDir),
		AdminSocket: agentapi.EnvoyAdminSocket(runDir)}
}

// serveAccessLogs runs the gRPC access-log service Envoy's bootstrap
// points at; Envoy's requests become flow records, written as JSON lines
// (the Go proxy's access-log format) on the agent's stderr.
func (a *Agent) serveAccessLogs(ctx context.Context) error {
	return als.Serve(ctx, als.Config{Socket: agentapi.ALSSocket(a.cfg.RunDir), Log: a.log, Sink: flow.JSONLines(os.Stderr)})
}

// ProxyProcesses finds the proxies' processes and takes their listener
// sockets (pidfd_getfd: the agent needs CAP_SYS_PTRACE over them and a
// shared PID namespace), so the proxies themselves need no access to the
// datapath. The default (a nil Config.Processes) looks in /proc.
type ProxyProcesses interface {
	// PID returns the pid of a proxy, or 0 when none runs.
	PID(goProxy bool) (int, error)
	TakeListener(pid int, port uint16) (*net.TCPListener, error)
}

// procProxies is ProxyProcesses from /proc: the Go proxy is whoever
// serves its admin socket, Envoy the process named EnvoyConfig.ProcessName.
type procProxies struct{ runDir, envoyName string }

func (p procProxies) PID(goProxy bool) (int, error) {
	if goProxy {
		pid, err := redirect.PeerPID(agentapi.ProxyAdminSocket(p.runDir))
		if err != nil {
			return 0, fmt.Errorf("find the Go proxy through its admin socket: %w", err)
		}
		return pid, nil
	}
	name := p.envoyName
	if name == "" {
		name = "envoy"
	}
	return redirect.FindProcess(name)
}

func (procProxies) TakeListener(pid int, port uint16) (*net.TCPListener, error) {
	return redirect.TakeListener(pid, port)
}

var errNoProxy = errors.New("no process found (does the proxy run in this PID namespace?)")

type listenerKey struct {
	kind consumerKind
	pid  int
	port uint16
}

// registerListeners takes the listeners a proxy ACKed into the datapath's
// socket map (once per port and process). A listener it cannot take is
// not ready: its redirects stay drops, and it is retried.
func (a *Agent) registerListeners(c consumerKind) {
	lns := a.ready.listeners[c]
	if len(lns) == 0 {
		return
	}
	pid, err := a.cfg.Processes.PID(c == goProxy)
	if err == nil && pid == 0 {
		err = errNoProxy
	}
	for k, port := range lns {
		err := err
		if err == nil {
			err = a.registerListener(listenerKey{c, pid, port})
		}
		if err != nil {
			delete(lns, k)
			a.ready.lnWhy[c][k] = notReady{StepProxyListener, fmt.Sprintf("take %s's listener on port %d: %v", c, port, err)}
		}
	}
}

func (a *Agent) registerListener(key listenerKey) error {
	if a.registered[key] {
		return nil
	}
	ln, err := a.cfg.Processes.TakeListener(key.pid, key.port)
	if err != nil {
		return err
	}
	err = a.dp.RegisterProxyListener(key.port, ln)
	ln.Close() // the socket map holds its own reference
	if err != nil {
		return err
	}
	for k := range a.registered {
		if k.kind == key.kind && k.port == key.port {
			delete(a.registered, k) // an earlier process's
		}
	}
	a.registered[key] = true
	a.log.Info("proxy listener registered", "proxy", key.kind.String(), "pid", key.pid, "port", key.port)
	return nil
}

// listenersStale reports whether a ready listener's proxy process changed
// since its socket was taken (the proxy restarted: its new listener must
// go into the socket map).
func (a *Agent) listenersStale() bool {
	for _, c := range []consumerKind{goProxy, envoyProxy} {
		if len(a.ready.listeners[c]) == 0 {
			continue
		}
		pid, err := a.cfg.Processes.PID(c == goProxy)
		if err != nil || pid == 0 {
			continue
		}
		for _, port := range a.ready.listeners[c] {
			if !a.registered[listenerKey{c, pid, port}] {
				return true
			}
		}
	}
	return false
}
