package redirect

import (
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"
)

func TestPortAllocator(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	clock := func() time.Time { return now }
	busy := map[uint16]bool{10001: true}
	state := filepath.Join(t.TempDir(), "ports.json")
	cfg := PortAllocatorConfig{Min: 10000, Max: 10003, StatePath: state, Now: clock, Rand: rand.New(rand.NewPCG(1, 1)),
		InUse: func(p uint16) bool { return busy[p] }}
	a, err := NewPortAllocator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	in := PortKey{"ingress", "http"}
	eg := PortKey{"egress", "http"}
	p1, err := a.Allocate(in)
	if err != nil || p1 < 10000 || p1 > 10003 || p1 == 10001 {
		t.Fatalf("allocate: %d %v", p1, err)
	}
	if again, _ := a.Allocate(in); again != p1 {
		t.Fatalf("same key got %d then %d", p1, again)
	}
	p2, err := a.Allocate(eg)
	if err != nil || p2 == p1 || p2 == 10001 {
		t.Fatalf("second key: %d %v", p2, err)
	}

	// A restarted agent gets the same ports back.
	b, err := NewPortAllocator(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := b.Allocate(in); got != p1 {
		t.Fatalf("after restart %d, want %d", got, p1)
	}

	// A released port is held back, then reusable.
	if err := b.Release(eg); err != nil {
		t.Fatal(err)
	}
	k3, k4 := PortKey{"ingress", "kafka"}, PortKey{"egress", "kafka"}
	p3, err := b.Allocate(k3)
	if err != nil || p3 == p2 || p3 == p1 {
		t.Fatalf("third: %d %v (held-back %d)", p3, err, p2)
	}
	if _, err := b.Allocate(k4); err == nil {
		t.Fatal("range exhausted but allocation succeeded (held-back port reused early)")
	}
	now = now.Add(6 * time.Minute)
	if p4, err := b.Allocate(k4); err != nil || p4 != p2 {
		t.Fatalf("after hold-back: %d %v, want %d", p4, err, p2)
	}

	// Allocations older than the restore window are not restored.
	now = now.Add(20 * time.Minute)
	c, _ := NewPortAllocator(cfg)
	if n := len(c.Allocations()); n != 0 {
		t.Fatalf("%d stale allocations restored", n)
	}
	if _, err := NewPortAllocator(PortAllocatorConfig{Min: 5, Max: 4}); err == nil {
		t.Fatal("invalid range accepted")
	}
}
