package agentapi

import (
	"context"
	"os"
	"testing"
	"time"
)

// TestFetchLeavesNoConnection: every Fetch* call used to leave its
// keep-alive connection open on both ends (a new Transport per call), so
// a long-running client (the soak's status polls) grew the agent's
// goroutines and fds without bound: 55 → 178 fds over a 10-minute soak.
// 50 calls must leave no open file descriptor behind.
func TestFetchLeavesNoConnection(t *testing.T) {
	run := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, StatusSocket(run), &backend{}) }()
	defer func() { cancel(); <-done }()
	for range 100 { // until the server listens
		if _, err := FetchStatus(ctx, run); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	fds := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Skipf("no /proc/self/fd: %v", err)
		}
		return len(ents)
	}
	before := fds()
	for range 50 {
		if _, err := FetchStatus(ctx, run); err != nil {
			t.Fatal(err)
		}
		if _, err := FetchFlows(ctx, run, 0); err != nil {
			t.Fatal(err)
		}
	}
	// The server side notices a closed connection asynchronously.
	var after int
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if after = fds(); after-before < 5 || time.Now().After(deadline) {
			break
		}
	}
	if after-before >= 5 {
		t.Errorf("100 calls left %d more open fds (%d → %d)", after-before, before, after)
	}
}
