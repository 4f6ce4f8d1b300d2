//go:build !l7gate_proxyonly

package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
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

// TestConnectionsFor: two descriptors per connection after a reserve,
// the reserve shrinking for small limits, within [1, 65536].
func TestConnectionsFor(t *testing.T) {
	for _, c := range []struct {
		nofile uint64
		want   int
	}{
		{20000, (20000 - 640) / 2}, // this machine's hard limit
		{1024, (1024 - 512) / 2},   // a small limit: half of it is the reserve
		{1280, (1280 - 640) / 2},
		{1 << 20, 65536}, // a container runtime's usual limit: the former fixed default
		{3, 1},
		{0, 1},
	} {
		if got := connectionsFor(c.nofile); got != c.want {
			t.Errorf("connectionsFor(%d) = %d, want %d", c.nofile, got, c.want)
		}
	}
}

// nofileChildEnv makes the test binary a proxy under a small descriptor
// limit (TestProxyMaxConnectionsFromFileLimit's child).
const nofileChildEnv = "L7GATE_TEST_NOFILE_CHILD"

// TestProxyMaxConnectionsFromFileLimit: a proxy started without
// --max-connections, in a child process whose RLIMIT_NOFILE is 300, takes
// its connection limit from it ((300 - 150) / 2 = 75) and logs it; an
// explicit --max-connections beyond it is kept and warned about. (With the
// former fixed default of 65536 the limit was no limit: accept fails with
// EMFILE long before it.)
func TestProxyMaxConnectionsFromFileLimit(t *testing.T) {
	if args := os.Getenv(nofileChildEnv); args != "" {
		lim := unix.Rlimit{Cur: 300, Max: 300}
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		dir := t.TempDir()
		run(ctx, append([]string{"proxy", "--xds-socket", filepath.Join(dir, "xds.sock"), "--admin-socket", filepath.Join(dir, "admin.sock"),
			"--node", "t", "--access-log", "none", "--no-sockmap", "--drop-capabilities=false"}, strings.Fields(args)...), os.Stdout, os.Stdout)
		return
	}
	for _, c := range []struct {
		args, want string
	}{
		{"--log-level=info", `level=INFO msg="connection limit from the descriptor limit" max-connections=75 rlimit-nofile=300`},
		{"--max-connections=5000", `level=WARN msg="--max-connections exceeds what the descriptor limit holds (two descriptors per connection): beyond it accepts and upstream dials fail" max-connections=5000 rlimit-nofile=300 fits=75`},
		{"--max-connections=50", `level=INFO msg="connection limit" max-connections=50 rlimit-nofile=300`},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestProxyMaxConnectionsFromFileLimit$", "-test.v")
		cmd.Env = append(os.Environ(), nofileChildEnv+"="+c.args)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child %s: %v\n%s", c.args, err, out)
		}
		if !strings.Contains(string(out), c.want) {
			t.Errorf("child %s: no %q in its log:\n%s", c.args, c.want, out)
		}
	}
}
