//go:build !l7gate_proxyonly

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/l7gate/l7gate/agentapi"
	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/internal/testutil"
	"github.com/l7gate/l7gate/policy"
)

// TestCgroup2Root: --socket-lb-cgroup-root takes a cgroup v2 mount, or a
// hybrid host's /sys/fs/cgroup (its unified/), and refuses anything else.
func TestCgroup2Root(t *testing.T) {
	mount, err := bpf.Cgroup2Mount()
	if err != nil {
		t.Skipf("no cgroup v2 hierarchy: %v", err)
	}
	if got, err := cgroup2Root(mount); err != nil || got != mount {
		t.Errorf("cgroup2Root(%s) = %q, %v; want itself", mount, got, err)
	}
	if filepath.Base(mount) == "unified" {
		if got, err := cgroup2Root(filepath.Dir(mount)); err != nil || got != mount {
			t.Errorf("cgroup2Root(%s) = %q, %v; want %s", filepath.Dir(mount), got, err, mount)
		}
	}
	if got, err := cgroup2Root(t.TempDir()); err == nil {
		t.Errorf("a plain directory was taken as the cgroup root: %q", got)
	}
	if _, err := cgroup2Root(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("a missing directory was taken as the cgroup root")
	}
}

// TestPrivilegedSocketLBFlags: the agent's --socket-lb flags attach the
// socket-LB programs to the named cgroup (links pinned, so they outlive
// the agent), `l7gate bpf lb list` reads the maps, and --socket-lb=false
// unpins and detaches everything and empties the maps.
func TestPrivilegedSocketLBFlags(t *testing.T) {
	testutil.RequirePrivileged(t, "mounts a bpffs, creates a cgroup and attaches BPF programs", "mount", "umount")
	mount, err := bpf.Cgroup2Mount()
	if err != nil {
		t.Skipf("no cgroup v2 hierarchy: %v", err)
	}
	bpffs := t.TempDir()
	if out, err := exec.Command("mount", "-t", "bpf", "bpf", bpffs).CombinedOutput(); err != nil {
		t.Fatalf("mount bpffs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", bpffs).Run() })
	name := fmt.Sprintf("l7gate-test-slb-%08x", rand.Uint32())
	cg := filepath.Join(mount, name)
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for deadline := time.Now().Add(5 * time.Second); os.Remove(cg) != nil && time.Now().Before(deadline); {
			time.Sleep(50 * time.Millisecond)
		}
	})
	attached := func() int {
		t.Helper()
		f, err := os.Open(cg)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		n := 0
		for _, at := range []ebpf.AttachType{ebpf.AttachCGroupInet4Connect, ebpf.AttachCGroupUDP4Sendmsg, ebpf.AttachCGroupUDP4Recvmsg, ebpf.AttachCgroupInet4GetPeername,
			ebpf.AttachCGroupInet6Connect, ebpf.AttachCGroupUDP6Sendmsg, ebpf.AttachCGroupUDP6Recvmsg, ebpf.AttachCgroupInet6GetPeername} {
			r, err := link.QueryPrograms(link.QueryOptions{Target: int(f.Fd()), Attach: at})
			if err != nil {
				t.Fatalf("query %s: %v", at, err)
			}
			n += len(r.Programs)
		}
		return n
	}
	pins := func() []string {
		t.Helper()
		m, _ := filepath.Glob(filepath.Join(bpffs, "links", "socklb_*"))
		return m
	}
	// The root given as a hybrid host's /sys/fs/cgroup when it is one.
	root := mount
	if filepath.Base(mount) == "unified" {
		root = filepath.Dir(mount)
	}
	f := agentFlags{BPFFS: bpffs, RunDir: t.TempDir(), SocketLB: true, SocketLBCgroup: name, SocketLBCgroupRoot: root}
	log := slog.New(slog.DiscardHandler)
	lb, where, err := openSocketLB(context.Background(), f, log)
	if err != nil {
		t.Fatal(err)
	}
	if where != "cgroup /"+name {
		t.Errorf("status says %q", where)
	}
	if _, err := lb.SyncServices([]bpf.LBService{{Frontend: netip.MustParseAddrPort("198.19.0.10:80"), Protocol: bpf.ProtoTCP,
		Backends: []netip.AddrPort{netip.MustParseAddrPort("198.18.0.2:8080")}}}); err != nil {
		t.Fatal(err)
	}
	lb.Close() // as the agent exits: pins stay
	// Four hooks per family (connect, sendmsg, recvmsg, getpeername).
	if n, p := attached(), pins(); n != 8 || len(p) != 8 {
		t.Fatalf("after the agent exited: %d programs attached, pins %v; want 8 and 8", n, p)
	}
	code, out, errOut := runCLI(t, "bpf", "lb", "list", "--bpffs", bpffs, "-o", "json")
	if code != 0 {
		t.Fatalf("bpf lb list: exit %d: %s", code, errOut)
	}
	var entries []bpf.LBServiceEntry
	if err := json.Unmarshal([]byte(out), &entries); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	if len(entries) != 1 || entries[0].Frontend.String() != "198.19.0.10:80" || fmt.Sprint(entries[0].Backends) != "[198.18.0.2:8080]" {
		t.Errorf("bpf lb list -o json: %s", out)
	}
	code, out, _ = runCLI(t, "bpf", "lb", "list", "--bpffs", bpffs)
	if code != 0 || !strings.Contains(out, "198.19.0.10:80") || !strings.Contains(out, "198.18.0.2:8080") {
		t.Errorf("bpf lb list (exit %d):\n%s", code, out)
	}

	// A restart with --socket-lb=false: nothing stays translated.
	f.SocketLB = false
	lb, where, err = openSocketLB(context.Background(), f, log)
	if err != nil || lb != nil || where != "off" {
		t.Fatalf("--socket-lb=false: %v, %v, %q", lb, err, where)
	}
	if n, p := attached(), pins(); n != 0 || len(p) != 0 {
		t.Errorf("after --socket-lb=false: %d programs attached, pins %v", n, p)
	}
	code, out, _ = runCLI(t, "bpf", "lb", "list", "--bpffs", bpffs, "-o", "json")
	if code != 0 || strings.Contains(out, "198.19.0.10") {
		t.Errorf("after --socket-lb=false the maps still hold (exit %d): %s", code, out)
	}

	// A cgroup root that is no cgroup: the agent does not start.
	f.SocketLB, f.SocketLBCgroupRoot = true, t.TempDir()
	if lb, _, err := openSocketLB(context.Background(), f, log); err == nil {
		lb.SetCgroup("")
		lb.Close()
		t.Error("a --socket-lb-cgroup-root that is no cgroup v2 mount was accepted")
	}
}

// statusBackend serves a fixed status.
type statusBackend struct{ st agentapi.Status }

func (b statusBackend) Status() agentapi.Status            { return b.st }
func (statusBackend) Rules() map[uint32]policy.Provenance  { return nil }
func (statusBackend) Flows(uint64) ([]flow.Record, uint64) { return nil, 0 }

// TestServiceList: `l7gate service list` shows each frontend the agent's
// status API reports, with backends, state and errors; -o json is the
// status's services as they are.
func TestServiceList(t *testing.T) {
	run := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	st := agentapi.Status{Node: "n1", SocketLB: "cgroup /", Services: []agentapi.ServiceStatus{
		{ServiceFrontend: policy.ServiceFrontend{Service: "default/deathstar", Address: netip.MustParseAddrPort("198.19.1.10:80"), Protocol: policy.ProtoTCP,
			State: policy.FrontendReady, Affinity: 3 * time.Hour, Backends: []policy.ServiceBackend{
				{Address: netip.MustParseAddrPort("198.18.1.10:80")}, {Address: netip.MustParseAddrPort("198.18.1.20:80")}}}},
		{ServiceFrontend: policy.ServiceFrontend{Service: "default/stuck", Address: netip.MustParseAddrPort("198.19.1.11:53"), Protocol: policy.ProtoUDP,
			State: policy.FrontendNoBackends, Backends: []policy.ServiceBackend{}}, Error: "refuses connections: map full"},
	}}
	done := make(chan error, 1)
	go func() { done <- agentapi.Serve(ctx, agentapi.StatusSocket(run), statusBackend{st}) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	var code int
	var out, errOut string
	for range 100 { // until the server listens
		if code, out, errOut = runCLI(t, "service", "list", "--run-dir", run); code == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if code != 0 {
		t.Fatalf("service list: exit %d: %s", code, errOut)
	}
	for _, want := range []string{"Socket LB:", "cgroup /", "default/deathstar", "198.19.1.10:80", "198.18.1.10:80,198.18.1.20:80", "3h0m0s",
		"default/stuck", "198.19.1.11:53", "UDP", "no-backends", "refuses connections: map full"} {
		if !strings.Contains(out, want) {
			t.Errorf("service list lacks %q:\n%s", want, out)
		}
	}
	code, out, errOut = runCLI(t, "service", "list", "--run-dir", run, "-o", "json")
	if code != 0 {
		t.Fatalf("service list -o json: exit %d: %s", code, errOut)
	}
	var got []agentapi.ServiceStatus
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	if len(got) != 2 || got[0].Address != st.Services[0].Address || len(got[0].Backends) != 2 || got[1].Error == "" {
		t.Errorf("service list -o json: %s", out)
	}
	code, out, errOut = runCLI(t, "status", "--run-dir", run)
	if code != 0 || !strings.Contains(out, "2 frontend(s), 1 not synced; socket LB cgroup /") {
		t.Errorf("status (exit %d, %s) lacks the Services line:\n%s", code, errOut, out)
	}
	if code, _, errOut = runCLI(t, "service", "list", "--run-dir", run, "-o", "yaml"); code == 0 {
		t.Errorf("-o yaml accepted: %s", errOut)
	}
}
