package http

import (
	"bytes"
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/l7gate/l7gate/policy"
)

// writeCounter counts the Write calls (write system calls: the proxy
// writes a net.Conn only from its buffered writers' flushes) on a real
// connection.
type writeCounter struct {
	net.Conn
	n *atomic.Int64
}

func (w writeCounter) Write(b []byte) (int, error) {
	w.n.Add(1)
	return w.Conn.Write(b)
}

// pingBackend is a raw HTTP/2 server that answers like grpc-go: every
// burst of request frames it reads gets one write with a PING (grpc-go's
// BDP ping after DATA) and each finished request's response HEADERS,
// DATA and trailers. It counts the PING ACKs it receives.
type pingBackend struct {
	addr        string
	pings, acks atomic.Int64
}

func newPingBackend(t *testing.T) *pingBackend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &pingBackend{addr: ln.Addr().String()}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				b.serve(c)
			}()
		}
	}()
	return b
}

func (b *pingBackend) serve(c net.Conn) {
	preface := make([]byte, len(h2Preface))
	if _, err := c.Read(preface); err != nil {
		return
	}
	var out bytes.Buffer
	wfr := http2.NewFramer(&out, nil)
	rfr := http2.NewFramer(nil, c)
	rfr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	block := func(fields ...string) []byte {
		hb.Reset()
		for i := 0; i < len(fields); i += 2 {
			enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
		}
		return append([]byte(nil), hb.Bytes()...)
	}
	wfr.WriteSettings()
	send := func() bool {
		_, err := c.Write(out.Bytes())
		out.Reset()
		return err == nil
	}
	if !send() {
		return
	}
	var done []uint32
	var seq uint64
	for {
		f, err := rfr.ReadFrame()
		if err != nil {
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				wfr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if f.IsAck() {
				b.acks.Add(1)
			}
		case *http2.MetaHeadersFrame:
			if f.StreamEnded() {
				done = append(done, f.StreamID)
			}
		case *http2.DataFrame:
			if f.StreamEnded() {
				done = append(done, f.StreamID)
			}
		}
		if len(done) > 0 {
			seq++
			b.pings.Add(1)
			wfr.WritePing(false, [8]byte{byte(seq)})
			for _, id := range done {
				wfr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true,
					BlockFragment: block(":status", "200", "content-type", "application/grpc")})
				wfr.WriteData(id, false, []byte{0, 0, 0, 0, 0})
				wfr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true, EndStream: true,
					BlockFragment: block("grpc-status", "0")})
			}
			done = done[:0]
		}
		if out.Len() > 0 && !send() {
			return
		}
	}
}

// TestH2PingAckRidesAlong: gRPC unary calls through the frame-level path,
// one at a time on real connections, with both peers sending a PING with
// every burst as grpc-go does: each burst costs the proxy one write
// toward the other hop, the PING ACK going along with the next frames for
// its hop instead of in a write of its own (two writes per hop per call
// without that), every PING is acknowledged, and a lone PING with nothing
// else to send is acknowledged within the ACK delay.
func TestH2PingAckRidesAlong(t *testing.T) {
	be := newPingBackend(t)
	var clientWrites, upWrites atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := NewServer(Config{})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); ln.Close(); wg.Wait() })
	var decided atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		dial := func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			uc, err := d.DialContext(ctx, "tcp", be.addr)
			if err != nil {
				return nil, err
			}
			return writeCounter{uc, &upWrites}, nil
		}
		srv.ServeConn(ctx, writeCounter{c, &clientWrites}, dial, func(*policy.HTTPRequest) Decision {
			decided.Add(1)
			return Decision{Allowed: true}
		}, nil)
	}()

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var out bytes.Buffer
	wfr := http2.NewFramer(&out, nil)
	rfr := http2.NewFramer(nil, c)
	rfr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range []hpack.HeaderField{{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
		{Name: ":authority", Value: "x"}, {Name: ":path", Value: "/grpc.health.v1.Health/Check"},
		{Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"}} {
		enc.WriteField(f)
	}
	reqBlock := hb.Bytes()
	out.WriteString(h2Preface)
	wfr.WriteSettings()
	acks := 0
	// call sends one unary call (with a PING when ping) in one write and
	// reads until its trailers.
	call := func(id uint32, ping bool) {
		t.Helper()
		if ping {
			wfr.WritePing(false, [8]byte{byte(id)})
		}
		wfr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: reqBlock, EndHeaders: true})
		wfr.WriteData(id, true, []byte{0, 0, 0, 0, 0})
		if _, err := c.Write(out.Bytes()); err != nil {
			t.Fatal(err)
		}
		out.Reset()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		for {
			f, err := rfr.ReadFrame()
			if err != nil {
				t.Fatalf("call %d: %v", id, err)
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					wfr.WriteSettingsAck() // goes with the next call
				}
			case *http2.PingFrame:
				if f.IsAck() {
					acks++
				}
			case *http2.RSTStreamFrame:
				t.Fatalf("call %d: RST_STREAM %v", id, f.ErrCode)
			case *http2.MetaHeadersFrame:
				if f.StreamID == id && f.StreamEnded() {
					if st := grpcStatusOf(f); st != "0" {
						t.Fatalf("call %d: trailers %v", id, f.Fields)
					}
					return
				}
			}
		}
	}
	// Warm-up: SETTINGS exchanges and the upstream dial.
	call(1, false)
	call(3, true)
	c0, u0 := clientWrites.Load(), upWrites.Load()
	const calls = 40
	for i := range calls {
		call(uint32(5+2*i), true)
	}
	cw, uw := clientWrites.Load()-c0, upWrites.Load()-u0
	t.Logf("%d calls: %d proxy writes to the client, %d to the upstream", calls, cw, uw)
	// One write per hop per call; an ACK the timer sent alone (a round
	// slower than h2AckDelay on a loaded machine) adds one. Without the
	// ACKs riding along: 2 per hop per call.
	if limit := int64(calls + calls/4); cw > limit || uw > limit {
		t.Errorf("proxy writes per %d calls: %d to the client, %d to the upstream; want at most %d each", calls, cw, uw, limit)
	}
	if n := decided.Load(); n != calls+2 {
		t.Errorf("decider saw %d requests, want %d", n, calls+2)
	}

	// Every PING is acknowledged: the upstream's last ones and a lone
	// PING of the client, with nothing else going to either hop, by the
	// ACK timer.
	wfr.WritePing(false, [8]byte{0xff})
	c.Write(out.Bytes())
	out.Reset()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for acks < calls+2 {
		f, err := rfr.ReadFrame()
		if err != nil {
			t.Fatalf("client got %d of %d PING ACKs: %v", acks, calls+2, err)
		}
		if p, ok := f.(*http2.PingFrame); ok && p.IsAck() {
			acks++
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for be.acks.Load() < be.pings.Load() && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if n, want := be.acks.Load(), be.pings.Load(); n != want || want != calls+2 {
		t.Errorf("upstream got %d PING ACKs for %d PINGs (want %d)", n, want, calls+2)
	}
}

func grpcStatusOf(f *http2.MetaHeadersFrame) string {
	for _, hf := range f.Fields {
		if hf.Name == "grpc-status" {
			return hf.Value
		}
	}
	return ""
}
