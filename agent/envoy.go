package agent

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/l7gate/l7gate/envoy"
	"github.com/l7gate/l7gate/envoy/als"
	"github.com/l7gate/l7gate/envoy/bootstrap"
	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/proxy"
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
// points at; Envoy's records become the same JSON access-log records the
// Go proxy writes, on the agent's stderr.
func (a *Agent) serveAccessLogs(ctx context.Context) error {
	sink := proxy.JSONLines(os.Stderr)
	return als.Serve(ctx, als.Config{Socket: ALSSocket(a.cfg.RunDir), Log: a.log, Sink: func(r envoy.Record) {
		sink(envoyAccessRecord(r))
	}})
}

// envoyAccessRecord converts an Envoy access-log record.
func envoyAccessRecord(r envoy.Record) *proxy.AccessRecord {
	out := &proxy.AccessRecord{Time: r.Time, Protocol: "http", Source: r.Source, Destination: r.Destination,
		Verdict: string(r.Verdict), Method: r.Method, Path: r.Path, Host: r.Host, Status: r.Status}
	// RuleSet is "l7gate/<direction>/<endpoint identity>/<port>"
	parts := strings.Split(r.RuleSet, "/")
	dir := policy.Ingress
	if len(parts) == 4 {
		if parts[1] == "egress" {
			dir = policy.Egress
		}
		if id, err := strconv.ParseUint(parts[2], 10, 32); err == nil {
			if dir == policy.Ingress {
				out.DstIdentity = policy.Identity(id)
			} else {
				out.SrcIdentity = policy.Identity(id)
			}
		}
	}
	out.Direction = dir
	if r.Policy != "" || r.Kind != "" {
		p := policy.Provenance{Policy: r.Policy, Direction: dir, Kind: policy.RuleKind(r.Kind), Path: r.Rule}
		switch r.PolicyKind {
		case "cnp":
			p.PolicyKind = policy.KindCNP
		case "ccnp":
			p.PolicyKind = policy.KindCCNP
		case "np":
			p.PolicyKind = policy.KindNP
		}
		// "spec.ingress[0].http[1]" → path "spec.ingress[0]", l7 "http[1]"
		if i := strings.LastIndex(r.Rule, "."); i > 0 && strings.HasPrefix(r.Rule[i+1:], "http[") {
			p.Path, p.L7 = r.Rule[:i], r.Rule[i+1:]
		}
		out.DecidedBy = []policy.Provenance{p}
	}
	if r.GRPCStatus != "" && r.GRPCStatus != "0" {
		out.Error = "grpc-status " + r.GRPCStatus
	}
	return out
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
