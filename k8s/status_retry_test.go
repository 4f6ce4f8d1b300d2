package k8s

import (
	"testing"
	"time"
)

// TestStatusRetryDelay: a failed status write is retried after 0.5 s, then
// 1, 2, 4, 8 s, then every 10 s, each jittered by ±20 % (before: always
// 10 s, which set make scale's p99 to 52 s when an overloaded API server
// failed a few report writes with 500/504).
func TestStatusRetryDelay(t *testing.T) {
	want := []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second}
	for failed, base := range append(want, 10*time.Second) {
		if failed == len(want) {
			failed = 1000 // no overflow far out
		}
		for _, u := range []float64{0, 0.5, 0.999999} {
			got := statusRetryDelay(failed, u)
			lo, hi := time.Duration(float64(base)*0.8), time.Duration(float64(base)*1.2)
			if got < lo || got > hi {
				t.Errorf("statusRetryDelay(%d, %v) = %v, want within [%v, %v]", failed, u, got, lo, hi)
			}
		}
		if mid := statusRetryDelay(failed, 0.5); mid != base {
			t.Errorf("statusRetryDelay(%d, 0.5) = %v, want %v (no jitter at the middle)", failed, mid, base)
		}
	}
}
