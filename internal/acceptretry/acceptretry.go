// Package acceptretry is the back-off of an accept loop whose accept
// failed while the listener is still fine: out of descriptors (EMFILE,
// ENFILE), out of memory, or a connection aborted before it was
// accepted. Ending the loop there leaves the port dead for good (every
// later connection waits in the backlog, never served) once a burst has
// used up RLIMIT_NOFILE; net/http instead waits 5 ms doubling to 1 s and
// tries again, and so do l7gate's own accept loops through Backoff.
package acceptretry

import (
	"log/slog"
	"time"
)

const (
	first = 5 * time.Millisecond
	most  = time.Second
)

// Backoff is one accept loop's back-off; the zero value is ready.
type Backoff struct {
	d time.Duration
}

// Wait logs err (when log is not nil) and waits the next back-off: 5 ms
// after the first failure, doubling to 1 s. It reports false when done
// is closed first (the loop should end).
func (b *Backoff) Wait(done <-chan struct{}, log *slog.Logger, msg string, err error) bool {
	b.d = min(max(2*b.d, first), most)
	if log != nil {
		log.Warn(msg, "error", err, "in", b.d)
	}
	t := time.NewTimer(b.d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-done:
		return false
	}
}

// Reset is called after an accept succeeded: the next failure waits 5 ms.
func (b *Backoff) Reset() { b.d = 0 }

// Next is the wait the next failure would get (for tests).
func (b *Backoff) Next() time.Duration { return min(max(2*b.d, first), most) }
