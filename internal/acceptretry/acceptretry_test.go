package acceptretry

import (
	"errors"
	"testing"
	"time"
)

// TestBackoffDoublesToOneSecondAndResets: 5 ms, 10 ms, ... capped at 1 s;
// Reset starts again at 5 ms; a closed done ends the wait at once.
func TestBackoffDoublesToOneSecondAndResets(t *testing.T) {
	var b Backoff
	want := []time.Duration{5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000}
	for i, w := range want {
		if got := b.Next(); got != w*time.Millisecond {
			t.Fatalf("failure %d: next wait %v, want %v", i+1, got, w*time.Millisecond)
		}
		b.d = b.Next() // what Wait does, without the waiting
	}
	b.Reset()
	start := time.Now()
	if !b.Wait(nil, nil, "accept failed", errors.New("emfile")) {
		t.Fatal("Wait reported done with no done channel")
	}
	if el := time.Since(start); el < 5*time.Millisecond {
		t.Fatalf("first wait after Reset took %v, want 5 ms", el)
	}
	done := make(chan struct{})
	close(done)
	b.d = 500 * time.Millisecond
	start = time.Now()
	if b.Wait(done, nil, "accept failed", errors.New("emfile")) {
		t.Fatal("Wait reported true though done was closed")
	}
	if el := time.Since(start); el > 400*time.Millisecond {
		t.Fatalf("a closed done still waited %v", el)
	}
}
