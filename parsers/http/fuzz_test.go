package http

import (
	"bytes"
	"errors"
	"testing"

	"github.com/l7gate/l7gate/policy"
)

func FuzzParseRequestHead(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST /a?b=c HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
		"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
		"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",
		"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var h RequestHead
		err := ParseRequestHead(data, Limits{}, &h)
		if err == nil {
			if h.Size <= 0 || h.Size > len(data) || !bytes.HasSuffix(data[:h.Size], []byte("\r\n\r\n")) {
				t.Fatalf("bad head size %d for %q", h.Size, data)
			}
			if h.Framing == FramingLength && h.Length <= 0 {
				t.Fatal("length framing without length")
			}
			if len(h.Target) == 0 || len(h.Method) == 0 {
				t.Fatal("empty method or target accepted")
			}
			return
		}
		var pe *ParseError
		if !errors.Is(err, ErrIncomplete) && !errors.As(err, &pe) {
			t.Fatalf("unexpected error type %T: %v", err, err)
		}
		if pe != nil && (pe.Status < 400 || pe.Status > 599) {
			t.Fatalf("status %d", pe.Status)
		}
	})
}

func FuzzParseResponseHead(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"), false)
	f.Add([]byte("HTTP/1.1 204 No Content\r\n\r\n"), true)
	f.Add([]byte("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), false)
	f.Fuzz(func(t *testing.T, data []byte, head bool) {
		method := []byte("GET")
		if head {
			method = []byte("HEAD")
		}
		var h ResponseHead
		_, err := ParseResponseHead(data, method, Limits{}, nil, &h)
		if err == nil && (h.Size <= 0 || h.Size > len(data) || h.Status < 100 || h.Status > 999) {
			t.Fatalf("bad head %+v", h)
		}
	})
}

// FuzzChunked checks that the chunked scanner gives the same answer
// whatever way the stream is split.
func FuzzChunked(f *testing.F) {
	f.Add([]byte("5\r\nhello\r\n0\r\n\r\nrest"), uint8(3))
	f.Add([]byte("a;ext=1\r\n0123456789\r\n0\r\nTrailer: x\r\n\r\n"), uint8(1))
	f.Add([]byte("0x5\r\n"), uint8(2))
	f.Fuzz(func(t *testing.T, data []byte, split uint8) {
		var whole chunkedScanner
		n1, done1, err1 := whole.scan(data)
		var parts chunkedScanner
		step := int(split%16) + 1
		n2, done2 := 0, false
		var err2 error
		for i := 0; i < len(data) && !done2 && err2 == nil; i += step {
			end := min(i+step, len(data))
			var n int
			n, done2, err2 = parts.scan(data[i:end])
			n2 += n
			if n < end-i && !done2 && err2 == nil {
				t.Fatalf("scanner stopped early without finishing")
			}
		}
		if done1 != done2 || (err1 == nil) != (err2 == nil) || (done1 && n1 != n2) {
			t.Fatalf("whole: %d %v %v; split by %d: %d %v %v", n1, done1, err1, step, n2, done2, err2)
		}
	})
}

// FuzzHeadRewrite: a rewritten request head (normalized target, upgrade
// stripped, header actions) parses again with the same method, framing and
// length, so a rewrite can never change where the request ends.
func FuzzHeadRewrite(f *testing.F) {
	f.Add([]byte("GET /a/../b HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: evil\r\n\r\n"), "X-A", "v", uint8(3))
	f.Add([]byte("POST http://x/up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"), "X-B", "", uint8(1))
	f.Add([]byte("POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nX-B: 1\r\n\r\n0\r\n\r\n"), "x-b", "2", uint8(2))
	f.Fuzz(func(t *testing.T, data []byte, name, value string, mode uint8) {
		var h RequestHead
		if ParseRequestHead(data, Limits{}, &h) != nil {
			return
		}
		path, err := policy.NormalizeRequestTarget(string(h.Target), policy.EscapedSlashesReject)
		if err != nil {
			return
		}
		action := []string{policy.MismatchLog, policy.MismatchAdd, policy.MismatchDelete, policy.MismatchReplace}[mode%4]
		req := policy.HTTPRequest{}
		for _, f := range h.Headers {
			req.Headers = append(req.Headers, policy.HTTPHeader{Name: string(f.Name), Value: string(f.Value)})
		}
		edits, _, err := planHeaderActions([]policy.HeaderMatch{{Name: name, Value: value, Mismatch: action}},
			func(n string) (string, bool) { return requestHeader(&req, n) })
		if err != nil || !validToken(name) {
			return
		}
		rw := headRewrite{target: path, stripUpgrade: mode&4 != 0, edits: edits}
		out := rw.appendTo(nil, &h)
		var h2 RequestHead
		if err := ParseRequestHead(out, Limits{}, &h2); err != nil {
			t.Fatalf("rewritten head does not parse: %v\n%q\nfrom %q", err, out, data[:h.Size])
		}
		if h2.Size != len(out) || string(h2.Method) != string(h.Method) || h2.Framing != h.Framing || h2.Length != h.Length || string(h2.Target) != path {
			t.Fatalf("rewrite changed the request: %+v -> %+v\n%q", h, h2, out)
		}
	})
}

func validToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isTokenChar(s[i]) {
			return false
		}
	}
	return true
}
