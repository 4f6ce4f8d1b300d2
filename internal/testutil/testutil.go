// Package testutil holds what the project's tests share: the golden-file
// comparison (with the -update flag), the root check that goes with the
// TestPrivileged… naming rule, a log sink for concurrent writers and a
// scarce descriptor limit (limits.go). Only _test.go files import it.
package testutil

import (
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// update is the one -update flag of every golden test: `go test ./pkg
// -run TestGolden -update` rewrites that package's golden files.
var update = flag.Bool("update", false, "rewrite golden files from the current output")

// Updating reports whether the test run was asked to rewrite golden files.
func Updating() bool { return *update }

// Golden compares got with the file at path. With -update it writes got
// there instead (creating the directory). A difference fails the test with
// a unified line diff (-want +got) and says how to update.
func Golden(t testing.TB, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatalf("golden: %v", err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatalf("golden: %v", err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("golden: %v (run the test with -update to create it)", err)
	}
	if d := Diff(string(want), string(got)); d != "" {
		t.Errorf("%s differs (-want +got); rerun with -update if intended and review the file's diff:\n%s", path, d)
	}
}

// Diff is a line diff of two texts (-want +got), empty when equal.
func Diff(want, got string) string {
	if want == got {
		return ""
	}
	return cmp.Diff(strings.SplitAfter(want, "\n"), strings.SplitAfter(got, "\n"))
}

// RequirePrivileged skips the test unless it runs as root with the named
// tools on PATH; why says what root is needed for. It enforces the naming
// rule: a test that needs root is named TestPrivileged… (so `go test -run
// Privileged` selects exactly them), and one that is not fails here.
func RequirePrivileged(t testing.TB, why string, tools ...string) {
	t.Helper()
	if name := t.Name(); strings.HasPrefix(name, "Test") && !strings.HasPrefix(name, "TestPrivileged") {
		t.Fatalf("%s needs root (%s): name it TestPrivileged…", name, why)
	}
	if os.Geteuid() != 0 {
		t.Skipf("needs root: %s", why)
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s on PATH", tool)
		}
	}
}
