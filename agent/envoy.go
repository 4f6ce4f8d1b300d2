package agent

import (
	"context"
	"os"
	"path/filepath"

	"google.golang.org/protobuf/proto"

	"github.com/l7gate/l7gate/envoy/als"
	"github.com/l7gate/l7gate/envoy/bootstrap"
	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/redirect"
	"github.com/l7gate/l7gate/xds/envoytranslate"
	"github.com/l7gate/l7gate/xds/translate"
)

// HTTP proxy choices.
const (
	HTTPProxyGo    = "go"    // the Go proxy serves HTTP, gRPC and Kafka
	HTTPProxyEnvoy = "envoy" // stock Envoy serves HTTP and gRPC; the Go proxy Kafka
)

// EnvoyConfig configures Envoy mode.
type EnvoyConfig struct {
	// ProcessName finds Envoy's pid (/proc/PID/comm; default "envoy"): its
	// HTTP listeners are taken into the datapath's socket map.
	ProcessName string
}

// ALSSocket is the access-log service socket under a run dir.
func ALSSocket(runDir string) string { return filepath.Join(runDir, "accesslog.sock") }

// xdsState is what the xDS server renders for every consumer.
type xdsState struct {
	GoProxy  translate.Input
	Snapshot *policy.Snapshot
	Envoy    envoytranslate.Config
	envoyOn  bool
}

func goProxyResources(id string, st xdsState) (map[string][]proto.Message, error) {
	return translate.L7ProxyResources(id, st.GoProxy)
}

func envoyResources(_ string, st xdsState) (map[string][]proto.Message, error) {
	if !st.envoyOn || st.Snapshot == nil {
		return map[string][]proto.Message{}, nil
	}
	res, err := envoytranslate.Translate(st.Snapshot, st.Envoy)
	if err != nil {
		return nil, err
	}
	out := map[string][]proto.Message{}
	for t, rs := range res.ByType() {
		msgs := make([]proto.Message, len(rs))
		for i, r := range rs {
			msgs[i] = r
		}
		out[string(t)] = msgs
	}
	return out, nil
}

// serveAccessLogs runs the gRPC access-log service Envoy's bootstrap
// points at; Envoy's requests become flow records, written as JSON lines
// (the Go proxy's access-log format) on the agent's stderr.
func (a *Agent) serveAccessLogs(ctx context.Context) error {
	return als.Serve(ctx, als.Config{Socket: ALSSocket(a.cfg.RunDir), Log: a.log, Sink: flow.JSONLines(os.Stderr)})
}

// EnvoyBootstrapConfig is the bootstrap an Envoy on this node needs.
func EnvoyBootstrapConfig(node, runDir string) bootstrap.Config {
	return bootstrap.Config{Node: node, XDSSocket: XDSSocket(runDir), AccessLogSocket: ALSSocket(runDir),
		AdminSocket: filepath.Join(runDir, "envoy-admin.sock")}
}

// registerEnvoyListeners takes Envoy's listeners on the HTTP proxy ports
// into the datapath's socket map (once per port and Envoy process).
func (a *Agent) registerEnvoyListeners(ports []uint16) error {
	name := a.cfg.Envoy.ProcessName
	if name == "" {
		name = "envoy"
	}
	pid, err := redirect.FindProcess(name)
	if err != nil {
		return err
	}
	if pid == 0 {
		return errNoEnvoy
	}
	for _, port := range ports {
		key := envoyListenerKey{pid, port}
		if a.envoyListeners[key] {
			continue
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
	}
	return nil
}

type envoyListenerKey struct {
	pid  int
	port uint16
}
