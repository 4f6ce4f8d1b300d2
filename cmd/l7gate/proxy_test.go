//go:build !l7gate_proxyonly

package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/l7gate/l7gate/redirect"
)

// TestProxyNeedsNoDatapath: `l7gate proxy` runs without access to the
// datapath's pins (the agent takes its listeners), and the agent finds it
// through its admin socket.
func TestProxyNeedsNoDatapath(t *testing.T) {
	dir := t.TempDir()
	admin := filepath.Join(dir, "proxy-admin.sock")
	ctx, cancel := context.WithCancel(context.Background())
	var stderr bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"proxy", "--xds-socket", filepath.Join(dir, "xds.sock"), "--admin-socket", admin,
			"--node", "t", "--bpffs", filepath.Join(dir, "no-bpffs"), "--access-log", "none"}, &bytes.Buffer{}, &stderr)
	}()
	deadline := time.Now().Add(10 * time.Second)
	var pid int
	var err error
	for time.Now().Before(deadline) {
		if pid, err = redirect.PeerPID(admin); err == nil {
			break
		}
		select {
		case code := <-done:
			cancel()
			t.Fatalf("proxy exited with %d: %s", code, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	if err != nil || pid != os.Getpid() {
		t.Errorf("proxy pid through its admin socket: %d, %v (want %d)", pid, err, os.Getpid())
	}
	cancel()
	<-done
}

// TestUpstreamKeepsSource: the proxy keeps its clients' addresses upstream
// by default, not by default without the datapath that steers the replies
// back, and as told when told.
func TestUpstreamKeepsSource(t *testing.T) {
	for _, c := range []struct {
		keep, explicit, noSockmap, want bool
	}{
		{keep: true, want: true},
		{keep: true, noSockmap: true, want: false},
		{keep: true, explicit: true, noSockmap: true, want: true},
		{keep: false, explicit: true, want: false},
		{keep: false, explicit: true, noSockmap: true, want: false},
	} {
		if got := upstreamKeepsSource(c.keep, c.explicit, c.noSockmap); got != c.want {
			t.Errorf("keep %v explicit %v no-sockmap %v: %v, want %v", c.keep, c.explicit, c.noSockmap, got, c.want)
		}
	}
}
