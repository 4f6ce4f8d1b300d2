package kafka

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// liveBytes is the live heap plus goroutine stacks after collecting
// garbage (twice: sync.Pool keeps its items over one collection), and the
// stacks alone.
func liveBytes() (total, stacks float64) {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return float64(m.HeapAlloc + m.StackInuse), float64(m.StackInuse)
}

// openIdleKafkaConns opens n connections to addr, each carrying one
// ApiVersions v3 request and its response, and leaves them open and idle.
func openIdleKafkaConns(t testing.TB, addr string, n int) []net.Conn {
	req := kmsg.NewPtrApiVersionsRequest()
	req.Version = 3
	req.ClientSoftwareName, req.ClientSoftwareVersion = "idle", "1"
	frame := appendFrame(nil, req, 7, "idle")
	conns := make([]net.Conn, 0, n)
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		if _, err := c.Write(frame); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		var size [4]byte
		if _, err := io.ReadFull(c, size[:]); err != nil {
			t.Fatal(err)
		}
		body := make([]byte, binary.BigEndian.Uint32(size[:]))
		if _, err := io.ReadFull(c, body); err != nil {
			t.Fatal(err)
		}
		if corr := int32(binary.BigEndian.Uint32(body)); corr != 7 {
			t.Fatalf("correlation id %d", corr)
		}
		c.SetReadDeadline(time.Time{})
	}
	return conns
}

// BenchmarkIdleKafkaConnMemory reports the memory (live heap and
// goroutine stacks) and goroutines the filter holds per idle Kafka
// connection that carried one ApiVersions request: direct to the broker
// (kfake) and through the proxy; proxy-bytes/conn is the difference.
// Run it with -benchtime=1x.
func BenchmarkIdleKafkaConnMemory(b *testing.B) {
	const n = 500
	env := benchEnv(b)
	var direct, proxied, directStacks, proxiedStacks, goroutines float64
	for range b.N {
		base, baseStacks := liveBytes()
		conns := openIdleKafkaConns(b, env.upstream, n)
		time.Sleep(100 * time.Millisecond)
		total, stacks := liveBytes()
		direct, directStacks = (total-base)/n, (stacks-baseStacks)/n
		for _, c := range conns {
			c.Close()
		}
		time.Sleep(300 * time.Millisecond) // the broker's goroutines end
		base, baseStacks = liveBytes()
		g0 := runtime.NumGoroutine()
		conns = openIdleKafkaConns(b, env.addr, n)
		time.Sleep(500 * time.Millisecond) // (past retainIdle)
		total, stacks = liveBytes()
		proxied, proxiedStacks = (total-base)/n, (stacks-baseStacks)/n
		goroutines = float64(runtime.NumGoroutine()-g0) / n
		for _, c := range conns {
			c.Close()
		}
		time.Sleep(300 * time.Millisecond)
	}
	b.ReportMetric(direct, "direct-bytes/conn")
	b.ReportMetric(proxied, "proxied-bytes/conn")
	b.ReportMetric(proxied-direct, "proxy-bytes/conn")
	b.ReportMetric(proxiedStacks-directStacks, "proxy-stack-bytes/conn")
	b.ReportMetric(goroutines, "goroutines/conn")
}

// waitFor polls cond for up to 10 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestIdleKafkaConnectionReleasesBuffers: idle Kafka connections (each
// carried one request) give their buffers back, both sides' read and
// write buffers and the frame buffer: what the proxy holds per idle
// connection drops well below one 64 KiB buffer (it held about 420 KB).
func TestIdleKafkaConnectionReleasesBuffers(t *testing.T) {
	const n = 100
	env := newProxyEnvOpts(t, func(*Request) Decision { return Allow("ok") }, nil, nil, "orders")
	base, _ := liveBytes()
	conns := openIdleKafkaConns(t, env.addr, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	waitFor(t, "every connection's buffers given back", func() bool { return env.filter.idle.Load() == n })
	var per float64
	for deadline := time.Now().Add(10 * time.Second); ; {
		total, _ := liveBytes()
		// (the broker's side of each connection included: about 13 KB)
		if per = (total - base) / n; per < 64<<10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%.0f bytes live per idle connection, want under 64 KiB (its buffers given back)", per)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("%.0f bytes live per idle connection (proxy and broker), %d released", per, env.filter.idle.Load())
}

// TestIdleKafkaConnectionDecidesAfterRelease: a connection whose buffers
// were given back decides its next request like any other: allowed ones
// reach the broker, a denied one gets TOPIC_AUTHORIZATION_FAILED; an
// acks=0 produce (no response: the response side is asked to release
// again while it waits) and pipelined requests after a release work; a
// client close while released ends the connection.
func TestIdleKafkaConnectionDecidesAfterRelease(t *testing.T) {
	env := newProxyEnv(t, denyTopics("secret"), nil, "orders", "secret")
	rc := dialRaw(t, env.addr, "idle-client")
	released := func() {
		t.Helper()
		waitFor(t, "the connection's buffers given back", func() bool { return env.filter.idle.Load() == 1 })
	}
	produce := func(topic string) []int16 {
		t.Helper()
		return produceCodes(rc.roundTrip(produceReq(9, topic, -1, "v")))
	}
	if c := produce("orders"); len(c) != 1 || c[0] != 0 {
		t.Fatalf("produce: %v", c)
	}
	released()
	if c := produce("secret"); len(c) != 1 || c[0] != ErrCodeTopicAuthorizationFailed {
		t.Fatalf("denied produce after release: %v, want [29]", c)
	}
	released()
	rc.send(produceReq(9, "orders", 0, "fire-and-forget"))
	released()
	time.Sleep(2 * idleRelease) // (the response side asked again while it waits)
	if c := produce("orders"); len(c) != 1 || c[0] != 0 {
		t.Fatalf("produce after an acks=0 one: %v", c)
	}
	released()
	// pipelined: allowed, denied, allowed in one write
	var frames []byte
	for i, topic := range []string{"orders", "secret", "orders"} {
		frames = append(frames, appendFrame(nil, produceReq(9, topic, -1, "p"), int32(100+i), "idle-client")...)
	}
	if _, err := rc.c.Write(frames); err != nil {
		t.Fatal(err)
	}
	for i, want := range []int16{0, ErrCodeTopicAuthorizationFailed, 0} {
		resp, corr, err := rc.recv(produceReq(9, "x", -1))
		if err != nil || corr != int32(100+i) {
			t.Fatalf("pipelined response %d: corr %d, %v", i, corr, err)
		}
		if c := produceCodes(resp); len(c) != 1 || c[0] != want {
			t.Fatalf("pipelined response %d: %v, want [%d]", i, c, want)
		}
	}
	released()
	var denied, allowed int
	for _, r := range env.accessRecords() {
		if r.APIKey == 0 {
			if r.Verdict == VerdictDeny {
				denied++
			} else {
				allowed++
			}
		}
	}
	if denied != 2 || allowed != 5 {
		t.Fatalf("%d produce requests allowed, %d denied; want 5 and 2", allowed, denied)
	}
	rc.c.Close()
	waitFor(t, "the connection ended", func() bool {
		env.mu.Lock()
		defer env.mu.Unlock()
		return env.filter.idle.Load() == 0 && serving() == 0
	})
	for _, err := range env.errs() {
		t.Errorf("Serve: %v", err)
	}
}

// serving counts the goroutines in Filter.Serve.
func serving() int {
	buf := make([]byte, 16<<20)
	n := runtime.Stack(buf, true)
	return strings.Count(string(buf[:n]), "parsers/kafka.(*Filter).Serve(")
}

// TestIdleKafkaKgoAfterRelease: franz-go's client produces through
// connections idle long enough to give their buffers back: allowed
// records are acknowledged, a denied topic gets TOPIC_AUTHORIZATION_FAILED.
func TestIdleKafkaKgoAfterRelease(t *testing.T) {
	env := newProxyEnv(t, denyTopics("secret"), nil, "orders", "secret")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(env.addr), kgo.RecordRetries(3))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for i := range 3 {
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "orders", Value: []byte("x")}).FirstErr(); err != nil {
			t.Fatalf("produce %d: %v", i, err)
		}
		waitFor(t, "every connection's buffers given back", func() bool {
			return env.filter.idle.Load() > 0 && env.filter.idle.Load() == env.accepted.Load()
		})
		err := cl.ProduceSync(ctx, &kgo.Record{Topic: "secret", Value: []byte("x")}).FirstErr()
		if !errors.Is(err, kerr.TopicAuthorizationFailed) {
			t.Fatalf("produce to a denied topic after release: %v, want TOPIC_AUTHORIZATION_FAILED", err)
		}
		waitFor(t, "every connection's buffers given back", func() bool {
			return env.filter.idle.Load() == env.accepted.Load()
		})
	}
}
