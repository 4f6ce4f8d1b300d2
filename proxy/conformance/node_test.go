package conformance

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l7gate/l7gate/agentapi"
	"github.com/l7gate/l7gate/demo"
	"github.com/l7gate/l7gate/internal/netns"
	"github.com/l7gate/l7gate/internal/testutil"
)

const (
	backendIP = "198.18.30.10"
	clientIP  = "198.18.30.11"
)

func requireRoot(t *testing.T) {
	t.Helper()
	testutil.RequirePrivileged(t, "creates network namespaces and veths, mounts a bpffs, loads BPF programs", "ip", "go")
}

// dataplane is the proxy that enforces HTTP on the node: the Go proxy, or
// Envoy (which cannot run on the development machines; the harness keeps
// its place).
type dataplane struct {
	name string
	// agentArgs are added to `l7gate agent`.
	agentArgs []string
	// available says why the dataplane cannot run here ("" when it can).
	available func() string
	// start starts what the agent does not start itself.
	start func(t *testing.T, n *node)
	// requests reads the number of HTTP requests the proxy handled.
	requests func(n *node) (int64, error)
}

var goProxy = dataplane{
	name:      "go",
	available: func() string { return "" },
	start:     func(*testing.T, *node) {},
	requests: func(n *node) (int64, error) {
		m, err := n.proxyMetrics()
		if err != nil {
			return 0, err
		}
		return m[`l7gate_proxy_requests_total{protocol="http",verdict="allowed"}`] + m[`l7gate_proxy_requests_total{protocol="http",verdict="denied"}`], nil
	},
}

// goProxyNetHTTP is the Go proxy with HTTP/2 on its earlier path
// (net/http's server and ReverseProxy, --http2-path=nethttp), kept so the
// suites compare the two HTTP/2 paths.
var goProxyNetHTTP = dataplane{
	name:      "go-nethttp",
	agentArgs: []string{"--proxy-arg=--http2-path=nethttp"},
	available: goProxy.available,
	start:     goProxy.start,
	requests:  goProxy.requests,
}

// envoyProxy runs stock Envoy as the HTTP proxy (agent --http-proxy
// envoy); it needs an envoy binary on PATH.
var envoyProxy = dataplane{
	name:      "envoy",
	agentArgs: []string{"--http-proxy", "envoy"},
	available: func() string {
		if _, err := exec.LookPath("envoy"); err != nil {
			return "no envoy binary on PATH (Envoy is not installable on the development machines)"
		}
		return ""
	},
	start: func(t *testing.T, n *node) {
		t.Helper()
		boot := filepath.Join(n.dir, "envoy.yaml")
		out, err := exec.Command(n.bin, "envoy", "bootstrap", "--node", "conformance",
			"--xds-socket", agentapi.XDSSocket(n.runDir), "--access-log-socket", agentapi.ALSSocket(n.runDir),
			"--admin-socket", n.envoyAdmin()).Output()
		if err != nil {
			t.Fatalf("envoy bootstrap: %v", err)
		}
		if err := os.WriteFile(boot, out, 0o644); err != nil {
			t.Fatal(err)
		}
		n.startProc(t, "envoy", n.topo.Node, "envoy", "-c", boot, "--log-level", "warn")
		time.Sleep(2 * time.Second) // its listeners arrive over xDS; the agent takes them
	},
	requests: func(n *node) (int64, error) {
		c := unixHTTPClient(n.envoyAdmin())
		resp, err := c.Get("http://envoy/stats?filter=downstream_rq_total")
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		var total int64
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if name, v, ok := strings.Cut(sc.Text(), ": "); ok && strings.HasPrefix(name, "http.") && strings.HasSuffix(name, ".downstream_rq_total") {
				n, _ := strconv.ParseInt(v, 10, 64)
				total += n
			}
		}
		return total, sc.Err()
	},
}

// dataplanes lists the dataplanes a suite runs on.
var dataplanes = []dataplane{goProxy, goProxyNetHTTP, envoyProxy}

// node is a running topology: agent, datapath and proxy in the node
// namespace, a client and a backend pod.
type node struct {
	t       *testing.T
	dp      dataplane
	topo    *demo.Topology
	bin     string
	dir     string
	runDir  string
	Client  string // the client pod's namespace
	Backend string // the backend pod's namespace
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// TestMain removes the l7gate binary l7gateBinary built.
func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// l7gateBinary builds cmd/l7gate once per test binary.
func l7gateBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "l7gate-conformance-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "l7gate")
		out, err := exec.Command("go", "build", "-o", binPath, "github.com/l7gate/l7gate/cmd/l7gate").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v: %s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// allowAll returns the L7 rules that allow every request of a parser
// (http or kafka).
func allowAll(parser string) string { return parser + ": [{}]" }

// scenario is the client and backend pods and a policy allowing the
// client the backend's port with the given L7 rules (e.g. allowAll).
func scenario(port uint16, rules string) (*demo.Scenario, error) {
	objects := fmt.Sprintf(`apiVersion: v1
kind: Namespace
metadata: {name: conf}
---
apiVersion: v1
kind: Pod
metadata: {name: backend, namespace: conf, labels: {app: backend}}
status: {podIP: %s}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: conf, labels: {app: client}}
status: {podIP: %s}
`, backendIP, clientIP)
	pol := fmt.Sprintf(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow-all-l7, namespace: conf}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "%d", protocol: TCP}]
      rules:
        %s
`, port, rules)
	fsys := fstest.MapFS{
		"objects/conf.yaml":   {Data: []byte(objects)},
		"policies/allow.yaml": {Data: []byte(pol)},
		"steps.yaml":          {Data: []byte("steps:\n- name: allow every request through the proxy\n  apply: [policies/allow.yaml]\n")},
	}
	return demo.LoadScenario(fsys, "conformance")
}

// startNode builds the topology and starts the agent on dp with the
// given L7 rules (see scenario) on the backend's port.
func startNode(t *testing.T, dp dataplane, port uint16, rules string) *node {
	t.Helper()
	requireRoot(t)
	if why := dp.available(); why != "" {
		t.Skipf("%s dataplane: %s", dp.name, why)
	}
	bin := l7gateBinary(t)
	sc, err := scenario(port, rules)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	work := filepath.Join(dir, "topology")
	if err := os.Mkdir(work, 0o700); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 3)
	rand.Read(b)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	topo, err := demo.NewTopology(ctx, sc, demo.TopologyConfig{WorkDir: work, Prefix: "l7cf" + hex.EncodeToString(b), Forwarding: true,
		Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	n := &node{t: t, dp: dp, topo: topo, bin: bin, dir: dir, runDir: filepath.Join(dir, "run"),
		Client: topo.Host("conf/client").NS, Backend: topo.Host("conf/backend").NS}
	// Cleanups run last-in first-out: the topology goes last (it also
	// kills whatever still runs in its namespaces: agent, proxy, servers).
	t.Cleanup(func() {
		if t.Failed() {
			for _, f := range []string{"agent.log", "run/proxy.log"} {
				if b, err := os.ReadFile(filepath.Join(dir, f)); err == nil {
					t.Logf("%s (last 3000 bytes):\n%s", f, tailBytes(b, 3000))
				}
			}
		}
		if err := topo.Close(context.Background()); err != nil {
			t.Errorf("remove topology: %v", err)
		}
	})
	if err := topo.TrackProxyCgroup(n.runDir); err != nil {
		t.Fatal(err)
	}
	src, state, bpffs := filepath.Join(dir, "source"), filepath.Join(dir, "state"), filepath.Join(dir, "bpffs")
	for _, d := range []string{src, state, bpffs, n.runDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// `ip netns exec` remounts /sys: the agent gets a bpffs of its own.
	if err := unix.Mount("bpf", bpffs, "bpf", 0, "mode=0700"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(bpffs, unix.MNT_DETACH) })
	for _, f := range sc.ObjectFiles {
		if err := os.WriteFile(filepath.Join(src, "objects.yaml"), f.Data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(src, "policies.yaml"), sc.PolicyFile(0), 0o644); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"agent", "--source", src, "--bpffs", bpffs, "--run-dir", n.runDir, "--state-dir", state, "--node", "conformance", "--socket-lb=false"}, dp.agentArgs...)
	// The proxy outlives the agent by design; stop it before the
	// namespaces go, and after the agent (cleanups run last first): an
	// agent still running starts a new proxy when its proxy exits — one
	// such proxy was left running after a run.
	t.Cleanup(func() {
		if pid, err := os.ReadFile(agentapi.ProxyPIDFile(n.runDir)); err == nil {
			if p, err := strconv.Atoi(strings.TrimSpace(string(pid))); err == nil {
				syscall.Kill(p, syscall.SIGKILL)
			}
		}
	})
	n.startProc(t, "agent", topo.Node, bin, args...)
	deadline := time.Now().Add(90 * time.Second)
	for {
		st, err := agentapi.FetchStatus(context.Background(), n.runDir)
		if err == nil && st.Ready && st.Revision > 0 && st.ImplementedRevision == st.Revision {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent did not implement the policy within 90 s (last status %+v, %v)", st, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	dp.start(t, n)
	return n
}

func tailBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// startProc runs name in network namespace ns until the test ends; its
// output goes to <dir>/<tag>.log.
func (n *node) startProc(t *testing.T, tag, ns, name string, args ...string) *exec.Cmd {
	t.Helper()
	logf, err := os.Create(filepath.Join(n.dir, tag+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// No Pdeathsig: it fires when the forking OS thread ends, and Go ends
	// threads (inNS discards its namespace-switched ones). The cleanup
	// below and the topology's teardown stop the process.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", tag, err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		logf.Close()
	})
	return cmd
}

// run runs name in namespace ns and returns its combined output.
func (n *node) run(ctx context.Context, ns, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// inNS runs f on an OS thread in namespace ns (netns.In); sockets
// made there stay in it.
func inNS(ns string, f func() error) error { return netns.In(ns, f) }

// listen opens a TCP listener in namespace ns.
func listen(t *testing.T, ns, addr string) net.Listener {
	t.Helper()
	var ln net.Listener
	if err := inNS(ns, func() (err error) {
		ln, err = net.Listen("tcp4", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// dial connects from namespace ns.
func dial(ns, addr string) (net.Conn, error) {
	var c net.Conn
	err := inNS(ns, func() (err error) {
		c, err = net.DialTimeout("tcp4", addr, 5*time.Second)
		return err
	})
	return c, err
}

// waitListening waits until addr accepts connections from namespace ns.
func waitListening(t *testing.T, ns, addr string, cmd *exec.Cmd) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := dial(ns, addr)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not start listening in %s: %v", addr, ns, err)
		}
		if cmd != nil && cmd.ProcessState != nil {
			t.Fatalf("the server exited: %v", cmd.ProcessState)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func unixHTTPClient(sock string) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
}

func (n *node) envoyAdmin() string { return filepath.Join(n.runDir, "envoy-admin.sock") }

var sampleLine = regexp.MustCompile(`^([a-zA-Z0-9_:]+(?:\{[^}]*\})?) (-?\d+)$`)

// proxyMetrics reads the Go proxy's /stats/prometheus.
func (n *node) proxyMetrics() (map[string]int64, error) {
	resp, err := unixHTTPClient(agentapi.ProxyAdminSocket(n.runDir)).Get("http://proxy/stats/prometheus")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]int64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if m := sampleLine.FindStringSubmatch(sc.Text()); m != nil {
			v, _ := strconv.ParseInt(m[2], 10, 64)
			out[m[1]] = v
		}
	}
	return out, sc.Err()
}

// requests is the dataplane's HTTP request counter.
func (n *node) requests() int64 {
	n.t.Helper()
	v, err := n.dp.requests(n)
	if err != nil {
		n.t.Fatalf("read the %s proxy's request counter: %v", n.dp.name, err)
	}
	return v
}

// tool builds a suite's binary from its module (go install pkg@version)
// into a cache outside the clone, once per version.
func tool(t *testing.T, pkg, version string) string {
	t.Helper()
	cache := os.Getenv("XDG_CACHE_HOME")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			t.Fatal(err)
		}
		cache = filepath.Join(home, ".cache")
	}
	dir := filepath.Join(cache, "l7gate", "tools", strings.ReplaceAll(pkg, "/", "_")+"@"+version)
	bin := filepath.Join(dir, filepath.Base(pkg))
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		t.Fatal(err)
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".build-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	start := time.Now()
	cmd := exec.Command("go", "install", pkg+"@"+version)
	// Outside any module: the suite builds with its own go.mod.
	cmd.Dir = tmp
	cmd.Env = append(os.Environ(), "GOBIN="+tmp, "GOFLAGS=", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go install %s@%s: %v\n%s", pkg, version, err, out)
	}
	t.Logf("built %s@%s in %s", pkg, version, time.Since(start).Round(time.Second))
	if err := os.Rename(tmp, dir); err != nil && !errors.Is(err, os.ErrExist) {
		if _, serr := os.Stat(bin); serr != nil { // another test built it first
			t.Fatal(err)
		}
	}
	return bin
}

// moduleVersion is the version of a module in the project's go.mod (the
// test runs inside the module).
func moduleVersion(t *testing.T, mod string) string {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{if .Replace}}{{.Replace.Version}}{{else}}{{.Version}}{{end}}", mod).Output()
	v := strings.TrimSpace(string(out))
	if err != nil || v == "" {
		t.Fatalf("go list -m %s: %v (%q)", mod, err, out)
	}
	return v
}

// readAll reads c until EOF or the deadline.
func readAll(c net.Conn, wait time.Duration) string {
	c.SetReadDeadline(time.Now().Add(wait))
	b, _ := io.ReadAll(c)
	return string(b)
}
