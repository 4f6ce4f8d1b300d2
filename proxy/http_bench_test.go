package proxy

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
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

	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/policy"
)

// rawHTTPServer is a minimal HTTP/1.1 keep-alive server answering every
// request head with 1 KiB (no body is read: the benchmark sends GETs),
// closing after a head with "Connection: close". It
// costs far less per request than net/http, so the process CPU of a run
// through the proxy is mostly the proxy's.
func rawHTTPServer(b *testing.B) string { return rawHTTPServerOn(b, "127.0.0.1") }

// rawHTTPServerOn is rawHTTPServer listening on host ("::1" for IPv6).
func rawHTTPServerOn(b *testing.B, host string) string {
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		b.Fatal(err)
	}
	resp := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1024\r\n\r\n" + strings.Repeat("x", 1024))
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	b.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				buf := make([]byte, 8192)
				have := 0
				for {
					n, err := c.Read(buf[have:])
					if err != nil {
						return
					}
					have += n
					// answer every complete head in the buffer
					for {
						i := bytes.Index(buf[:have], []byte("\r\n\r\n"))
						if i < 0 {
							break
						}
						if _, err := c.Write(resp); err != nil {
							return
						}
						if bytes.Contains(buf[:i], []byte("\r\nConnection: close")) {
							return // the newconn benchmarks' requests
						}
						have = copy(buf, buf[i+4:have])
					}
					if have == len(buf) {
						return // a head larger than the buffer
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// keepAliveClients sends b.N GET requests over conns keep-alive
// connections from 127.0.0.2 (one request in flight on each, as wrk does)
// and checks every response's status and length.
func keepAliveClients(b *testing.B, addr string, conns int) {
	keepAliveClientsCPU(b, addr, conns, nil)
}

// keepAliveClientsCPU is keepAliveClients reporting the CPU of another
// process (proxyCPU, its user and system time) as proxy-µs/req too.
func keepAliveClientsCPU(b *testing.B, addr string, conns int, proxyCPU func() (usr, sys time.Duration)) {
	keepAliveClientsFrom(b, "127.0.0.2", addr, conns, proxyCPU)
}

// keepAliveClientsFrom is keepAliveClientsCPU with the clients' source
// address src ("::1" for IPv6).
func keepAliveClientsFrom(b *testing.B, src, addr string, conns int, proxyCPU func() (usr, sys time.Duration)) {
	req := []byte("GET /api/v1/service500/items HTTP/1.1\r\nHost: bench\r\nUser-Agent: l7gate-bench\r\nAccept: */*\r\n\r\n")
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	cs := make([]net.Conn, conns)
	for i := range cs {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		cs[i] = c
	}
	one := func(c net.Conn, r *bufio.Reader) error {
		if _, err := c.Write(req); err != nil {
			return err
		}
		length := -1
		status, err := r.ReadSlice('\n')
		if err != nil {
			return err
		}
		if !bytes.HasPrefix(status, []byte("HTTP/1.1 200 ")) {
			return fmt.Errorf("status line %q", status)
		}
		for {
			line, err := r.ReadSlice('\n')
			if err != nil {
				return err
			}
			if len(line) <= 2 {
				break
			}
			if k, v, ok := bytes.Cut(line, []byte(":")); ok && strings.EqualFold(string(k), "content-length") {
				length, _ = strconv.Atoi(string(bytes.TrimSpace(v)))
			}
		}
		if length != 1024 {
			return fmt.Errorf("content-length %d", length)
		}
		_, err = r.Discard(length)
		return err
	}
	// warm-up: every connection once (the proxy dials its upstream)
	readers := make([]*bufio.Reader, conns)
	for i, c := range cs {
		readers[i] = bufio.NewReaderSize(c, 8192)
		if err := one(c, readers[i]); err != nil {
			b.Fatalf("warm-up: %v", err)
		}
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, conns)
	usr0, sys0 := cpuTimes(b)
	var pusr0, psys0 time.Duration
	if proxyCPU != nil {
		pusr0, psys0 = proxyCPU()
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i, c := range cs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				if err := one(c, readers[i]); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	usr1, sys1 := cpuTimes(b)
	if proxyCPU != nil {
		pusr1, psys1 := proxyCPU()
		pu, ps := pusr1-pusr0, psys1-psys0
		b.ReportMetric(float64((pu+ps).Nanoseconds())/1e3/float64(b.N), "proxy-µs/req")
		b.ReportMetric(float64(pu.Nanoseconds())/1e3/float64(b.N), "proxy-usr-µs/req")
	}
	close(errc)
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "req/s")
	// Process CPU (client, server and proxy) per request: steadier than
	// throughput on a loaded machine; proxy minus direct is what the
	// proxy costs (make bench's "proxy CPU-s / 1000 req" is µs/req).
	usr, sys := usr1-usr0, sys1-sys0
	b.ReportMetric(float64((usr+sys).Microseconds())/float64(b.N), "cpu-µs/req")
	b.ReportMetric(float64(usr.Microseconds())/float64(b.N), "usr-µs/req")
	b.ReportMetric(float64(sys.Microseconds())/float64(b.N), "sys-µs/req")
}

// benchHTTPProxy starts the Go proxy as `l7gate proxy` sets it up under
// the agent for make bench's keep-alive row: 100 HTTP rules (method and
// path regexes), the client's request matching the 51st, an access log
// to a file (accessLog: "buffered" as now, "per-record", or "none"; with
// "+forward" every record also goes to a flow intake as under the
// agent; "+keepsource" at the end: the upstream bound to the client's
// address and marked, as the proxy command does, root only). It returns
// the proxy's address.
func benchHTTPProxy(b testing.TB, upstream, accessLog string) string {
	up := netip.MustParseAddrPort(upstream)
	no := false
	accessLog, keepSource := strings.CutSuffix(accessLog, "+keepsource")
	var log func(*flow.Record)
	if accessLog != "none" {
		f, err := os.Create(filepath.Join(b.TempDir(), "access.log"))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { f.Close() })
		switch accessLog {
		case "per-record", "per-record+forward":
			log = flow.JSONLines(f)
		case "buffered":
			var flush func()
			log, flush = flow.BufferedJSONLines(f, accessLogDelay)
			b.Cleanup(flush)
		case "buffered+forward":
			// as `l7gate proxy` wires them: each record encoded once,
			// for the file and the agent's flow intake
			var flush func()
			log, flush = flow.BufferedJSONLinesForward(f, accessLogDelay, benchForwarder(b, true))
			b.Cleanup(flush)
		default:
			b.Fatalf("access log %q", accessLog)
		}
		if accessLog == "per-record+forward" {
			log = forwardTo(b, log, true)
		}
	}
	opts := Options{ListenHost: "127.0.0.1", Transparent: &no, AccessLog: log,
		OriginalDestination: func(net.Conn) (netip.AddrPort, error) { return up, nil }}
	if keepSource {
		// as `l7gate proxy` under the agent: the upstream from the
		// client's address (IP_TRANSPARENT), marked (SO_MARK)
		opts.KeepSource = true
		opts.Mark = func(policy.Identity, policy.Direction) uint32 { return 0x200 }
	}
	host := "127.0.0.1"
	if up.Addr().Is6() {
		// IPv6 as under the agent: the port's second listener on
		// ListenHost6, the client and the upstream on ::1.
		opts.ListenHost6, host = "::1", "::1"
	}
	p := New(opts)
	b.Cleanup(func() { p.Close() })
	var rules []policy.HTTPRule
	for i := range 100 {
		rules = append(rules, policy.HTTPRule{Method: "GET", Path: fmt.Sprintf("/api/v1/service%d/items", i*10)})
	}
	port := freePortB(b)
	if up.Addr().Is6() {
		port = freePortBoth(b)
	}
	cfg := httpConfig("1", port, up.Port(), rules...)
	if up.Addr().Is6() {
		// ::1 is the server endpoint as a destination and the friend
		// as a source (endpoints and members are separate tables).
		cfg.Endpoints[0].IPs = append(cfg.Endpoints[0].IPs, up.Addr())
		cfg.Members[1].Prefixes = append(cfg.Members[1].Prefixes, netip.PrefixFrom(up.Addr(), 128))
	}
	if err := p.Apply(cfg); err != nil {
		b.Fatal(err)
	}
	return net.JoinHostPort(host, strconv.Itoa(int(port)))
}

// freePortBoth is a port free on both 127.0.0.1 and ::1 (the proxy
// opens the IPv4 and the IPv6 listener of a port; a port only free on
// 127.0.0.1 leaves the port without its IPv6 listener).
func freePortBoth(b testing.TB) uint16 {
	for range 100 {
		ln6, err := net.Listen("tcp", "[::1]:0")
		if err != nil {
			b.Fatal(err)
		}
		port := ln6.Addr().(*net.TCPAddr).Port
		held := []io.Closer{ln6}
		ok := true
		// TCP on 127.0.0.1, UDP on both (a dns listener's sockets)
		if ln4, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port))); err == nil {
			held = append(held, ln4)
		} else {
			ok = false
		}
		for _, a := range []string{"127.0.0.1", "::1"} {
			if !ok {
				break
			}
			if c, err := net.ListenPacket("udp", net.JoinHostPort(a, strconv.Itoa(port))); err == nil {
				held = append(held, c)
			} else {
				ok = false
			}
		}
		for _, c := range held {
			c.Close()
		}
		if ok {
			return uint16(port)
		}
	}
	b.Fatal("no port free on both 127.0.0.1 and ::1")
	return 0
}

func freePortB(b testing.TB) uint16 {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	return uint16(ln.Addr().(*net.TCPAddr).Port)
}

// BenchmarkHTTP1KeepAlive is make bench's keep-alive row in-process: 64
// keep-alive connections, 1 KiB responses, direct and through the Go
// proxy with 100 rules and its access log as under the agent. Run it
// with -count N for interleaved rounds; the proxy's cost per request is
// its cpu-µs/req minus direct's (µs per request = CPU-ms per 1000).
func BenchmarkHTTP1KeepAlive(b *testing.B) {
	upstream := rawHTTPServer(b)
	b.Run("direct", func(b *testing.B) { keepAliveClients(b, upstream, 64) })
	b.Run("splice", func(b *testing.B) { keepAliveClients(b, spliceProxy(b, upstream), 64) })
	for _, l := range []string{"buffered+forward", "buffered", "per-record", "none"} {
		b.Run("proxy-log="+l, func(b *testing.B) { keepAliveClients(b, benchHTTPProxy(b, upstream, l), 64) })
	}
	// The proxy in a process of its own, as in make bench: its CPU alone
	// (proxy-µs/req) without the client's and server's noise.
	for _, l := range []string{"buffered+forward", "buffered", "none"} {
		b.Run("process-log="+l, func(b *testing.B) {
			addr, cpu := proxyProcess(b, upstream, l)
			keepAliveClientsCPU(b, addr, 64, cpu)
		})
	}
	// The floor: the splice proxy in a process of its own (no parsing,
	// no policy, no log), its CPU measured as the Go proxy's is.
	b.Run("process-splice", func(b *testing.B) {
		addr, cpu := proxyProcess(b, upstream, "splice")
		keepAliveClientsCPU(b, addr, 64, cpu)
	})
}

// BenchmarkHTTP1KeepAliveIPv6 is issue 21's proxy row: the keep-alive
// benchmark over IPv4 and over IPv6 (proxy listening on [::1], client
// and upstream on ::1), the families interleaved in every round (run it
// with -count N). Compare per family: direct and proxy cpu-µs/req (the
// whole process; proxy minus direct is the proxy's cost) and process's
// proxy-µs/req (the proxy's own CPU in a process of its own).
func BenchmarkHTTP1KeepAliveIPv6(b *testing.B) {
	families := []struct{ name, host, client string }{
		{"ipv4", "127.0.0.1", "127.0.0.2"},
		{"ipv6", "::1", "::1"},
	}
	for _, mode := range []string{"direct", "proxy", "process"} {
		for _, f := range families {
			b.Run(mode+"/"+f.name, func(b *testing.B) {
				upstream := rawHTTPServerOn(b, f.host)
				switch mode {
				case "direct":
					keepAliveClientsFrom(b, f.client, upstream, 64, nil)
				case "proxy":
					keepAliveClientsFrom(b, f.client, benchHTTPProxy(b, upstream, "buffered"), 64, nil)
				case "process":
					addr, cpu := proxyProcess(b, upstream, "buffered")
					keepAliveClientsFrom(b, f.client, addr, 64, cpu)
				}
			})
		}
	}
}

func isRoot() bool { return os.Geteuid() == 0 }

// cpuTimes is the process's user and system CPU time.
func cpuTimes(b *testing.B) (usr, sys time.Duration) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
}

// spliceProxy is the floor of a user-space proxy: every connection copied
// both ways to upstream with io.Copy (splice(2) between TCP sockets), no
// parsing, no policy, no log.
func spliceProxy(b testing.TB, upstream string) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	b.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			wg.Add(2)
			go func() { defer wg.Done(); io.Copy(u, c); u.(*net.TCPConn).CloseWrite() }()
			go func() { defer wg.Done(); io.Copy(c, u); c.Close() }()
		}
	}()
	return ln.Addr().String()
}

// TestHelperKeepAliveProxy is the proxy process of BenchmarkHTTP1KeepAlive
// (run by it with L7GATE_HELPER_PROXY set): it prints the proxy's
// address, answers each "cpu" line on stdin with its user and system CPU
// in nanoseconds, and ends when stdin closes.
func TestHelperKeepAliveProxy(t *testing.T) {
	if os.Getenv("L7GATE_HELPER_PROXY") == "" {
		t.Skip("the proxy process of BenchmarkHTTP1KeepAlive; runs only when it starts it")
	}
	var addr string
	if mode := os.Getenv("L7GATE_HELPER_PROXY"); mode == "splice" {
		addr = spliceProxy(t, os.Getenv("L7GATE_HELPER_UPSTREAM"))
	} else {
		addr = benchHTTPProxy(t, os.Getenv("L7GATE_HELPER_UPSTREAM"), mode)
	}
	fmt.Printf("addr %s\n", addr)
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		fmt.Printf("cpu %d %d\n", ru.Utime.Nano(), ru.Stime.Nano())
	}
}

// proxyProcess starts TestHelperKeepAliveProxy in a process of its own
// and returns its address and a reader of its CPU time.
func proxyProcess(b *testing.B, upstream, accessLog string) (string, func() (usr, sys time.Duration)) {
	args := []string{"-test.run=^TestHelperKeepAliveProxy$"}
	if prof := os.Getenv("L7GATE_PROXY_CPUPROFILE"); prof != "" {
		// the proxy process's own CPU profile (the benchmark's
		// -cpuprofile covers only the clients and the server)
		args = append(args, "-test.cpuprofile="+prof)
	}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "L7GATE_HELPER_PROXY="+accessLog, "L7GATE_HELPER_UPSTREAM="+upstream)
	if n := os.Getenv("L7GATE_PROXY_GOMAXPROCS"); n != "" {
		// make bench pins the proxy to one CPU (GOMAXPROCS 1)
		cmd.Env = append(cmd.Env, "GOMAXPROCS="+n)
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	outp, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { in.Close(); cmd.Wait() })
	out := bufio.NewReader(outp)
	line, err := out.ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "addr ")
	if err != nil || !ok {
		b.Fatalf("proxy process: %q, %v", line, err)
	}
	return addr, func() (time.Duration, time.Duration) {
		var usr, sys int64
		if _, err := fmt.Fprintln(in, "cpu"); err != nil {
			b.Fatal(err)
		}
		line, err := out.ReadString('\n')
		if _, serr := fmt.Sscanf(line, "cpu %d %d", &usr, &sys); err != nil || serr != nil {
			b.Fatalf("proxy process cpu: %q, %v %v", line, err, serr)
		}
		return time.Duration(usr), time.Duration(sys)
	}
}
