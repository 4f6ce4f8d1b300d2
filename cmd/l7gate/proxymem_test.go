//go:build !l7gate_proxyonly

package main

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// TestTrimWhenQuiet: a trim follows traffic once it stops, one per busy
// period: none while allocating, none again while quiet.
func TestTrimWhenQuiet(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var trims atomic.Int32
	var lastTrim atomic.Int64 // UnixNano
	done := make(chan struct{})
	go func() {
		defer close(done)
		trimWhenQuiet(ctx, 20*time.Millisecond, 0, 64<<10, func() {
			lastTrim.Store(time.Now().UnixNano())
			trims.Add(1)
		})
	}()
	var sink [][]byte
	// busy allocates for d and returns when it began its last allocation.
	busy := func(d time.Duration) (last time.Time) {
		for end := time.Now().Add(d); time.Now().Before(end); {
			last = time.Now()
			sink = append(sink, make([]byte, 256<<10))
			if len(sink) > 16 {
				sink = sink[:0]
			}
			time.Sleep(time.Millisecond)
		}
		return last
	}
	// trimmedAfter waits for a trim after t and returns the trims so far.
	trimmedAfter := func(t0 time.Time) int32 {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); lastTrim.Load() <= t0.UnixNano(); {
			if time.Now().After(deadline) {
				t.Fatalf("no trim after %v (%d trims)", t0, trims.Load())
			}
			time.Sleep(5 * time.Millisecond)
		}
		return trims.Load()
	}
	quiet := func(n int32) {
		t.Helper()
		time.Sleep(200 * time.Millisecond)
		if m := trims.Load(); m != n {
			t.Fatalf("%d trims, then %d while quiet", n, m)
		}
	}
	// The start counts as busy: a trim once quiet, then none while quiet.
	quiet(trimmedAfter(time.Unix(0, 0)))
	// Traffic, then quiet: a trim after its last allocation (and maybe
	// during it, if the machine stalled the traffic for a tick), then none
	// while quiet.
	quiet(trimmedAfter(busy(300 * time.Millisecond)))
	cancel()
	<-done
}
