package agent

import (
	"runtime"
	"sync"
	"testing"
	"time"
)

const mb = 1 << 20

func TestGCSoon(t *testing.T) {
	for _, c := range []struct {
		name      string
		h         heapStats
		perChange uint64
		want      bool
	}{
		// live 40, goal 80: the trigger is taken at 68
		{"far from the trigger", heapStats{objects: 45 * mb, live: 40 * mb, goal: 80 * mb}, 8 * mb, false},
		{"the next change crosses it", heapStats{objects: 60 * mb, live: 40 * mb, goal: 80 * mb}, 8 * mb, true},
		{"just under", heapStats{objects: 59 * mb, live: 40 * mb, goal: 80 * mb}, 8 * mb, false},
		{"past the trigger already", heapStats{objects: 70 * mb, live: 40 * mb, goal: 80 * mb}, mb, true},
		{"nothing known of a change", heapStats{objects: 79 * mb, live: 40 * mb, goal: 80 * mb}, 0, false},
		{"no goal (GC off)", heapStats{objects: 79 * mb, live: 40 * mb, goal: 40 * mb}, 8 * mb, false},
		{"a change larger than the way to the trigger", heapStats{objects: 60 * mb, live: 40 * mb, goal: 80 * mb}, 300 * mb, false},
	} {
		if got := gcSoon(c.h, c.perChange); got != c.want {
			t.Errorf("%s: gcSoon(%+v, %d) = %v, want %v", c.name, c.h, c.perChange, got, c.want)
		}
	}
}

// TestIdleGCBetweenChanges: once a revision is implemented and the next
// change would cross the GC trigger, the agent starts a cycle then (not
// during the next change), and not before.
func TestIdleGCBetweenChanges(t *testing.T) {
	h := newHarness(t, starwarsVeths())
	var mu sync.Mutex
	heap := heapStats{allocs: 100 * mb, objects: 45 * mb, live: 40 * mb, goal: 80 * mb}
	collected := make(chan struct{}, 10)
	h.readHeap = func() heapStats {
		mu.Lock()
		defer mu.Unlock()
		return heap
	}
	h.collectGarbage = func() { collected <- struct{}{} }
	h.start()
	// Each change allocates 10 MB; the trigger is taken at 68 MB.
	for i, objects := range []uint64{45, 55, 60} {
		mu.Lock()
		heap.allocs, heap.objects = (100+10*uint64(i))*mb, objects*mb
		mu.Unlock()
		h.send("../examples/starwars/objects.yaml", "../examples/starwars/policy-l7.yaml")
		h.await("a revision", anyReport)
		if i < 2 {
			select {
			case <-collected:
				t.Fatalf("change %d (heap %d MB, 10 MB per change, trigger at 68 MB): a GC cycle, want none yet", i, objects)
			case <-time.After(200 * time.Millisecond):
			}
			continue
		}
		select {
		case <-collected:
		case <-time.After(10 * time.Second):
			t.Fatalf("change %d (heap %d MB, 10 MB per change, trigger at 68 MB): no GC cycle", i, objects)
		}
	}
}

// TestIdleGCFollowsTheLastChange: what the last change allocated is the
// estimate, not the largest of recent ones: after the pods arrived (a
// change of hundreds of MB) the next ordinary change does not start a
// cycle while the heap is far from the trigger.
func TestIdleGCFollowsTheLastChange(t *testing.T) {
	heap := heapStats{allocs: 100 * mb, objects: 45 * mb, live: 40 * mb, goal: 80 * mb}
	done := make(chan struct{}, 1)
	g := newIdleGC(func() heapStats { return heap }, func() { done <- struct{}{} })
	step := func(alloc, objects uint64) bool {
		heap.allocs += alloc
		heap.objects = objects
		if !g.changeDone() {
			return false
		}
		<-done // the cycle runs in the background
		return true
	}
	step(0, 45*mb) // the first: nothing known yet
	if step(300*mb, 45*mb) {
		t.Error("the pods' arrival (300 MB) started a cycle")
	}
	if step(8*mb, 53*mb) {
		t.Errorf("an 8 MB change at 53 MB (trigger 68 MB) started a cycle: the 300 MB one still counted")
	}
	if !step(8*mb, 61*mb) {
		t.Error("an 8 MB change at 61 MB (trigger 68 MB) started no cycle")
	}
}

// TestReadHeap: the runtime/metrics names exist (a wrong one reads as 0,
// and idleGC would never start a cycle).
func TestReadHeap(t *testing.T) {
	runtime.GC()
	before := readHeap()
	buf := make([][]byte, 0, 64)
	for range 64 {
		buf = append(buf, make([]byte, 64<<10))
	}
	after := readHeap()
	runtime.KeepAlive(buf)
	if after.allocs < before.allocs+4*mb {
		t.Errorf("allocs %d -> %d after allocating 4 MB", before.allocs, after.allocs)
	}
	if after.objects < 4*mb || after.live == 0 || after.goal <= after.live {
		t.Errorf("heap %+v: want objects ≥ 4 MB and 0 < live < goal", after)
	}
}
