package proxy

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/l7gate/l7gate/flow"
	httpparser "github.com/l7gate/l7gate/parsers/http"
	"github.com/l7gate/l7gate/policy"
)

// BenchmarkHTTPAccess is the access-log path of one HTTP request alone,
// as `l7gate proxy` runs under the agent: the parser's record made an
// access record, written to a file in batches and forwarded to the
// agent's flow intake (a Unix socket read and discarded here). cpu-ns/op
// is the process's CPU per record (the writes' system calls included).
func BenchmarkHTTPAccess(b *testing.B) {
	path := filepath.Join(b.TempDir(), "flows.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(io.Discard, c)
			}()
		}
	}()
	f, err := os.Create(filepath.Join(b.TempDir(), "access.log"))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// (a queue for the benchmark's rate, far above a proxy's: records
	// dropped would cost less than records sent)
	fwd := flow.NewForwarder(path, 1<<17, slog.New(slog.DiscardHandler))
	fwd.Linger = flowLinger
	go fwd.Run(ctx)
	sink, flush := flow.BufferedJSONLinesForward(f, accessLogDelay, fwd)
	defer flush()
	p := New(Options{ListenHost: "127.0.0.1", AccessLog: sink})
	defer p.Close()
	access := p.httpAccess(connInfo{dir: policy.Ingress, src: netip.MustParseAddrPort("198.18.1.11:40000"),
		dst: netip.MustParseAddrPort("198.18.1.10:80"), parser: "http"})
	decided := []policy.Provenance{{Policy: "default/rule1", PolicyKind: policy.KindCNP, Path: "spec.ingress[0]", L7: "http[50]", Kind: policy.KindAllow}}
	rec := httpparser.Record{Start: time.Now(), Duration: 250 * time.Microsecond, Method: "GET", Path: "/api/v1/service500/items",
		Host: "198.18.1.10", Status: 200, Allowed: true, DecidedBy: decided}
	b.ReportAllocs()
	usr0, sys0 := cpuTimes(b)
	for b.Loop() {
		rec.Start = rec.Start.Add(time.Microsecond)
		access(&rec)
	}
	usr1, sys1 := cpuTimes(b)
	b.ReportMetric(float64((usr1-usr0+sys1-sys0).Nanoseconds())/float64(b.N), "cpu-ns/op")
	if _, dropped := fwd.Stats(); dropped > 0 {
		b.ReportMetric(float64(dropped)/float64(b.N), "dropped/op")
	}
}
