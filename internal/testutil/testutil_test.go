package testutil

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeT records what Golden and RequirePrivileged report.
type fakeT struct {
	testing.TB
	name          string
	failed, fatal bool
	skipped       bool
	msg           string
}

func (f *fakeT) Helper()      {}
func (f *fakeT) Name() string { return f.name }
func (f *fakeT) Errorf(format string, args ...any) {
	f.failed = true
	f.msg = format
	_ = args
}
func (f *fakeT) Fatalf(format string, args ...any) {
	f.fatal = true
	f.msg = format
	panic(f)
}
func (f *fakeT) Skipf(format string, args ...any) {
	f.skipped = true
	panic(f)
}

func run(f *fakeT, fn func()) {
	defer func() {
		if r := recover(); r != nil && r != f {
			panic(r)
		}
	}()
	fn()
}

func TestGoldenComparesAndReportsDiff(t *testing.T) {
	path := filepath.Join(t.TempDir(), "out.txt")
	if err := os.WriteFile(path, []byte("a\nb\nc\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	same := &fakeT{name: "TestX"}
	run(same, func() { Golden(same, path, []byte("a\nb\nc\n")) })
	if same.failed || same.fatal {
		t.Errorf("equal content reported: %s", same.msg)
	}
	differ := &fakeT{name: "TestX"}
	run(differ, func() { Golden(differ, path, []byte("a\nB\nc\n")) })
	if !differ.failed {
		t.Error("different content not reported")
	}
	missing := &fakeT{name: "TestX"}
	run(missing, func() { Golden(missing, path+".none", []byte("x")) })
	if !missing.fatal {
		t.Error("missing golden file not reported")
	}
	if d := Diff("a\nb\n", "a\nc\n"); !strings.Contains(d, "-") || !strings.Contains(d, "+") {
		t.Errorf("diff has no -/+ lines: %q", d)
	}
}

func TestRequirePrivilegedNamingRule(t *testing.T) {
	f := &fakeT{name: "TestAttach"}
	run(f, func() { RequirePrivileged(f, "loads BPF programs") })
	if !f.fatal {
		t.Error("a root-only test not named TestPrivileged… was not failed")
	}
	for _, name := range []string{"TestPrivilegedAttach", "TestPrivilegedAttach/sub", "BenchmarkSync"} {
		f := &fakeT{name: name}
		run(f, func() { RequirePrivileged(f, "loads BPF programs", "no-such-tool-l7gate") })
		if f.fatal {
			t.Errorf("%s: failed by the naming rule", name)
		}
		if !f.skipped {
			t.Errorf("%s: not skipped without root or without the tool", name)
		}
	}
}
