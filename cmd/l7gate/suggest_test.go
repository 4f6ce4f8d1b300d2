//go:build !l7gate_proxyonly

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const suggestData = "../../suggest/testdata/starwars"

// TestPolicySuggestCLI: the command as a user types it, on the recorded
// Star Wars flows: the suggestion on stdout (the golden file's content),
// -o DIR, a window that keeps nothing, and --diff with exit status 1.
func TestPolicySuggestCLI(t *testing.T) {
	objs := filepath.Join(suggestData, "objects.yaml")
	flows := []string{"--flows", filepath.Join(suggestData, "flows.jsonl"), "--flows", filepath.Join(suggestData, "proxy.log")}

	code, out, errOut := runCLI(t, append([]string{"policy", "suggest", "-f", objs}, flows...)...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	want, err := os.ReadFile(filepath.Join(suggestData, "suggested-ingress.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if out != string(want) {
		t.Errorf("stdout is not the golden suggestion:\n%s", out)
	}
	if !strings.Contains(errOut, "suggest: 81 flow records read, 28 used") || !strings.Contains(errOut, "skipped 23 denied") {
		t.Errorf("stderr: %s", errOut)
	}

	dir := t.TempDir()
	code, out, errOut = runCLI(t, append([]string{"policy", "suggest", "-f", objs, "-o", dir, "--egress"}, flows...)...)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, name := range []string{"default.l7gate-suggest-deathstar.yaml", "default.l7gate-suggest-tiefighter.yaml", "default.l7gate-suggest-xwing.yaml"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("-o: %v (stdout %s)", err, out)
		}
	}

	// a window after the last flow: nothing to suggest
	code, out, errOut = runCLI(t, append([]string{"policy", "suggest", "-f", objs, "--since", "2027-01-01T00:00:00Z"}, flows...)...)
	if code != 0 || out != "" || !strings.Contains(errOut, "skipped 81 outside the time window") && !strings.Contains(errOut, "outside the time window") {
		t.Errorf("--since: exit %d, stdout %q, stderr %s", code, out, errOut)
	}
	// the last 10s of the recording: only the record-all phase's requests
	code, out, _ = runCLI(t, append([]string{"policy", "suggest", "-f", objs, "--window", "10s"}, flows...)...)
	if code != 0 || strings.Contains(out, "14 connections") || !strings.Contains(out, `path: "/v1/ships/[0-9]+"`) {
		t.Errorf("--window: exit %d\n%s", code, out)
	}

	// one workload, by name or namespace/name
	for _, w := range []string{"xwing", "default/xwing"} {
		code, out, errOut = runCLI(t, append([]string{"policy", "suggest", "-f", objs, "--egress", "--workload", w}, flows...)...)
		if code != 0 || strings.Count(out, "kind: CiliumNetworkPolicy") != 1 || !strings.Contains(out, "name: l7gate-suggest-xwing") {
			t.Errorf("--workload %s: exit %d\n%s%s", w, code, out, errOut)
		}
	}
	code, out, _ = runCLI(t, append([]string{"policy", "suggest", "-f", objs, "--namespace", "other"}, flows...)...)
	if code != 0 || out != "" {
		t.Errorf("--namespace other: exit %d\n%s", code, out)
	}

	code, out, errOut = runCLI(t, append([]string{"policy", "suggest", "-f", objs, "--diff", filepath.Join(suggestData, "policies", "l7.yaml")}, flows...)...)
	if code != 1 || !strings.Contains(out, "would deny: ingress default/tiefighter → default/deathstar TCP/80 HTTP GET /v1/ships/42 (1 flow): default-deny default/rule1") {
		t.Errorf("--diff: exit %d (want 1)\n%s\n%s", code, out, errOut)
	}

	for _, bad := range [][]string{
		{"policy", "suggest", "-f", objs},
		{"policy", "suggest", "--flows", flows[1]},
		{"policy", "suggest", "-f", objs, "--flows", flows[1], "--since", "yesterday"},
		{"policy", "suggest", "-f", objs, "--flows", "/nonexistent"},
	} {
		if code, _, _ := runCLI(t, bad...); code != 2 {
			t.Errorf("%v: exit %d, want 2", bad, code)
		}
	}
}
