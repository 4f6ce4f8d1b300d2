package supervisor

import (
	"bytes"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// proxyOnlyBuilds builds the proxy-only l7gate (-tags l7gate_proxyonly)
// stamped v1 and v2 (-X main.buildVersion) once per test binary.
var proxyOnlyBuilds = sync.OnceValues(func() (map[string]string, error) {
	dir, err := os.MkdirTemp("", "l7gate-supervisor-test")
	if err != nil {
		return nil, err
	}
	bins := map[string]string{}
	for _, v := range []string{"v1", "v2"} {
		bin := filepath.Join(dir, "l7gate-proxy-"+v)
		out, err := exec.Command("go", "build", "-tags", "l7gate_proxyonly", "-ldflags", "-X main.buildVersion="+v,
			"-o", bin, "github.com/l7gate/l7gate/cmd/l7gate").CombinedOutput()
		if err != nil {
			return nil, &buildError{err, out}
		}
		bins[v] = bin
	}
	return bins, nil
})

type buildError struct {
	err error
	out []byte
}

func (e *buildError) Error() string { return "go build: " + e.err.Error() + ": " + string(e.out) }

func TestMain(m *testing.M) {
	code := m.Run()
	if bins, err := proxyOnlyBuilds(); err == nil {
		os.RemoveAll(filepath.Dir(bins["v1"]))
	}
	os.Exit(code)
}

// agentDir returns a directory holding an "agent" executable (a copy of
// the v1 build: the agent's own file) and, when sibling is set, that
// build as l7gate-proxy next to it.
func agentDir(t *testing.T, sibling string) (self string) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds binaries")
	}
	bins, err := proxyOnlyBuilds()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	self = filepath.Join(dir, "l7gate")
	copyFile(t, bins["v1"], self)
	if sibling != "" {
		copyFile(t, bins[sibling], filepath.Join(dir, ProxyExecutableName))
	}
	return self
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o755); err != nil {
		t.Fatal(err)
	}
}

func bufLog() (*slog.Logger, *bytes.Buffer) {
	var buf bytes.Buffer
	return slog.New(slog.NewTextHandler(&buf, nil)), &buf
}

// TestExecutableProxyOnlySibling: with no executable configured, the
// proxy is started from l7gate-proxy next to the agent when its version
// is the agent's.
func TestExecutableProxyOnlySibling(t *testing.T) {
	self := agentDir(t, "v1")
	log, buf := bufLog()
	e, err := chooseExecutableBeside(Config{Version: "v1"}, self, log)
	if err != nil {
		t.Fatal(err)
	}
	defer e.file.Close()
	if want := filepath.Join(filepath.Dir(self), ProxyExecutableName); e.path != want {
		t.Errorf("proxy executable %s, want the sibling %s", e.path, want)
	}
	if !strings.Contains(e.why, "proxy-only build next to the agent") {
		t.Errorf("why = %q", e.why)
	}
	if buf.Len() != 0 {
		t.Errorf("logged:\n%s", buf)
	}
}

// TestExecutableFallsBackToSelf: without l7gate-proxy next to it, the
// agent starts the proxy from its own executable and says why.
func TestExecutableFallsBackToSelf(t *testing.T) {
	self := agentDir(t, "")
	e, err := chooseExecutableBeside(Config{Version: "v1"}, self, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer e.file.Close()
	if e.path != self {
		t.Errorf("proxy executable %s, want the agent's own %s", e.path, self)
	}
	if !strings.Contains(e.why, "no l7gate-proxy next to the agent") {
		t.Errorf("why = %q", e.why)
	}
}

// TestExecutableStaleSiblingRefused: an l7gate-proxy of another version
// next to the agent is never started: an error names it and both
// versions, and the agent's own executable is started instead.
func TestExecutableStaleSiblingRefused(t *testing.T) {
	self := agentDir(t, "v2")
	log, buf := bufLog()
	e, err := chooseExecutableBeside(Config{Version: "v1"}, self, log)
	if err != nil {
		t.Fatal(err)
	}
	defer e.file.Close()
	if e.path != self {
		t.Errorf("proxy executable %s, want the agent's own %s (the sibling is stale)", e.path, self)
	}
	sibling := filepath.Join(filepath.Dir(self), ProxyExecutableName)
	for _, want := range []string{"level=ERROR", sibling, `\"v2\"`, `\"v1\"`, "not starting"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("log lacks %s:\n%s", want, buf)
		}
	}
	if !strings.Contains(e.why, "refused") {
		t.Errorf("why = %q", e.why)
	}
}

// TestExecutableConfiguredMismatchRefused: a configured executable of
// another version (or one without a version command) is refused: no
// proxy starts, the error names the path and both versions.
func TestExecutableConfiguredMismatchRefused(t *testing.T) {
	self := agentDir(t, "")
	bins, _ := proxyOnlyBuilds()
	_, err := chooseExecutableBeside(Config{Version: "v1", Executable: bins["v2"]}, self, slog.New(slog.DiscardHandler))
	if err == nil {
		t.Fatal("started a proxy of version v2 for an agent of version v1")
	}
	for _, want := range []string{bins["v2"], `"v2"`, `"v1"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %s: %v", want, err)
		}
	}
	if _, err := chooseExecutableBeside(Config{Version: "v1", Executable: "/bin/true"}, self, slog.New(slog.DiscardHandler)); err == nil {
		t.Error("started a proxy from /bin/true, which reports no version")
	}
	e, err := chooseExecutableBeside(Config{Version: "v1", Executable: bins["v1"]}, self, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatalf("refused the configured executable of the agent's version: %v", err)
	}
	e.file.Close()
}

// TestStartedProcessMustRunCheckedFile: a started proxy whose image is not
// the file whose version was checked (the path was replaced in between)
// is detected; a process running the checked file passes.
func TestStartedProcessMustRunCheckedFile(t *testing.T) {
	self := agentDir(t, "v1")
	sibling := filepath.Join(filepath.Dir(self), ProxyExecutableName)
	e, err := chooseExecutableBeside(Config{Version: "v1"}, self, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer e.file.Close()
	sleep := exec.Command("sleep", "30")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { sleep.Process.Kill(); sleep.Wait() }()
	if err := e.isImageOf(sleep.Process.Pid); err == nil || !strings.Contains(err.Error(), sibling) {
		t.Errorf("a process running sleep passed as the checked %s: %v", sibling, err)
	}
	own, err := os.Stat("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	if err := (&proxyExecutable{path: "test binary", info: own, verify: true}).isImageOf(os.Getpid()); err != nil {
		t.Errorf("a process running the checked file failed the check: %v", err)
	}
}
