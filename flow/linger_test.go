package flow

import (
	"context"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// countingConn counts the reads that returned data.
type countingConn struct {
	net.Conn
	reads *atomic.Int64
}

func (c countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.reads.Add(1)
	}
	return n, err
}

// TestForwarderLingerCoalesces: with Linger, records sent a millisecond
// apart reach the intake in a few writes instead of one each, all of
// them, in order.
func TestForwarderLingerCoalesces(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flows.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var reads atomic.Int64
	got := make(chan string, 100)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		DecodeJSONLines(countingConn{c, &reads}, 0, func(r *Record) { got <- r.Reason })
	}()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := NewForwarder(path, 0, nil)
	f.Linger = 300 * time.Millisecond
	go f.Run(ctx)
	const n = 30
	for i := range n {
		f.Send(&Record{Protocol: "kafka", Reason: string(rune('a' + i%26))})
		time.Sleep(time.Millisecond)
	}
	for i := range n {
		select {
		case r := <-got:
			if want := string(rune('a' + i%26)); r != want {
				t.Fatalf("record %d reason %q, want %q", i, r, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("intake got %d of %d records", i, n)
		}
	}
	if r := reads.Load(); r > 3 {
		t.Errorf("%d records a millisecond apart took %d reads, want them coalesced (≤ 3)", n, r)
	}
}
