package main

import (
	"context"
	"log/slog"
	"runtime/debug"
	"runtime/metrics"
	"time"

	"golang.org/x/sys/unix"
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

// Connection limit from the descriptor limit: every client connection
// holds two descriptors (it and its upstream connection), and the rest of
// the proxy needs some of its own (listeners, the agent's sockets, the
// access log, the DNS proxy's in-flight upstream queries: up to
// dnsproxy.DefaultMaxInFlight). A --max-connections beyond what
// RLIMIT_NOFILE holds is no limit at all: accept fails with EMFILE first,
// and upstream dials fail for connections already accepted.
const (
	// fdReserve: descriptors kept for other than client connections and
	// their upstreams (512 DNS queries in flight and 128 for the rest).
	fdReserve = 512 + 128
	// maxConnsCeiling: the derived default never exceeds the fixed default
	// it replaces (memory for that many connections is what was planned).
	maxConnsCeiling = 65536
)

// connectionsFor is the connection limit a descriptor limit of nofile
// allows: (nofile - reserve) / 2, the reserve shrinking to half of a small
// limit, at least 1 and at most maxConnsCeiling.
func connectionsFor(nofile uint64) int {
	reserve := uint64(fdReserve)
	if nofile < 2*reserve {
		reserve = nofile / 2
	}
	n := (nofile - reserve) / 2
	return int(max(1, min(n, maxConnsCeiling)))
}

// maxConnections resolves --max-connections: 0 (the default) derives the
// limit from the process's RLIMIT_NOFILE; an explicit value stays, with a
// warning when the descriptor limit cannot hold it. The choice is logged.
func maxConnections(flag int, log *slog.Logger) int {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		if flag > 0 {
			return flag
		}
		log.Warn("descriptor limit unknown; --max-connections takes the fixed default", "error", err, "max-connections", maxConnsCeiling)
		return maxConnsCeiling
	}
	fits := connectionsFor(lim.Cur)
	if flag <= 0 {
		log.Info("connection limit from the descriptor limit", "max-connections", fits, "rlimit-nofile", lim.Cur)
		return fits
	}
	if flag > fits {
		log.Warn("--max-connections exceeds what the descriptor limit holds (two descriptors per connection): beyond it accepts and upstream dials fail",
			"max-connections", flag, "rlimit-nofile", lim.Cur, "fits", fits)
	} else {
		log.Info("connection limit", "max-connections", flag, "rlimit-nofile", lim.Cur)
	}
	return flag
}
