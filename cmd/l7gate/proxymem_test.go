//go:build !l7gate_proxyonly

package main

import (
	"bufio"
	"context"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// exeResidentKiB sums the resident KiB of this process's mappings of its
// own executable, read-only and writable apart.
func exeResidentKiB(t *testing.T) (readOnly, writable int64) {
	t.Helper()
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	var ours, ro bool
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) >= 5 && strings.Contains(fl[0], "-") && len(fl[1]) == 4 {
			ours = len(fl) >= 6 && fl[5] == exe
			ro = fl[1][1] == '-'
			continue
		}
		if ours && len(fl) >= 2 && fl[0] == "Rss:" {
			kb, _ := strconv.ParseInt(fl[1], 10, 64)
			if ro {
				readOnly += kb
			} else {
				writable += kb
			}
		}
	}
	return readOnly, writable
}

// written lives in the executable's writable data (initialised): a drop
// of the executable's pages must leave what the process wrote there.
var written = []byte("initial value of a package variable!")

// TestDropExecutablePages: the executable's read-only pages leave this
// process's resident set, its writable ones stay as written, and the code
// dropped runs again (faulted back in).
func TestDropExecutablePages(t *testing.T) {
	copy(written, "changed by the test, not in the file")
	// touch code and read-only data (regexp, strconv tables)
	regexp.MustCompile(`^/api/v[0-9]+/items/[a-z]+$`).MatchString("/api/v1/items/x")
	before, wBefore := exeResidentKiB(t)
	if before == 0 {
		t.Fatal("no resident read-only page of the executable before the drop")
	}
	dropped, err := dropExecutablePages(0)
	if err != nil {
		t.Fatal(err)
	}
	after, wAfter := exeResidentKiB(t)
	t.Logf("executable read-only resident: %d KiB before, %d KiB after (dropped %d KiB); writable %d → %d KiB", before, after, dropped>>10, wBefore, wAfter)
	// (the runtime and the test run on meanwhile: some pages come back)
	if dropped < before<<10/2 || after >= before {
		t.Fatalf("read-only resident %d KiB before, %d KiB after, %d KiB dropped: want most dropped", before, after, dropped>>10)
	}
	if wAfter < wBefore {
		t.Fatalf("writable resident %d KiB before, %d KiB after: a writable mapping was dropped", wBefore, wAfter)
	}
	if string(written) != "changed by the test, not in the file" {
		t.Fatalf("package variable now %q", written)
	}
	if !regexp.MustCompile(`^/api/v[0-9]+/items/[a-z]+$`).MatchString("/api/v2/items/y") {
		t.Fatal("regexp after the drop")
	}
}

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
