package main

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// dropExecutablePages unmaps the resident pages of the executable's
// read-only mappings (its code and read-only data) from this process:
// the binary's start touches most of them (package initialisation,
// command-line handling, the agent's code next to the proxy's: 50 MB of the
// l7gate binary's 80 MB were resident in an idle proxy), the proxy uses a
// small part afterwards. The pages stay in the page cache (shared with the
// agent, which runs the same file); those the proxy uses again come back
// with a minor fault. Writable mappings (data, bss, the heap) are never
// touched: only their contents are not in the file. Nothing is dropped
// when fewer than min bytes are resident. It returns the bytes dropped.
func dropExecutablePages(min int64) (int64, error) {
	exe, err := os.Stat("/proc/self/exe")
	if err != nil {
		return 0, fmt.Errorf("drop executable pages: %w", err)
	}
	st, ok := exe.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, fmt.Errorf("drop executable pages: no inode for the executable")
	}
	// A segment the dynamic loader wrote into before making it read-only
	// (RELRO, of an externally linked binary) is not the file's: kept.
	var relro [][2]uint64
	if f, err := elf.Open("/proc/self/exe"); err == nil {
		for _, p := range f.Progs {
			if p.Type == elf.PT_GNU_RELRO {
				relro = append(relro, [2]uint64{p.Vaddr &^ 0xfff, p.Vaddr + p.Memsz})
			}
		}
		f.Close()
	}
	smaps, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return 0, fmt.Errorf("drop executable pages: %w", err)
	}
	type mapping struct{ start, end uint64 }
	var resident int64
	var drop []mapping
	var start, end uint64
	var ours bool
	sc := bufio.NewScanner(bytes.NewReader(smaps))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) >= 5 && strings.Contains(f[0], "-") && len(f[1]) == 4 {
			// a mapping: start-end perms offset dev inode [path]
			ours = false
			lo, hi, found := strings.Cut(f[0], "-")
			if !found {
				continue
			}
			s, err1 := strconv.ParseUint(lo, 16, 64)
			e, err2 := strconv.ParseUint(hi, 16, 64)
			ino, err3 := strconv.ParseUint(f[4], 10, 64)
			if err1 != nil || err2 != nil || err3 != nil {
				continue
			}
			maj, mnr, _ := strings.Cut(f[3], ":")
			dmaj, err4 := strconv.ParseUint(maj, 16, 32)
			dmin, err5 := strconv.ParseUint(mnr, 16, 32)
			// read-only (r-x or r--), private, of the executable's file
			// (the Go linker writes no relocation into a read-only
			// segment: their pages are the file's)
			ours = err4 == nil && err5 == nil && f[1][1] == '-' && f[1][3] == 'p' &&
				ino == st.Ino && uint32(dmaj) == unix.Major(st.Dev) && uint32(dmin) == unix.Minor(st.Dev)
			for _, r := range relro {
				if s < r[1] && r[0] < e {
					ours = false
				}
			}
			start, end = s, e
			continue
		}
		if ours && len(f) >= 2 && f[0] == "Rss:" {
			kb, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil || kb == 0 {
				continue
			}
			resident += kb << 10
			drop = append(drop, mapping{start, end})
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("drop executable pages: %w", err)
	}
	if resident < min {
		return 0, nil
	}
	for _, m := range drop {
		// (a raw call: the range is no Go memory)
		if _, _, errno := unix.Syscall(unix.SYS_MADVISE, uintptr(m.start), uintptr(m.end-m.start), unix.MADV_DONTNEED); errno != 0 {
			return 0, fmt.Errorf("drop executable pages: madvise: %w", errno)
		}
	}
	return resident, nil
}

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

// trimMemory is the proxy's trim: free heap and executable pages back to
// the kernel, each when there are at least trimWorth of them (the
// collection debug.FreeOSMemory runs is the cost: skipped after a small
// burst).
func trimMemory(log *slog.Logger) {
	start := time.Now()
	sample := []metrics.Sample{{Name: "/memory/classes/heap/free:bytes"}}
	metrics.Read(sample)
	freed := uint64(0)
	if sample[0].Value.Kind() == metrics.KindUint64 && sample[0].Value.Uint64() >= trimWorth {
		freed = sample[0].Value.Uint64()
		debug.FreeOSMemory()
	}
	dropped, err := dropExecutablePages(trimWorth)
	if err != nil {
		log.Warn("memory trim", "error", err)
	}
	log.Debug("quiet: returned free heap and executable pages", "heap-bytes", freed, "executable-bytes", dropped, "took", time.Since(start))
}

// trimWorth: less free heap, or fewer resident executable bytes, are not
// worth a trim.
const trimWorth = 4 << 20
