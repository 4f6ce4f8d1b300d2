//go:build !l7gate_proxyonly

package main

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/l7gate/l7gate/bpf"
)

// TestProxyOnlyBuild: the proxy-only build (-tags l7gate_proxyonly, the
// binary --proxy-executable can name) links none of the agent's, the
// Kubernetes client's or the operator tools' packages (their package
// initialisation was most of the proxy's idle RSS), and serves the proxy
// command.
func TestProxyOnlyBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a binary")
	}
	out, err := exec.Command("go", "list", "-deps", "-tags", "l7gate_proxyonly", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	for _, d := range deps {
		for _, banned := range []string{"github.com/l7gate/l7gate/agent", "github.com/l7gate/l7gate/k8s", "github.com/l7gate/l7gate/suggest",
			"github.com/l7gate/l7gate/demo", "k8s.io/client-go/", "github.com/segmentio/kafka-go", "github.com/twmb/franz-go/pkg/kfake"} {
			if d == banned || strings.HasPrefix(d, banned+"/") || strings.HasPrefix(d, banned) && strings.HasSuffix(banned, "/") {
				t.Errorf("the proxy-only build links %s", d)
			}
		}
	}
	// What the proxy does not run but once linked through a type or a
	// helper (bpf's mark encoding, agentapi's FQDN client, observe/metrics'
	// FuncCounter): the datapath's loader, the Hubble and Kubernetes
	// packages they pulled in. Their leaf packages are allowed.
	for _, d := range deps {
		for _, banned := range []string{"github.com/l7gate/l7gate/bpf", "github.com/l7gate/l7gate/agentapi", "github.com/l7gate/l7gate/observe/metrics",
			"github.com/l7gate/l7gate/observe/hubble", "github.com/l7gate/l7gate/proto/hubble/", "github.com/cilium/ebpf", "github.com/vishvananda/netlink",
			"k8s.io/", "gopkg.in/natefinch/lumberjack.v2"} {
			if d == banned || strings.HasSuffix(banned, "/") && strings.HasPrefix(d, banned) || strings.HasPrefix(d, banned+"/") && !strings.HasPrefix(banned, "github.com/l7gate/") {
				t.Errorf("the proxy-only build links %s", d)
			}
		}
	}
	if defaultBPFFS != bpf.DefaultBPFFSPath {
		t.Errorf("proxy --bpffs default %q, bpf's %q", defaultBPFFS, bpf.DefaultBPFFSPath)
	}
	bin := filepath.Join(t.TempDir(), "l7gate-proxy")
	if out, err := exec.Command("go", "build", "-tags", "l7gate_proxyonly", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	help, err := exec.Command(bin, "proxy", "--help").CombinedOutput()
	if err != nil || !strings.Contains(string(help), "--xds-socket") {
		t.Fatalf("proxy --help: %v\n%s", err, help)
	}
	if out, err := exec.Command(bin, "agent", "--help").CombinedOutput(); err == nil {
		t.Fatalf("the proxy-only build runs the agent command:\n%s", out)
	}
	// The commands the chart's l7gate-proxy lines may use (chart_test.go).
	rootHelp, err := exec.Command(bin, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("--help: %v\n%s", err, rootHelp)
	}
	for _, c := range proxyOnlyCommands {
		if !strings.Contains(string(rootHelp), "\n  "+c+" ") {
			t.Errorf("the proxy-only build lacks the %s command:\n%s", c, rootHelp)
		}
	}
}
