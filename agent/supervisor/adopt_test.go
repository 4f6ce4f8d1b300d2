package supervisor

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/l7gate/l7gate/agentapi"
	"github.com/l7gate/l7gate/internal/testutil"
)

// fakeAdmin serves a proxy's admin socket in runDir: /stats/prometheus
// (what proxyAlive asks) and, unless version is "", GET /version.
func fakeAdmin(t *testing.T, runDir, version string) {
	t.Helper()
	ln, err := net.Listen("unix", agentapi.ProxyAdminSocket(runDir))
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats/prometheus", func(http.ResponseWriter, *http.Request) {})
	if version != "" {
		mux.HandleFunc("GET /version", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, version) })
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// TestProxyVersion: the version a proxy answers on its admin socket; ""
// for one that has no /version (too old to report one).
func TestProxyVersion(t *testing.T) {
	dir := t.TempDir()
	fakeAdmin(t, dir, "1.2.3+abc")
	if v, err := proxyVersion(dir); err != nil || v != "1.2.3+abc" {
		t.Errorf("proxyVersion = %q, %v; want 1.2.3+abc", v, err)
	}
	old := t.TempDir()
	fakeAdmin(t, old, "")
	if v, err := proxyVersion(old); err != nil || v != "" {
		t.Errorf("a proxy without /version: %q, %v; want \"\" and no error", v, err)
	}
	if _, err := proxyVersion(t.TempDir()); err == nil {
		t.Error("no proxy: no error")
	}
}

// TestRunReplacesAdoptedProxyOfAnotherVersion: Run adopts a proxy that
// answers on the admin socket; one of another version, or one too old to
// report a version, is logged with both versions and replaced by a proxy
// of the agent's version, started as a hitless restart starts one (it
// takes the running proxy's listeners over its hand-over socket). One of
// the agent's version is adopted as it is.
func TestRunReplacesAdoptedProxyOfAnotherVersion(t *testing.T) {
	bins, err := proxyOnlyBuilds()
	if testing.Short() {
		t.Skip("builds binaries")
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, running, want string }{
		{"other version", "v2", "proxy_version=v2"},
		{"too old", "", `proxy_version="none (too old to report one)"`},
		{"same version", "v1", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			fakeAdmin(t, dir, tc.running)
			logs := &testutil.LogBuffer{}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				Run(ctx, Config{Executable: bins["v1"], Version: "v1", RunDir: dir, Node: "n1", Logger: slog.New(slog.NewTextHandler(logs, nil))})
			}()
			t.Cleanup(func() {
				cancel()
				<-done
				if b, err := os.ReadFile(agentapi.ProxyPIDFile(dir)); err == nil {
					if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
						syscall.Kill(pid, syscall.SIGKILL)
					}
				}
			})
			deadline := time.Now().Add(20 * time.Second)
			for !strings.Contains(logs.String(), "adopted") && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if tc.want == "" {
				time.Sleep(100 * time.Millisecond)
				if log := logs.String(); !strings.Contains(log, "adopted the running proxy") || strings.Contains(log, "started proxy") {
					t.Fatalf("a proxy of the agent's version was not adopted as it is:\n%s", log)
				}
				return
			}
			for !strings.Contains(logs.String(), "started proxy") && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			log := logs.String()
			for _, want := range []string{"adopted a proxy of another version; replacing it (hand-over)", tc.want, "agent_version=v1", "started proxy", "executable=" + bins["v1"]} {
				if !strings.Contains(log, want) {
					t.Errorf("the log lacks %q:\n%s", want, log)
				}
			}
		})
	}
}
