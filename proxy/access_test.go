package proxy

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/internal/testutil"
	"github.com/l7gate/l7gate/policy"
)

// TestProxyAccessRecordsReused: the proxy reuses its access records, so
// every sink must be done with one when it returns. Through the sinks
// `l7gate proxy` uses under the agent (a batched file and the flow
// forwarder, each record encoded once), concurrent keep-alive
// connections' requests are each recorded once, with their own path,
// status and source, in the file and at the agent's intake alike; and a
// sink that kept the pointer would see it change (run with -race: a read
// after reuse is a data race).
func TestProxyAccessRecordsReused(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/public/") {
			fmt.Fprint(w, "ok")
		}
	}))
	defer srv.Close()
	up := netip.MustParseAddrPort(srv.Listener.Addr().String())

	sock := filepath.Join(t.TempDir(), "flows.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var inMu sync.Mutex
	var intake []*flow.Record
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		flow.DecodeJSONLines(c, 0, func(r *flow.Record) {
			inMu.Lock()
			intake = append(intake, r)
			inMu.Unlock()
		})
	}()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fwd := flow.NewForwarder(sock, 0, nil)
	fwd.Linger = 5 * time.Millisecond
	fwdDone := make(chan struct{})
	go func() { fwd.Run(ctx); close(fwdDone) }()
	var file testutil.LogBuffer // the access-log file, in memory
	sink, flush := flow.BufferedJSONLinesForward(&file, 10*time.Millisecond, fwd)

	// A sink that keeps the pointer it was given, as no sink may: the
	// proxy overwrites the record for a later request.
	var keptMu sync.Mutex
	kept := map[*AccessRecord]string{}
	no := false
	p := New(Options{ListenHost: "127.0.0.1", Transparent: &no,
		OriginalDestination: func(net.Conn) (netip.AddrPort, error) { return up, nil },
		AccessLog: func(r *AccessRecord) {
			sink(r)
			keptMu.Lock()
			kept[r] = r.Path
			keptMu.Unlock()
		}})
	defer p.Close()
	port := freePort(t)
	if err := p.Apply(httpConfig("1", port, up.Port(), policy.HTTPRule{Method: "GET", Path: "/public/.*"})); err != nil {
		t.Fatal(err)
	}

	const conns, reqs = 8, 50
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}, Timeout: 3 * time.Second}
			conn, err := d.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
			if err != nil {
				errs <- err
				return
			}
			defer conn.Close()
			br := bufio.NewReader(conn)
			for i := range reqs {
				path := fmt.Sprintf("/public/%d/%d", c, i)
				want := 200
				if i%5 == 4 {
					path, want = fmt.Sprintf("/private/%d/%d", c, i), 403
				}
				fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: web\r\n\r\n", path)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					errs <- err
					return
				}
				resp.Body.Close()
				if resp.StatusCode != want {
					errs <- fmt.Errorf("%s: %d, want %d", path, resp.StatusCode, want)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	const n = conns * reqs
	// (a record is written after its response: wait for the last ones)
	deadline := time.Now().Add(5 * time.Second)
	for {
		flush()
		inMu.Lock()
		got := len(intake)
		inMu.Unlock()
		if got >= n && strings.Count(file.String(), "\n") >= n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("intake %d records, file %d lines, want %d each", got, strings.Count(file.String(), "\n"), n)
		}
		time.Sleep(10 * time.Millisecond)
	}

	check := func(where string, recs []*flow.Record) {
		t.Helper()
		seen := map[string]bool{}
		for _, r := range recs {
			want, verdict := 200, flow.VerdictAllowed
			if strings.HasPrefix(r.Path, "/private/") {
				want, verdict = 403, flow.VerdictDenied
			}
			if seen[r.Path] || r.Status != want || r.Verdict != verdict || r.Method != "GET" || r.Protocol != "http" ||
				r.Source.Addr() != netip.MustParseAddr("127.0.0.2") || r.Destination != up {
				t.Fatalf("%s: record %s (twice: %v)", where, flow.AppendJSON(nil, r), seen[r.Path])
			}
			seen[r.Path] = true
		}
		if len(seen) != n {
			t.Fatalf("%s: %d distinct requests recorded, want %d", where, len(seen), n)
		}
	}
	var fromFile []*flow.Record
	if bad, err := flow.DecodeJSONLines(strings.NewReader(file.String()), 0, func(r *flow.Record) { fromFile = append(fromFile, r) }); bad != 0 || err != nil {
		t.Fatalf("file: %d bad lines, %v", bad, err)
	}
	check("file", fromFile)
	inMu.Lock()
	check("intake", intake)
	inMu.Unlock()

	// The records were reused: fewer of them than requests, and none
	// still holds the request it was given (the pool clears them).
	p.Close() // (its connections ended: done with every record)
	keptMu.Lock()
	defer keptMu.Unlock()
	if len(kept) >= n {
		t.Errorf("%d distinct record pointers for %d requests: records are not reused", len(kept), n)
	}
	changed := 0
	for r, path := range kept {
		if r.Path != path {
			changed++
		}
	}
	if changed == 0 {
		t.Errorf("every kept record still holds its request: a reused record would go unnoticed")
	}
	cancel()
	<-fwdDone
}
