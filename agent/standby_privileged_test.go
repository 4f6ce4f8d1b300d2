package agent

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestPrivilegedAgentStandsByForSuccessor plays a rolling update with
// maxSurge on one node: while agent A and its proxy run, agent B starts in
// a PID namespace of its own (a new pod) with the same run dir, bpffs and
// state; B's proxy takes A's proxy's listeners over. A policy change then
// reaches both agents. A must leave the datapath to B: it cannot see B's
// proxy (another PID namespace), so were it to implement the change it
// would turn every redirect into a drop over B's entries and the
// tiefighter's new connections would time out.
func TestPrivilegedAgentStandsByForSuccessor(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("needs unshare")
	}
	n := newStarwarsNode(t)
	bypassed := serveDeathstarH2C(t, n.podNS("deathstar"))
	// A: as in the chart, the agent does not supervise the proxy; the
	// proxy runs beside it, in a cgroup of its own.
	for _, f := range []string{"objects.yaml", "policy-l7.yaml"} {
		data, err := os.ReadFile(filepath.Join("../examples/starwars", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(n.src, f), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	n.startAgent(t, "--start-proxy=false")
	_, paDone := startTestProxy(t, n, "a", exec.Command("ip", "netns", "exec", n.node, n.bin, "proxy", "--xds-socket", filepath.Join(n.run, "xds.sock"),
		"--admin-socket", filepath.Join(n.run, "proxy-admin.sock"), "--node", "test", "--access-log", "none", "--drain-timeout", "10s"))
	n.waitImplemented(t, 0)
	tie := n.podNS("tiefighter")

	// B: an agent (not supervising a proxy, as in the chart) in a PID
	// namespace of its own, then B's proxy in that namespace and in a
	// cgroup of its own (the agent trusts the cgroup of the proxy it takes
	// listeners from).
	logB, err := os.Create(filepath.Join(t.TempDir(), "agent-b.log"))
	if err != nil {
		t.Fatal(err)
	}
	b := exec.Command("unshare", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc",
		"ip", "netns", "exec", n.node, n.bin, "agent", "--source", n.src, "--bpffs", n.bpffs,
		"--run-dir", n.run, "--state-dir", n.state, "--node", "test", "--socket-lb=false", "--start-proxy=false", "--take-over")
	b.Stdout, b.Stderr = logB, logB
	b.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	stopB := func() {
		b.Process.Kill() // --kill-child: B, and its PID namespace (B's proxy too)
		b.Wait()
		logB.Close()
	}
	cleanedUp := false
	defer func() {
		if !cleanedUp {
			stopB()
		}
	}()
	// B's agent: the child of unshare (PID 1 of the new namespace).
	var agentB int
	for deadline := time.Now().Add(10 * time.Second); agentB == 0; time.Sleep(50 * time.Millisecond) {
		kids, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", b.Process.Pid, b.Process.Pid))
		if f := strings.Fields(string(kids)); len(f) > 0 {
			agentB, _ = strconv.Atoi(f[0])
		}
		if time.Now().After(deadline) {
			t.Fatal("no agent B process")
		}
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		blog, _ := os.ReadFile(logB.Name())
		if strings.Contains(string(blog), "xds server listening") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent B does not serve xDS\nB's log:\n%s", tail(blog, 3000))
		}
	}
	proxyB, _ := startTestProxy(t, n, "b", exec.Command("nsenter", "--target", strconv.Itoa(agentB), "--pid", "--mount", "--net", "--",
		n.bin, "proxy", "--xds-socket", filepath.Join(n.run, "xds.sock"), "--admin-socket", filepath.Join(n.run, "proxy-admin.sock"),
		"--node", "test", "--access-log", "none", "--drain-timeout", "10s"))
	logPB := proxyB.Stdout.(*os.File)
	// Runs before the cgroup's removal (cleanups run last-in first-out).
	cleanedUp = true
	t.Cleanup(func() {
		stopB()
	})
	// B's proxy takes A's proxy's listeners over; A's proxy drains and exits.
	select {
	case <-paDone:
	case <-time.After(60 * time.Second):
		blog, _ := os.ReadFile(logB.Name())
		plog, _ := os.ReadFile(logPB.Name())
		t.Fatalf("A's proxy still runs 60 s after B's proxy started\nB's log:\n%s\nB's proxy's log:\n%s", tail(blog, 3000), tail(plog, 2000))
	}
	land := func(when string) (failed int) {
		for i := range 10 {
			code, body, err := newConnRequest(n, tie, "POST", "/v1/request-landing", 3*time.Second)
			if err != nil || code != 200 {
				failed++
				t.Logf("%s: landing %d: %d %q %v", when, i, code, body, err)
			}
		}
		return failed
	}
	// B serves once it registered its proxy's listeners (bounded wait).
	// (Until then B, which cannot see A's proxy, keeps the redirects as
	// drops: new connections wait for SYN retransmits.)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		blog, _ := os.ReadFile(logB.Name())
		if strings.Contains(string(blog), "proxy listener registered") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("B registered no proxy listener\nB's log:\n%s", tail(blog, 3000))
		}
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		code, _, err := newConnRequest(n, tie, "POST", "/v1/request-landing", 3*time.Second)
		if err == nil && code == 200 {
			break
		}
		if time.Now().After(deadline) {
			blog, _ := os.ReadFile(logB.Name())
			t.Fatalf("no landing through B's proxy 30 s after the hand-over\nB's log:\n%s", tail(blog, 3000))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if f := land("after the hand-over to B"); f != 0 {
		alog, _ := os.ReadFile(filepath.Join(n.run, "agent.log"))
		blog, _ := os.ReadFile(logB.Name())
		plog, _ := os.ReadFile(logPB.Name())
		t.Fatalf("%d of 10 landings failed after the hand-over to B\nA's log:\n%s\nB's log:\n%s\nB's proxy's log:\n%s", f, tail(alog, 2500), tail(blog, 4000), tail(plog, 1500))
	}
	// A policy change both agents see (it selects no pod here).
	if err := os.WriteFile(filepath.Join(n.src, "other.yaml"), []byte(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: other, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: nothing-here}}
  ingress: [{fromEndpoints: [{matchLabels: {org: empire}}]}]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // both agents implemented it (or A stood by)
	failed := land("after the policy change")
	alog, _ := os.ReadFile(filepath.Join(n.run, "agent.log"))
	if failed != 0 {
		blog, _ := os.ReadFile(logB.Name())
		t.Errorf("%d of 10 landings failed after a policy change with two agents on the node (the old one must stand by)\nA's log:\n%s\nB's log:\n%s", failed, tail(alog, 3000), tail(blog, 2000))
	}
	if !strings.Contains(string(alog), "standing by") {
		t.Errorf("A never logged that it stands by")
	}
	if bypassed.Load() != 0 {
		t.Errorf("%d denied requests reached the deathstar", bypassed.Load())
	}
	if err := n.dialFrom("xwing", "198.18.1.10:80"); err == nil {
		t.Error("the xwing connected")
	}
}

// startTestProxy starts a proxy command in a cgroup of its own (the agent
// trusts the cgroup of the proxy it takes listeners from), logging to a
// file; the cgroup is removed after the test's later cleanups.
func startTestProxy(t *testing.T, n *starwarsNode, name string, cmd *exec.Cmd) (*exec.Cmd, <-chan struct{}) {
	t.Helper()
	cg := newCgroup(t, "l7gate-test-proxy"+name+"-"+n.prefix)
	logf, err := os.Create(filepath.Join(t.TempDir(), "proxy-"+name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd()), Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-done
		logf.Close()
	})
	return cmd, done
}
