package agent

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/l7gate/l7gate/agentapi"
	"github.com/l7gate/l7gate/redirect"
)

// rollingPod is a DaemonSet pod as the chart runs it, on a starwarsNode:
// an agent (--start-proxy=false --take-over) and a Go proxy (its own
// cgroup, --wait-after-drain) sharing a PID namespace of their own, the
// run dir and the state dir with the other pods.
type rollingPod struct {
	name       string
	init       *exec.Cmd // unshare: the PID namespace's init is its child
	initPID    int       // the namespace's init, in the test's PID namespace
	agent      *exec.Cmd
	proxy      *exec.Cmd
	proxyGroup *os.File // the proxy container's cgroup
}

func startRollingPod(t *testing.T, n *starwarsNode, name string) *rollingPod {
	t.Helper()
	p := &rollingPod{name: name}
	// Created first: its cleanup (removing it) runs after the pod's.
	p.proxyGroup = newCgroup(t, fmt.Sprintf("l7gate-rolling-%s-%d", name, os.Getpid()))
	p.init = exec.Command("ip", "netns", "exec", n.node, "unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "sleep", "3600")
	if err := p.init.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.kill() })
	for deadline := time.Now().Add(5 * time.Second); p.initPID == 0; {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", p.init.Process.Pid, p.init.Process.Pid))
		if f := strings.Fields(string(b)); len(f) > 0 {
			p.initPID, _ = strconv.Atoi(f[0])
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s: no PID namespace init", name)
		}
		time.Sleep(10 * time.Millisecond)
	}
	enter := []string{"-t", strconv.Itoa(p.initPID), "--pid", "--mount", "--net", "--"}
	logf := func(what string) *os.File {
		f, err := os.OpenFile(filepath.Join(n.run, name+"-"+what+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	p.agent = exec.Command("nsenter", append(enter, n.bin, "agent", "--source", n.src, "--bpffs", n.bpffs,
		"--run-dir", n.run, "--state-dir", n.state, "--node", "test", "--socket-lb=false", "--start-proxy=false", "--take-over")...)
	p.agent.Stdout, p.agent.Stderr = logf("agent"), logf("agent")
	if err := p.agent.Start(); err != nil {
		t.Fatal(err)
	}
	p.proxy = exec.Command("nsenter", append(enter, n.bin, "proxy", "--node", "test",
		"--xds-socket", agentapi.XDSSocket(n.run), "--admin-socket", agentapi.ProxyAdminSocket(n.run),
		"--flow-socket", agentapi.FlowSocket(n.run), "--agent-socket", agentapi.StatusSocket(n.run),
		"--wait-after-drain", "--drain-timeout=10s")...)
	p.proxy.Stdout, p.proxy.Stderr = logf("proxy"), logf("proxy")
	p.proxy.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(p.proxyGroup.Fd())}
	if err := p.proxy.Start(); err != nil {
		t.Fatal(err)
	}
	return p
}

// inPod reports whether pid (of the test's PID namespace) runs in p's.
func (p *rollingPod) inPod(pid int) bool {
	mine, err1 := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", p.initPID))
	theirs, err2 := os.Readlink(fmt.Sprintf("/proc/%d/ns/pid", pid))
	return err1 == nil && err2 == nil && mine == theirs
}

// proxyReady: p's proxy serves the admin socket and answers /ready.
func (p *rollingPod) proxyReady(n *starwarsNode) bool {
	pid, err := redirect.PeerPID(agentapi.ProxyAdminSocket(n.run))
	if err != nil || !p.inPod(pid) {
		return false
	}
	c := http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", agentapi.ProxyAdminSocket(n.run))
		}}}
	resp, err := c.Get("http://proxy/ready")
	if err != nil {
		return false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == 200
}

// agentServes: p's agent serves the status socket and implemented the
// newest revision.
func (p *rollingPod) agentServes(n *starwarsNode) bool {
	pid, err := redirect.PeerPID(agentapi.StatusSocket(n.run))
	if err != nil || !p.inPod(pid) {
		return false
	}
	st, err := agentapi.FetchStatus(context.Background(), n.run)
	return err == nil && st.Ready && st.ImplementedRevision == st.Revision && st.Revision > 0
}

// terminate is the kubelet deleting the pod after its successor is ready:
// SIGTERM to both containers (the proxy drains what it still has), then
// SIGKILL after grace.
func (p *rollingPod) terminate(grace time.Duration) {
	procs, _ := os.ReadFile(filepath.Join(p.proxyGroup.Name(), "cgroup.procs"))
	for _, f := range strings.Fields(string(procs)) {
		if pid, err := strconv.Atoi(f); err == nil {
			syscall.Kill(pid, syscall.SIGTERM)
		}
	}
	p.agent.Process.Signal(syscall.SIGTERM)
	time.Sleep(grace)
	p.kill()
}

func (p *rollingPod) kill() {
	if p.init != nil && p.init.Process != nil {
		p.init.Process.Kill()
		p.init.Wait()
		p.init = nil
	}
	for _, c := range []*exec.Cmd{p.agent, p.proxy} {
		if c != nil && c.Process != nil {
			c.Process.Kill()
			c.Wait()
		}
	}
	p.agent, p.proxy = nil, nil
}

// TestPrivilegedRollingUpdate is the chart's rolling update (maxSurge 1)
// without a cluster: pod B (agent --take-over, proxy in its own cgroup and
// PID namespace) starts while pod A serves; B's proxy takes A's listener
// sockets over the hand-over socket, B's agent takes the run dir over
// (A's stands by); once B's proxy is ready A is terminated; then C
// replaces B the same way. Keep-alive HTTP/1.1, h2c and new-connection
// clients go through the L7 policy all along: no allowed request may fail,
// no denied one pass, the xwing never connect.
func TestPrivilegedRollingUpdate(t *testing.T) {
	requireRoot(t)
	n := newStarwarsNode(t)
	bypassed := serveDeathstarH2C(t, n.podNS("deathstar"))
	for _, f := range []string{"objects.yaml", "policy-l7.yaml"} {
		data, err := os.ReadFile(filepath.Join("../examples/starwars", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(n.src, f), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	waitFor := func(what string, limit time.Duration, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(limit)
		for !cond() {
			if time.Now().After(deadline) {
				var logs []string
				for _, f := range []string{"a-agent", "a-proxy", "b-agent", "b-proxy", "c-agent", "c-proxy"} {
					b, _ := os.ReadFile(filepath.Join(n.run, f+".log"))
					logs = append(logs, "== "+f+"\n"+tail(b, 2500))
				}
				t.Fatalf("%s: not within %s\n%s", what, limit, strings.Join(logs, "\n"))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	pods := []*rollingPod{startRollingPod(t, n, "a")}
	waitFor("pod a's agent implements the policy", 30*time.Second, func() bool { return pods[0].agentServes(n) })
	waitFor("pod a's proxy is ready", 30*time.Second, func() bool { return pods[0].proxyReady(n) })
	time.Sleep(time.Second)

	load := startL7Load(t, n)
	for _, name := range []string{"b", "c"} {
		time.Sleep(2 * time.Second)
		old := pods[len(pods)-1]
		p := startRollingPod(t, n, name)
		pods = append(pods, p)
		waitFor("pod "+name+"'s proxy takes over and is ready", 40*time.Second, func() bool { return p.proxyReady(n) })
		waitFor("pod "+name+"'s agent serves", 40*time.Second, func() bool { return p.agentServes(n) })
		// The old pod is deleted once the new one is ready; its proxy's
		// preStop returned (a successor serves the admin socket).
		old.terminate(3 * time.Second)
	}
	time.Sleep(2 * time.Second)
	st := load.stop()
	t.Logf("requests %d, failed %d, L7 denials %d, L7 denials that got through %d; xwing %d tries, %d connected (load average %s)",
		st.sent, st.failed, st.l7Denied, st.l7Leaked, st.xwingTries, st.xwingConnected, loadavg())
	if st.failed != 0 {
		var lines []string
		for _, f := range []string{"a-agent", "a-proxy", "b-agent", "b-proxy", "c-agent", "c-proxy"} {
			b, _ := os.ReadFile(filepath.Join(n.run, f+".log"))
			for _, l := range strings.Split(string(b), "\n") {
				if (strings.Contains(l, "level=") && !strings.Contains(l, "198.18.1.12")) || strings.Contains(l, `"status":502`) {
					lines = append(lines, f+": "+l)
				}
			}
		}
		t.Errorf("%d of %d requests failed across 2 rolling updates: %v\n%s", st.failed, st.sent, st.errs, strings.Join(lines, "\n"))
	}
	if st.l7Leaked != 0 || st.l7Denied == 0 || bypassed.Load() != 0 {
		t.Errorf("L7-denied requests: %d denied, %d got through, %d reached the server", st.l7Denied, st.l7Leaked, bypassed.Load())
	}
	if st.xwingConnected != 0 || st.xwingTries < 10 {
		t.Errorf("xwing: %d of %d tries connected", st.xwingConnected, st.xwingTries)
	}
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

// l7Load is keep-alive HTTP/1.1, h2c and new-connection clients of the
// tiefighter through the deathstar's L7 policy (every tenth request one
// the L7 rule denies), and the xwing (denied at L3) trying to connect.
type l7Load struct {
	stopc                                                        chan struct{}
	wg                                                           sync.WaitGroup
	sent, failed, l7Denied, l7Leaked, xwingTries, xwingConnected atomic.Int64
	mu                                                           sync.Mutex
	errs                                                         []string
}

type l7LoadStats struct {
	sent, failed, l7Denied, l7Leaked, xwingTries, xwingConnected int64
	errs                                                         []string
}

func startL7Load(t *testing.T, n *starwarsNode) *l7Load {
	l := &l7Load{stopc: make(chan struct{})}
	tie := n.podNS("tiefighter")
	url := "http://198.18.1.10:80/v1/request-landing"
	fail := func(kind string, err error) {
		l.failed.Add(1)
		l.mu.Lock()
		if len(l.errs) < 6 {
			l.errs = append(l.errs, time.Now().Format("15:04:05.000")+" "+kind+": "+err.Error())
		}
		l.mu.Unlock()
	}
	loop := func(kind string, c *http.Client) {
		defer l.wg.Done()
		for i := 0; i < 40000; i++ {
			select {
			case <-l.stopc:
				return
			case <-time.After(5 * time.Millisecond):
			}
			method, want := "POST", 200
			if i%10 == 9 {
				method, want = "PUT", 403
			}
			req, _ := http.NewRequest(method, url, nil)
			if method == "PUT" {
				req.URL.Path = "/v1/exhaust-port"
			}
			l.sent.Add(1)
			resp, err := c.Do(req)
			if err != nil {
				fail(kind, err)
				continue
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			switch {
			case want == 403 && resp.StatusCode == 403:
				l.l7Denied.Add(1)
			case want == 403:
				l.l7Leaked.Add(1)
			case resp.StatusCode != 200 || string(body) != "Ship landed\n":
				fail(kind, fmt.Errorf("%d %q", resp.StatusCode, body))
			}
		}
	}
	l.wg.Add(4)
	go loop("http/1.1 keep-alive", podClient(tie, true, false))
	go loop("h2c", podClient(tie, true, true))
	go loop("new connections", podClient(tie, false, false))
	go func() {
		defer l.wg.Done()
		for i := 0; i < 2000; i++ {
			select {
			case <-l.stopc:
				return
			case <-time.After(100 * time.Millisecond):
			}
			l.xwingTries.Add(1)
			if err := n.dialFrom("xwing", "198.18.1.10:80"); err == nil {
				l.xwingConnected.Add(1)
			}
		}
	}()
	t.Cleanup(func() { l.stop() })
	return l
}

func (l *l7Load) stop() l7LoadStats {
	select {
	case <-l.stopc:
	default:
		close(l.stopc)
	}
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l7LoadStats{l.sent.Load(), l.failed.Load(), l.l7Denied.Load(), l.l7Leaked.Load(), l.xwingTries.Load(), l.xwingConnected.Load(), l.errs}
}
