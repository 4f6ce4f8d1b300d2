package agent

import (
	"context"
	"errors"
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

var errNoEnvoy = errors.New("no envoy process found (is Envoy running in this PID namespace?)")

type envoyListenerKey struct {
	pid  int
	port uint16
}

// registerEnvoyListeners takes the listeners Envoy ACKed into the
// datapath's socket map (once per port and Envoy process). A listener it
// cannot take is not ready: its redirects stay drops, and it is retried.
func (a *Agent) registerEnvoyListeners() {
	lns := a.ready.listeners[envoyProxy]
	if len(lns) == 0 {
		return
	}
	name := a.cfg.Envoy.ProcessName
	if name == "" {
		name = "envoy"
	}
	pid, err := redirect.FindProcess(name)
	if err == nil && pid == 0 {
		err = errNoEnvoy
	}
	for k, port := range lns {
		if err == nil {
			err = a.registerEnvoyListener(pid, port)
		}
		if err != nil {
			delete(lns, k)
			a.ready.lnWhy[envoyProxy][k] = notReady{StepEnvoyListener, err.Error()}
			if pid != 0 {
				err = nil // the next port may work
			}
		}
	}
}

func (a *Agent) registerEnvoyListener(pid int, port uint16) error {
	key := envoyListenerKey{pid, port}
	if a.envoyListeners[key] {
		return nil
	}
	ln, err := redirect.TakeListener(pid, port)
	if err != nil {
		return err
	}
	err = a.dp.RegisterProxyListener(port, ln)
	ln.Close() // the socket map holds its own reference
	if err != nil {
		return err
	}
	a.envoyListeners[key] = true
	a.log.Info("envoy listener registered", "pid", pid, "port", port)
	return nil
}
