package http

import (
	"bufio"
	"context"
	"fmt"
	"net"
	nethttp "net/http"
	"strings"
	"sync"
	"testing"

	"github.com/l7gate/l7gate/policy"
)

// TestReuseRecords: with ReuseRecords the server reuses an answered
// request's record for a later one (fewer records than requests), and
// every record the access callback copies is its own request's, on
// concurrent keep-alive connections with allowed and denied requests
// mixed (run with -race: a record written while a callee reads it is a
// data race). Without it every request gets a record of its own, which
// a callee may keep.
func TestReuseRecords(t *testing.T) {
	for _, reuse := range []bool{true, false} {
		t.Run(fmt.Sprint("reuse=", reuse), func(t *testing.T) {
			_, upAddr := newUpstream(t)
			srv := NewServer(Config{ReuseRecords: reuse})
			decide := ruleDecider(t, policy.HTTPRule{Method: "GET", Path: "/public/.*"})
			dial := func(ctx context.Context) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "tcp", upAddr)
			}
			var mu sync.Mutex
			var copies []Record
			ptrs := map[*Record]bool{}
			access := func(r *Record) {
				mu.Lock()
				defer mu.Unlock()
				copies = append(copies, *r)
				ptrs[r] = true
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			var served sync.WaitGroup
			defer func() {
				cancel()
				ln.Close()
				served.Wait()
			}()
			served.Add(1)
			go func() {
				defer served.Done()
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					served.Add(1)
					go func() {
						defer served.Done()
						srv.ServeConn(ctx, c, dial, decide, access)
					}()
				}
			}()

			const conns, reqs = 4, 40
			var wg sync.WaitGroup
			errs := make(chan error, conns)
			for c := range conns {
				wg.Add(1)
				go func() {
					defer wg.Done()
					conn, err := net.Dial("tcp", ln.Addr().String())
					if err != nil {
						errs <- err
						return
					}
					defer conn.Close()
					br := bufio.NewReader(conn)
					for i := range reqs {
						path, want := fmt.Sprintf("/public/%d/%d", c, i), 200
						if i%4 == 3 {
							path, want = fmt.Sprintf("/private/%d/%d", c, i), 403
						}
						fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: up\r\n\r\n", path)
						resp, err := nethttp.ReadResponse(br, nil)
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
			cancel()
			ln.Close()
			served.Wait() // every connection done: every record handed over

			mu.Lock()
			defer mu.Unlock()
			seen := map[string]bool{}
			for _, r := range copies {
				want := 200
				if strings.HasPrefix(r.Path, "/private/") {
					want = 403
				}
				if seen[r.Path] || r.Status != want || r.Method != "GET" || r.Allowed != (want == 200) || r.Error != "" {
					t.Fatalf("record %+v (twice: %v)", r, seen[r.Path])
				}
				seen[r.Path] = true
			}
			if len(seen) != conns*reqs {
				t.Fatalf("%d requests recorded, want %d", len(seen), conns*reqs)
			}
			if reuse && len(ptrs) >= conns*reqs {
				t.Errorf("%d records for %d requests with ReuseRecords: none reused", len(ptrs), conns*reqs)
			}
			if !reuse && len(ptrs) != conns*reqs {
				t.Errorf("%d records for %d requests without ReuseRecords: a kept record was reused", len(ptrs), conns*reqs)
			}
		})
	}
}
