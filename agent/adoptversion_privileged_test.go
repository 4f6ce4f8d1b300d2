package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/l7gate/l7gate/agentapi"
)

// adminVersion asks the proxy on the run dir's admin socket for its
// version (GET /version).
func adminVersion(runDir string) (string, error) {
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", agentapi.ProxyAdminSocket(runDir))
	}}}
	resp, err := c.Get("http://proxy/version")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("GET /version: %s", resp.Status)
	}
	return strings.TrimSpace(string(b)), err
}

// TestPrivilegedAdoptedProxyOfAnotherVersionReplaced: an agent of version
// test-v1 restarted on a node whose proxy an agent of version test-v2
// started (a rollback) finds that proxy on the admin socket, logs both
// versions, and replaces it as a hitless restart does: a proxy of its own
// binary takes the listeners over, the old one drains and exits. No
// allowed request of keep-alive and new-connection clients fails
// meanwhile, and the L7 rule is enforced before and after.
func TestPrivilegedAdoptedProxyOfAnotherVersionReplaced(t *testing.T) {
	requireRoot(t)
	n := newStarwarsNode(t)
	const pkg = "github.com/l7gate/l7gate/cmd/l7gate"
	v1 := filepath.Join(t.TempDir(), "l7gate-v1")
	run(t, "go", "build", "-ldflags", "-X main.buildVersion=test-v2", "-o", n.bin, pkg)
	run(t, "go", "build", "-ldflags", "-X main.buildVersion=test-v1", "-o", v1, pkg)
	serveDeathstar(t, n.podNS("deathstar"))
	startStarwarsL7(t, n, "--proxy-arg=--drain-timeout=10s")
	agentLog := func() string {
		b, _ := os.ReadFile(filepath.Join(n.run, "agent.log"))
		return string(b)
	}
	if v, err := adminVersion(n.run); err != nil || v != "test-v2" {
		t.Fatalf("the proxy the test-v2 agent started: GET /version %q %v", v, err)
	}
	old := proxyPID(t, n.run)

	tie := n.podNS("tiefighter")
	url := "http://198.18.1.10:80/v1/request-landing"
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sent, failed, leaked atomic.Int64
	var firstErr atomic.Value
	loop := func(kind string, c *http.Client) {
		defer wg.Done()
		for i := 0; i < 20000; i++ {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			req, _ := http.NewRequest("POST", url, nil)
			if i%10 == 9 {
				req, _ = http.NewRequest("PUT", "http://198.18.1.10:80/v1/exhaust-port", nil)
			}
			sent.Add(1)
			resp, err := c.Do(req)
			if err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, kind+": "+err.Error())
				continue
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			switch {
			case req.Method == "PUT" && resp.StatusCode != 403:
				leaked.Add(1)
			case req.Method == "POST" && resp.StatusCode != 200:
				failed.Add(1)
				firstErr.CompareAndSwap(nil, fmt.Sprintf("%s: %d", kind, resp.StatusCode))
			}
		}
	}
	wg.Add(2)
	go loop("keep-alive", podClient(tie, true, false))
	go loop("new connections", podClient(tie, false, false))
	defer func() { close(stop); wg.Wait() }()
	time.Sleep(time.Second)

	// The agent goes (its proxy keeps serving) and comes back as test-v1.
	n.stopAgent()
	if err := os.Rename(v1, n.bin); err != nil {
		t.Fatal(err)
	}
	n.startAgent(t, "--proxy-arg=--drain-timeout=10s")
	n.waitImplemented(t, 0)
	start := time.Now()
	for syscall.Kill(old, 0) == nil || errors.Is(syscall.Kill(old, 0), syscall.EPERM) {
		if time.Since(start) > 40*time.Second {
			t.Fatalf("the adopted test-v2 proxy %d still runs after 40s\n%s", old, agentLog())
		}
		time.Sleep(20 * time.Millisecond)
	}
	next := proxyPID(t, n.run)
	if exe, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(next), "exe")); err != nil || exe != n.bin {
		t.Errorf("the replacement proxy %d runs %q (%v), want the test-v1 agent's %s", next, exe, err, n.bin)
	}
	if v, err := adminVersion(n.run); err != nil || v != "test-v1" {
		t.Errorf("after the replacement: GET /version %q %v, want test-v1", v, err)
	}
	log := agentLog()
	for _, want := range []string{"adopted a proxy of another version; replacing it (hand-over)", "proxy_version=test-v2", "agent_version=test-v1"} {
		if !strings.Contains(log, want) {
			t.Errorf("the agent's log lacks %q:\n%s", want, log)
		}
	}
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	stop = make(chan struct{})
	t.Logf("requests %d, failed %d, PUT not denied %d", sent.Load(), failed.Load(), leaked.Load())
	if failed.Load() != 0 {
		t.Errorf("%d allowed requests failed across the replacement (first: %v)", failed.Load(), firstErr.Load())
	}
	if leaked.Load() != 0 {
		t.Errorf("%d PUT /v1/exhaust-port were not denied", leaked.Load())
	}
	if sent.Load() < 100 {
		t.Errorf("too little traffic to tell: %d requests", sent.Load())
	}
}
