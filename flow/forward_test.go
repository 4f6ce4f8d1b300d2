package flow

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"reflect"
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
