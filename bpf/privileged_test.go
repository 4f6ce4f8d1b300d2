package bpf

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	egressProxyPort  = 15001
	ingressProxyPort = 15002
	sinkProxyPort    = 15003
	identA           = Identity(1001)
	identB           = Identity(1002)
)

func policyP1(a, b *testPod) []EndpointPolicy {
	return []EndpointPolicy{{
		Endpoint: a.id,
		Egress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{
			{Peer: b.ident, Protocol: ProtoTCP, Port: 80, Verdict: VerdictAllow, RuleID: 101},
			{Peer: b.ident, Protocol: ProtoTCP, Port: 82, Verdict: VerdictAllow, RuleID: 102},
			{Peer: b.ident, Protocol: ProtoUDP, Port: 53, EndPort: 54, Verdict: VerdictAllow, RuleID: 103},
			{Peer: b.ident, Protocol: ProtoTCP, Port: 7000, EndPort: 8081, Verdict: VerdictAllow, RuleID: 104},
		}},
	}, {
		Endpoint: b.id,
		Ingress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{
			{Peer: a.ident, Protocol: ProtoTCP, Port: 80, Verdict: VerdictAllow, RuleID: 201},
			{Peer: a.ident, Protocol: ProtoTCP, Port: 81, EndPort: 82, Verdict: VerdictAllow, RuleID: 202},
			{Peer: a.ident, Protocol: ProtoTCP, Port: 82, Verdict: VerdictDeny, RuleID: 203},
			{Peer: a.ident, Protocol: ProtoUDP, Port: 53, Verdict: VerdictAllow, RuleID: 204},
			{Peer: a.ident, Protocol: ProtoTCP, Port: 7000, Verdict: VerdictAllow, RuleID: 205},
			{Peer: a.ident, Protocol: ProtoTCP, Port: 8080, Verdict: VerdictRedirect, ProxyPort: ingressProxyPort, RuleID: 206},
			{Peer: IdentityHost, Protocol: ProtoTCP, Port: 9000, Verdict: VerdictAllow, RuleID: 207},
			{Peer: IdentityWorld, Protocol: ProtoTCP, Port: 81, Verdict: VerdictAllow, RuleID: 208},
			{Peer: IdentityWorld, Protocol: ProtoTCP, Port: 8080, Verdict: VerdictRedirect, ProxyPort: ingressProxyPort, RuleID: 209},
			{Peer: IdentityHost, Protocol: ProtoTCP, Port: 8080, Verdict: VerdictRedirect, ProxyPort: ingressProxyPort, RuleID: 210},
			{Peer: IdentityAny, Protocol: ProtoTCP, Port: 8081, Verdict: VerdictRedirect, ProxyPort: sinkProxyPort, RuleID: 211},
		}},
	}}
}

// withEgressRedirect turns a's egress TCP 80 entry into a redirect.
func withEgressRedirect(pol []EndpointPolicy) []EndpointPolicy {
	out := append([]EndpointPolicy(nil), pol...)
	eg := append([]PolicyEntry(nil), out[0].Egress.Entries...)
	eg[0].Verdict, eg[0].ProxyPort = VerdictRedirect, egressProxyPort
	out[0].Egress.Entries = eg
	return out
}

func twoPods(t *testing.T) (*topology, *testPod, *testPod) {
	tp := newTopology(t)
	a := tp.addPod("a", "198.18.1.10", 1, identA)
	b := tp.addPod("b", "198.18.1.11", 2, identB)
	for _, port := range []string{"80", "81", "82", "9000"} {
		serveBanner(t, listenTCP(t, b.ns, "198.18.1.11:"+port, false), "server")
	}
	udpEcho(t, b.ns, "198.18.1.11:53")
	udpEcho(t, b.ns, "198.18.1.11:54")
	return tp, a, b
}

func wantBanner(t *testing.T, ns, addr string, o dialOpts, want string) {
	t.Helper()
	got, err := dialRead(ns, addr, o)
	if err != nil || got != want {
		t.Errorf("%s -> %s: got %q, %v; want %q", ns, addr, got, err, want)
	}
}

func wantBlocked(t *testing.T, ns, addr string, o dialOpts) {
	t.Helper()
	o.timeout = time.Second
	if got, err := dialRead(ns, addr, o); err == nil {
		t.Errorf("%s -> %s: connected (%q), want dropped", ns, addr, got)
	}
}

func TestPrivilegedDatapath(t *testing.T) {
	requireRoot(t)
	bpffs := mountBPFFS(t)
	tp, a, b := twoPods(t)
	ext := tp.addExternal("x", "198.18.100.2")
	d := openTest(t, Config{BPFFSPath: bpffs})
	for _, p := range []*testPod{a, b} {
		ifindex := tp.ifindex(p.hostDev)
		mustInNS(t, tp.node, func() error {
			return d.AttachEndpoint(Endpoint{ID: p.id, Ifindex: ifindex, IPv4: p.ip})
		})
	}
	if err := d.AttachSocketLookup(filepath.Join("/var/run/netns", tp.node)); err != nil {
		t.Fatal(err)
	}
	if _, err := d.SyncIPCache(tp.ipcache()); err != nil {
		t.Fatal(err)
	}
	p1 := policyP1(a, b)
	if _, err := d.SyncPolicy(p1); err != nil {
		t.Fatal(err)
	}
	egressProxy := listenTCP(t, tp.node, "127.0.0.1:0", true)
	egressSeen := serveBanner(t, egressProxy, "proxy")
	ingressProxy := listenTCP(t, tp.node, "127.0.0.1:0", true)
	serveBanner(t, ingressProxy, "proxy")
	sink := listenTCP(t, tp.node, "127.0.0.1:0", true)
	serveSink(t, sink)
	if err := d.RegisterProxyListener(sinkProxyPort, sink); err != nil {
		t.Fatal(err)
	}
	if err := d.RegisterProxyListener(egressProxyPort, egressProxy); err != nil {
		t.Fatal(err)
	}
	if err := d.RegisterProxyListener(ingressProxyPort, ingressProxy); err != nil {
		t.Fatal(err)
	}

	// Every datapath event ends up in the log of a failing run.
	evctx, evcancel := context.WithCancel(context.Background())
	evs, err := d.Events(evctx)
	if err != nil {
		t.Fatal(err)
	}
	evdone := make(chan struct{})
	go func() {
		defer close(evdone)
		for ev := range evs {
			t.Logf("event: %s", ev)
		}
	}()
	defer func() { evcancel(); <-evdone }()

	t.Run("node checks", func(t *testing.T) {
		mustInNS(t, tp.node, CheckNode)
		if err := inNS(a.ns, CheckNode); !errors.Is(err, ErrNodeSetup) {
			t.Errorf("pod namespace: got %v, want ErrNodeSetup", err)
		}
	})
	t.Run("allowed tcp", func(t *testing.T) {
		wantBanner(t, a.ns, "198.18.1.11:80", dialOpts{}, "server 198.18.1.11:80")
	})
	t.Run("denied by sender egress", func(t *testing.T) {
		wantBlocked(t, a.ns, "198.18.1.11:81", dialOpts{})
	})
	t.Run("denied by receiver ingress", func(t *testing.T) {
		wantBlocked(t, a.ns, "198.18.1.11:82", dialOpts{})
	})
	t.Run("udp", func(t *testing.T) {
		if got, err := udpQuery(a.ns, "198.18.1.11:53"); err != nil || got != "echo 198.18.1.11:53" {
			t.Errorf("udp 53: %q %v", got, err)
		}
		if got, err := udpQuery(a.ns, "198.18.1.11:54"); err == nil {
			t.Errorf("udp 54 answered %q, want dropped by receiver", got)
		}
	})
	t.Run("node to pod", func(t *testing.T) {
		wantBanner(t, tp.node, "198.18.1.11:9000", dialOpts{}, "server 198.18.1.11:9000")
		wantBlocked(t, tp.node, "198.18.1.11:80", dialOpts{})
		wantBanner(t, tp.node, "198.18.1.11:8080", dialOpts{}, "proxy 198.18.1.11:8080")
	})
	t.Run("outside to pod", func(t *testing.T) {
		wantBanner(t, ext.ns, "198.18.1.11:81", dialOpts{}, "server 198.18.1.11:81")
		wantBlocked(t, ext.ns, "198.18.1.11:80", dialOpts{})
		for range 2 {
			wantBanner(t, ext.ns, "198.18.1.11:8080", dialOpts{localPort: 43000}, "proxy 198.18.1.11:8080")
		}
	})
	t.Run("ingress redirect", func(t *testing.T) {
		wantBanner(t, a.ns, "198.18.1.11:8080", dialOpts{}, "proxy 198.18.1.11:8080")
		for range 2 {
			wantBanner(t, a.ns, "198.18.1.11:8080", dialOpts{localPort: 42000}, "proxy 198.18.1.11:8080")
		}
	})
	t.Run("bulk through ingress redirect", func(t *testing.T) {
		// Large segments (GSO from the node's own socket, GRO'd ones from
		// the pod) survive being turned around into the host.
		for _, ns := range []string{a.ns, tp.node, ext.ns} {
			got, err := sendBulk(ns, "198.18.1.11:8081", 4<<20)
			if err != nil || got != fmt.Sprintf("got %d at 198.18.1.11:8081", 4<<20) {
				t.Errorf("%s: %q %v", ns, got, err)
			}
		}
	})
	t.Run("egress redirect reusing source port", func(t *testing.T) {
		if _, err := d.SyncPolicy(withEgressRedirect(p1)); err != nil {
			t.Fatal(err)
		}
		// The proxy closes first, so its side of the first connection is in
		// TIME_WAIT when the second SYN with the same 4-tuple arrives.
		for i := range 2 {
			got, err := dialRead(a.ns, "198.18.1.11:80", dialOpts{localPort: 41000})
			if err != nil || got != "proxy 198.18.1.11:80" {
				t.Errorf("connection %d: %q %v", i, got, err)
			}
		}
		if seen := egressSeen.seen(); len(seen) != 2 || seen[0] != "198.18.1.11:80" {
			t.Errorf("proxy accepted %v", seen)
		}
	})
	t.Run("from proxy", func(t *testing.T) {
		// The proxy's upstream leg carries a's identity in its mark: b's
		// ingress admits it as from a (the node itself may not reach :80).
		proxy := trustedDialer(t, d, tp.node)
		if got, err := proxy.dialRead("198.18.1.11:80", ProxyMark(Egress, a.ident)); err != nil || got != "server 198.18.1.11:80" {
			t.Errorf("proxy as a: %q %v", got, err)
		}
		if got, err := proxy.dialRead("198.18.1.11:80", ProxyMark(Egress, 4242)); err == nil {
			t.Errorf("proxy as 4242: connected (%q), want dropped", got)
		}
	})
	t.Run("missing listener drops", func(t *testing.T) {
		if err := d.UnregisterProxyListener(egressProxyPort); err != nil {
			t.Fatal(err)
		}
		wantBlocked(t, a.ns, "198.18.1.11:80", dialOpts{})
	})
	t.Run("removing the redirect restores the direct path", func(t *testing.T) {
		if _, err := d.SyncPolicy(p1); err != nil {
			t.Fatal(err)
		}
		wantBanner(t, a.ns, "198.18.1.11:80", dialOpts{}, "server 198.18.1.11:80")
		// The same 4-tuple as the redirected connections, whose proxy side
		// is still in TIME_WAIT on the node.
		wantBanner(t, a.ns, "198.18.1.11:80", dialOpts{localPort: 41000}, "server 198.18.1.11:80")
	})
	counters, err := d.RuleCounters()
	if err != nil {
		t.Fatal(err)
	}
	for _, rule := range []uint32{101, 201, 203, 206, 207} {
		if counters[rule].Packets == 0 {
			t.Errorf("rule %d not counted", rule)
		}
	}
	t.Run("detach", func(t *testing.T) {
		for _, p := range []*testPod{a, b} {
			if err := d.DetachEndpoint(tp.ifindex(p.hostDev)); err != nil {
				t.Fatal(err)
			}
		}
		wantBanner(t, a.ns, "198.18.1.11:81", dialOpts{}, "server 198.18.1.11:81")
		pins, err := os.ReadDir(filepath.Join(bpffs, "links"))
		if err != nil {
			t.Fatal(err)
		}
		if len(pins) != 1 || !strings.HasPrefix(pins[0].Name(), "sk_lookup_") {
			t.Errorf("link pins left: %v", pins)
		}
	})
}

// loaderSpec is what the loader child process applies.
type loaderSpec struct {
	BPFFS     string
	Endpoints []loaderEndpoint
	IPCache   []IPCacheEntry
	Policy    []EndpointPolicy
}

type loaderEndpoint struct {
	ID   uint32
	Dev  string
	IPv4 netip.Addr
}

const loaderEnv = "L7GATE_BPF_TEST_LOADER"

func TestMain(m *testing.M) {
	if spec := os.Getenv(dialerEnv); spec != "" {
		if err := dialerChild(spec); err != nil {
			fmt.Fprintln(os.Stderr, "dialer:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if spec := os.Getenv(lbClientEnv); spec != "" {
		if err := lbClientChild(spec); err != nil {
			fmt.Fprintln(os.Stderr, "socket-lb client:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if spec := os.Getenv(dnsProxyEnv); spec != "" {
		if err := dnsProxyChild(spec); err != nil {
			fmt.Fprintln(os.Stderr, "dns proxy:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if spec := os.Getenv(loaderEnv); spec != "" {
		if err := loaderChild(spec); err != nil {
			fmt.Fprintln(os.Stderr, "loader:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	// The tests must leave no BPF object or socket open.
	before := openFDs()
	code := m.Run()
	if after := openFDs(); code == 0 && after > before {
		fmt.Fprintf(os.Stderr, "leaked %d bpf or socket file descriptors\n", after-before)
		code = 1
	}
	os.Exit(code)
}

// openFDs counts open BPF objects (maps, programs, links) and sockets.
func openFDs() int {
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	n := 0
	for _, fd := range fds {
		target, _ := os.Readlink("/proc/self/fd/" + fd.Name())
		if strings.HasPrefix(target, "anon_inode:bpf") || strings.HasPrefix(target, "socket:") {
			n++
		}
	}
	return n
}

// loaderChild plays the agent: it applies the spec, reports, and waits to
// be killed.
func loaderChild(specPath string) error {
	raw, err := os.ReadFile(specPath)
	if err != nil {
		return err
	}
	var spec loaderSpec
	if err := json.Unmarshal(raw, &spec); err != nil {
		return err
	}
	d, err := Open(context.Background(), Config{BPFFSPath: spec.BPFFS})
	if err != nil {
		return err
	}
	defer d.Close()
	for _, ep := range spec.Endpoints {
		ifc, err := net.InterfaceByName(ep.Dev)
		if err != nil {
			return err
		}
		if err := d.AttachEndpoint(Endpoint{ID: ep.ID, Ifindex: ifc.Index, IPv4: ep.IPv4}); err != nil {
			return err
		}
	}
	if err := d.AttachSocketLookup("/proc/self/ns/net"); err != nil {
		return err
	}
	ist, err := d.SyncIPCache(spec.IPCache)
	if err != nil {
		return err
	}
	pst, err := d.SyncPolicy(spec.Policy)
	if err != nil {
		return err
	}
	fmt.Printf("ready ipcache[%s] policy[%s]\n", ist, pst)
	io.Copy(io.Discard, os.Stdin) // until the test closes stdin or kills us
	return nil
}

type loaderProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	ready string
}

func startLoader(t *testing.T, node, specPath string) *loaderProc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", node, exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), loaderEnv+"="+specPath)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lp := &loaderProc{cmd: cmd, stdin: stdin}
	t.Cleanup(lp.kill)
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ready") {
		t.Fatalf("loader did not get ready: %q %v", line, err)
	}
	lp.ready = strings.TrimSpace(line)
	return lp
}

// kill is SIGKILL: no chance to clean up, as in a crash.
func (lp *loaderProc) kill() {
	if lp.cmd.ProcessState != nil {
		return
	}
	lp.cmd.Process.Signal(syscall.SIGKILL)
	lp.cmd.Wait()
}

func TestPrivilegedLoaderRestart(t *testing.T) {
	requireRoot(t)
	bpffs := mountBPFFS(t)
	tp, a, b := twoPods(t)
	echo := listenTCP(t, b.ns, "198.18.1.11:7000", false)
	var echoWG sync.WaitGroup
	var echoMu sync.Mutex
	var echoConns []net.Conn
	echoWG.Add(1)
	go func() {
		defer echoWG.Done()
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			echoMu.Lock()
			echoConns = append(echoConns, c)
			echoMu.Unlock()
			echoWG.Add(1)
			go func() { defer echoWG.Done(); io.Copy(c, c) }()
		}
	}()
	t.Cleanup(func() {
		echo.Close()
		echoMu.Lock()
		for _, c := range echoConns {
			c.Close()
		}
		echoMu.Unlock()
		echoWG.Wait()
	})

	spec := loaderSpec{BPFFS: bpffs, IPCache: tp.ipcache(), Policy: policyP1(a, b)}
	for _, p := range []*testPod{a, b} {
		spec.Endpoints = append(spec.Endpoints, loaderEndpoint{ID: p.id, Dev: p.hostDev, IPv4: p.ip})
	}
	raw, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	specPath := filepath.Join(t.TempDir(), "spec.json")
	if err := os.WriteFile(specPath, raw, 0o600); err != nil {
		t.Fatal(err)
	}

	first := startLoader(t, tp.node, specPath)
	t.Logf("first loader: %s", first.ready)
	wantBanner(t, a.ns, "198.18.1.11:80", dialOpts{}, "server 198.18.1.11:80")
	wantBlocked(t, a.ns, "198.18.1.11:81", dialOpts{})

	// A proxy of its own registers its listener through the pins.
	socks, err := OpenProxySockets(bpffs)
	if err != nil {
		t.Fatal(err)
	}
	defer socks.Close()
	sink := listenTCP(t, tp.node, "127.0.0.1:0", true)
	serveSink(t, sink)
	if err := socks.Register(sinkProxyPort, sink); err != nil {
		t.Fatal(err)
	}
	wantRedirected := func(when string) {
		t.Helper()
		got, err := sendBulk(a.ns, "198.18.1.11:8081", 1<<20)
		if err != nil || got != fmt.Sprintf("got %d at 198.18.1.11:8081", 1<<20) {
			t.Errorf("redirect %s: %q %v", when, got, err)
		}
	}
	wantRedirected("under the first loader")

	// A long-lived connection opened under the first loader.
	var conn net.Conn
	mustInNS(t, a.ns, func() error {
		var err error
		conn, err = net.DialTimeout("tcp4", "198.18.1.11:7000", 3*time.Second)
		return err
	})
	defer conn.Close()
	echoOnce := func(msg string) error {
		conn.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := fmt.Fprintln(conn, msg); err != nil {
			return err
		}
		line, err := bufio.NewReader(io.LimitReader(conn, int64(len(msg)+1))).ReadString('\n')
		if err != nil || strings.TrimSpace(line) != msg {
			return fmt.Errorf("echo %q: got %q, %v", msg, line, err)
		}
		return nil
	}
	if err := echoOnce("before"); err != nil {
		t.Fatal(err)
	}

	// Allowed connections keep working throughout the kill and restart.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var loopErrs []error
	attempts := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 2000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			got, err := dialRead(a.ns, "198.18.1.11:80", dialOpts{})
			mu.Lock()
			attempts++
			if err != nil || got != "server 198.18.1.11:80" {
				loopErrs = append(loopErrs, fmt.Errorf("attempt %d: %q %v", i, got, err))
			}
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	}()

	first.kill()
	// No loader at all: still enforced.
	wantBlocked(t, a.ns, "198.18.1.11:81", dialOpts{})
	wantRedirected("without a loader")
	if err := echoOnce("between"); err != nil {
		t.Error(err)
	}

	second := startLoader(t, tp.node, specPath)
	t.Logf("second loader: %s", second.ready)
	if !strings.Contains(second.ready, "policy[added=0 updated=0 deleted=0") {
		t.Errorf("restarted loader rewrote policy: %s", second.ready)
	}
	wantBlocked(t, a.ns, "198.18.1.11:81", dialOpts{})
	wantBanner(t, a.ns, "198.18.1.11:80", dialOpts{}, "server 198.18.1.11:80")
	wantRedirected("under the second loader")
	if err := echoOnce("after"); err != nil {
		t.Error(err)
	}
	close(stop)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d connections during the restart", attempts)
	for _, err := range loopErrs {
		t.Error(err)
	}
	if attempts == 0 {
		t.Error("no connections attempted during the restart")
	}
}

func TestPrivilegedAdoptAfterInterfaceGone(t *testing.T) {
	requireRoot(t)
	bpffs := mountBPFFS(t)
	tp := newTopology(t)
	a := tp.addPod("a", "198.18.1.10", 1, identA)
	d1, err := Open(context.Background(), Config{BPFFSPath: bpffs, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ifindex := tp.ifindex(a.hostDev)
	mustInNS(t, tp.node, func() error { return d1.AttachEndpoint(Endpoint{ID: a.id, Ifindex: ifindex}) })
	if err := d1.Close(); err != nil {
		t.Fatal(err)
	}
	ipCmd(t, "-n", tp.node, "link", "del", a.hostDev)

	openTest(t, Config{BPFFSPath: bpffs})
	pins, err := os.ReadDir(filepath.Join(bpffs, "links"))
	if err != nil {
		t.Fatal(err)
	}
	if len(pins) != 0 {
		t.Errorf("stale link pins kept: %v", pins)
	}
}

func TestPrivilegedIncompatiblePin(t *testing.T) {
	requireRoot(t)
	bpffs := mountBPFFS(t)
	d, err := Open(context.Background(), Config{BPFFSPath: bpffs})
	if err != nil {
		t.Fatal(err)
	}
	d.Close()
	_, err = Open(context.Background(), Config{BPFFSPath: bpffs, MapSizes: MapSizes{Policy: 1000}})
	if !errors.Is(err, ErrIncompatiblePin) {
		t.Fatalf("got %v, want ErrIncompatiblePin", err)
	}
}
