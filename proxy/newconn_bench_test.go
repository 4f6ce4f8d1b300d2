package proxy

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkHTTP1NewConn is make bench's newconn row in-process: 16
// clients from 127.0.0.2, each opening a connection, sending one GET with
// "Connection: close" and reading the answer to EOF, direct and through
// the Go proxy in a process of its own (100 rules, buffered access log, as
// under the agent; "+keepsource" also binds the upstream to the client's
// address with IP_TRANSPARENT and sets SO_MARK, as the proxy command does:
// root only). proxy-µs/conn is the proxy process's CPU per connection,
// the number to compare (conn/s on a shared machine drifts). Run it in a
// network namespace of its own (unshare -n, lo up): every connection
// leaves a TIME_WAIT socket behind. L7GATE_PROXY_CPUPROFILE profiles the
// proxy process.
func BenchmarkHTTP1NewConn(b *testing.B) {
	upstream := rawHTTPServer(b)
	b.Run("direct", func(b *testing.B) { newConnClients(b, upstream, 16, nil) })
	modes := []string{"buffered", "none", "splice"}
	if isRoot() {
		modes = append(modes, "buffered+keepsource")
	}
	for _, m := range modes {
		b.Run("process-log="+m, func(b *testing.B) {
			addr, cpu := proxyProcess(b, upstream, m)
			newConnClients(b, addr, 16, cpu)
		})
	}
}

// newConnClients opens b.N connections to addr from 127.0.0.2, conns at
// a time, one GET with "Connection: close" on each, and checks every
// answer's status and that the server closed after it.
func newConnClients(b *testing.B, addr string, conns int, proxyCPU func() (usr, sys time.Duration)) {
	req := []byte("GET /api/v1/service500/items HTTP/1.1\r\nHost: bench\r\nUser-Agent: l7gate-bench\r\nConnection: close\r\n\r\n")
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	one := func(buf []byte) error {
		c, err := d.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.Write(req); err != nil {
			return err
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := io.ReadFull(c, buf)
		if err != io.ErrUnexpectedEOF && err != io.EOF {
			return fmt.Errorf("want the answer then EOF, got %d bytes, %v", n, err)
		}
		if !bytes.HasPrefix(buf[:n], []byte("HTTP/1.1 200 ")) || !bytes.HasSuffix(buf[:n], []byte(strings.Repeat("x", 64))) {
			return fmt.Errorf("answer %q", buf[:min(n, 64)])
		}
		return nil
	}
	if err := one(make([]byte, 4096)); err != nil {
		b.Fatalf("warm-up: %v", err)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, conns)
	var pusr0, psys0 time.Duration
	if proxyCPU != nil {
		pusr0, psys0 = proxyCPU()
	}
	b.ResetTimer()
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			for next.Add(1) <= int64(b.N) {
				if err := one(buf); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	if proxyCPU != nil {
		pusr1, psys1 := proxyCPU()
		pu, ps := pusr1-pusr0, psys1-psys0
		b.ReportMetric(float64((pu+ps).Nanoseconds())/1e3/float64(b.N), "proxy-µs/conn")
		b.ReportMetric(float64(pu.Nanoseconds())/1e3/float64(b.N), "proxy-usr-µs/conn")
	}
	close(errc)
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "conn/s")
}
