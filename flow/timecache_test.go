package flow

import (
	"testing"
	"time"
)

// TestTimeCacheRFC3339Nano: the cached rendering of record times is
// byte for byte time.RFC3339Nano's, across seconds, zones, fractions
// with trailing zeros and none, and times from time.Now (monotonic).
func TestTimeCacheRFC3339Nano(t *testing.T) {
	ist := time.FixedZone("IST", 5*3600+30*60)
	west := time.FixedZone("W", -(3*3600 + 30*60))
	odd := time.FixedZone("LMT", 7*60+13) // an offset with seconds
	var times []time.Time
	for _, loc := range []*time.Location{time.UTC, time.Local, ist, west, odd} {
		for _, base := range []time.Time{
			time.Date(2026, 12, 7, 9, 40, 52, 0, loc),
			time.Date(2026, 12, 31, 23, 59, 59, 0, loc),
			time.Date(1970, 1, 1, 0, 0, 0, 0, loc),
			time.Date(1, 1, 1, 0, 0, 0, 0, loc),
			time.Date(9999, 12, 31, 23, 59, 59, 0, loc),
			time.Date(12345, 1, 1, 0, 0, 0, 0, loc),
			time.Date(-5, 1, 1, 0, 0, 0, 0, loc),
		} {
			for _, ns := range []int{0, 1, 10, 100000, 123456789, 120000000, 999999999, 500000000} {
				times = append(times, base.Add(time.Duration(ns)))
			}
			times = append(times, base.Add(time.Second), base.Add(-time.Nanosecond))
		}
	}
	now := time.Now()
	times = append(times, now, now.Add(time.Microsecond), now.Add(time.Second), time.Time{}, now.UTC(), now)
	var c timeCache
	for _, tt := range times {
		want := tt.AppendFormat(nil, time.RFC3339Nano)
		if got := c.appendTime(nil, tt); string(got) != string(want) {
			t.Errorf("%v: got %s, want %s", tt, got, want)
		}
		var fresh timeCache
		if got := fresh.appendTime([]byte("x"), tt); string(got) != "x"+string(want) {
			t.Errorf("%v (fresh cache): got %s, want x%s", tt, got, want)
		}
	}
}

func BenchmarkTimeCache(b *testing.B) {
	now := time.Now()
	buf := make([]byte, 0, 64)
	b.Run("AppendFormat", func(b *testing.B) {
		for b.Loop() {
			buf = now.AppendFormat(buf[:0], time.RFC3339Nano)
		}
	})
	b.Run("cached", func(b *testing.B) {
		var c timeCache
		for b.Loop() {
			buf = c.appendTime(buf[:0], now)
		}
	})
}
