package kafka

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kmsg"
)

func allowAll(*Request) Decision { return Allow("all") }

// heapInUse is the live Go heap after a collection.
func heapInUse() int64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// partialProduceFrame is the start of a Produce frame declaring declared
// bytes, of which it carries body.
func partialProduceFrame(declared, body int) []byte {
	hdr := appendFrame(nil, produceReq(9, "big", 1, "x"), 1, "budget")
	out := make([]byte, 0, 4+body)
	out = binary.BigEndian.AppendUint32(out, uint32(declared))
	out = append(out, hdr[4:]...)
	return append(out, make([]byte, body-len(hdr)+4)...)
}

// TestHostileKafkaPartialFramesShareTheMemoryBudget: N connections each
// send most of a large frame and stop. What the proxy buffers for them
// together must stay within the shared budget (not N frames), and
// connections waiting for budget are cut when their frame's time is up.
func TestHostileKafkaPartialFramesShareTheMemoryBudget(t *testing.T) {
	const (
		conns    = 16
		declared = 4 << 20
		sent     = 3 << 20
		budget   = 8 << 20
	)
	b := NewMemoryBudget(budget)
	// The frame timeout must leave the clients time to fill the budget: at
	// load 20 on 2 cores the proxy read only 7 MiB of the 48 in 2 s, so
	// every connection timed out and none met the budget.
	env := newProxyEnv(t, allowAll, func(c *Config) { c.Budget, c.FrameTimeout = b, 8*time.Second })
	frame := partialProduceFrame(declared, sent) // shared by every client
	before := heapInUse()

	var wg sync.WaitGroup
	closed := make(chan time.Duration, conns)
	start := time.Now()
	for range conns {
		c, err := net.Dial("tcp", env.addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The write may block once the proxy stops reading; it ends
			// when the proxy closes the connection.
			c.Write(frame)
			c.SetReadDeadline(time.Now().Add(40 * time.Second))
			if _, err := io.Copy(io.Discard, c); err == nil || !isTimeout(err) {
				closed <- time.Since(start)
			}
		}()
	}
	// Sample the heap while the frames are held (until every connection
	// was cut, or long enough to see an unbounded proxy grow).
	var peak int64
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(30 * time.Second)
sample:
	for {
		if g := heapInUse() - before; g > peak {
			peak = g
		}
		select {
		case <-done:
			break sample
		case <-deadline:
			break sample
		case <-tick.C:
		}
	}
	// Fixed per-connection buffers (about 400 KiB on the proxy side) are
	// not part of the budget; frames are.
	limit := int64(budget + conns*512<<10 + 8<<20)
	t.Logf("heap grew by at most %d MiB for %d connections holding %d MiB partial frames (budget %d MiB)", peak>>20, conns, sent>>20, budget>>20)
	if peak > limit {
		t.Errorf("heap grew by %d MiB, more than the budget allows (%d MiB)", peak>>20, limit>>20)
	}
	t.Logf("budget peak %d MiB of %d, %d charges refused, %d of %d connections cut", b.Peak()>>20, budget>>20, b.Refused(), len(closed), conns)
	if b.Peak() > budget {
		t.Errorf("budget peak %d above its limit %d", b.Peak(), budget)
	}
	if b.Peak() < budget/2 {
		t.Errorf("budget peak %d: the frames never reached the budget, the test proves nothing", b.Peak())
	}
	if len(closed) != conns {
		t.Errorf("%d of %d connections holding partial frames were cut", len(closed), conns)
	}
	env.waitServeErr(t, ErrFrameTimeout)
	env.waitServeErr(t, ErrMemoryBudget)
	// Every connection has ended: nothing stays charged.
	until := time.Now().Add(5 * time.Second)
	for b.Used() != 0 && time.Now().Before(until) {
		time.Sleep(10 * time.Millisecond)
	}
	if u := b.Used(); u != 0 {
		t.Errorf("%d bytes still charged after every connection ended", u)
	}
}

// TestHostileKafkaSlowFrameIsCut: a frame trickled a byte at a time is cut
// when its time is up, not served forever.
func TestHostileKafkaSlowFrameIsCut(t *testing.T) {
	env := newProxyEnv(t, allowAll, func(c *Config) { c.IdleTimeout, c.FrameTimeout = time.Minute, time.Second })
	c, err := net.Dial("tcp", env.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	frame := appendFrame(nil, kmsg.NewPtrApiVersionsRequest(), 1, "slow")
	start := time.Now()
	cut := false
	for i := 0; i < len(frame) && time.Since(start) < 10*time.Second; i++ {
		if _, err := c.Write(frame[i : i+1]); err != nil {
			cut = true
			break
		}
		time.Sleep(200 * time.Millisecond)
		c.SetReadDeadline(time.Now().Add(time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); err != nil && !isTimeout(err) {
			cut = true
			break
		}
	}
	took := time.Since(start)
	if !cut {
		t.Fatalf("a %d-byte frame trickled over %s was not cut", len(frame), took.Round(time.Millisecond))
	}
	if took > 3*time.Second {
		t.Errorf("slow frame cut after %s, frame timeout 1s", took.Round(time.Millisecond))
	}
	env.waitServeErr(t, ErrFrameTimeout)
}

// TestHostileKafkaIdleConnectionIsClosed: a connection with nothing in
// flight is closed after the idle timeout; one waiting for a slow answer
// (a Fetch that waits) is not.
func TestHostileKafkaIdleConnectionIsClosed(t *testing.T) {
	env := newProxyEnv(t, allowAll, func(c *Config) { c.IdleTimeout, c.FrameTimeout = time.Second, time.Minute }, "t")
	idle := dialRaw(t, env.addr, "idle")
	idle.roundTrip(kmsg.NewPtrApiVersionsRequest())
	start := time.Now()
	idle.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := idle.c.Read(make([]byte, 1))
	if isTimeout(err) {
		t.Fatal("idle connection not closed within 10s (idle timeout 1s)")
	}
	if took := time.Since(start); took < 900*time.Millisecond || took > 4*time.Second {
		t.Errorf("idle connection closed after %s, idle timeout 1s", took.Round(time.Millisecond))
	}

	// A Fetch that waits 2.5s for data: the client sends nothing meanwhile
	// but is not idle.
	busy := dialRaw(t, env.addr, "busy")
	f := kmsg.NewPtrFetchRequest()
	f.SetVersion(11)
	f.MaxWaitMillis, f.MinBytes, f.MaxBytes = 2500, 1, 1<<20
	ft := kmsg.NewFetchRequestTopic()
	ft.Topic = "t"
	fp := kmsg.NewFetchRequestTopicPartition()
	fp.PartitionMaxBytes = 1 << 20
	ft.Partitions = append(ft.Partitions, fp)
	f.Topics = append(f.Topics, ft)
	start = time.Now()
	busy.roundTrip(f)
	if took := time.Since(start); took < 2*time.Second {
		t.Fatalf("fetch answered after %s: the broker did not wait", took)
	}
}

func TestMemoryBudgetWaitsForRelease(t *testing.T) {
	b := NewMemoryBudget(100)
	if err := b.Acquire(80, time.Now().Add(time.Second), nil); err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() { got <- b.Acquire(50, time.Now().Add(10*time.Second), nil) }()
	select {
	case err := <-got:
		t.Fatalf("acquired 50 of 100 with 80 in use: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	b.Release(80)
	if err := <-got; err != nil {
		t.Fatalf("waiter not served after a release: %v", err)
	}
	if err := b.Acquire(60, time.Now().Add(20*time.Millisecond), nil); !errors.Is(err, ErrMemoryBudget) {
		t.Errorf("over budget until the deadline: %v", err)
	}
	if err := b.Acquire(101, time.Now().Add(time.Hour), nil); !errors.Is(err, ErrMemoryBudget) {
		t.Errorf("more than the whole budget: %v", err)
	}
	done := make(chan struct{})
	close(done)
	if err := b.Acquire(60, time.Now().Add(time.Hour), done); err == nil {
		t.Error("acquired after the connection ended")
	}
	if b.TryAcquire(51) || !b.TryAcquire(50) || b.Used() != 100 || b.Peak() != 100 {
		t.Errorf("TryAcquire: used %d peak %d", b.Used(), b.Peak())
	}
}

// TestKafkaIdleConnectionReleasesItsFrameBuffer: a large frame's buffer is
// kept for the next frame only while the client keeps sending; a pause
// gives its memory back to the budget.
func TestKafkaIdleConnectionReleasesItsFrameBuffer(t *testing.T) {
	b := NewMemoryBudget(64 << 20)
	env := newProxyEnv(t, allowAll, func(c *Config) { c.Budget = b }, "big")
	rc := dialRaw(t, env.addr, "big")
	big := string(make([]byte, 512<<10))
	if codes := produceCodes(rc.roundTrip(produceReq(9, "big", -1, big))); len(codes) != 1 || codes[0] != 0 {
		t.Fatalf("produce: %v", codes)
	}
	if b.Peak() < 256<<10 {
		t.Fatalf("a 512 KiB frame charged %d bytes", b.Peak())
	}
	until := time.Now().Add(5 * time.Second)
	for b.Used() != 0 && time.Now().Before(until) {
		time.Sleep(10 * time.Millisecond)
	}
	if u := b.Used(); u != 0 {
		t.Errorf("an idle connection holds %d bytes of budget", u)
	}
}
