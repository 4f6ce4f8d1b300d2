package proxy

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/parsers/kafka"
	"github.com/l7gate/l7gate/policy"
)

// benchKafka is make bench's Kafka row in-process: kafka-go writers (8,
// sharing one Transport, 10 × 100 B messages per produce, acks=1) to a
// kfake broker, directly or through the Go proxy set up as `l7gate proxy`
// sets it up (a JSON-lines access log to a file: buffered as
// `l7gate proxy` writes it, per record as it did before, or none). The
// "+forward" variants add the agent's flow forwarder:
// per-record+forward-nolinger is how the proxy logged under the agent
// before, buffered+forward how it logs now.
func benchKafka(b *testing.B, through bool, workers int, accessLog string) {
	mode := ""
	if through {
		mode = "proxy"
	}
	benchKafkaMode(b, mode, workers, 10, 100, accessLog)
}

// benchKafkaMode runs the Kafka row with the broker and the clients in
// this process and, by mode: "" direct; "proxy" the Go proxy in this
// process; "process" the Go proxy in a process of its own (the test
// binary re-executed as TestHelperKafkaProxy), as in make bench;
// "splice" a byte-copying relay (no parsing, no policy) in a process of
// its own, the floor of any user-space proxy there. The process modes
// report that process's CPU alone (proxy-µs/produce) and its context
// switches and system calls... per produce (ctxt/produce).
func benchKafkaMode(b *testing.B, mode string, workers, batch, size int, accessLog string) {
	port := freePortB(b)
	proxyAddr := &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: int(port)}
	var brokerAddr string
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "bench"), kfake.BlackholeProduce(),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return nil, err
			}
			brokerAddr = ln.Addr().String()
			if mode == "" {
				return ln, nil
			}
			return advertised{Listener: ln, addr: proxyAddr}, nil
		}))
	if err != nil {
		b.Fatal(err)
	}
	defer cluster.Close()
	addr := brokerAddr
	var usage func() procUsage
	switch mode {
	case "proxy":
		benchKafkaProxy(b, port, brokerAddr, accessLog)
		addr = proxyAddr.String()
	case "process", "splice":
		usage = kafkaProxyProcess(b, mode, port, brokerAddr, accessLog)
		addr = proxyAddr.String()
	}
	tr := &kafkago.Transport{ClientID: "l7gate-bench", IdleTimeout: time.Minute, MetadataTTL: time.Hour,
		Dial: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}).DialContext}
	defer tr.CloseIdleConnections()
	writers := make([]*kafkago.Writer, workers)
	for i := range writers {
		writers[i] = &kafkago.Writer{Addr: kafkago.TCP(addr), Topic: "bench", Transport: tr, RequiredAcks: kafkago.RequireOne,
			BatchSize: batch, BatchTimeout: time.Millisecond, WriteTimeout: 5 * time.Second}
		defer writers[i].Close()
	}
	msgs := make([]kafkago.Message, batch)
	for i := range msgs {
		msgs[i] = kafkago.Message{Value: make([]byte, size)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// warm up every writer (its connection, and its metadata)
	for _, w := range writers {
		if err := w.WriteMessages(ctx, msgs...); err != nil {
			b.Fatalf("warm-up: %v", err)
		}
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, workers)
	var p0 procUsage
	if usage != nil {
		p0 = usage()
	}
	cpu0 := cpuTime(b)
	b.ResetTimer()
	for _, w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				if err := w.WriteMessages(ctx, msgs...); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	cpu := cpuTime(b) - cpu0
	close(errc)
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "produce/s")
	// Process CPU (client, broker and proxy) per produce call: steadier
	// than throughput on a loaded machine; proxy minus direct is what
	// the proxy costs.
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/produce")
	if usage != nil {
		p := usage().sub(p0)
		n := float64(b.N)
		b.ReportMetric(float64(p.cpu.Microseconds())/n, "proxy-µs/produce")
		b.ReportMetric(float64(p.ctxt)/n, "proxy-ctxt/produce")
	}
}

// benchKafkaProxy starts the Go proxy as `l7gate proxy` sets it up on
// 127.0.0.1:port in front of the broker at brokerAddr, with a produce rule
// for topic bench and an access log: "buffered" as `l7gate proxy` writes
// it, "per-record" as it did before, "none"; "+forward" adds the agent's
// flow forwarder.
func benchKafkaProxy(tb testing.TB, port uint16, brokerAddr, accessLog string) {
	f, err := os.Create(filepath.Join(tb.TempDir(), "access.log"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { f.Close() })
	up := netip.MustParseAddrPort(brokerAddr)
	no := false
	var log func(*flow.Record)
	switch accessLog {
	case "per-record", "per-record+forward-nolinger":
		log = flow.JSONLines(f)
	case "buffered", "buffered+forward", "buffered+forward-nolinger":
		var flush func()
		log, flush = flow.BufferedJSONLines(f, accessLogDelay)
		tb.Cleanup(flush)
	}
	if strings.Contains(accessLog, "+forward") {
		// as under the agent: every record also goes to the agent's
		// flow intake (here a reader decoding the lines, as it does)
		log = forwardTo(tb, log, accessLog == "buffered+forward")
	}
	p := New(Options{ListenHost: "127.0.0.1", Transparent: &no, AccessLog: log,
		OriginalDestination: func(net.Conn) (netip.AddrPort, error) { return up, nil }})
	tb.Cleanup(func() { p.Close() })
	keys, _ := policy.KafkaRoleAPIKeys("produce")
	rs := policy.L7RuleSet{Protocol: policy.ProtoTCP, Port: up.Port(), Parser: policy.ParserKafka, Rules: []policy.L7Rule{{
		Peers:  []policy.Identity{friend},
		Kafka:  &policy.KafkaRule{Role: "produce", APIKeys: keys, Topic: "bench"},
		Origin: policy.Provenance{Policy: "ns/kafka", Direction: policy.Ingress, Kind: policy.KindAllow, Path: "spec.ingress[0]", L7: "kafka[0]"},
	}}}
	if err := p.Apply(&Config{Version: "1",
		Listeners: []Listener{{Name: "kafka-ingress", Port: port, Direction: policy.Ingress, Parser: policy.ParserKafka}},
		Endpoints: []Endpoint{{Identity: server, IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Ingress: []policy.L7RuleSet{rs}}},
		Members:   members(),
	}); err != nil {
		tb.Fatal(err)
	}
}

// procUsage is a process's CPU time and context switches.
type procUsage struct {
	cpu  time.Duration
	ctxt int64
}

func (u procUsage) sub(v procUsage) procUsage { return procUsage{u.cpu - v.cpu, u.ctxt - v.ctxt} }

// TestHelperKafkaProxy is the proxy process of BenchmarkKafkaProduce's
// process and splice modes (run by it with L7GATE_HELPER_KAFKA set): it
// serves 127.0.0.1:L7GATE_HELPER_PORT, prints "ready", answers each "usage"
// line on stdin with its CPU time (ns) and context switches, and ends when
// stdin closes (writing a CPU profile to $L7GATE_HELPER_CPUPROFILE if
// set).
func TestHelperKafkaProxy(t *testing.T) {
	mode := os.Getenv("L7GATE_HELPER_KAFKA")
	if mode == "" {
		t.Skip("the proxy process of BenchmarkKafkaProduce; runs only when it starts it")
	}
	var port uint16
	fmt.Sscan(os.Getenv("L7GATE_HELPER_PORT"), &port)
	upstream := os.Getenv("L7GATE_HELPER_UPSTREAM")
	if mode == "splice" {
		spliceRelay(t, fmt.Sprintf("127.0.0.1:%d", port), upstream)
	} else {
		benchKafkaProxy(t, port, upstream, os.Getenv("L7GATE_HELPER_LOG"))
	}
	if path := os.Getenv("L7GATE_HELPER_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			t.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	fmt.Println("ready")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		fmt.Printf("usage %d %d\n", ru.Utime.Nano()+ru.Stime.Nano(), ru.Nvcsw+ru.Nivcsw)
	}
}

// spliceRelay copies every connection on addr both ways to upstream
// (io.Copy: splice(2) between TCP sockets), until the test ends.
func spliceRelay(tb testing.TB, addr, upstream string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { ln.Close() })
	go func() {
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
			go func() { io.Copy(u, c); u.(*net.TCPConn).CloseWrite() }()
			go func() { io.Copy(c, u); c.Close() }()
		}
	}()
}

// kafkaProxyProcess starts TestHelperKafkaProxy in a process of its own
// (pinned to CPU 0 when $L7GATE_BENCH_PIN is set, as make bench pins the
// proxy) and returns a reader of its usage.
func kafkaProxyProcess(b *testing.B, mode string, port uint16, upstream, accessLog string) func() procUsage {
	args := []string{os.Args[0], "-test.run=^TestHelperKafkaProxy$"}
	if os.Getenv("L7GATE_BENCH_PIN") != "" {
		args = append([]string{"taskset", "-c", os.Getenv("L7GATE_BENCH_PIN")}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), "L7GATE_HELPER_KAFKA="+mode, fmt.Sprintf("L7GATE_HELPER_PORT=%d", port),
		"L7GATE_HELPER_UPSTREAM="+upstream, "L7GATE_HELPER_LOG="+accessLog)
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
	if line, err := out.ReadString('\n'); err != nil || strings.TrimSpace(line) != "ready" {
		b.Fatalf("proxy process: %q, %v", line, err)
	}
	return func() procUsage {
		var cpu, ctxt int64
		if _, err := fmt.Fprintln(in, "usage"); err != nil {
			b.Fatal(err)
		}
		line, err := out.ReadString('\n')
		if _, serr := fmt.Sscanf(line, "usage %d %d", &cpu, &ctxt); err != nil || serr != nil {
			b.Fatalf("proxy process usage: %q, %v %v", line, err, serr)
		}
		return procUsage{time.Duration(cpu), ctxt}
	}
}

// forwardTo adds a flow.Forwarder to a Unix-socket intake that decodes
// the records, as `l7gate proxy --flow-socket` under the agent does.
func forwardTo(b testing.TB, local func(*flow.Record), linger bool) func(*flow.Record) {
	fwd := benchForwarder(b, linger)
	return func(r *flow.Record) {
		local(r)
		fwd.Send(r)
	}
}

// benchForwarder is forwardTo's flow.Forwarder, running.
func benchForwarder(b testing.TB, linger bool) *flow.Forwarder {
	path := filepath.Join(b.TempDir(), "flows.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if os.Getenv("L7GATE_HELPER_PROXY") != "" {
					// the proxy process of a benchmark measures the
					// proxy's CPU alone: the agent's decoding is not its
					io.Copy(io.Discard, c)
					return
				}
				flow.DecodeJSONLines(c, 0, func(*flow.Record) {})
			}()
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	b.Cleanup(cancel)
	fwd := flow.NewForwarder(path, 0, slog.New(slog.DiscardHandler))
	if linger {
		fwd.Linger = flowLinger
	}
	go fwd.Run(ctx)
	return fwd
}

// accessLogDelay and flowLinger are cmd/l7gate's access-log buffering
// delay and flow-forwarder linger.
const (
	accessLogDelay = 100 * time.Millisecond
	flowLinger     = 20 * time.Millisecond
)

func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkKafkaProduce runs the direct and proxied paths side by side;
// run it with -count N for interleaved rounds and compare each round's
// proxy/direct ratio. writers=64 shows how much of the gap at 8 writers
// (each a request/response connection, no pipelining) is the extra hop's
// latency rather than the proxy's throughput.
func BenchmarkKafkaProduce(b *testing.B) {
	// Producer-sized batches (100 × 1000 B, 100 KB per produce; Kafka's
	// batch.size is 16 KiB per partition, linger 5 ms): the per-request
	// cost of the extra hop weighs less than with make bench's 1 KB.
	for _, m := range []string{"direct", "splice", "process"} {
		b.Run("writers=8/batch=100x1000/"+m, func(b *testing.B) {
			mode := m
			if m == "direct" {
				mode = ""
			}
			benchKafkaMode(b, mode, 8, 100, 1000, "buffered")
		})
	}
	for _, workers := range []int{8, 64} {
		// the proxy in a process of its own, as in make bench, next to a
		// byte-copying relay there
		b.Run(fmt.Sprintf("writers=%d/splice", workers), func(b *testing.B) { benchKafkaMode(b, "splice", workers, 10, 100, "") })
		for _, l := range []string{"buffered+forward", "buffered", "none"} {
			b.Run(fmt.Sprintf("writers=%d/process-log=%s", workers, l), func(b *testing.B) { benchKafkaMode(b, "process", workers, 10, 100, l) })
		}
		b.Run(fmt.Sprintf("writers=%d/direct", workers), func(b *testing.B) { benchKafka(b, false, workers, "") })
		for _, l := range []string{"buffered", "buffered+forward", "buffered+forward-nolinger", "per-record", "per-record+forward-nolinger", "none"} {
			b.Run(fmt.Sprintf("writers=%d/proxy-log=%s", workers, l), func(b *testing.B) { benchKafka(b, true, workers, l) })
		}
	}
}

// BenchmarkKafkaDecide is the proxy's per-request policy step for an
// allowed produce (make bench's Kafka rule), without sockets: its
// allocations and CPU per request do not depend on the machine's load.
func BenchmarkKafkaDecide(b *testing.B) {
	p := New(Options{ListenHost: "127.0.0.1", AccessLog: func(*flow.Record) {}})
	defer p.Close()
	keys, _ := policy.KafkaRoleAPIKeys("produce")
	const port = 9092
	rs := policy.L7RuleSet{Protocol: policy.ProtoTCP, Port: port, Parser: policy.ParserKafka, Rules: []policy.L7Rule{{
		Peers:  []policy.Identity{friend},
		Kafka:  &policy.KafkaRule{Role: "produce", APIKeys: keys, Topic: "bench"},
		Origin: policy.Provenance{Policy: "ns/kafka", Direction: policy.Ingress, Kind: policy.KindAllow, Path: "spec.ingress[0]", L7: "kafka[0]"},
	}}}
	if err := p.Apply(&Config{Version: "1",
		Endpoints: []Endpoint{{Identity: server, IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}, Ingress: []policy.L7RuleSet{rs}}},
		Members:   members(),
	}); err != nil {
		b.Fatal(err)
	}
	ci := connInfo{dir: policy.Ingress, src: netip.MustParseAddrPort("127.0.0.2:40000"), dst: netip.MustParseAddrPort("127.0.0.1:9092"), parser: policy.ParserKafka}
	decide := p.kafkaDecider(ci, &kafkaAudits{})
	req := &kafka.Request{APIKey: 0, APIVersion: 9, ClientID: "l7gate-bench", Topics: []string{"bench"}, Supported: true}
	b.ReportAllocs()
	for b.Loop() {
		if d := decide(req); d.Verdict != kafka.VerdictAllow {
			b.Fatalf("denied: %s", d.Reason)
		}
	}
}
