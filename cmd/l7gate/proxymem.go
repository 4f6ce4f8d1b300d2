package main

import (
	"context"
	"log/slog"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// trimWhenQuiet calls trim once the process went quiet after being busy:
// every tick it reads how much the Go heap allocated since the last one,
// and after a tick with less than quietAllocs (no request traffic: every
// request allocates its access record) that follows busy ones it trims.
// At most once per minGap, and never twice without traffic in between: an
// idle proxy costs one metrics read per tick.
func trimWhenQuiet(ctx context.Context, tick, minGap time.Duration, quietAllocs uint64, trim func()) {
	sample := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	read := func() uint64 {
		metrics.Read(sample)
		if sample[0].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return sample[0].Value.Uint64()
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	last := read()
	busy := true // the start touched what it touched
	var trimmed time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := read()
		allocated := now - last
		last = now
		if allocated >= quietAllocs {
			busy = true
			continue
		}
		if !busy || time.Since(trimmed) < minGap {
			continue
		}
		trim()
		trimmed, busy = time.Now(), false
		last = read() // (the trim's own allocations are no traffic)
	}
}

// trimMemory is the proxy's trim: free heap back to the kernel when there
// are at least trimWorth bytes of it (the collection debug.FreeOSMemory
// runs is the cost: skipped after a small burst). The executable's pages
// are left alone: they are the page cache's (shared with the agent, which
// runs the same file), so dropping them from the proxy would lower its RSS
// without freeing memory on the node, and cost page faults on the next
// request.
func trimMemory(log *slog.Logger) {
	start := time.Now()
	sample := []metrics.Sample{{Name: "/memory/classes/heap/free:bytes"}}
	metrics.Read(sample)
	if sample[0].Value.Kind() != metrics.KindUint64 || sample[0].Value.Uint64() < trimWorth {
		return
	}
	freed := sample[0].Value.Uint64()
	debug.FreeOSMemory()
	log.Debug("quiet: returned free heap", "heap-bytes", freed, "took", time.Since(start))
}

// trimWorth: less free heap is not worth a trim.
const trimWorth = 4 << 20
