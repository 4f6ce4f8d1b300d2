package kafka

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// ErrMemoryBudget: a connection needed more buffer than the shared
// MemoryBudget could give it in time; it was closed.
var ErrMemoryBudget = errors.New("kafka memory budget exhausted")

// DefaultMemoryBudget is the proxy's default budget for buffered Kafka
// frames: room for two frames of the default maximum size, or hundreds of
// the 1 MiB batches producers send by default.
const DefaultMemoryBudget = 256 << 20

// MemoryBudget bounds the memory that Kafka connections together hold in
// buffers whose size the peer chooses: request frames beyond a fixed 64 KiB
// per connection, broker responses the proxy parses (Metadata, ApiVersions,
// DescribeTopicPartitions), and denials queued behind broker responses.
// Buffers grow with bytes received and are charged as they grow. A
// connection that needs more than is left stops reading (TCP pushes back on
// its peer) until another connection releases memory; if none does before
// its frame's time is up (Config.FrameTimeout), it is closed with
// ErrMemoryBudget. The proxy never holds more than the budget in these
// buffers, whatever the number of connections. Safe for concurrent use.
type MemoryBudget struct {
	limit int64

	mu   sync.Mutex
	used int64
	peak int64
	wake chan struct{} // closed and replaced on every release

	refused atomic.Int64
}

// NewMemoryBudget returns a budget of limit bytes (<= 0:
// DefaultMemoryBudget).
func NewMemoryBudget(limit int64) *MemoryBudget {
	if limit <= 0 {
		limit = DefaultMemoryBudget
	}
	return &MemoryBudget{limit: limit, wake: make(chan struct{})}
}

// Limit returns the budget's size in bytes.
func (b *MemoryBudget) Limit() int64 { return b.limit }

// Used returns the bytes charged now.
func (b *MemoryBudget) Used() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// Peak returns the most bytes ever charged at once.
func (b *MemoryBudget) Peak() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.peak
}

// Refused returns how many charges failed (connections closed for the
// budget).
func (b *MemoryBudget) Refused() int64 { return b.refused.Load() }

func (b *MemoryBudget) take(n int64) (bool, chan struct{}) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used+n <= b.limit {
		b.used += n
		b.peak = max(b.peak, b.used)
		return true, nil
	}
	return false, b.wake
}

// TryAcquire charges n bytes if they are free now.
func (b *MemoryBudget) TryAcquire(n int64) bool {
	ok, _ := b.take(n)
	if !ok {
		b.refused.Add(1)
	}
	return ok
}

// Acquire charges n bytes, waiting until deadline (or done) for them to be
// free.
func (b *MemoryBudget) Acquire(n int64, deadline time.Time, done <-chan struct{}) error {
	if n > b.limit {
		b.refused.Add(1)
		return fmt.Errorf("%d bytes needed, budget %d: %w", n, b.limit, ErrMemoryBudget)
	}
	var timer *time.Timer
	for {
		ok, wake := b.take(n)
		if ok {
			if timer != nil {
				timer.Stop()
			}
			return nil
		}
		if timer == nil {
			d := time.Until(deadline)
			if d <= 0 {
				b.refused.Add(1)
				return fmt.Errorf("%d bytes needed, %d of %d in use: %w", n, b.Used(), b.limit, ErrMemoryBudget)
			}
			timer = time.NewTimer(d)
		}
		select {
		case <-wake:
		case <-done:
			timer.Stop()
			return errors.New("connection closed while waiting for memory")
		case <-timer.C:
			b.refused.Add(1)
			return fmt.Errorf("%d bytes needed, %d of %d in use until the deadline: %w", n, b.Used(), b.limit, ErrMemoryBudget)
		}
	}
}

// Release returns n charged bytes.
func (b *MemoryBudget) Release(n int64) {
	if n == 0 {
		return
	}
	b.mu.Lock()
	b.used = max(b.used-n, 0)
	close(b.wake)
	b.wake = make(chan struct{})
	b.mu.Unlock()
}
