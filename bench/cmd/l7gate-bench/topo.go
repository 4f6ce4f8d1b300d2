package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/l7gate/l7gate/agentapi"
	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/internal/netns"
	"github.com/l7gate/l7gate/redirect"
)

// Addresses: everything lives in 198.18.0.0/15 (IPv6: 2001:db8::/32),
// inside namespaces we create.
const (
	nodeIP   = "198.18.255.254"
	serverIP = "198.18.1.10"
	clientIP = "198.18.1.11"
	// IPv6 (issue 21): the pods are dual-stack, in the documentation
	// range 2001:db8::/32 inside our namespaces; the node's IPv6 address is
	// the pods' IPv6 gateway.
	nodeIP6     = "2001:db8::fffe"
	serverIP6   = "2001:db8:1::10"
	clientIP6   = "2001:db8:1::11"
	haproxyPort = 8080
	httpPort    = 80
	grpcPort    = 50051
	kafkaPort   = 9092
	dnsPort     = 53
)

// cleanups is a LIFO stack run once at the end, on failure and on signals.
type cleanups struct {
	mu  sync.Mutex
	fns []func()
	ran bool
}

func (c *cleanups) add(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.fns = append(c.fns, f)
}

func (c *cleanups) run() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ran {
		return
	}
	c.ran = true
	for i := len(c.fns) - 1; i >= 0; i-- {
		c.fns[i]()
	}
}

func sh(name string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// nsDialer dials TCP from inside a namespace using a few OS threads locked
// there (creating a thread per dial would dominate connection benchmarks).
type nsDialer struct {
	reqs chan dialReq
}

type dialReq struct {
	ctx  context.Context
	addr string
	res  chan dialRes
}

type dialRes struct {
	c   net.Conn
	err error
}

func newNSDialer(ctx context.Context, ns string, workers int) (*nsDialer, error) {
	d := &nsDialer{reqs: make(chan dialReq)}
	ready := make(chan error, workers)
	for range workers {
		go func() {
			runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
			err := netns.Enter(ns)
			ready <- err
			if err != nil {
				return
			}
			var nd net.Dialer
			for {
				select {
				case <-ctx.Done():
					return
				case r := <-d.reqs:
					c, err := nd.DialContext(r.ctx, "tcp", r.addr)
					r.res <- dialRes{c, err}
				}
			}
		}()
	}
	for range workers {
		if err := <-ready; err != nil {
			return nil, err
		}
	}
	return d, nil
}

func (d *nsDialer) DialContext(ctx context.Context, _, addr string) (net.Conn, error) {
	r := dialReq{ctx: ctx, addr: addr, res: make(chan dialRes, 1)}
	select {
	case d.reqs <- r:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	res := <-r.res
	return res.c, res.err
}

// node is the scenario: a node namespace running the agent (and the Go
// proxy it starts) with server and client pods behind veths.
type node struct {
	prefix, nodeNS, serverNS, clientNS string
	dir, run, state, src, bpffs, bin   string
	self                               string
	topo                               *netns.Topology
	agent                              *exec.Cmd
	server                             *exec.Cmd
	cl                                 *cleanups
}

// startProc starts a child that dies with us (Pdeathsig) and is killed by
// the cleanup stack.
func startProc(cl *cleanups, logPath string, name string, args ...string) (*exec.Cmd, error) {
	return startProcIn(cl, nil, logPath, name, args...)
}

// startProcIn is startProc with the child placed in the cgroup v2
// directory cgroup (nil: the caller's cgroup).
func startProcIn(cl *cleanups, cgroup *os.File, logPath string, name string, args ...string) (*exec.Cmd, error) {
	return startProcFiles(cl, cgroup, nil, logPath, name, args...)
}

// startProcFiles is startProcIn with files passed to the child as fds 3,
// 4, ... (exec.Cmd.ExtraFiles).
func startProcFiles(cl *cleanups, cgroup *os.File, files []*os.File, logPath string, name string, args ...string) (*exec.Cmd, error) {
	cmd := exec.Command(name, args...)
	cmd.ExtraFiles = files
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if cgroup != nil {
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, int(cgroup.Fd())
	}
	if logPath != "" {
		f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, err
		}
		cmd.Stdout, cmd.Stderr = f, f
		defer f.Close()
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	cl.add(func() {
		cmd.Process.Kill()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
	})
	return cmd, nil
}

func newNode(cl *cleanups, dir, bin string) (*node, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	n := &node{dir: dir, bin: bin, self: self, cl: cl,
		run: filepath.Join(dir, "run"), state: filepath.Join(dir, "state"), src: filepath.Join(dir, "src"), bpffs: filepath.Join(dir, "bpffs")}
	for _, d := range []string{n.run, n.state, n.src, n.bpffs} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := sh("mount", "-t", "bpf", "bpf", n.bpffs); err != nil {
		return nil, err
	}
	cl.add(func() { exec.Command("umount", n.bpffs).Run() })
	// The Go proxy runs in its own session (started by the agent): kill it
	// by the pid file the agent wrote.
	cl.add(func() {
		if pid := n.proxyPID(); pid > 0 {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	topo, err := netns.New(context.Background(), netns.Config{Prefix: netns.RandomPrefix("l7bn"), NodeAddr: netip.MustParseAddr(nodeIP), NodeAddr6: netip.MustParseAddr(nodeIP6),
		Sysctls: map[string]string{"ipv4/ip_forward": "1", "ipv4/conf/all/rp_filter": "0", "ipv4/conf/default/rp_filter": "0",
			"ipv4/ip_local_port_range": "1024 65000", "core/somaxconn": "65535", "ipv4/tcp_max_syn_backlog": "65535"}})
	if err != nil {
		return nil, err
	}
	cl.add(func() { topo.Close(context.Background()) })
	n.topo, n.prefix, n.nodeNS = topo, topo.Prefix, topo.Node
	for i, pod := range []struct {
		name, ip, ip6 string
		ns            *string
	}{{"srv", serverIP, serverIP6, &n.serverNS}, {"cli", clientIP, clientIP6, &n.clientNS}} {
		h, err := topo.AddDualHost(context.Background(), pod.name, fmt.Sprintf("lxc%s%d", n.prefix[4:], i), netip.MustParseAddr(pod.ip), netip.MustParseAddr(pod.ip6))
		if err != nil {
			return nil, err
		}
		*pod.ns = h.NS
		if err := netns.SetSysctls(h.NS, map[string]string{"ipv4/ip_local_port_range": "1024 65000", "ipv4/tcp_tw_reuse": "1",
			"core/somaxconn": "65535", "ipv4/tcp_max_syn_backlog": "65535"}); err != nil {
			return nil, err
		}
	}
	return n, nil
}

// startServer runs `l7gate-bench serve` in the server pod (HTTP/1.1 + h2c
// on :80 of both families, gRPC on :50051, kfake on :9092, DNS on UDP
// :53), unpinned.
func (n *node) startServer() error {
	cmd, err := startProc(n.cl, filepath.Join(n.dir, "server.log"), "ip", "netns", "exec", n.serverNS, "taskset", "-c", allCPUs(),
		n.self, "serve", "-http", net.JoinHostPort(serverIP, strconv.Itoa(httpPort))+","+net.JoinHostPort(serverIP6, strconv.Itoa(httpPort)),
		"-grpc", net.JoinHostPort(serverIP, strconv.Itoa(grpcPort)), "-kafka", net.JoinHostPort(serverIP, strconv.Itoa(kafkaPort)),
		"-dns", net.JoinHostPort(serverIP, strconv.Itoa(dnsPort)))
	if err != nil {
		return err
	}
	n.server = cmd
	if err := waitTCP(n.clientNS, net.JoinHostPort(serverIP, strconv.Itoa(httpPort)), 15*time.Second); err != nil {
		return err
	}
	// IPv6 too: this also waits out the veths' link-local addresses
	// (duplicate address detection), before which neighbour discovery
	// between a pod and the node can fail.
	return waitTCP(n.clientNS, net.JoinHostPort(serverIP6, strconv.Itoa(httpPort)), 15*time.Second)
}

// waitTCP waits until addr accepts connections from inside ns.
func waitTCP(ns, addr string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	var last error
	for time.Now().Before(deadline) {
		last = netns.In(ns, func() error {
			c, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
			if err == nil {
				c.Close()
			}
			return err
		})
		if last == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s not reachable from %s: %v", addr, ns, last)
}

func (n *node) startAgent(extra ...string) error {
	args := append([]string{"netns", "exec", n.nodeNS, "taskset", "-c", allCPUs(),
		n.bin, "agent", "--source", n.src, "--bpffs", n.bpffs, "--run-dir", n.run, "--state-dir", n.state, "--node", "bench", "--socket-lb=false"}, extra...)
	cmd, err := startProc(n.cl, filepath.Join(n.run, "agent.log"), "ip", args...)
	if err != nil {
		return err
	}
	n.agent = cmd
	return nil
}

// handOverTo makes the agent's proxy run exe: it replaces the proxy
// executable the agent was started with (--proxy-executable, a file in
// n.dir) by a copy of exe, sends the agent SIGHUP (a hand-over: the new
// proxy takes the listeners, the old one drains) and waits until the old
// proxy has exited and the new one's pid is written.
func (n *node) handOverTo(exe string) error {
	dst := filepath.Join(n.dir, "l7gate-proxy")
	if err := copyFile(exe, dst+".new"); err != nil {
		return err
	}
	if err := os.Rename(dst+".new", dst); err != nil {
		return fmt.Errorf("replace proxy executable: %w", err)
	}
	old := n.proxyPID()
	if err := n.agent.Process.Signal(syscall.SIGHUP); err != nil {
		return fmt.Errorf("SIGHUP agent: %w", err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if pid := n.proxyPID(); pid > 0 && pid != old && (old <= 0 || syscall.Kill(old, 0) != nil) {
			time.Sleep(time.Second) // let it settle (config, listeners)
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("no hand-over from proxy %d within 60 s", old)
}

func (n *node) proxyPID() int {
	b, err := os.ReadFile(agentapi.ProxyPIDFile(n.run))
	if err != nil {
		return 0
	}
	p, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return p
}

func (n *node) status() (*agentapi.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return agentapi.FetchStatus(ctx, n.run)
}

// waitImplemented waits until the agent implemented a revision > after and
// everything it knows of.
func (n *node) waitImplemented(after uint64, limit time.Duration) (uint64, error) {
	deadline := time.Now().Add(limit)
	var last error
	for time.Now().Before(deadline) {
		st, err := n.status()
		if err == nil && st.Ready && st.ImplementedRevision == st.Revision && st.Revision > after {
			return st.Revision, nil
		}
		if err != nil {
			last = err
		} else if st.LastError != "" {
			last = fmt.Errorf("%s", st.LastError)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return 0, fmt.Errorf("agent did not implement a revision > %d within %v (last: %v); see %s", after, limit, last, filepath.Join(n.run, "agent.log"))
}

// setPolicy replaces the policy file and waits until it is implemented.
func (n *node) setPolicy(yaml string) error {
	st, err := n.status()
	if err != nil {
		return err
	}
	p := filepath.Join(n.src, "policy.yaml")
	cur, err := os.ReadFile(p)
	if (err == nil && string(cur) == yaml) || (os.IsNotExist(err) && yaml == "") {
		// unchanged: no new revision will come
		after := st.Revision
		if after > 0 {
			after--
		}
		_, err := n.waitImplemented(after, 60*time.Second)
		return err
	}
	if yaml == "" {
		if err := os.Remove(p); err != nil && !os.IsNotExist(err) {
			return err
		}
	} else if err := writeAtomic(p, []byte(yaml)); err != nil {
		return err
	}
	_, err = n.waitImplemented(st.Revision, 60*time.Second)
	return err
}

func writeAtomic(p string, data []byte) error {
	tmp := filepath.Join(filepath.Dir(p), "."+filepath.Base(p)+".tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

func allCPUs() string {
	if runtime.NumCPU() < 2 {
		return "0"
	}
	return fmt.Sprintf("0-%d", runtime.NumCPU()-1)
}

// Pods and policies.

const objectsYAML = `apiVersion: v1
kind: Namespace
metadata:
  name: bench
---
apiVersion: v1
kind: Pod
metadata:
  name: server
  namespace: bench
  labels:
    app: bench-server
status:
  podIP: ` + serverIP + `
  podIPs:
  - ip: ` + serverIP + `
  - ip: ` + serverIP6 + `
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: bench
  labels:
    app: bench-client
status:
  podIP: ` + clientIP + `
  podIPs:
  - ip: ` + clientIP + `
  - ip: ` + clientIP6 + `
`

// httpRulePath is the path of HTTP rule i; benchPath matches the last of
// 100 rules (the worst case for rule lists scanned in order).
func httpRulePath(i int) string { return fmt.Sprintf("/api/v1/r%d/[a-z]+", i) }

const benchPath = "/api/v1/r99/item"

func policyYAML(l7 bool, httpRules int, extraRule string) string {
	var b strings.Builder
	b.WriteString(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: bench
  namespace: bench
spec:
  endpointSelector:
    matchLabels:
      app: bench-server
  ingress:
`)
	if !l7 {
		b.WriteString(`  - fromEndpoints:
    - matchLabels:
        app: bench-client
    toPorts:
    - ports:
      - port: "80"
        protocol: TCP
      - port: "50051"
        protocol: TCP
      - port: "9092"
        protocol: TCP
`)
		return b.String()
	}
	b.WriteString(`  - fromEndpoints:
    - matchLabels:
        app: bench-client
    toPorts:
    - ports:
      - port: "80"
        protocol: TCP
      rules:
        http:
`)
	if extraRule != "" {
		fmt.Fprintf(&b, "        - method: GET\n          path: %s\n", extraRule)
	}
	for i := range httpRules {
		// rule 99 is the one the benchmark requests match
		idx := i
		if httpRules > 100 && i == httpRules-1 {
			idx = 99
		} else if httpRules > 100 && i == 99 {
			idx = httpRules - 1
		}
		fmt.Fprintf(&b, "        - method: GET\n          path: %s\n", httpRulePath(idx))
	}
	b.WriteString(`  - fromEndpoints:
    - matchLabels:
        app: bench-client
    toPorts:
    - ports:
      - port: "50051"
        protocol: TCP
      rules:
        http:
        - method: POST
          path: /grpc.health.v1.Health/Check
  - fromEndpoints:
    - matchLabels:
        app: bench-client
    toPorts:
    - ports:
      - port: "9092"
        protocol: TCP
      rules:
        kafka:
        - role: produce
          topic: bench
`)
	return b.String()
}

// hapTransparent is HAProxy on the datapath's redirect path, as the Go
// proxy is: its listener is a socket this program opens in the node
// namespace (IP_TRANSPARENT, not MPTCP, like the Go proxy's), handed to
// HAProxy as fd@3 (HAProxy 2.6 binds inherited sockets), and put in the
// datapath's socket map under the ingress HTTP proxy port in place of the
// Go proxy's IPv4 listener for HAProxy's runs (attach); detach puts the
// Go proxy's listeners back (taken from its process with pidfd_getfd, as
// the agent does). HAProxy connects to the original destination (`server
// s1 0.0.0.0:0`); it cannot mark its sockets, so its upstream connections
// leave from the node's address, which the policy of its runs allows
// (policyHAProxyTransparent).
type hapTransparent struct {
	n        *node
	cmd      *exec.Cmd
	ln       *net.TCPListener
	port     uint16 // the proxy port it is attached to
	socks    *bpf.ProxySockets
	attached bool
}

func startHAProxyTransparent(cl *cleanups, n *node) (*hapTransparent, error) {
	var ln *net.TCPListener
	err := netns.In(n.nodeNS, func() error {
		var err error
		// any free port: sk_lookup hands a redirected connection to the
		// socket in the map whatever it is bound to
		ln, err = redirect.ListenTransparent(context.Background(), "127.0.0.1:0", true)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("transparent listener: %w", err)
	}
	cl.add(func() { ln.Close() })
	f, err := ln.File()
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cfgPath := filepath.Join(n.dir, "haproxy-transparent.cfg")
	if err := os.WriteFile(cfgPath, []byte(haproxyConfig("fd@3", "0.0.0.0:0")), 0o644); err != nil {
		return nil, err
	}
	cmd, err := startProcFiles(cl, nil, []*os.File{f}, filepath.Join(n.dir, "haproxy.log"), "ip", "netns", "exec", n.nodeNS, "taskset", "-c", proxyCPU, "haproxy", "-db", "-f", cfgPath)
	if err != nil {
		return nil, err
	}
	time.Sleep(500 * time.Millisecond)
	if cmd.ProcessState != nil || syscall.Kill(cmd.Process.Pid, 0) != nil {
		return nil, fmt.Errorf("haproxy exited (see haproxy.log)")
	}
	socks, err := bpf.OpenProxySockets(n.bpffs)
	if err != nil {
		return nil, err
	}
	cl.add(func() { socks.Close() })
	return &hapTransparent{n: n, cmd: cmd, ln: ln, socks: socks}, nil
}

// attach puts HAProxy's listener in the socket map under the ingress
// HTTP proxy port (looked up each time: the agent allocates a new one when
// an L7 policy comes back after none).
func (h *hapTransparent) attach() error {
	if h.attached {
		return nil
	}
	port, err := h.n.httpProxyPort()
	if err != nil {
		return err
	}
	h.port = port
	if err := h.socks.Register(h.port, h.ln); err != nil {
		return fmt.Errorf("register haproxy's listener: %w", err)
	}
	h.attached = true
	return nil
}

// detach puts the Go proxy's (process proxyPID) listeners of the port
// back in the socket map.
func (h *hapTransparent) detach(proxyPID int) error {
	if !h.attached {
		return nil
	}
	lns, err := redirect.TakeListeners(proxyPID, h.port)
	if err != nil {
		return fmt.Errorf("take the Go proxy's listeners back: %w", err)
	}
	for _, l := range lns {
		if err == nil {
			err = h.socks.Register(h.port, l)
		}
		l.Close() // the socket map holds its own reference
	}
	if err != nil {
		return fmt.Errorf("register the Go proxy's listener: %w", err)
	}
	h.attached = false
	return nil
}

// httpProxyPort is the agent's ingress HTTP proxy port (allocated once an
// L7 HTTP policy is in force).
func (n *node) httpProxyPort() (uint16, error) {
	st, err := n.status()
	if err != nil {
		return 0, err
	}
	for _, p := range st.ProxyPorts {
		if p.Parser == "http" && strings.EqualFold(p.Direction, "ingress") {
			return p.Port, nil
		}
	}
	return 0, fmt.Errorf("no ingress http proxy port in the agent's status (%v)", st.ProxyPorts)
}

// hostAllowRule lets the node (entity host) reach the server pod on any
// port without L7 rules: transparent HAProxy's upstream connections leave
// from the node's address (HAProxy cannot set the from-proxy mark).
const hostAllowRule = `  - fromEntities:
    - host
`
