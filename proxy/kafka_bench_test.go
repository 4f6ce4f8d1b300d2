package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/l7gate/l7gate/flow"
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
	ln0, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	port := uint16(ln0.Addr().(*net.TCPAddr).Port)
	ln0.Close()
	proxyAddr := &net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: int(port)}
	var brokerAddr string
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "bench"), kfake.BlackholeProduce(),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				return nil, err
			}
			brokerAddr = ln.Addr().String()
			if !through {
				return ln, nil
			}
			return advertised{Listener: ln, addr: proxyAddr}, nil
		}))
	if err != nil {
		b.Fatal(err)
	}
	defer cluster.Close()
	addr := brokerAddr
	if through {
		f, err := os.Create(filepath.Join(b.TempDir(), "access.log"))
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		up := netip.MustParseAddrPort(brokerAddr)
		no := false
		var log func(*flow.Record)
		switch accessLog {
		case "per-record", "per-record+forward-nolinger":
			log = flow.JSONLines(f)
		case "buffered", "buffered+forward", "buffered+forward-nolinger":
			var flush func()
			log, flush = flow.BufferedJSONLines(f, accessLogDelay)
			defer flush()
		}
		if strings.Contains(accessLog, "+forward") {
			// as under the agent: every record also goes to the agent's
			// flow intake (here a reader decoding the lines, as it does)
			log = forwardTo(b, log, accessLog == "buffered+forward")
		}
		p := New(Options{ListenHost: "127.0.0.1", Transparent: &no, AccessLog: log,
			OriginalDestination: func(net.Conn) (netip.AddrPort, error) { return up, nil }})
		defer p.Close()
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
			b.Fatal(err)
		}
		addr = proxyAddr.String()
	}
	tr := &kafkago.Transport{ClientID: "l7gate-bench", IdleTimeout: time.Minute, MetadataTTL: time.Hour,
		Dial: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}).DialContext}
	defer tr.CloseIdleConnections()
	const batch = 10
	writers := make([]*kafkago.Writer, workers)
	for i := range writers {
		writers[i] = &kafkago.Writer{Addr: kafkago.TCP(addr), Topic: "bench", Transport: tr, RequiredAcks: kafkago.RequireOne,
			BatchSize: batch, BatchTimeout: time.Millisecond, WriteTimeout: 5 * time.Second}
		defer writers[i].Close()
	}
	msgs := make([]kafkago.Message, batch)
	for i := range msgs {
		msgs[i] = kafkago.Message{Value: make([]byte, 100)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := writers[0].WriteMessages(ctx, msgs...); err != nil {
		b.Fatalf("warm-up: %v", err)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, workers)
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
}

// forwardTo adds a flow.Forwarder to a Unix-socket intake that decodes
// the records, as `l7gate proxy --flow-socket` under the agent does.
func forwardTo(b testing.TB, local func(*flow.Record), linger bool) func(*flow.Record) {
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
	return func(r *flow.Record) {
		local(r)
		fwd.Send(r)
	}
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
	for _, workers := range []int{8, 64} {
		b.Run(fmt.Sprintf("writers=%d/direct", workers), func(b *testing.B) { benchKafka(b, false, workers, "") })
		for _, l := range []string{"buffered", "buffered+forward", "buffered+forward-nolinger", "per-record", "per-record+forward-nolinger", "none"} {
			b.Run(fmt.Sprintf("writers=%d/proxy-log=%s", workers, l), func(b *testing.B) { benchKafka(b, true, workers, l) })
		}
	}
}
