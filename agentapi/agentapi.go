// Package agentapi is the agent's local API: where its sockets live under
// the run directory, what it serves on its status socket (Status, flow
// records, rule ids) and a client for it. `l7gate status` and `observe`,
// the demo and the bench read an agent through this package without
// linking the agent and what it composes.
//
// It imports only the shared contracts (policy, flow, source) and
// proxyapi, the part the Go proxy links.
package agentapi

import (
	"crypto/sha256"
	"encoding/hex"
	"path/filepath"
)

// DefaultRunDir is where the agent keeps its sockets.
const DefaultRunDir = "/run/l7gate"

// XDSSocket is the xDS server's socket under a run dir.
func XDSSocket(runDir string) string { return filepath.Join(runDir, "xds.sock") }

// StatusSocket is the agent's status API socket under a run dir.
func StatusSocket(runDir string) string { return filepath.Join(runDir, "agent.sock") }

// ProxyAdminSocket is the Go proxy's admin socket under a run dir.
func ProxyAdminSocket(runDir string) string { return filepath.Join(runDir, "proxy-admin.sock") }

// ProxyPIDFile holds the pid of the Go proxy the agent started.
func ProxyPIDFile(runDir string) string { return filepath.Join(runDir, "proxy.pid") }

// ProxyLog is where the Go proxy the agent started writes its log and
// access log.
func ProxyLog(runDir string) string { return filepath.Join(runDir, "proxy.log") }

// HubbleSocket serves Hubble's Observer API (`hubble observe --server
// unix://RUN_DIR/hubble.sock`, `l7gate observe`) under a run dir.
func HubbleSocket(runDir string) string { return filepath.Join(runDir, "hubble.sock") }

// FlowSocket is the agent's flow intake under a run dir: the Go proxy
// streams its access records there (JSON lines, flow.Forwarder).
func FlowSocket(runDir string) string { return filepath.Join(runDir, "flows.sock") }

// ALSSocket is the access-log service socket (Envoy's logs) under a run
// dir.
func ALSSocket(runDir string) string { return filepath.Join(runDir, "accesslog.sock") }

// EnvoyAdminSocket is Envoy's admin socket under a run dir.
func EnvoyAdminSocket(runDir string) string { return filepath.Join(runDir, "envoy-admin.sock") }

// ProxyCgroupName is the cgroup v2 directory (under the hierarchy's root)
// the agent starts its Go proxy in: one per run dir, so agents of several
// nodes on one machine (tests, the demo) do not share one, and a restarted
// agent finds its proxy's again.
func ProxyCgroupName(runDir string) string {
	abs, err := filepath.Abs(runDir)
	if err != nil {
		abs = runDir
	}
	sum := sha256.Sum256([]byte(abs))
	return "l7gate-proxy-" + hex.EncodeToString(sum[:4])
}
