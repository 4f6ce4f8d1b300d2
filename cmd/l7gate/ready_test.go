//go:build !l7gate_proxyonly

package main

import (
	"context"
	"github.com/l7gate/l7gate/policy"
	xdsserver "github.com/l7gate/l7gate/xds/server"
	"github.com/l7gate/l7gate/xds/translate"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/l7gate/l7gate/internal/testutil"
	"github.com/l7gate/l7gate/redirect"
)

// TestProbeProxyReady: the proxy container's readiness probe passes when
// the proxy serving the admin socket (here this process) answers /ready
// 200, and fails while it answers 503 (draining, no config) or nothing
// serves the socket.
func TestProbeProxyReady(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "admin.sock")
	var code atomic.Int32
	code.Store(503)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ready" {
			w.WriteHeader(404)
			return
		}
		w.WriteHeader(int(code.Load()))
	})}
	go srv.Serve(ln)
	defer srv.Close()
	if err := probeProxyReady(t.Context(), sock); err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("/ready 503: %v, want not ready", err)
	}
	code.Store(200)
	if err := probeProxyReady(t.Context(), sock); err != nil {
		t.Errorf("/ready 200: %v, want ready", err)
	}
	if err := probeProxyReady(t.Context(), filepath.Join(t.TempDir(), "none.sock")); err == nil {
		t.Error("no admin socket: ready")
	}
}

// TestPrivilegedProxyReadyOtherPIDNamespace: during a rolling update the
// old pod's proxy serves the shared run dir's admin socket until the new
// pod's proxy took over; the new pod's probe must not count it as its own.
// A proxy started in a PID namespace of its own (unshare --pid) serves the
// admin socket: `l7gate proxy --check-ready` in a sibling PID namespace
// exits 1 naming the PID namespace.
func TestPrivilegedProxyReadyOtherPIDNamespace(t *testing.T) {
	testutil.RequirePrivileged(t, "starts a proxy in a new PID namespace", "go", "unshare")
	dir := t.TempDir()
	bin := filepath.Join(dir, "l7gate")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v: %s", err, out)
	}
	admin := filepath.Join(dir, "admin.sock")
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--pid", "--fork", "--kill-child", bin, "proxy", "--xds-socket", filepath.Join(dir, "xds.sock"),
		"--admin-socket", admin, "--node", "t", "--access-log", "none")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	defer func() { cancel(); <-exited }()
	var pid int
	var err error
	for range 500 {
		if pid, err = redirect.PeerPID(admin); err == nil {
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("proxy exited: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
	if err != nil {
		t.Fatalf("admin socket never served: %v", err)
	}
	t.Logf("SO_PEERCRED pid of the proxy in a child PID namespace, seen from the parent: %d", pid)
	// Killed by its pid too: killing unshare (--kill-child) left the proxy,
	// its namespace's PID 1, running after the test (one per clean-clone
	// run was found still running).
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	// The probe runs in a sibling PID namespace, as a new pod's containers
	// are to an old pod's (a parent namespace sees its children's pids).
	out, err := exec.Command("unshare", "--pid", "--fork", "--kill-child", bin, "proxy", "--check-ready", "--admin-socket", admin).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "another PID namespace") {
		t.Errorf("--check-ready against another PID namespace's proxy: %v %s; want exit 1 naming the PID namespace", err, out)
	}
	// The old pod's preStop hook: a successor that took the admin socket
	// but has no config yet (it takes the socket before its first config)
	// is not enough: it waits.
	out, err = exec.Command("unshare", "--pid", "--fork", "--kill-child", bin, "proxy", "--wait-successor=1s", "--admin-socket", admin).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "no successor within 1s") {
		t.Errorf("--wait-successor with an unconfigured successor: %v %s; want it to wait the limit", err, out)
	}
	// Once the successor has a config, the hook ends.
	xs, err := xdsserver.New(xdsserver.Config[translate.Input]{SocketPath: filepath.Join(dir, "xds.sock"), ACKTimeout: 10 * time.Second,
		Producers: map[string]xdsserver.Producer[translate.Input]{"l7proxy~": translate.L7ProxyResources}})
	if err != nil {
		t.Fatal(err)
	}
	go xs.ListenAndServe(ctx)
	snap, err := policy.Compute(&policy.Objects{}, policy.NewIdentityAllocator())
	if err != nil {
		t.Fatal(err)
	}
	xs.Update(ctx, translate.Input{Node: "t", Snapshot: snap})
	start := time.Now()
	out, err = exec.Command("unshare", "--pid", "--fork", "--kill-child", bin, "proxy", "--wait-successor=20s", "--admin-socket", admin).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "a successor serves") {
		t.Errorf("--wait-successor with a successor serving: %v %s", err, out)
	}
	t.Logf("--wait-successor returned after %s: %s", time.Since(start).Round(time.Millisecond), strings.TrimSpace(string(out)))
	// In the proxy's own PID namespace nobody succeeded it: it waits the limit.
	out, err = exec.Command("nsenter", "--target", strconv.Itoa(pid), "--pid", "--", bin, "proxy", "--wait-successor=1s", "--admin-socket", admin).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "no successor within 1s") {
		t.Errorf("--wait-successor in the serving proxy's own namespace: %v %s; want it to wait the limit", err, out)
	}
}

// TestProxyWaitAfterDrain: a proxy that drained without SIGTERM (handed
// over to the next pod's proxy, or POST /drain) exits — in a pod the
// kubelet then restarts the container and its new proxy takes the
// listeners back from the successor. With --wait-after-drain it stays,
// serving nothing, until SIGTERM.
func TestProxyWaitAfterDrain(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "l7gate")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v: %s", err, out)
	}
	for _, c := range []struct {
		name  string
		flags []string
		stays bool
	}{{"default", nil, false}, {"wait-after-drain", []string{"--wait-after-drain"}, true}} {
		t.Run(c.name, func(t *testing.T) {
			admin := filepath.Join(dir, c.name+".sock")
			cmd := exec.Command(bin, append([]string{"proxy", "--xds-socket", filepath.Join(dir, "xds.sock"), "--admin-socket", admin,
				"--node", "t", "--access-log", "none", "--drop-capabilities=false", "--no-sockmap"}, c.flags...)...)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			exited := make(chan error, 1)
			done := make(chan struct{})
			go func() { exited <- cmd.Wait(); close(done) }()
			defer func() { cmd.Process.Kill(); <-done }()
			hc := http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, "unix", admin)
			}}}
			// Until the admin socket accepts (at most 30 s: a busy CI
			// machine), then one POST: the default proxy exits after it,
			// so a retry would only find the socket closed.
			var err error
			for range 1500 {
				var c net.Conn
				if c, err = net.Dial("unix", admin); err == nil {
					c.Close()
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if err != nil {
				t.Fatalf("admin socket: %v", err)
			}
			resp, err := hc.Post("http://proxy/drain", "", nil)
			if err != nil {
				t.Fatalf("POST /drain: %v", err)
			}
			resp.Body.Close()
			select {
			case err := <-exited:
				if c.stays {
					t.Fatalf("exited after the drain (%v); want it to wait for SIGTERM", err)
				}
				t.Logf("exited after the drain: %v", err)
				return
			case <-time.After(3 * time.Second):
				if !c.stays {
					t.Fatal("still running 3 s after the drain; want it to exit")
				}
			}
			cmd.Process.Signal(syscall.SIGTERM)
			select {
			case err := <-exited:
				if err != nil {
					t.Errorf("after SIGTERM: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Error("still running 10 s after SIGTERM")
			}
		})
	}
}
