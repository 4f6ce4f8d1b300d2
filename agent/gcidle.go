package agent

import (
	"runtime"
	"runtime/metrics"
	"sync/atomic"
)

// Garbage collection between policy changes.
//
// At 1000 local + 10k cluster pods a policy change allocates some MB in
// the agent (the folder source's merge, the compute, the xDS render) on
// a live heap of ~45 MB, so every few changes one of them crossed the
// GC trigger: its mark phase (15-40 ms of wall time on a loaded 2-core
// node) then ran during the change, whose goroutines paid mark assists
// and shared the CPUs with the mark workers. Those changes were the p99
// of both "took" and file write → implemented (make bench's control
// plane phase, 1000+10k pods: the slowest folder merge 39 ms during a
// GC, 0.5 ms otherwise).
//
// idleGC moves that cycle to just after a change: when a revision is
// implemented and the heap is within one change's allocation of the
// point where the runtime may start a cycle, it starts one now (in the
// background: the loop does not wait), while the agent is idle.
// The runtime's pacer is unchanged (GOGC, GOMEMLIMIT), so the heap's
// size is what it was; cycles start earlier than the runtime would start
// them, so there are more of them: in make bench's 11k-pod changes 8-9
// cycles in 29 changes instead of 5-6, while the changes a cycle ran
// during went from 2-5 in 30 (took p50 35-118 ms there, 13-21 ms in the
// others) to 0-1 in 30.
type idleGC struct {
	// read: the heap's numbers now; collect: a full cycle (runtime.GC).
	read    func() heapStats
	collect func()
	running atomic.Bool
	// last: allocs at the last changeDone; perChange: what the process
	// allocated from the change's end before to the last one's.
	last, perChange uint64
}

// heapStats: the runtime's numbers idleGC decides on (runtime/metrics).
type heapStats struct {
	// allocs: bytes allocated since the process started.
	allocs uint64
	// objects: the heap's objects now (live and not yet swept).
	objects uint64
	// live: what the last cycle marked live; goal: the heap size the
	// runtime aims to end the next cycle at.
	live, goal uint64
}

func readHeap() heapStats {
	s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}, {Name: "/memory/classes/heap/objects:bytes"}, {Name: "/gc/heap/live:bytes"}, {Name: "/gc/heap/goal:bytes"}}
	metrics.Read(s)
	v := func(i int) uint64 {
		if s[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return s[i].Value.Uint64()
	}
	return heapStats{allocs: v(0), objects: v(1), live: v(2), goal: v(3)}
}

func newIdleGC(read func() heapStats, collect func()) *idleGC {
	if read == nil {
		read = readHeap
	}
	if collect == nil {
		collect = runtime.GC
	}
	return &idleGC{read: read, collect: collect}
}

// changeDone: a source update is implemented. It starts a cycle (in the
// background) when the next change may cross the trigger, and reports
// whether it did.
func (g *idleGC) changeDone() bool {
	h := g.read()
	if g.last != 0 && h.allocs >= g.last {
		g.perChange = h.allocs - g.last
	}
	g.last = h.allocs
	if !gcSoon(h, g.perChange) || !g.running.CompareAndSwap(false, true) {
		return false
	}
	go func() {
		defer g.running.Store(false)
		g.collect()
	}()
	return true
}

// gcSoon: allocating perChange more (what the process allocated from one
// change's end to the next: the source's reading, decoding and merging,
// the agent's compute and push, and whatever ran in between) may cross
// the trigger. A change that allocated more than the way to the trigger
// (11k pods added at once: hundreds of MB) says nothing about the next
// one: it starts no cycle (a decaying maximum of the changes before
// made it start one every 2 changes after the pods came, 13 in 29
// changes where the runtime starts 5). The trigger is taken at 70% of
// the way from the live heap to the goal: the runtime starts a cycle
// between 70% and 95% of that way (70-86% in make bench's 11k-pod
// changes, from GODEBUG=gctrace=1). No more margin than that: every MB
// of margin starts cycles earlier than the runtime would, and at 11k
// pods a cycle costs ~50 ms of CPU (a margin of 1.25 changes made a cycle
// every 3 changes instead of 4-5 and cost 5-8 ms of CPU per change).
func gcSoon(h heapStats, perChange uint64) bool {
	if perChange == 0 || h.goal <= h.live {
		return false
	}
	way := (h.goal - h.live) * 7 / 10
	if perChange >= way {
		return false
	}
	return h.objects+perChange >= h.live+way
}
