// Package observe is the agent's flow pipeline: every flow record — the
// datapath's verdicts and drops, the Go proxy's and Envoy's access records
// — enters one bounded queue, is enriched (pods, labels, workloads,
// policies) on one goroutine, kept in a ring of fixed size for queries and
// handed to the sinks (metrics, exporters) and to followers. Nothing in it
// grows with the event rate: a full queue, a full follower and a slow sink
// drop records and count them.
//
// Its sub-packages speak the ecosystem's formats: observe/hubble (Hubble's
// Observer API and flow export), observe/otlp (OpenTelemetry logs),
// observe/metrics (Prometheus, Hubble's metric names).
package observe

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/l7gate/l7gate/flow"
)

// Event is one record the pipeline kept, numbered from 1 in arrival order.
// The record is read-only once it left the pipeline.
type Event struct {
	Seq    uint64
	Record *flow.Record
}

// Sink receives every event in order, on the pipeline's goroutine: it must
// not block (an exporter queues, and drops what it cannot queue).
type Sink interface {
	Consume(Event)
}

// SinkFunc adapts a function to Sink.
type SinkFunc func(Event)

// Consume calls f.
func (f SinkFunc) Consume(ev Event) { f(ev) }

// Defaults.
const (
	DefaultCapacity = 16384
	DefaultQueue    = 8192
	// DefaultFollowerBuffer is a follower's channel size.
	DefaultFollowerBuffer = 1024
)

// Config configures a Pipeline; zero values take the defaults.
type Config struct {
	// Capacity is how many events the ring keeps for queries.
	Capacity int
	// Queue bounds the records waiting to be processed; beyond it Ingest
	// drops (LostQueue).
	Queue int
	// Enrich, when set, completes a record before it is kept (runs on the
	// pipeline goroutine).
	Enrich func(*flow.Record)
	Sinks  []Sink
}

// Stats are the pipeline's counters.
type Stats struct {
	// Received counts records accepted by Ingest; LostQueue those dropped
	// because the queue was full.
	Received, LostQueue uint64
	// Processed counts events kept (and handed to sinks).
	Processed uint64
	// LostFollowers counts events a follower was too slow to take.
	LostFollowers uint64
	// Kept is how many events the ring holds now, of Capacity.
	Kept, Capacity int
	// Followers is the number of subscriptions.
	Followers int
}

// Pipeline is the flow pipeline. Ingest may be called from any goroutine;
// Run processes.
type Pipeline struct {
	cfg Config
	in  chan *flow.Record

	received, lostQueue, processed, lostFollowers atomic.Uint64

	mu   sync.RWMutex
	ring []Event
	head int // next slot to write
	n    int // slots filled
	seq  uint64
	subs map[*Subscription]struct{}
}

// New returns a pipeline; call Run to process.
func New(cfg Config) *Pipeline {
	if cfg.Capacity <= 0 {
		cfg.Capacity = DefaultCapacity
	}
	if cfg.Queue <= 0 {
		cfg.Queue = DefaultQueue
	}
	return &Pipeline{cfg: cfg, in: make(chan *flow.Record, cfg.Queue), ring: make([]Event, cfg.Capacity),
		subs: map[*Subscription]struct{}{}}
}

// Ingest queues r (the pipeline owns it from now on); it never blocks and
// returns false, counting the loss, when the queue is full.
func (p *Pipeline) Ingest(r *flow.Record) bool {
	select {
	case p.in <- r:
		p.received.Add(1)
		return true
	default:
		p.lostQueue.Add(1)
		return false
	}
}

// Run processes queued records until ctx ends.
func (p *Pipeline) Run(ctx context.Context) error {
	batch := make([]Event, 0, 256)
	for {
		var r *flow.Record
		select {
		case <-ctx.Done():
			return nil
		case r = <-p.in:
		}
		batch = batch[:0]
		for {
			if p.cfg.Enrich != nil {
				p.cfg.Enrich(r)
			}
			batch = append(batch, Event{Record: r})
			if len(batch) == cap(batch) {
				break
			}
			select {
			case r = <-p.in:
				continue
			default:
			}
			break
		}
		p.keep(batch)
		for _, ev := range batch {
			for _, s := range p.cfg.Sinks {
				s.Consume(ev)
			}
		}
	}
}

// keep numbers the batch, writes it into the ring and hands it to the
// followers.
func (p *Pipeline) keep(batch []Event) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range batch {
		p.seq++
		batch[i].Seq = p.seq
		p.ring[p.head] = batch[i]
		p.head = (p.head + 1) % len(p.ring)
		if p.n < len(p.ring) {
			p.n++
		}
		for s := range p.subs {
			select {
			case s.ch <- batch[i]:
			default:
				s.lost.Add(1)
				p.lostFollowers.Add(1)
			}
		}
	}
	p.processed.Add(uint64(len(batch)))
}

// Snapshot returns the events in the ring, oldest first, and the sequence
// number of the newest (0 when none was kept yet).
func (p *Pipeline) Snapshot() ([]Event, uint64) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.snapshotLocked(), p.seq
}

func (p *Pipeline) snapshotLocked() []Event {
	out := make([]Event, p.n)
	start := (p.head - p.n + len(p.ring)) % len(p.ring)
	for i := range p.n {
		out[i] = p.ring[(start+i)%len(p.ring)]
	}
	return out
}

// After returns the kept events numbered after seq, oldest first, and the
// newest sequence number.
func (p *Pipeline) After(seq uint64) ([]Event, uint64) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if seq >= p.seq {
		return nil, p.seq
	}
	n := min(p.seq-seq, uint64(p.n))
	out := make([]Event, n)
	start := (p.head - int(n) + len(p.ring)) % len(p.ring)
	for i := range int(n) {
		out[i] = p.ring[(start+i)%len(p.ring)]
	}
	return out, p.seq
}

// Subscription delivers the events kept after it was made.
type Subscription struct {
	ch   chan Event
	lost atomic.Uint64
}

// C delivers the events.
func (s *Subscription) C() <-chan Event { return s.ch }

// TakeLost returns how many events this follower missed since the last
// call (its channel was full), and resets the count.
func (s *Subscription) TakeLost() uint64 { return s.lost.Swap(0) }

// Subscribe returns a follower with a channel of buffer events (default
// DefaultFollowerBuffer) and, atomically with it, the ring's content: the
// follower gets exactly the events after those.
func (p *Pipeline) Subscribe(buffer int) (*Subscription, []Event) {
	if buffer <= 0 {
		buffer = DefaultFollowerBuffer
	}
	s := &Subscription{ch: make(chan Event, buffer)}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.subs[s] = struct{}{}
	return s, p.snapshotLocked()
}

// Unsubscribe ends a subscription.
func (p *Pipeline) Unsubscribe(s *Subscription) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.subs, s)
}

// Stats returns the counters.
func (p *Pipeline) Stats() Stats {
	p.mu.RLock()
	kept, followers := p.n, len(p.subs)
	p.mu.RUnlock()
	return Stats{Received: p.received.Load(), LostQueue: p.lostQueue.Load(), Processed: p.processed.Load(),
		LostFollowers: p.lostFollowers.Load(), Kept: kept, Capacity: len(p.ring), Followers: followers}
}
