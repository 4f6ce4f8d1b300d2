package http

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/l7gate/l7gate/policy"
)

// h2Paths runs a test on both HTTP/2 paths: the frame-level one (default)
// and net/http's (Config.LegacyHTTP2).
func h2Paths(t *testing.T, run func(t *testing.T, cfg Config)) {
	t.Run("frames", func(t *testing.T) { run(t, Config{}) })
	t.Run("nethttp", func(t *testing.T) { run(t, Config{LegacyHTTP2: true}) })
}

// h2Backend is an h2c backend counting the requests it received.
type h2Backend struct {
	addr string
	hits atomic.Int64
	// wrote counts response body bytes handlers got written (Write
	// returned) on /big.
	wrote atomic.Int64
	done  atomic.Int64
}

func newH2Backend(t *testing.T) *h2Backend {
	t.Helper()
	b := &h2Backend{}
	srv := httptest.NewUnstartedServer(nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		b.hits.Add(1)
		io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/big" {
			chunk := bytes.Repeat([]byte("x"), 16<<10)
			for range 1024 { // 16 MiB
				n, err := w.Write(chunk)
				b.wrote.Add(int64(n))
				if err != nil {
					return
				}
			}
			b.done.Add(1)
			return
		}
		io.WriteString(w, "ok")
	}))
	var p nethttp.Protocols
	p.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = &p
	srv.Start()
	t.Cleanup(srv.Close)
	b.addr = srv.Listener.Addr().String()
	return b
}

// rawH2 is a hand-driven HTTP/2 client.
type rawH2 struct {
	t   *testing.T
	c   net.Conn
	fr  *http2.Framer
	enc *hpack.Encoder
	hb  bytes.Buffer
	// noAck: another goroutine writes, events must not (a Framer takes
	// one writer at a time).
	noAck bool
}

func dialRawH2(t *testing.T, addr string, settings ...http2.Setting) *rawH2 {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	r := &rawH2{t: t, c: c, fr: http2.NewFramer(c, c)}
	r.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	r.enc = hpack.NewEncoder(&r.hb)
	c.Write([]byte(h2Preface))
	if err := r.fr.WriteSettings(settings...); err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *rawH2) block(method, path string, extra ...[2]string) []byte {
	r.hb.Reset()
	for _, f := range append([][2]string{{":method", method}, {":scheme", "http"}, {":authority", "x"}, {":path", path}}, extra...) {
		r.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	return append([]byte(nil), r.hb.Bytes()...)
}

func (r *rawH2) headers(id uint32, method, path string, end bool, extra ...[2]string) {
	if err := r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: r.block(method, path, extra...), EndHeaders: true, EndStream: end}); err != nil {
		r.t.Fatal(err)
	}
}

// events reads frames until stop says so, the connection ends or 5 s
// pass; it answers SETTINGS and returns a line per frame of interest.
func (r *rawH2) events(stop func(ev string) bool) []string {
	var got []string
	r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		f, err := r.fr.ReadFrame()
		var ev string
		if err != nil {
			ev = "closed"
			if isTimeout(err) {
				ev = "timeout"
			}
		} else {
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() && !r.noAck {
					r.fr.WriteSettingsAck()
				}
				continue
			case *http2.MetaHeadersFrame:
				ev = fmt.Sprintf("%d HEADERS %s", f.StreamID, f.PseudoValue("status"))
				if f.StreamEnded() {
					ev += " END_STREAM"
				}
			case *http2.DataFrame:
				ev = fmt.Sprintf("%d DATA", f.StreamID)
				if f.StreamEnded() {
					ev += " END_STREAM"
				}
			case *http2.RSTStreamFrame:
				ev = fmt.Sprintf("%d RST_STREAM %s", f.StreamID, f.ErrCode)
			case *http2.GoAwayFrame:
				ev = "GOAWAY " + f.ErrCode.String()
			default:
				continue
			}
		}
		got = append(got, ev)
		if ev == "closed" || ev == "timeout" || stop(ev) {
			return got
		}
	}
}

func hasEvent(evs []string, prefix string) bool {
	for _, e := range evs {
		if strings.HasPrefix(e, prefix) {
			return true
		}
	}
	return false
}

func untilGoAwayOrClose(ev string) bool { return strings.HasPrefix(ev, "GOAWAY") }

// TestHostileH2ContinuationFlood: a header block that never ends
// (CONTINUATION after CONTINUATION) ends the connection once it passes the
// header-list bound; the proxy neither forwards it nor keeps reading.
func TestHostileH2ContinuationFlood(t *testing.T) {
	h2Paths(t, func(t *testing.T, cfg Config) {
		be := newH2Backend(t)
		p := startProxy(t, cfg, be.addr, func(*policy.HTTPRequest) Decision { return Decision{Allowed: true} })
		r := dialRawH2(t, p.addr)
		if err := r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: r.block("GET", "/"), EndHeaders: false, EndStream: true}); err != nil {
			t.Fatal(err)
		}
		// Literal fields without indexing, 16 KiB frames: valid HPACK
		// that adds up to far more than the 64 KiB header bound.
		var field bytes.Buffer
		hpack.NewEncoder(&field).WriteField(hpack.HeaderField{Name: "x-junk", Value: strings.Repeat("a", 4000)})
		frag := bytes.Repeat(field.Bytes(), 4)
		sent := 0
		r.noAck = true
		errc := make(chan error, 1)
		go func() {
			for i := 0; i < 4096; i++ { // at most 64 MiB
				if err := r.fr.WriteContinuation(1, false, frag); err != nil {
					errc <- err
					return
				}
				sent += len(frag)
			}
			errc <- nil
		}()
		evs := r.events(untilGoAwayOrClose)
		r.c.Close()
		werr := <-errc
		t.Logf("events %v; %d bytes of CONTINUATION written before the proxy stopped reading (%v)", evs, sent, werr)
		if !hasEvent(evs, "GOAWAY") && !hasEvent(evs, "closed") {
			t.Errorf("no GOAWAY or close: %v", evs)
		}
		if werr == nil {
			t.Errorf("the proxy read all %d bytes of an endless header block", sent)
		}
		if n := be.hits.Load(); n != 0 {
			t.Errorf("the backend received %d requests", n)
		}
	})
}

// TestHostileH2HPACKBomb: a small header block that decodes to a huge
// header list (one large field indexed into the dynamic table, then
// referenced many times) is refused: the backend never sees it.
func TestHostileH2HPACKBomb(t *testing.T) {
	h2Paths(t, func(t *testing.T, cfg Config) {
		be := newH2Backend(t)
		p := startProxy(t, cfg, be.addr, func(*policy.HTTPRequest) Decision { return Decision{Allowed: true} })
		r := dialRawH2(t, p.addr)
		r.hb.Reset()
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "x"}, {":path", "/"}} {
			r.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		r.enc.WriteField(hpack.HeaderField{Name: "x-bomb", Value: strings.Repeat("b", 3000)})
		for range 2000 { // the same field again: one byte each, 3 KB decoded each
			r.enc.WriteField(hpack.HeaderField{Name: "x-bomb", Value: strings.Repeat("b", 3000)})
		}
		block := r.hb.Bytes()
		t.Logf("header block of %d bytes decoding to ~%d KB", len(block), 2001*3)
		r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block, EndHeaders: true, EndStream: true})
		evs := r.events(func(ev string) bool {
			return strings.HasPrefix(ev, "GOAWAY") || strings.HasPrefix(ev, "1 RST_STREAM") || strings.Contains(ev, "END_STREAM")
		})
		if hasEvent(evs, "1 HEADERS 200") {
			t.Errorf("the request was answered by the backend: %v", evs)
		}
		if n := be.hits.Load(); n != 0 {
			t.Errorf("the backend received %d requests", n)
		}
		t.Logf("events %v", evs)
	})
}

// TestHostileH2RapidReset (CVE-2023-44487): opening streams and resetting
// them at once, thousands of times, ends the connection
// (GOAWAY ENHANCE_YOUR_CALM) long before the backend saw them all.
func TestHostileH2RapidReset(t *testing.T) {
	h2Paths(t, func(t *testing.T, cfg Config) {
		be := newH2Backend(t)
		p := startProxy(t, cfg, be.addr, func(*policy.HTTPRequest) Decision { return Decision{Allowed: true} })
		r := dialRawH2(t, p.addr)
		const attempts = 5000
		r.noAck = true
		errc := make(chan int, 1)
		go func() {
			id := uint32(1)
			for i := 0; i < attempts; i++ {
				if err := r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: r.block("POST", "/"), EndHeaders: true}); err != nil {
					errc <- i
					return
				}
				if err := r.fr.WriteRSTStream(id, http2.ErrCodeCancel); err != nil {
					errc <- i
					return
				}
				id += 2
			}
			errc <- attempts
		}()
		evs := r.events(untilGoAwayOrClose)
		r.c.Close()
		n := <-errc
		hits := be.hits.Load()
		t.Logf("%d streams opened and reset before the proxy stopped; backend saw %d; last events %v", n, hits, tail(evs, 3))
		if !hasEvent(evs, "GOAWAY ENHANCE_YOUR_CALM") && !cfg.LegacyHTTP2 {
			t.Errorf("no GOAWAY ENHANCE_YOUR_CALM: %v", tail(evs, 5))
		}
		// The net/http path has no bound of its own (its backend saw 469
		// of 5,000 in one run, 4,031 in a loaded clean-clone run): only
		// the frame path's bound is asserted.
		if hits >= attempts/2 && !cfg.LegacyHTTP2 {
			t.Errorf("the backend received %d of %d reset requests", hits, attempts)
		}
	})
}

func tail(s []string, n int) []string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// TestHostileH2SettingsFlood: a client sending SETTINGS without end
// (each one costs an ACK) is disconnected.
func TestHostileH2SettingsFlood(t *testing.T) {
	h2Paths(t, func(t *testing.T, cfg Config) {
		be := newH2Backend(t)
		p := startProxy(t, cfg, be.addr, func(*policy.HTTPRequest) Decision { return Decision{Allowed: true} })
		r := dialRawH2(t, p.addr)
		// Nobody reads the ACKs: a proxy that queues them grows.
		sent := 0
		for i := 0; i < 100000; i++ {
			r.c.SetWriteDeadline(time.Now().Add(2 * time.Second))
			if err := r.fr.WriteSettings(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: uint32(i)}); err != nil {
				break
			}
			sent++
		}
		evs := r.events(untilGoAwayOrClose)
		t.Logf("%d SETTINGS frames written; last events %v", sent, tail(evs, 3))
		if cfg.LegacyHTTP2 {
			// Recorded for comparison: net/http's server writes every ACK
			// and goes on (bounded by what the socket takes).
			return
		}
		if !hasEvent(evs, "GOAWAY ENHANCE_YOUR_CALM") {
			t.Errorf("want GOAWAY ENHANCE_YOUR_CALM, got %v", tail(evs, 3))
		}
	})
}

// TestHostileH2StreamStates: stream id reuse, frames on idle and closed
// streams, window overflow and DATA beyond the window get the error the
// RFC names, and nothing unchecked reaches the backend.
func TestHostileH2StreamStates(t *testing.T) {
	h2Paths(t, func(t *testing.T, cfg Config) {
		be := newH2Backend(t)
		p := startProxy(t, cfg, be.addr, ruleDecider(t, policy.HTTPRule{Method: "GET", Path: "/ok"}, policy.HTTPRule{Method: "POST", Path: "/ok"}))
		// A backend that accepts and then neither reads nor speaks: what
		// the proxy forwards to it stays within the default 64 KiB window.
		silent, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { silent.Close() })
		go func() {
			for {
				c, err := silent.Accept()
				if err != nil {
					return
				}
				t.Cleanup(func() { c.Close() })
			}
		}()
		ps := startProxy(t, cfg, silent.Addr().String(), func(*policy.HTTPRequest) Decision { return Decision{Allowed: true} })
		done1 := func(ev string) bool { return strings.HasPrefix(ev, "1 ") && strings.Contains(ev, "END_STREAM") }
		for _, tc := range []struct {
			name string
			run  func(r *rawH2)
			stop func(string) bool
			want string
			// hitsN: the most requests the backend may see (-1: any).
			hitsN int64
			// silent: through the proxy to the silent backend.
			silent bool
		}{
			{"stream id reuse", func(r *rawH2) {
				r.headers(1, "GET", "/ok", true)
				r.events(done1)
				r.headers(1, "GET", "/admin", true)
			}, untilGoAwayOrClose, "GOAWAY PROTOCOL_ERROR", 1, false},
			{"lower stream id", func(r *rawH2) {
				r.headers(5, "GET", "/ok", true)
				r.headers(3, "GET", "/ok", true)
			}, untilGoAwayOrClose, "GOAWAY PROTOCOL_ERROR", 1, false},
			{"even stream id", func(r *rawH2) {
				r.headers(2, "GET", "/ok", true)
			}, untilGoAwayOrClose, "GOAWAY PROTOCOL_ERROR", 0, false},
			{"DATA on an idle stream", func(r *rawH2) {
				r.fr.WriteData(7, true, []byte("x"))
			}, untilGoAwayOrClose, "GOAWAY PROTOCOL_ERROR", 0, false},
			{"DATA on a closed stream", func(r *rawH2) {
				r.headers(1, "GET", "/ok", true)
				r.events(done1)
				r.fr.WriteData(1, true, []byte("x"))
			}, func(ev string) bool { return strings.Contains(ev, "RST_STREAM") || strings.HasPrefix(ev, "GOAWAY") }, "1 RST_STREAM STREAM_CLOSED", 1, false},
			{"connection window overflow", func(r *rawH2) {
				r.fr.WriteWindowUpdate(0, 1<<31-1)
			}, untilGoAwayOrClose, "GOAWAY FLOW_CONTROL_ERROR", 0, false},
			{"stream window overflow", func(r *rawH2) {
				r.headers(1, "POST", "/ok", false)
				r.fr.WriteWindowUpdate(1, 1<<31-1)
			}, func(ev string) bool { return strings.Contains(ev, "RST_STREAM") || strings.HasPrefix(ev, "GOAWAY") }, "1 RST_STREAM FLOW_CONTROL_ERROR", -1, false},
			{"DATA beyond the stream window", func(r *rawH2) {
				r.headers(1, "POST", "/ok", false)
				chunk := make([]byte, 16384)
				for range 17 { // 272 KiB: beyond both paths' initial stream windows
					if r.fr.WriteData(1, false, chunk) != nil {
						return
					}
				}
			}, func(ev string) bool { return strings.Contains(ev, "RST_STREAM") || strings.HasPrefix(ev, "GOAWAY") }, "FLOW_CONTROL_ERROR", -1, true},
			{"trailers without END_STREAM", func(r *rawH2) {
				r.headers(1, "POST", "/ok", false)
				r.hb.Reset()
				r.enc.WriteField(hpack.HeaderField{Name: "x-t", Value: "1"})
				r.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: r.hb.Bytes(), EndHeaders: true})
			}, func(ev string) bool { return strings.Contains(ev, "RST_STREAM") || strings.HasPrefix(ev, "GOAWAY") }, "PROTOCOL_ERROR", -1, false},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if cfg.LegacyHTTP2 && tc.name == "DATA beyond the stream window" {
					t.Skip("net/http's server opens 1 MiB stream windows: 272 KiB is within them")
				}
				before := be.hits.Load()
				addr := p.addr
				if tc.silent {
					addr = ps.addr
				}
				r := dialRawH2(t, addr)
				tc.run(r)
				evs := r.events(tc.stop)
				found := false
				for _, e := range evs {
					if strings.Contains(e, tc.want) {
						found = true
					}
				}
				if !found {
					t.Errorf("got %v, want %q", evs, tc.want)
				}
				time.Sleep(50 * time.Millisecond)
				if got := be.hits.Load() - before; tc.hitsN >= 0 && got > tc.hitsN {
					t.Errorf("backend saw %d requests, want at most %d", got, tc.hitsN)
				}
			})
		}
	})
}

// TestHostileH2DeniedStreamAlone: a denied stream is answered on its own;
// the connection's other streams, opened before and after, are served.
func TestHostileH2DeniedStreamAlone(t *testing.T) {
	h2Paths(t, func(t *testing.T, cfg Config) {
		be := newH2Backend(t)
		p := startProxy(t, cfg, be.addr, ruleDecider(t, policy.HTTPRule{Method: "GET", Path: "/ok"}))
		r := dialRawH2(t, p.addr)
		r.headers(1, "GET", "/ok", true)
		r.headers(3, "GET", "/admin", true)
		r.headers(5, "GET", "/ok", true)
		r.headers(7, "POST", "/x", true, [2]string{"content-type", "application/grpc"})
		ended := map[uint32]bool{}
		evs := r.events(func(ev string) bool {
			var id uint32
			fmt.Sscanf(ev, "%d", &id)
			if strings.Contains(ev, "END_STREAM") {
				ended[id] = true
			}
			return len(ended) == 4
		})
		for _, want := range []string{"1 HEADERS 200", "3 HEADERS 403", "5 HEADERS 200", "7 HEADERS 200 END_STREAM"} {
			if !hasEvent(evs, want) {
				t.Errorf("no %q in %v", want, evs)
			}
		}
		if n := be.hits.Load(); n != 2 {
			t.Errorf("backend saw %d requests, want 2", n)
		}
	})
}

// TestHostileH2SlowReader: a client that opens a large download and never
// reads (never grants window) makes the proxy hold at most its windows:
// the backend's writes block instead of filling the proxy's memory.
func TestHostileH2SlowReader(t *testing.T) {
	h2Paths(t, func(t *testing.T, cfg Config) {
		be := newH2Backend(t)
		p := startProxy(t, cfg, be.addr, func(*policy.HTTPRequest) Decision { return Decision{Allowed: true} })
		r := dialRawH2(t, p.addr)
		r.headers(1, "GET", "/big", true)
		// Read nothing; give the backend time to write all it can.
		time.Sleep(1500 * time.Millisecond)
		wrote := be.wrote.Load()
		t.Logf("backend wrote %d KiB of 16 MiB to a client that reads nothing", wrote>>10)
		if be.done.Load() != 0 {
			t.Fatalf("the backend wrote the whole 16 MiB response: the proxy buffered it")
		}
		// Windows (proxy ↔ backend 1 MiB connection / 256 KiB stream on
		// the frame path) plus socket buffers: far below 16 MiB.
		if wrote > 8<<20 {
			t.Errorf("backend wrote %d bytes toward a client that reads nothing", wrote)
		}
	})
}

// FuzzH2Frames sends arbitrary frames after the preface and SETTINGS to
// the frame-level path: whatever comes, the proxy answers or closes,
// never panics, and forwards only requests the decider saw.
func FuzzH2Frames(f *testing.F) {
	frame := func(build func(fr *http2.Framer)) []byte {
		var b bytes.Buffer
		build(http2.NewFramer(&b, nil))
		return b.Bytes()
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, kv := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":authority", "x"}, {":path", "/ok"}, {"content-length", "2"}} {
		enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
	}
	block := hb.Bytes()
	f.Add(frame(func(fr *http2.Framer) {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block, EndHeaders: true})
		fr.WriteData(1, true, []byte("hi"))
	}))
	f.Add(frame(func(fr *http2.Framer) {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:3]})
		fr.WriteContinuation(1, true, block[3:])
		fr.WriteWindowUpdate(1, 100)
		fr.WriteRSTStream(1, http2.ErrCodeCancel)
		fr.WritePing(false, [8]byte{1})
	}))
	f.Add(frame(func(fr *http2.Framer) {
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: block, EndHeaders: true, EndStream: true})
		fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
		fr.WriteGoAway(0, http2.ErrCodeNo, nil)
	}))
	be := &h2Backend{}
	srv := httptest.NewUnstartedServer(nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		be.hits.Add(1)
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, "ok")
	}))
	var p2 nethttp.Protocols
	p2.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = &p2
	srv.Start()
	f.Cleanup(srv.Close)
	var decided atomic.Int64
	p := startProxy(f, Config{HeaderTimeout: time.Second, BodyTimeout: time.Second}, srv.Listener.Addr().String(), func(r *policy.HTTPRequest) Decision {
		decided.Add(1)
		return Decision{Allowed: r.Path == "/ok"}
	})
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := net.Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var settings bytes.Buffer
		http2.NewFramer(&settings, nil).WriteSettings()
		c.Write([]byte(h2Preface))
		c.Write(settings.Bytes())
		c.Write(in)
		c.(*net.TCPConn).CloseWrite()
		c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		io.Copy(io.Discard, c)
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, err := range p.errs {
			var pe *PanicError
			if errors.As(err, &pe) {
				t.Fatalf("proxy panicked: %v\n%s", pe.Value, pe.Stack)
			}
		}
		if h, d := be.hits.Load(), decided.Load(); h > d {
			t.Fatalf("backend saw %d requests, the decider %d", h, d)
		}
	})
}

// TestH2ClientGoAwayEndsWithoutReset: frames a client sends after its
// GOAWAY (h2spec's 6.8 sends a PING) must not turn the proxy's close into a
// TCP reset, which can destroy the proxy's own GOAWAY in the client's
// receive queue: the client reads the GOAWAY and then a clean end of stream.
func TestH2ClientGoAwayEndsWithoutReset(t *testing.T) {
	h2Paths(t, func(t *testing.T, cfg Config) {
		b := newH2Backend(t)
		tp := startProxy(t, cfg, b.addr, ruleDecider(t))
		r := dialRawH2(t, tp.addr)
		// GOAWAY followed by more PINGs than the proxy reads at once, in
		// one write: whatever the proxy has not read when it closes is
		// still in its socket's receive queue.
		var buf bytes.Buffer
		fr := http2.NewFramer(&buf, nil)
		fr.WriteGoAway(0, http2.ErrCodeNo, nil)
		for range 4096 {
			fr.WritePing(false, [8]byte{'h', '2', 's', 'p', 'e', 'c'})
		}
		if _, err := r.c.Write(buf.Bytes()); err != nil {
			t.Fatal(err)
		}
		r.c.SetReadDeadline(time.Now().Add(10 * time.Second))
		goAway := false
		for {
			f, err := r.fr.ReadFrame()
			if err != nil {
				if !errors.Is(err, io.EOF) {
					t.Fatalf("after the proxy's GOAWAY (seen: %v) the connection ended with %v, want a clean end of stream", goAway, err)
				}
				break
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					r.fr.WriteSettingsAck()
				}
			case *http2.GoAwayFrame:
				goAway = true
			}
		}
		if !goAway {
			t.Fatal("the proxy closed without a GOAWAY")
		}
	})
}

// TestHostileH2SlowBodySameRead: a request whose HEADERS, the start of its
// body and another stream's request reach the proxy in one write (one
// read), then nothing more of the body, is still reset after the body
// timeout: the frame path starts body timers only once it has handled the
// frames of a read, and this stream's must start all the same.
func TestHostileH2SlowBodySameRead(t *testing.T) {
	h2Paths(t, func(t *testing.T, cfg Config) {
		be := newH2Backend(t)
		cfg.BodyTimeout = 300 * time.Millisecond
		p := startProxy(t, cfg, be.addr, ruleDecider(t, policy.HTTPRule{Path: "/ok"}))
		r := dialRawH2(t, p.addr)
		var batch bytes.Buffer
		bf := http2.NewFramer(&batch, nil)
		bf.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: r.block("POST", "/ok", [2]string{"content-length", "10"}), EndHeaders: true})
		bf.WriteData(1, false, []byte("hello"))
		bf.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: r.block("GET", "/ok"), EndHeaders: true, EndStream: true})
		if _, err := r.c.Write(batch.Bytes()); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		var reset time.Duration
		answered := false
		evs := r.events(func(ev string) bool {
			if strings.HasPrefix(ev, "1 RST_STREAM") && reset == 0 {
				reset = time.Since(start)
			}
			answered = answered || strings.HasPrefix(ev, "3 ") && strings.Contains(ev, "END_STREAM")
			return reset > 0 && answered
		})
		if !hasEvent(evs, "1 RST_STREAM") {
			t.Fatalf("stalled stream not reset: %v", evs)
		}
		if reset > 3*time.Second {
			t.Errorf("stalled stream reset after %s, body timeout %s", reset, cfg.BodyTimeout)
		}
		if !hasEvent(evs, "3 HEADERS 200") {
			t.Errorf("the other stream of the read: %v, want 200", evs)
		}
		if hasEvent(evs, "GOAWAY") {
			t.Errorf("the connection ended, not the stream: %v", evs)
		}
	})
}
