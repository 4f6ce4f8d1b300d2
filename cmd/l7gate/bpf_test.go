//go:build !l7gate_proxyonly

package main

import (
	"context"
	"encoding/json"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/internal/testutil"
)

// TestPrivilegedBPFCommands loads the datapath into a private bpffs, writes
// policy and ipcache entries, and reads them back through `l7gate bpf …`.
func TestPrivilegedBPFCommands(t *testing.T) {
	testutil.RequirePrivileged(t, "mounts a bpffs and loads BPF programs")
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "bpf", "bpf", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount bpffs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	dp, err := bpf.Open(context.Background(), bpf.Config{BPFFSPath: dir, DisableEvents: true})
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	if _, err := dp.SyncIPCache([]bpf.IPCacheEntry{{Prefix: netip.MustParsePrefix("198.18.1.11/32"), Identity: 257}}); err != nil {
		t.Fatal(err)
	}
	if _, err := dp.SyncPolicy([]bpf.EndpointPolicy{{Endpoint: 7, Ingress: bpf.DirectionPolicy{Enforced: true, Entries: []bpf.PolicyEntry{
		{Peer: 257, Protocol: 6, Port: 80, Verdict: bpf.VerdictRedirect, ProxyPort: 15000, RuleID: 42},
		{Peer: 258, Protocol: 6, Port: 22, Verdict: bpf.VerdictDeny, RuleID: 43},
	}}}}); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runCLI(t, "bpf", "policy", "list", "--bpffs", dir, "-o", "json")
	if code != 0 {
		t.Fatalf("bpf policy list: exit %d: %s", code, errOut)
	}
	var pol struct {
		Endpoints []map[string]any `json:"endpoints"`
		Entries   []map[string]any `json:"entries"`
	}
	if err := json.Unmarshal([]byte(out), &pol); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	if len(pol.Endpoints) == 0 || !strings.Contains(out, "15000") || !strings.Contains(out, "42") || !strings.Contains(out, "43") {
		t.Errorf("policy list lacks the entries:\n%s", out)
	}
	code, out, _ = runCLI(t, "bpf", "policy", "list", "--bpffs", dir)
	if code != 0 || !strings.Contains(out, "redirect") || !strings.Contains(out, "15000") || !strings.Contains(out, "deny") {
		t.Errorf("policy table (exit %d):\n%s", code, out)
	}
	code, out, _ = runCLI(t, "bpf", "ipcache", "list", "--bpffs", dir)
	if code != 0 || !strings.Contains(out, "198.18.1.11/32") || !strings.Contains(out, "257") {
		t.Errorf("ipcache list (exit %d):\n%s", code, out)
	}
	code, out, errOut = runCLI(t, "bpf", "ct", "list", "--bpffs", dir, "-o", "json")
	var ct any
	if code != 0 || json.Unmarshal([]byte(out), &ct) != nil {
		t.Errorf("ct list: exit %d: %s %s", code, out, errOut)
	}
	if code, _, errOut := runCLI(t, "bpf", "policy", "list", "--bpffs", t.TempDir()); code == 0 || errOut == "" {
		t.Error("reading a bpffs without pins succeeded")
	}
}
