//go:build !l7gate_proxyonly

package main

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestVersionCommand: `l7gate version` prints a version, and the
// proxy-only build prints the stamp linked with -X main.buildVersion: what
// the agent compares with its own before it starts a proxy executable
// (TestPrivilegedAgentStartsProxyOnlyBuild stamps the full build too).
func TestVersionCommand(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"version"}, &out, &errb); code != 0 || strings.TrimSpace(out.String()) == "" {
		t.Fatalf("version: exit %d, stdout %q, stderr %q", code, out.String(), errb.String())
	}
	if testing.Short() {
		t.Skip("builds binaries")
	}
	dir := t.TempDir()
	for _, tags := range []string{"l7gate_proxyonly"} {
		bin := filepath.Join(dir, "l7gate-"+tags)
		if b, err := exec.Command("go", "build", "-tags", tags, "-ldflags", "-X main.buildVersion=1.2.3+test", "-o", bin, ".").CombinedOutput(); err != nil {
			t.Fatalf("go build -tags %q: %v\n%s", tags, err, b)
		}
		got, err := exec.Command(bin, "version").Output()
		if err != nil || string(got) != "1.2.3+test\n" {
			t.Errorf("-tags %q: version printed %q (%v), want the linked stamp 1.2.3+test", tags, got, err)
		}
	}
}
