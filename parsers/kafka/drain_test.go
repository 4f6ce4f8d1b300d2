package kafka

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// drainingFilter is one proxy process's share of a listening socket: it
// accepts on its own duplicate (as processes handing over do) and filters
// with Config.Drain set to its drain.
type drainingFilter struct {
	ln     net.Listener
	drain  context.CancelFunc
	hard   context.CancelFunc
	active atomic.Int64
	wg     sync.WaitGroup
}

func startDrainingFilter(t *testing.T, ln *net.TCPListener, upstream func() string) *drainingFilter {
	t.Helper()
	f, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	dup, err := net.FileListener(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	drainCtx, drain := context.WithCancel(context.Background())
	ctx, hard := context.WithCancel(context.Background())
	flt, err := NewFilter(Config{Decide: func(*Request) Decision { return Allow("test") }, Drain: drainCtx})
	if err != nil {
		t.Fatal(err)
	}
	d := &drainingFilter{ln: dup, drain: drain, hard: hard}
	t.Cleanup(func() { dup.Close(); hard(); drain(); d.wg.Wait() })
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		for {
			c, err := dup.Accept()
			if err != nil {
				return
			}
			d.active.Add(1)
			d.wg.Add(1)
			go func() {
				defer d.wg.Done()
				defer d.active.Add(-1)
				up, err := net.Dial("tcp", upstream())
				if err != nil {
					c.Close()
					return
				}
				flt.Serve(ctx, c, up)
			}()
		}
	}()
	return d
}

func (d *drainingFilter) stop(t *testing.T, bound time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	d.ln.Close()
	d.drain()
	for d.active.Load() > 0 {
		if time.Since(start) > bound {
			t.Errorf("%d Kafka connections still open %s after the drain began", d.active.Load(), bound)
			d.hard()
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

// TestDrainKgoHandOver runs a franz-go producer and consumer through a
// filtered listening socket while the process serving it is replaced three
// times (the next one accepts on the same socket, the previous drains,
// closing each connection between request/response pairs): every record
// produced is acknowledged and consumed, and the drains end without being
// cut.
func TestDrainKgoHandOver(t *testing.T) {
	pln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pln.Close()
	var upMu sync.Mutex
	var upstream string
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.DefaultNumPartitions(1), kfake.SeedTopics(1, "orders"),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) {
			ln, err := net.Listen(network, "127.0.0.1:0")
			if err != nil {
				return nil, err
			}
			upMu.Lock()
			upstream = ln.Addr().String()
			upMu.Unlock()
			return advertisedListener{Listener: ln, addr: pln.Addr()}, nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	up := func() string { upMu.Lock(); defer upMu.Unlock(); return upstream }
	cur := startDrainingFilter(t, pln, up)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	prod, err := kgo.NewClient(kgo.SeedBrokers(pln.Addr().String()))
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Close()
	cons, err := kgo.NewClient(kgo.SeedBrokers(pln.Addr().String()), kgo.ConsumeTopics("orders"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()

	stop := make(chan struct{})
	prodDone := make(chan struct{}) // the producer's last ProduceSync returned
	var produced, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(prodDone)
		for i := 0; i < 100000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := prod.ProduceSync(ctx, &kgo.Record{Topic: "orders", Value: fmt.Appendf(nil, "r-%d", i)}).FirstErr(); err != nil {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, err.Error())
				continue
			}
			produced.Add(1)
		}
	}()
	var consumed atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		// Done once the producer is (a record produced after the
		// consumer's last look would otherwise count as lost: "consumed
		// 9151 of 9152" in a clean-clone run) and everything arrived;
		// short polls so the check runs while nothing more comes.
		for ctx.Err() == nil {
			pctx, pcancel := context.WithTimeout(ctx, 200*time.Millisecond)
			fs := cons.PollFetches(pctx)
			pcancel()
			consumed.Add(int64(fs.NumRecords()))
			select {
			case <-prodDone:
				if consumed.Load() >= produced.Load() {
					return
				}
			default:
			}
		}
	}()

	var drains []time.Duration
	for range 3 {
		time.Sleep(400 * time.Millisecond)
		next := startDrainingFilter(t, pln, up)
		drains = append(drains, cur.stop(t, 10*time.Second))
		cur = next
	}
	time.Sleep(400 * time.Millisecond)
	close(stop)
	wg.Wait()
	t.Logf("produced %d, failed %d, consumed %d; drain times %v", produced.Load(), failed.Load(), consumed.Load(), drains)
	if failed.Load() != 0 || produced.Load() == 0 {
		t.Errorf("%d produce calls failed (of %d) across 3 hand-overs: %v", failed.Load(), produced.Load()+failed.Load(), firstErr.Load())
	}
	if consumed.Load() < produced.Load() {
		t.Errorf("consumed %d of %d records", consumed.Load(), produced.Load())
	}
}
