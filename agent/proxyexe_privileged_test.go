package agent

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestPrivilegedAgentStartsProxyOnlyBuild: an agent with l7gate-proxy
// (the proxy-only build of its version, as make build and the image ship
// them) next to its binary starts the proxy from it — /proc/PID/exe of the
// proxy is that file — and the L7 policy is enforced through it. A stale
// l7gate-proxy (another version stamp) put there before a hand-over
// (SIGHUP) is never run: the agent logs the refusal with the path and
// both versions and hands over to a proxy of its own binary, which
// enforces the policy as well.
func TestPrivilegedAgentStartsProxyOnlyBuild(t *testing.T) {
	requireRoot(t)
	n := newStarwarsNode(t)
	dir := filepath.Dir(n.bin)
	sibling := filepath.Join(dir, "l7gate-proxy")
	stale := filepath.Join(t.TempDir(), "l7gate-proxy-stale")
	const pkg = "github.com/l7gate/l7gate/cmd/l7gate"
	run(t, "go", "build", "-ldflags", "-X main.buildVersion=test-v1", "-o", n.bin, pkg)
	run(t, "go", "build", "-tags", "l7gate_proxyonly", "-ldflags", "-X main.buildVersion=test-v1", "-o", sibling, pkg)
	run(t, "go", "build", "-tags", "l7gate_proxyonly", "-ldflags", "-X main.buildVersion=test-v2", "-o", stale, pkg)
	serveDeathstar(t, n.podNS("deathstar"))
	startStarwarsL7(t, n)

	enforced := func(when string) {
		t.Helper()
		tie := n.podNS("tiefighter")
		if code, body, _, err := podRequest(tie, "POST", "198.18.1.10:80", "/v1/request-landing", 3*time.Second); err != nil || code != 200 {
			t.Fatalf("%s: POST /v1/request-landing: %d %q %v; want 200", when, code, body, err)
		}
		if code, body, _, err := podRequest(tie, "PUT", "198.18.1.10:80", "/v1/exhaust-port", 3*time.Second); err != nil || code != 403 {
			t.Fatalf("%s: PUT /v1/exhaust-port: %d %q %v; want 403", when, code, body, err)
		}
	}
	exeOf := func(pid int) string {
		t.Helper()
		exe, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(pid), "exe"))
		if err != nil {
			t.Fatal(err)
		}
		return exe
	}
	agentLog := func() string {
		b, _ := os.ReadFile(filepath.Join(n.run, "agent.log"))
		return string(b)
	}

	pid := proxyPID(t, n.run)
	if exe := exeOf(pid); exe != sibling {
		t.Fatalf("the agent started the proxy from %s, want the proxy-only build %s\n%s", exe, sibling, agentLog())
	}
	if !strings.Contains(agentLog(), "proxy-only build next to the agent") {
		t.Errorf("the agent's log does not say which proxy executable it started and why:\n%s", agentLog())
	}
	enforced("proxy-only build")

	// A stale l7gate-proxy replaces the good one; the hand-over must not
	// run it.
	if err := os.Rename(stale, sibling); err != nil {
		t.Fatal(err)
	}
	if err := n.agent.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(40 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatalf("the proxy %d was not handed over within 40s\n%s", pid, agentLog())
		}
		time.Sleep(50 * time.Millisecond)
	}
	next := proxyPID(t, n.run)
	if exe := exeOf(next); exe != n.bin {
		t.Fatalf("after the hand-over the proxy runs %s, want the agent's own %s (the l7gate-proxy there is stale)\n%s", exe, n.bin, agentLog())
	}
	log := agentLog()
	for _, want := range []string{"level=ERROR", sibling, "test-v2", "test-v1", "not starting"} {
		if !strings.Contains(log, want) {
			t.Errorf("the agent's log lacks %q:\n%s", want, log)
		}
	}
	enforced("after refusing the stale proxy-only build")
}
