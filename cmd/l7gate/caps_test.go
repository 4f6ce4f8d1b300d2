//go:build !l7gate_proxyonly

package main

import (
	"context"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l7gate/l7gate/internal/testutil"
	"github.com/l7gate/l7gate/redirect"
)

// TestPrivilegedProxyCapabilities: `l7gate proxy` started as root (as the
// agent's supervisor starts it) runs holding CAP_NET_ADMIN and
// CAP_NET_BIND_SERVICE only — in its
// effective, permitted and bounding sets, nothing inheritable or ambient
// — with the same PID (the agent finds it by SO_PEERCRED); with
// --drop-capabilities=false it keeps root's full sets.
func TestPrivilegedProxyCapabilities(t *testing.T) {
	testutil.RequirePrivileged(t, "starts the proxy as root to see what it keeps", "go")
	dir := t.TempDir()
	bin := filepath.Join(dir, "l7gate")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v: %s", err, out)
	}
	netAdmin := uint64(1)<<unix.CAP_NET_ADMIN | 1<<unix.CAP_NET_BIND_SERVICE
	for _, c := range []struct {
		name  string
		flags []string
		check func(sets map[string]uint64) bool
	}{
		{"default", nil, func(s map[string]uint64) bool {
			return s["CapEff"] == netAdmin && s["CapPrm"] == netAdmin && s["CapBnd"] == netAdmin && s["CapInh"] == 0 && s["CapAmb"] == 0
		}},
		{"kept", []string{"--drop-capabilities=false"}, func(s map[string]uint64) bool {
			return s["CapEff"]&(1<<unix.CAP_SYS_ADMIN) != 0 && s["CapEff"]&(1<<unix.CAP_BPF) != 0
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			admin := filepath.Join(dir, c.name+"-admin.sock")
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			args := append([]string{"proxy", "--xds-socket", filepath.Join(dir, "xds.sock"), "--admin-socket", admin,
				"--node", "t", "--access-log", "none"}, c.flags...)
			cmd := exec.CommandContext(ctx, bin, args...)
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
			if pid != cmd.Process.Pid {
				t.Errorf("admin socket served by pid %d, started %d (the re-exec must keep the PID)", pid, cmd.Process.Pid)
			}
			sets, err := capabilitySets(strconv.Itoa(pid))
			if err != nil {
				t.Fatal(err)
			}
			if !c.check(sets) {
				t.Errorf("capability sets %x", sets)
			}
		})
	}
}
