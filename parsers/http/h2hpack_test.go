package http

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// h2BlockFrames writes blocks as HEADERS (+ CONTINUATION) frames on streams
// 1, 3, ...: each block's fragments are at most split bytes (0: one frame).
func h2BlockFrames(blocks [][]byte, split int) []byte {
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	for i, b := range blocks {
		id := uint32(2*i + 1)
		first := b
		if split > 0 && len(first) > split {
			first = b[:split]
		}
		rest := b[len(first):]
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndHeaders: len(rest) == 0, EndStream: i%2 == 0})
		for len(rest) > 0 {
			chunk := rest
			if len(chunk) > split {
				chunk = rest[:split]
			}
			rest = rest[len(chunk):]
			fr.WriteContinuation(id, len(rest) == 0, chunk)
		}
	}
	return buf.Bytes()
}

// h2BlockOutcome is what one header block decoded to, as comparable text.
func h2BlockOutcome(id uint32, end, truncated bool, pseudo, regular []hpack.HeaderField, err error) string {
	var se http2.StreamError
	var ce http2.ConnectionError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("stream error %d %s: %v", se.StreamID, se.Code, se.Cause)
	case errors.As(err, &ce):
		return fmt.Sprintf("connection error %s", http2.ErrCode(ce))
	case err != nil:
		return "error " + err.Error()
	}
	return fmt.Sprintf("stream %d end=%v truncated=%v pseudo=%v regular=%v", id, end, truncated, pseudo, regular)
}

// decodeBlocksXNet decodes the frames with x/net's MetaHeadersFrame path
// (what the proxy used before h2HeaderBlock).
func decodeBlocksXNet(frames []byte, maxList uint32) []string {
	fr := http2.NewFramer(nil, bytes.NewReader(frames))
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.MaxHeaderListSize = maxList
	var out []string
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				out = append(out, h2BlockOutcome(0, false, false, nil, nil, err))
				continue
			}
			if !isEOF(err) {
				out = append(out, h2BlockOutcome(0, false, false, nil, nil, err))
			}
			return out
		}
		mh := f.(*http2.MetaHeadersFrame)
		out = append(out, h2BlockOutcome(mh.StreamID, mh.StreamEnded(), mh.Truncated, mh.PseudoFields(), mh.RegularFields(), nil))
	}
}

// decodeBlocksOwn decodes the frames as the proxy does now.
func decodeBlocksOwn(frames []byte, maxList uint32) []string {
	fr := http2.NewFramer(nil, bytes.NewReader(frames))
	hb := newH2HeaderBlock(maxList)
	var out []string
	for {
		f, err := fr.ReadFrame()
		var b *h2HeaderBlock
		if err == nil {
			switch f := f.(type) {
			case *http2.HeadersFrame:
				b, err = hb.headers(f)
			case *http2.ContinuationFrame:
				b, err = hb.continuation(f)
			}
			if b == nil && err == nil {
				continue
			}
		}
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				out = append(out, h2BlockOutcome(0, false, false, nil, nil, err))
				continue
			}
			if !isEOF(err) {
				out = append(out, h2BlockOutcome(0, false, false, nil, nil, err))
			}
			return out
		}
		out = append(out, h2BlockOutcome(b.StreamID, b.StreamEnded(), b.Truncated, b.PseudoFields(), b.RegularFields(), nil))
	}
}

func isEOF(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

// h2BlockSeeds are header blocks that each exercise one check.
func h2BlockSeeds() [][]byte {
	enc := func(fields ...[2]string) []byte {
		var b bytes.Buffer
		e := hpack.NewEncoder(&b)
		for _, f := range fields {
			e.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		return b.Bytes()
	}
	grpc := [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", "/grpc.health.v1.Health/Check"}, {":authority", "svc:50051"},
		{"content-type", "application/grpc"}, {"user-agent", "grpc-go/1.70.0"}, {"te", "trailers"}, {"grpc-timeout", "9999m"}}
	return [][]byte{
		enc(grpc...),
		enc(append(grpc, [2]string{"trailer", "a, b,c"})...),
		enc([2]string{":status", "200"}, [2]string{"content-type", "application/grpc"}),
		enc([2]string{"grpc-status", "0"}, [2]string{"grpc-message", ""}),
		enc([2]string{":method", "GET"}, [2]string{"X-Upper", "1"}),
		enc([2]string{":method", "GET"}, [2]string{"x", "1"}, [2]string{":path", "/"}),
		enc([2]string{":method", "GET"}, [2]string{":method", "GET"}),
		enc([2]string{":method", "GET"}, [2]string{":status", "200"}),
		enc([2]string{":foo", "GET"}),
		enc([2]string{":method", "GET"}, [2]string{"x", "a\x00b"}),
		enc([2]string{":method", "GET"}, [2]string{"", "v"}),
		enc([2]string{":method", "GET"}, [2]string{"bad name", "v"}),
		enc([2]string{"x-big", strings.Repeat("b", 300)}, [2]string{"x-big", strings.Repeat("b", 300)}),
		{0x3f, 0xe2, 0x1f},       // a dynamic table size update to 4097
		{0x82, 0x86, 0x84, 0x41}, // ends inside a literal
		{0xff, 0xff, 0xff, 0xff}, // index out of range
		{},
	}
}

// FuzzH2HeaderBlock: h2HeaderBlock decodes every sequence of header blocks,
// split into HEADERS and CONTINUATION frames at any size and under any
// header-list bound, to the same fields, truncation, stream errors and
// connection errors as x/net's MetaHeadersFrame path it replaced.
func FuzzH2HeaderBlock(f *testing.F) {
	seeds := h2BlockSeeds()
	for i, s := range seeds {
		f.Add(s, seeds[(i+1)%len(seeds)], uint8(0), uint16(0))
		f.Add(s, s, uint8(3), uint16(200))
		f.Add(s, seeds[0], uint8(1), uint16(64))
	}
	f.Fuzz(func(t *testing.T, a, b []byte, split uint8, maxList uint16) {
		frames := h2BlockFrames([][]byte{a, b, a}, int(split))
		want := decodeBlocksXNet(frames, uint32(maxList))
		got := decodeBlocksOwn(frames, uint32(maxList))
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Fatalf("h2HeaderBlock:\n%s\nx/net:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
		}
	})
}

// TestH2HeaderBlockSeeds runs the fuzz seeds as a table: each check of
// x/net's header block path gives the same outcome on ours, and the
// outcomes are the ones named (a test of the test: not all "ok").
func TestH2HeaderBlockSeeds(t *testing.T) {
	seeds := h2BlockSeeds()
	kinds := map[string]bool{}
	for i, s := range seeds {
		for _, split := range []int{0, 1, 5} {
			frames := h2BlockFrames([][]byte{s, seeds[0], s}, split)
			want := decodeBlocksXNet(frames, 0)
			got := decodeBlocksOwn(frames, 0)
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Errorf("seed %d split %d: h2HeaderBlock:\n%s\nx/net:\n%s", i, split, strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			for _, o := range got {
				w := strings.Fields(o)
				switch {
				case strings.HasPrefix(o, "stream error"):
					kinds["stream error "+strings.TrimSuffix(w[3], ":")] = true
				case strings.HasPrefix(o, "connection error"):
					kinds[o] = true
				}
			}
		}
	}
	// Truncation under a small bound.
	frames := h2BlockFrames([][]byte{seeds[12]}, 0)
	got := decodeBlocksOwn(frames, 400)
	if len(got) != 1 || !strings.Contains(got[0], "truncated=true") {
		t.Errorf("a 600-byte list under a 400-byte bound: %v", got)
	}
	if want := decodeBlocksXNet(frames, 400); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("truncation: got %v, x/net %v", got, want)
	}
	for _, k := range []string{"stream error PROTOCOL_ERROR", "connection error COMPRESSION_ERROR"} {
		if !kinds[k] {
			t.Errorf("no seed gave %q: %v", k, kinds)
		}
	}
}

// TestH2HeaderBlockNoAllocs: a header block whose fields all come from the
// dynamic table (a gRPC client's second call) decodes into the reused
// field slice without allocating.
func TestH2HeaderBlockNoAllocs(t *testing.T) {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	fields := []hpack.HeaderField{{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
		{Name: ":path", Value: "/grpc.health.v1.Health/Check"}, {Name: ":authority", Value: "svc:50051"},
		{Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"}, {Name: "grpc-timeout", Value: "9999m"}}
	var blocks [][]byte
	for range 2 {
		hb.Reset()
		for _, f := range fields {
			enc.WriteField(f)
		}
		blocks = append(blocks, append([]byte(nil), hb.Bytes()...))
	}
	fr := http2.NewFramer(nil, bytes.NewReader(h2BlockFrames(blocks, 0)))
	dec := newH2HeaderBlock(64 << 10)
	var second *http2.HeadersFrame
	for range 2 {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		second = f.(*http2.HeadersFrame)
		if b, err := dec.headers(second); err != nil || b == nil {
			t.Fatalf("decode: %v", err)
		}
	}
	if got := fmt.Sprint(dec.Fields); got != fmt.Sprint(fields) {
		t.Fatalf("fields %s, want %s", got, fields)
	}
	allocs := testing.AllocsPerRun(100, func() {
		if b, err := dec.headers(second); err != nil || b == nil || len(b.Fields) != len(fields) {
			t.Fatalf("decode: %v", err)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per indexed header block, want 0", allocs)
	}
}

// BenchmarkH2HeaderBlock decodes a gRPC unary call's request header block
// (all fields from the dynamic table after the first call, as grpc-go
// sends them) with x/net's MetaHeadersFrame path and with h2HeaderBlock,
// frame reading included.
func BenchmarkH2HeaderBlock(b *testing.B) {
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	fields := []hpack.HeaderField{{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
		{Name: ":path", Value: "/grpc.health.v1.Health/Check"}, {Name: ":authority", Value: "svc:50051"},
		{Name: "content-type", Value: "application/grpc"}, {Name: "user-agent", Value: "grpc-go/1.70.0"},
		{Name: "te", Value: "trailers"}, {Name: "grpc-timeout", Value: "9999m"}}
	const n = 1000
	var blocks [][]byte
	for range n {
		hb.Reset()
		for _, f := range fields {
			enc.WriteField(f)
		}
		blocks = append(blocks, append([]byte(nil), hb.Bytes()...))
	}
	frames := h2BlockFrames(blocks, 0)
	b.Run("xnet", func(b *testing.B) {
		b.ReportAllocs()
		var fr *http2.Framer
		for i := range b.N {
			if i%n == 0 {
				fr = http2.NewFramer(nil, bytes.NewReader(frames))
				fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
			}
			f, err := fr.ReadFrame()
			if err != nil || len(f.(*http2.MetaHeadersFrame).Fields) != len(fields) {
				b.Fatal(err)
			}
		}
	})
	b.Run("own", func(b *testing.B) {
		b.ReportAllocs()
		var fr *http2.Framer
		var dec *h2HeaderBlock
		for i := range b.N {
			if i%n == 0 {
				fr = http2.NewFramer(nil, bytes.NewReader(frames))
				dec = newH2HeaderBlock(0)
			}
			f, err := fr.ReadFrame()
			if err != nil {
				b.Fatal(err)
			}
			blk, err := dec.headers(f.(*http2.HeadersFrame))
			if err != nil || len(blk.Fields) != len(fields) {
				b.Fatal(err)
			}
		}
	})
}
