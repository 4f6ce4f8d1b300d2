package flow

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// intake is a test flow intake: a Unix socket whose decoded records are
// collected.
type intake struct {
	ln    net.Listener
	mu    sync.Mutex
	recs  []*Record
	bad   int
	conns []net.Conn
}

// close stops the intake as an exiting agent would: listener and
// connections.
func (in *intake) close() {
	in.ln.Close()
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, c := range in.conns {
		c.Close()
	}
}

func newIntake(t *testing.T, path string) *intake {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	in := &intake{ln: ln}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			in.mu.Lock()
			in.conns = append(in.conns, c)
			in.mu.Unlock()
			go func() {
				defer c.Close()
				bad, _ := DecodeJSONLines(c, 0, func(r *Record) {
					in.mu.Lock()
					in.recs = append(in.recs, r)
					in.mu.Unlock()
				})
				in.mu.Lock()
				in.bad += bad
				in.mu.Unlock()
			}()
		}
	}()
	return in
}

func (in *intake) wait(t *testing.T, n int) []*Record {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		in.mu.Lock()
		got := len(in.recs)
		in.mu.Unlock()
		if got >= n {
			in.mu.Lock()
			defer in.mu.Unlock()
			return in.recs
		}
		if time.Now().After(deadline) {
			t.Fatalf("intake got %d records, want %d", got, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestForwarderRoundTrip: records sent by a Forwarder arrive at a real
// Unix-socket intake equal to what was sent, in order, and are counted;
// after the intake restarts the forwarder reconnects.
func TestForwarderRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flows.sock")
	in := newIntake(t, path)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := NewForwarder(path, 64, nil)
	done := make(chan struct{})
	go func() { f.Run(ctx); close(done) }()
	want := sampleRecords()
	for _, r := range want {
		f.Send(r)
	}
	got := in.wait(t, len(want))
	for i := range want {
		// what encoding/json makes of the record (invalid UTF-8 becomes
		// U+FFFD on the way)
		var exp Record
		if err := json.Unmarshal(AppendJSON(nil, want[i]), &exp); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(normalize(got[i]), normalize(&exp)) {
			t.Errorf("record %d:\n got %s\nwant %s", i, AppendJSON(nil, got[i]), AppendJSON(nil, want[i]))
		}
	}
	for i := 0; ; i++ { // counted once the flush returned
		sent, dropped := f.Stats()
		if sent == uint64(len(want)) && dropped == 0 {
			break
		}
		if i == 100 {
			t.Fatalf("stats sent %d dropped %d, want %d 0", sent, dropped, len(want))
		}
		time.Sleep(10 * time.Millisecond)
	}

	// the agent restarts: a new intake on the same path
	in.close()
	in2 := newIntake(t, path)
	defer in2.close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		f.Send(&Record{Protocol: "http", Method: "GET", Path: "/after-restart"})
		in2.mu.Lock()
		n := len(in2.recs)
		in2.mu.Unlock()
		if n > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("forwarder did not reconnect to the restarted intake")
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	<-done
}

// normalize makes a decoded record comparable to the one sent (times
// compare by instant, empty slices as nil).
func normalize(r *Record) *Record {
	c := *r
	c.Time = c.Time.UTC()
	return &c
}

// TestForwarderDropsWhenFull: with no agent the queue fills and further
// records are dropped and counted, without blocking the sender.
func TestForwarderDropsWhenFull(t *testing.T) {
	f := NewForwarder(filepath.Join(t.TempDir(), "none.sock"), 4, nil)
	start := time.Now()
	for range 10 {
		f.Send(&Record{})
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Send blocked for %v", d)
	}
	if _, dropped := f.Stats(); dropped != 6 {
		t.Errorf("dropped %d, want 6", dropped)
	}
}

// TestHostileDecodeJSONLines: garbage lines are skipped and counted, an
// endless line ends the stream with ErrRecordTooLong instead of growing
// without bound.
func TestHostileDecodeJSONLines(t *testing.T) {
	var n int
	in := `{"protocol":"http","verdict":"denied"}` + "\nnot json\n{\"direction\":\"sideways\"}\n\n" + `{"protocol":"kafka"}`
	bad, err := DecodeJSONLines(strings.NewReader(in), 0, func(*Record) { n++ })
	if err != nil || n != 2 || bad != 2 {
		t.Errorf("decoded %d bad %d err %v, want 2 2 nil", n, bad, err)
	}
	long := bytes.Repeat([]byte("x"), 300<<10)
	_, err = DecodeJSONLines(bytes.NewReader(long), 0, func(*Record) { n++ })
	if !errors.Is(err, ErrRecordTooLong) {
		t.Errorf("long line: %v, want ErrRecordTooLong", err)
	}
}

func FuzzDecodeJSONLines(f *testing.F) {
	for _, r := range sampleRecords() {
		f.Add(AppendJSON(nil, r))
	}
	f.Add([]byte("{\"source\":\"1.2.3.4:5\",\"srcEndpoint\":{\"labels\":[1]}}\n{"))
	f.Fuzz(func(t *testing.T, data []byte) {
		DecodeJSONLines(bytes.NewReader(data), 1024, func(r *Record) {
			// whatever decodes re-encodes
			AppendJSON(nil, r)
		})
	})
}

// TestForwarderKeepsNoRecord: a record is the sender's again once Send
// (or the buffered sink) returns: overwritten at once, as the proxy
// reuses its records, what reaches the intake and the file is what was
// sent, every record once and in order (run with -race: a forwarder
// reading a record later is a data race too).
func TestForwarderKeepsNoRecord(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flows.sock")
	in := newIntake(t, path)
	defer in.close()
	ctx, cancel := context.WithCancel(context.Background())
	f := NewForwarder(path, 0, nil)
	f.Linger = 5 * time.Millisecond
	done := make(chan struct{})
	go func() { f.Run(ctx); close(done) }()
	var file lockedBuffer
	sink, flush := BufferedJSONLinesForward(&file, time.Millisecond, f)
	const n = 2000
	var rec Record // one record, reused for every request
	var wg sync.WaitGroup
	for w := range 2 {
		wg.Add(1)
		go func() { // another sender, as concurrent connections are
			defer wg.Done()
			var own Record
			for i := range n / 2 {
				own = Record{Protocol: "http", Method: "POST", Path: "/w/" + strconv.Itoa(w) + "/" + strconv.Itoa(i), Status: 201}
				f.Send(&own)
				own = Record{Protocol: "kafka", Reason: "reused"}
			}
		}()
	}
	for i := range n {
		rec = Record{Protocol: "http", Method: "GET", Path: "/r/" + strconv.Itoa(i), Status: 200}
		sink(&rec)
		rec = Record{Protocol: "kafka", Reason: "reused"} // the next request's
	}
	wg.Wait()
	flush()
	got := in.wait(t, 2*n)
	next := 0
	seen := map[string]bool{}
	for _, r := range got {
		if r.Protocol != "http" || r.Reason != "" {
			t.Fatalf("record read after it was reused: %+v", r)
		}
		switch {
		case r.Method == "GET" && r.Status == 200:
			if want := "/r/" + strconv.Itoa(next); r.Path != want {
				t.Fatalf("sink record %q, want %q", r.Path, want)
			}
			next++
		case r.Method == "POST" && r.Status == 201 && strings.HasPrefix(r.Path, "/w/"):
			if seen[r.Path] {
				t.Fatalf("record %q twice", r.Path)
			}
			seen[r.Path] = true
		default:
			t.Fatalf("unexpected record %+v", r)
		}
	}
	if next != n || len(seen) != n {
		t.Fatalf("got %d sink and %d sent records, want %d each", next, len(seen), n)
	}
	lines, _ := file.snapshot()
	if c := strings.Count(lines, "\n"); c != n || strings.Contains(lines, "reused") {
		t.Fatalf("file has %d lines (want %d) or a reused record", c, n)
	}
	cancel()
	<-done
	if sent, dropped := f.Stats(); sent != 2*n || dropped != 0 {
		t.Errorf("stats sent %d dropped %d, want %d 0", sent, dropped, 2*n)
	}
}

// TestForwarderFlushesAtStop: records queued when Run's context ends
// still reach the intake (a clean stop loses none), and records the
// forwarder could not write are counted as dropped, not lost silently.
func TestForwarderFlushesAtStop(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flows.sock")
	in := newIntake(t, path)
	defer in.close()
	ctx, cancel := context.WithCancel(context.Background())
	f := NewForwarder(path, 0, nil)
	f.Linger = time.Hour // nothing is written before the stop
	done := make(chan struct{})
	go func() { f.Run(ctx); close(done) }()
	// connected (the first record waits out the linger)
	deadline := time.Now().Add(5 * time.Second)
	for {
		in.mu.Lock()
		c := len(in.conns)
		in.mu.Unlock()
		if c > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("forwarder never connected")
		}
		time.Sleep(5 * time.Millisecond)
	}
	for i := range 100 {
		f.Send(&Record{Protocol: "http", Path: "/" + strconv.Itoa(i)})
	}
	cancel()
	<-done
	got := in.wait(t, 100)
	if len(got) != 100 || got[99].Path != "/99" {
		t.Fatalf("got %d records after the stop, want 100", len(got))
	}
	if sent, dropped := f.Stats(); sent != 100 || dropped != 0 {
		t.Errorf("stats sent %d dropped %d, want 100 0", sent, dropped)
	}

	// no intake: what is queued when Run ends is counted as dropped
	g := NewForwarder(filepath.Join(t.TempDir(), "none.sock"), 0, nil)
	ctx2, cancel2 := context.WithCancel(context.Background())
	done2 := make(chan struct{})
	go func() { g.Run(ctx2); close(done2) }()
	for range 7 {
		g.Send(&Record{})
	}
	cancel2()
	<-done2
	if sent, dropped := g.Stats(); sent != 0 || dropped != 7 {
		t.Errorf("without an intake: sent %d dropped %d, want 0 7", sent, dropped)
	}
}
