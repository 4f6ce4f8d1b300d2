//go:build !l7gate_proxyonly

package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/internal/testutil"
)

// TestPrivilegedUpstreamFilterWiring: the agent turns the proxy upstream
// pre-filter on with the recorder on the cgroup v2 root
// (--socket-lb-cgroup-root), its link pinned; given a cgroup below the root
// (what a container's own cgroup namespace shows), it refuses and the
// filter stays off (every candidate is looked up, as without it).
func TestPrivilegedUpstreamFilterWiring(t *testing.T) {
	testutil.RequirePrivileged(t, "mounts a bpffs, creates a cgroup and attaches BPF programs to the cgroup v2 root", "mount", "umount")
	mount, err := bpf.Cgroup2Mount()
	if err != nil {
		t.Skipf("no cgroup v2 hierarchy: %v", err)
	}
	open := func() *bpf.Datapath {
		t.Helper()
		bpffs := t.TempDir()
		if out, err := exec.Command("mount", "-t", "bpf", "bpf", bpffs).CombinedOutput(); err != nil {
			t.Fatalf("mount bpffs: %v: %s", err, out)
		}
		t.Cleanup(func() { exec.Command("umount", bpffs).Run() })
		dp, err := bpf.Open(context.Background(), bpf.Config{BPFFSPath: bpffs, DisableEvents: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			os.Remove(filepath.Join(bpffs, "links", "sockops_upstreams"))
			dp.Close()
		})
		return dp
	}
	active := func(dp *bpf.Datapath) bool {
		t.Helper()
		on, err := dp.UpstreamFilterActive()
		if err != nil {
			t.Fatal(err)
		}
		return on
	}

	// Below the root: refused, off.
	name := fmt.Sprintf("l7gate-test-upf-%08x", rand.Uint32())
	cg := filepath.Join(mount, name)
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for deadline := time.Now().Add(5 * time.Second); os.Remove(cg) != nil && time.Now().Before(deadline); {
			time.Sleep(50 * time.Millisecond)
		}
	})
	dp := open()
	if err := enableUpstreamFilter(dp, agentFlags{RunDir: t.TempDir(), SocketLBCgroupRoot: cg}); err == nil || !strings.Contains(err.Error(), "not the cgroup v2 root") {
		t.Errorf("enable with the recorder on a cgroup below the root: %v, want refused (not the root)", err)
	}
	if active(dp) {
		t.Error("filter active after a refused enable")
	}

	// The root: on.
	dp = open()
	if err := enableUpstreamFilter(dp, agentFlags{RunDir: t.TempDir(), SocketLBCgroupRoot: mount}); err != nil {
		t.Fatalf("enable on the cgroup v2 root: %v", err)
	}
	if !active(dp) {
		t.Error("filter off after enabling on the cgroup v2 root")
	}
}
