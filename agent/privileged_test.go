package agent

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
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
	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/internal/netns"
	"github.com/l7gate/l7gate/internal/testutil"
)

func requireRoot(t *testing.T) {
	t.Helper()
	testutil.RequirePrivileged(t, "creates network namespaces, veths and a bpffs, and loads BPF programs", "ip", "go")
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

// inNS runs f on a fresh OS thread in the named network namespace
// (netns.In); sockets created there stay in it.
func inNS(ns string, f func() error) error { return netns.In(ns, f) }

type starwarsNode struct {
	prefix, node, run, state, src, bpffs, bin string
	topo                                      *netns.Topology
	agent                                     *exec.Cmd
	agentLog                                  *os.File
}

// starwarsNodeAddr is the node side's address on every pod veth.
const starwarsNodeAddr = "198.18.255.254"

// podNS is the network namespace of a pod.
func (n *starwarsNode) podNS(name string) string { return n.topo.HostNS(name) }

// hostVeth is the node-side veth name of the i-th pod.
func (n *starwarsNode) hostVeth(i int) string { return fmt.Sprintf("lxc%s%d", n.prefix[4:], i) }

// addPod creates a pod namespace with ip behind the node's i-th veth and
// its route (what a CNI plugin does), in that order.
func (n *starwarsNode) addPod(t *testing.T, name, ip string, i int) {
	t.Helper()
	n.topo.MustAddHost(t, name, n.hostVeth(i), ip)
}

// newStarwarsNode builds a node namespace with deathstar, tiefighter and
// xwing pods behind veths, a private bpffs, and the l7gate binary.
func newStarwarsNode(t *testing.T) *starwarsNode {
	dir := t.TempDir()
	n := &starwarsNode{run: filepath.Join(dir, "run"), state: filepath.Join(dir, "state"),
		src: filepath.Join(dir, "src"), bpffs: filepath.Join(dir, "bpffs"), bin: filepath.Join(dir, "l7gate")}
	for _, d := range []string{n.run, n.state, n.src, n.bpffs} {
		os.MkdirAll(d, 0o755)
	}
	run(t, "go", "build", "-o", n.bin, "github.com/l7gate/l7gate/cmd/l7gate")
	run(t, "mount", "-t", "bpf", "bpf", n.bpffs)
	t.Cleanup(func() { exec.Command("umount", n.bpffs).Run() })
	// Registered before the agent's cleanup, so it runs after it: the
	// namespaces go once the agent and its proxy are stopped.
	n.topo = netns.NewT(t, netns.Config{Prefix: netns.RandomPrefix("l7ag"), NodeAddr: netip.MustParseAddr(starwarsNodeAddr),
		Sysctls: map[string]string{"ipv4/ip_forward": "1", "ipv4/conf/all/rp_filter": "0", "ipv4/conf/default/rp_filter": "0"}})
	n.prefix, n.node = n.topo.Prefix, n.topo.Node
	t.Cleanup(func() {
		n.stopAgent()
		if pid, err := os.ReadFile(agentapi.ProxyPIDFile(n.run)); err == nil {
			if p, err := strconv.Atoi(strings.TrimSpace(string(pid))); err == nil {
				syscall.Kill(p, syscall.SIGKILL)
			}
		}
		removeProxyCgroup(t, n.run)
	})
	for i, pod := range []struct{ name, ip string }{{"deathstar", "198.18.1.10"}, {"tiefighter", "198.18.1.11"}, {"xwing", "198.18.1.12"}} {
		n.addPod(t, pod.name, pod.ip, i)
	}
	return n
}

func (n *starwarsNode) startAgent(t *testing.T, extra ...string) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(n.run, "agent.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	n.agentLog = f
	n.agent = exec.Command("ip", append([]string{"netns", "exec", n.node, n.bin, "agent", "--source", n.src, "--bpffs", n.bpffs},
		append([]string{"--run-dir", n.run, "--state-dir", n.state, "--node", "test", "--socket-lb=false"}, extra...)...)...)
	n.agent.Stdout, n.agent.Stderr = f, f
	if err := n.agent.Start(); err != nil {
		t.Fatal(err)
	}
}

func (n *starwarsNode) stopAgent() {
	if n.agent != nil && n.agent.Process != nil {
		n.agent.Process.Kill()
		n.agent.Wait()
		n.agent = nil
	}
	if n.agentLog != nil {
		n.agentLog.Close()
		n.agentLog = nil
	}
}

// waitImplemented waits until the agent implemented a revision > after.
func (n *starwarsNode) waitImplemented(t *testing.T, after uint64) uint64 {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		st, err := agentapi.FetchStatus(context.Background(), n.run)
		if err == nil && st.Ready && st.ImplementedRevision == st.Revision && st.Revision > after {
			return st.Revision
		}
		time.Sleep(100 * time.Millisecond)
	}
	log, _ := os.ReadFile(filepath.Join(n.run, "agent.log"))
	plog, _ := os.ReadFile(filepath.Join(n.run, "proxy.log"))
	t.Fatalf("agent did not implement a revision > %d\nagent log:\n%s\nproxy log:\n%s", after, log, plog)
	return 0
}

// TestPrivilegedAgentRestart: keep-alive HTTP clients going through the
// proxy see no failed request while the agent is killed and restarted, and
// enforcement continues throughout (L7 denials, L3 drops).
func TestPrivilegedAgentRestart(t *testing.T) {
	requireRoot(t)
	n := newStarwarsNode(t)
	// The deathstar.
	var ln net.Listener
	if err := inNS(n.prefix+"-deathstar", func() error {
		var err error
		ln, err = net.Listen("tcp", "198.18.1.10:80")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "POST" && r.URL.Path == "/v1/request-landing" {
			io.WriteString(w, "Ship landed\n")
			return
		}
		io.WriteString(w, "Panic: deathstar exploded\n")
	})}
	go srv.Serve(ln)
	defer srv.Close()

	for _, f := range []string{"objects.yaml", "policy-l7.yaml"} {
		data, err := os.ReadFile(filepath.Join("../examples/starwars", f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(n.src, f), data, 0o644)
	}
	n.startAgent(t)
	rev := n.waitImplemented(t, 0)
	if out, err := exec.Command(n.bin, "status", "--ready", "--run-dir", n.run).CombinedOutput(); err != nil || string(out) != "ready\n" {
		t.Errorf("status --ready after implementing: %v %q", err, out)
	}
	if err := exec.Command(n.bin, "status", "--ready", "--run-dir", t.TempDir()).Run(); err == nil {
		t.Error("status --ready without an agent succeeded")
	}

	var ok, failed, denied, wrongDenial, xwingConnected, xwingTries atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for c := range 4 {
		var conn net.Conn
		if err := inNS(n.prefix+"-tiefighter", func() error {
			var err error
			conn, err = net.DialTimeout("tcp", "198.18.1.10:80", 2*time.Second)
			return err
		}); err != nil {
			t.Fatalf("client %d: %v", c, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			r := bufio.NewReader(conn)
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-time.After(10 * time.Millisecond):
				}
				method, path, want, wantBody := "POST", "/v1/request-landing", 200, "Ship landed\n"
				if i%10 == 9 {
					method, path, want, wantBody = "PUT", "/v1/exhaust-port", 403, "Access denied"
				}
				conn.SetDeadline(time.Now().Add(5 * time.Second))
				fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: deathstar\r\nContent-Length: 0\r\n\r\n", method, path)
				resp, err := http.ReadResponse(r, nil)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					return
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				switch {
				case resp.StatusCode == want && string(body) == wantBody && want == 403:
					denied.Add(1)
				case resp.StatusCode == want && string(body) == wantBody:
					ok.Add(1)
				case want == 403:
					wrongDenial.Add(1)
				default:
					failed.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("%s %s: %d %q", method, path, resp.StatusCode, body))
				}
			}
		}()
	}
	// The xwing keeps trying new connections; each must be dropped.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(200 * time.Millisecond):
			}
			xwingTries.Add(1)
			inNS(n.prefix+"-xwing", func() error {
				c, err := net.DialTimeout("tcp", "198.18.1.10:80", 300*time.Millisecond)
				if err == nil {
					xwingConnected.Add(1)
					c.Close()
				}
				return nil
			})
		}
	}()

	time.Sleep(1500 * time.Millisecond)
	n.stopAgent() // SIGKILL: no cleanup at all
	time.Sleep(2 * time.Second)
	duringOK := ok.Load()
	n.startAgent(t)
	n.waitImplemented(t, 0)
	time.Sleep(1500 * time.Millisecond)
	close(stop)
	wg.Wait()

	t.Logf("requests ok=%d denied=%d failed=%d; xwing %d tries, %d connected; revision before restart %d", ok.Load(), denied.Load(), failed.Load(), xwingTries.Load(), xwingConnected.Load(), rev)
	if failed.Load() != 0 {
		t.Errorf("%d keep-alive requests failed across the agent restart (first: %v)", failed.Load(), firstErr.Load())
	}
	if wrongDenial.Load() != 0 {
		t.Errorf("%d exhaust-port requests were not denied", wrongDenial.Load())
	}
	if xwingConnected.Load() != 0 {
		t.Errorf("the xwing connected %d times", xwingConnected.Load())
	}
	// The restarted agent reports the xwing's drops with the rule behind them.
	page, err := agentapi.FetchFlows(context.Background(), n.run, 0)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, f := range page.Flows {
		if f.Dropped() && f.Source.Addr().String() == "198.18.1.12" && f.Destination.Port() == 80 &&
			len(f.DecidedBy) > 0 && f.DecidedBy[0].Policy == "default/rule1" && f.Endpoint == "default/deathstar" {
			found = true
		}
	}
	if !found {
		t.Errorf("no dropped xwing flow attributed to default/rule1 among %d flows", len(page.Flows))
	}
	if ok.Load() < 100 || denied.Load() < 10 || duringOK == 0 || xwingTries.Load() < 10 {
		t.Errorf("too little traffic to tell: ok=%d denied=%d", ok.Load(), denied.Load())
	}
}

// removeProxyCgroup removes the cgroup the agent started its proxy in,
// once the proxy is gone (bounded wait).
func removeProxyCgroup(t *testing.T, runDir string) {
	mount, err := bpf.Cgroup2Mount()
	if err != nil {
		return
	}
	dir := filepath.Join(mount, agentapi.ProxyCgroupName(runDir))
	for deadline := time.Now().Add(5 * time.Second); ; {
		err := os.Remove(dir)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("remove proxy cgroup: %v", err)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// newCgroup creates a cgroup v2 directory for a test process and removes
// it when the test ends (after the process's own cleanup, which was
// registered later and runs first).
func newCgroup(t *testing.T, name string) *os.File {
	t.Helper()
	mount, err := bpf.Cgroup2Mount()
	if err != nil {
		t.Skipf("no cgroup v2 hierarchy: %v", err)
	}
	dir, _, err := bpf.CreateProxyCgroup(mount, name)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.Close()
		for deadline := time.Now().Add(5 * time.Second); ; {
			err := os.Remove(dir)
			if err == nil || errors.Is(err, os.ErrNotExist) {
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("remove cgroup: %v", err)
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	return f
}
