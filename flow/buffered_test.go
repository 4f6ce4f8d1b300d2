package flow

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"
)

// lockedBuffer counts the writes it receives.
type lockedBuffer struct {
	mu     sync.Mutex
	b      bytes.Buffer
	writes int
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.writes++
	return l.b.Write(p)
}

func (l *lockedBuffer) snapshot() (string, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String(), l.writes
}

// TestBufferedJSONLinesCoalesces: records logged close together reach the
// writer in one write, within the delay, as whole lines in order; flush
// writes what is buffered at once.
func TestBufferedJSONLinesCoalesces(t *testing.T) {
	var w lockedBuffer
	sink, flush := BufferedJSONLines(&w, 50*time.Millisecond)
	for i := range 100 {
		sink(&Record{Time: time.Unix(int64(i), 0).UTC(), Protocol: "kafka", Verdict: VerdictAllowed})
	}
	if s, n := w.snapshot(); n != 0 || s != "" {
		t.Fatalf("written before the delay: %d writes", n)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		s, n := w.snapshot()
		if n > 0 {
			if n != 1 {
				t.Fatalf("%d writes for 100 records logged together, want 1", n)
			}
			lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
			if len(lines) != 100 || !strings.Contains(lines[0], `"time":"1970-01-01T00:00:00Z"`) || !strings.Contains(lines[99], `"time":"1970-01-01T00:01:39Z"`) {
				t.Fatalf("got %d lines, first %q last %q", len(lines), lines[0], lines[len(lines)-1])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("buffered records never written")
		}
		time.Sleep(5 * time.Millisecond)
	}
	sink(&Record{Time: time.Unix(1000, 0).UTC(), Protocol: "kafka"})
	flush()
	if s, n := w.snapshot(); n != 2 || strings.Count(s, "\n") != 101 {
		t.Fatalf("after flush: %d writes, %d lines; want 2 writes, 101 lines", n, strings.Count(s, "\n"))
	}
}

// TestBufferedJSONLinesBounded: a burst larger than the buffer is written
// as it fills, not held until the delay.
func TestBufferedJSONLinesBounded(t *testing.T) {
	var w lockedBuffer
	sink, flush := BufferedJSONLines(&w, time.Hour)
	defer flush()
	reason := strings.Repeat("r", 1000)
	for range 200 { // ~200 KB
		sink(&Record{Protocol: "kafka", Reason: reason})
	}
	if s, n := w.snapshot(); n < 2 || len(s) < 128<<10 {
		t.Fatalf("%d writes, %d bytes written of a 200 KB burst with an hour's delay", n, len(s))
	}
}
