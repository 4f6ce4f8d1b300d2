package http

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/l7gate/l7gate/policy"
)

// uriRecorder is an upstream that records the request target exactly as
// it arrived (RequestURI, not the cleaned URL) and echoes it.
type uriRecorder struct {
	mu   sync.Mutex
	uris []string
}

func (u *uriRecorder) ServeHTTP(w nethttp.ResponseWriter, r *nethttp.Request) {
	u.mu.Lock()
	u.uris = append(u.uris, r.RequestURI)
	u.mu.Unlock()
	io.Copy(io.Discard, r.Body)
	fmt.Fprintf(w, "served %s", r.RequestURI)
}

func (u *uriRecorder) seen() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]string(nil), u.uris...)
}

// pathCases: with the rule GET /public/.*, what the client sends, the
// status it must get and the target the backend must receive ("" when the
// request must not reach it).
var pathCases = []struct {
	target   string
	status   int
	upstream string
}{
	{"/public/../admin", 403, ""},
	{"/public/%2e%2e/admin", 403, ""},
	{"/public/.%2e/admin", 403, ""},
	{"/public/%2E%2E/admin", 403, ""},
	{"/public//../admin", 403, ""},
	{"/public/..%2fadmin", 400, ""},
	{"/public/..%5cadmin", 400, ""},
	{"/public\\..\\admin", 403, ""},
	{"/public/a%00.html", 400, ""},
	{"/public/./a//b", 200, "/public/a/b"},
	{"/public/%61%7e", 200, "/public/a~"},
	{"/public/x?next=/../admin", 200, "/public/x?next=/../admin"},
	{"/public/a%2fb", 400, ""},
}

// TestHostilePathNormalization (HTTP/1.1): paths are normalized before
// matching, and the backend receives the normalized path.
func TestHostilePathNormalization(t *testing.T) {
	up := &uriRecorder{}
	srv := httptest.NewServer(up)
	defer srv.Close()
	p := startProxy(t, Config{}, srv.Listener.Addr().String(), ruleDecider(t, policy.HTTPRule{Method: "GET", Path: "/public/.*"}))
	for _, tc := range pathCases {
		before := len(up.seen())
		resp := rawExchange(t, p.addr, "GET "+tc.target+" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 3*time.Second)
		got := up.seen()[before:]
		if !strings.HasPrefix(resp, fmt.Sprintf("HTTP/1.1 %d ", tc.status)) {
			t.Errorf("%s: got %q, want status %d", tc.target, firstLine(resp), tc.status)
		}
		switch {
		case tc.upstream == "" && len(got) > 0:
			t.Errorf("%s: reached the backend as %q", tc.target, got)
		case tc.upstream != "" && (len(got) != 1 || got[0] != tc.upstream):
			t.Errorf("%s: backend saw %q, want %q", tc.target, got, tc.upstream)
		}
	}
}

// TestHostilePathNormalizationH2: the same for HTTP/2 :path.
func TestHostilePathNormalizationH2(t *testing.T) {
	up := &uriRecorder{}
	srv := httptest.NewUnstartedServer(up)
	var p2 nethttp.Protocols
	p2.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = &p2
	srv.Start()
	defer srv.Close()
	p := startProxy(t, Config{}, srv.Listener.Addr().String(), ruleDecider(t, policy.HTTPRule{Method: "GET", Path: "/public/.*"}))
	client := h2cClient()
	for _, tc := range pathCases {
		if strings.Contains(tc.target, "\\") || strings.Contains(tc.target, "%00") {
			continue // Go's HTTP/2 server refuses these before any handler
		}
		before := len(up.seen())
		req, _ := nethttp.NewRequest("GET", "http://"+p.addr+"/", nil)
		req.URL = &url.URL{Scheme: "http", Host: p.addr, Opaque: tc.target}
		if i := strings.IndexByte(tc.target, '?'); i >= 0 {
			req.URL.Opaque, req.URL.RawQuery = tc.target[:i], tc.target[i+1:]
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Errorf("%s: %v", tc.target, err)
			continue
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		got := up.seen()[before:]
		if resp.StatusCode != tc.status {
			t.Errorf("%s: status %d, want %d", tc.target, resp.StatusCode, tc.status)
		}
		switch {
		case tc.upstream == "" && len(got) > 0:
			t.Errorf("%s: reached the backend as %q", tc.target, got)
		case tc.upstream != "" && (len(got) != 1 || got[0] != tc.upstream):
			t.Errorf("%s: backend saw %q, want %q", tc.target, got, tc.upstream)
		}
	}
}

func firstLine(s string) string {
	if i := strings.Index(s, "\r\n"); i >= 0 {
		return s[:i]
	}
	return s
}

// upgradeBackend is a lenient backend: it records each request head and
// answers any Upgrade request with 101 switching to whatever was asked,
// then echoes the connection (a tunnel the proxy must not allow unless it
// is WebSocket).
func upgradeBackend(t *testing.T) (string, chan string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	heads := make(chan string, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					req, err := nethttp.ReadRequest(r)
					if err != nil {
						return
					}
					var b strings.Builder
					req.Header.Write(&b)
					heads <- b.String()
					if up := req.Header.Get("Upgrade"); up != "" {
						fmt.Fprintf(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: %s\r\nConnection: Upgrade\r\n\r\n", up)
						io.Copy(c, r)
						return
					}
					io.Copy(io.Discard, req.Body)
					c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
				}
			}()
		}
	}()
	return ln.Addr().String(), heads
}

// TestHostileUpgradeOnlyWebSocket: only a WebSocket upgrade becomes a
// tunnel; any other Upgrade is removed before forwarding, and a backend
// that switches protocols anyway gets no tunnel.
func TestHostileUpgradeOnlyWebSocket(t *testing.T) {
	addr, heads := upgradeBackend(t)
	p := startProxy(t, Config{}, addr, func(*policy.HTTPRequest) Decision { return Decision{Allowed: true} })
	for _, tc := range []struct {
		upgrade string
		tunnel  bool
	}{
		{"websocket", true},
		{"WebSocket", true},
		{"tls/1.3", false},
		{"h2c", false}, // not the first request: see below
		{"websocket, evil", false},
		{"evil", false},
	} {
		c, err := net.Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(c)
		if tc.upgrade == "h2c" {
			// An h2c upgrade after the first request on a connection.
			fmt.Fprintf(c, "GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
			if resp, err := nethttp.ReadResponse(r, nil); err != nil || resp.StatusCode != 200 {
				t.Fatalf("first request: %v %v", resp, err)
			} else {
				io.Copy(io.Discard, resp.Body)
			}
			<-heads
		}
		fmt.Fprintf(c, "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: %s\r\n\r\n", tc.upgrade)
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		resp, err := nethttp.ReadResponse(r, nil)
		var head string
		select {
		case head = <-heads:
		case <-time.After(3 * time.Second):
		}
		if tc.tunnel {
			if err != nil || resp.StatusCode != 101 || !strings.Contains(head, "Upgrade: ") {
				t.Errorf("%s: %v %v (backend saw %q), want 101", tc.upgrade, resp, err, head)
			}
			fmt.Fprintf(c, "ping")
			buf := make([]byte, 4)
			if _, err := io.ReadFull(r, buf); err != nil || string(buf) != "ping" {
				t.Errorf("%s: tunnel echoed %q, %v", tc.upgrade, buf, err)
			}
		} else {
			if strings.Contains(head, "Upgrade:") || strings.Contains(strings.ToLower(head), "connection: keep-alive, upgrade") {
				t.Errorf("%s: the backend received the upgrade request:\n%s", tc.upgrade, head)
			}
			if err == nil && resp.StatusCode == 101 {
				fmt.Fprintf(c, "ping")
				buf := make([]byte, 4)
				n, _ := io.ReadFull(r, buf)
				t.Errorf("%s: upgraded to a tunnel (echoed %q)", tc.upgrade, buf[:n])
			}
		}
		c.Close()
	}
}

// TestHostileH2CUpgradeBodyBounded: an h2c upgrade request carrying a
// large body must not be buffered whole (x/net's h2c reads the entire
// body into memory before switching): the proxy's heap must stay bounded
// while a 64 MiB body passes, and the backend must receive it all.
func TestHostileH2CUpgradeBodyBounded(t *testing.T) {
	// The backend hashes the body as it streams in (it must not buffer
	// either: it runs in this process, whose heap the test measures).
	srv := httptest.NewServer(nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		h := sha256.New()
		io.Copy(h, r.Body)
		w.Header().Set("X-Body-SHA256", hex.EncodeToString(h.Sum(nil)))
	}))
	defer srv.Close()
	upAddr := srv.Listener.Addr().String()
	p := startProxy(t, Config{}, upAddr, func(*policy.HTTPRequest) Decision { return Decision{Allowed: true} })
	const size = 64 << 20
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapAlloc
	var peak atomic.Uint64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		var m runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			runtime.ReadMemStats(&m)
			if m.HeapAlloc > peak.Load() {
				peak.Store(m.HeapAlloc)
			}
		}
	}()
	fmt.Fprintf(c, "POST /upload HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nContent-Length: %d\r\n\r\n", size)
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	h := sha256.New()
	for range size / len(chunk) {
		if _, err := c.Write(chunk); err != nil {
			t.Fatal(err)
		}
		h.Write(chunk)
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	resp, err := nethttp.ReadResponse(bufio.NewReader(c), nil)
	close(stop)
	<-sampled
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	growth := int64(peak.Load()) - int64(base)
	t.Logf("heap growth while a %d MiB h2c-upgrade body passed: %.1f MiB (status %d, HTTP/%d.%d)", size>>20, float64(growth)/(1<<20), resp.StatusCode, resp.ProtoMajor, resp.ProtoMinor)
	if growth > 24<<20 {
		t.Errorf("heap grew by %.1f MiB for a %d MiB body: the upgrade body was buffered", float64(growth)/(1<<20), size>>20)
	}
	if got := resp.Header.Get("X-Body-SHA256"); resp.StatusCode != 200 || got != hex.EncodeToString(h.Sum(nil)) {
		t.Errorf("backend got a different body: status %d, sha %s", resp.StatusCode, got)
	}
}

// TestHostileSlowBody: a client that stops sending in the middle of a
// request body (allowed or denied) has its connection closed after the
// body timeout, and the backend never gets a complete request.
func TestHostileSlowBody(t *testing.T) {
	var complete atomic.Int64
	srv := httptest.NewServer(nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		if b, err := io.ReadAll(r.Body); err == nil && len(b) == 10 {
			complete.Add(1)
		}
	}))
	defer srv.Close()
	upAddr := srv.Listener.Addr().String()
	p := startProxy(t, Config{BodyTimeout: 300 * time.Millisecond}, upAddr, ruleDecider(t, policy.HTTPRule{Path: "/allowed"}))
	for _, path := range []string{"/allowed", "/denied"} {
		c, err := net.Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello", path)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		start := time.Now()
		b, err := io.ReadAll(c)
		c.Close()
		if err != nil {
			t.Errorf("%s: the connection stayed open %s after the body stalled (%v); read %q", path, time.Since(start).Round(time.Millisecond), err, b)
		}
	}
	if n := complete.Load(); n != 0 {
		t.Errorf("backend received %d complete requests, want 0", n)
	}
}

// TestHostilePipelinedAfterDenial: requests pipelined behind a denied one
// are parsed as requests of their own, never as its body, and bytes that
// look like a request inside a denied request's body are never forwarded.
func TestHostilePipelinedAfterDenial(t *testing.T) {
	up, upAddr := newUpstream(t)
	p := startProxy(t, Config{}, upAddr, ruleDecider(t, policy.HTTPRule{Method: "GET", Path: "/public/.*"}))
	smuggled := "GET /public/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
	raw := "POST /admin HTTP/1.1\r\nHost: x\r\nContent-Length: " + fmt.Sprint(len(smuggled)) + "\r\n\r\n" + smuggled +
		"POST /admin HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(smuggled), smuggled) +
		"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n" +
		"GET /public/ok HTTP/1.1\r\nHost: x\r\n\r\n" +
		"POST /admin HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: " + fmt.Sprint(len(smuggled)) + "\r\n\r\n" + smuggled +
		"GET /public/after-close HTTP/1.1\r\nHost: x\r\n\r\n"
	got := statusLines(rawExchange(t, p.addr, raw, 5*time.Second))
	want := []string{"403 Forbidden", "403 Forbidden", "403 Forbidden", "200 OK", "403 Forbidden"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("responses %v, want %v", got, want)
	}
	up.mu.Lock()
	defer up.mu.Unlock()
	if strings.Join(up.paths, ",") != "/public/ok" {
		t.Errorf("backend saw %v, want only /public/ok", up.paths)
	}
}

// h2Exchange sends one HTTP/2 request with prior knowledge, written frame
// by frame (headers, then each DATA frame, the last one ending the
// stream), and returns the frames the proxy answered with, until it
// resets the stream, ends the connection or 3 s pass.
func h2Exchange(t *testing.T, addr string, fields [][2]string, data ...string) []string {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte(h2Preface))
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range fields {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: len(data) == 0}); err != nil {
		t.Fatal(err)
	}
	for i, d := range data {
		if err := fr.WriteData(1, i == len(data)-1, []byte(d)); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return append(got, "closed")
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID == 1 {
				got = append(got, "HEADERS :status "+f.PseudoValue("status"))
				if f.StreamEnded() {
					return append(got, "END_STREAM")
				}
			}
		case *http2.RSTStreamFrame:
			return append(got, "RST_STREAM "+f.ErrCode.String())
		case *http2.GoAwayFrame:
			return append(got, "GOAWAY "+f.ErrCode.String())
		case *http2.DataFrame:
			if f.StreamID == 1 && f.StreamEnded() {
				return append(got, "END_STREAM")
			}
		}
	}
}

// TestHostileH2ContentLength: an HTTP/2 request whose DATA frames do not
// add up to its content-length is malformed (RFC 9113 §8.1.1) and must be
// reset, never answered as if it were a request, nor completed upstream.
func TestHostileH2ContentLength(t *testing.T) {
	var complete atomic.Int64
	srv := httptest.NewUnstartedServer(nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		if _, err := io.ReadAll(r.Body); err == nil {
			complete.Add(1)
		}
		io.WriteString(w, "ok")
	}))
	var p2 nethttp.Protocols
	p2.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = &p2
	srv.Start()
	defer srv.Close()
	p := startProxy(t, Config{}, srv.Listener.Addr().String(), func(*policy.HTTPRequest) Decision { return Decision{Allowed: true} })
	head := func(cl string) [][2]string {
		return [][2]string{{":method", "POST"}, {":scheme", "http"}, {":authority", "x"}, {":path", "/upload"}, {"content-length", cl}}
	}
	for _, tc := range []struct {
		name string
		cl   string
		data []string
		ok   bool
	}{
		{"fewer bytes than declared", "10", []string{"test"}, false},
		{"fewer bytes in two frames", "100", []string{"test", "test"}, false},
		{"more bytes than declared", "1", []string{"test"}, false},
		{"more bytes in two frames", "5", []string{"test", "test"}, false},
		{"exact", "8", []string{"test", "test"}, true},
	} {
		before := complete.Load()
		got := h2Exchange(t, p.addr, head(tc.cl), tc.data...)
		last := got[len(got)-1]
		if tc.ok {
			if len(got) < 2 || got[0] != "HEADERS :status 200" || last != "END_STREAM" {
				t.Errorf("%s: got %v, want a 200 response", tc.name, got)
			}
			continue
		}
		if !(last == "RST_STREAM PROTOCOL_ERROR" || last == "GOAWAY PROTOCOL_ERROR" || last == "closed") || len(got) > 1 {
			t.Errorf("%s: got %v, want the stream reset with PROTOCOL_ERROR (or the connection ended) and no response", tc.name, got)
		}
		if n := complete.Load() - before; n != 0 {
			t.Errorf("%s: the backend received a complete request", tc.name)
		}
	}
}

// TestHostileAbsoluteForm: an absolute-form target (as sent to forward
// proxies) is decided on its normalized path and its authority, which must
// equal Host, and forwarded in absolute form with the normalized path.
func TestHostileAbsoluteForm(t *testing.T) {
	up := &uriRecorder{}
	srv := httptest.NewServer(up)
	defer srv.Close()
	p := startProxy(t, Config{}, srv.Listener.Addr().String(), ruleDecider(t, policy.HTTPRule{Method: "GET", Path: "/public/.*", Host: "x"}))
	for _, tc := range []struct {
		target, host string
		status       int
		upstream     string
	}{
		{"http://x/public/a", "x", 200, "http://x/public/a"},
		{"HTTP://x/public/./b//c?q=1", "x", 200, "http://x/public/b/c?q=1"},
		{"http://x/public/../admin", "x", 403, ""},
		{"http://y/public/a", "x", 400, ""},
		{"http://y/public/a", "y", 403, ""},
		{"http://x@y/public/a", "y", 400, ""},
		{"http://x?q", "x", 400, ""},
		{"https://x/public/a", "x", 400, ""},
	} {
		before := len(up.seen())
		resp := rawExchange(t, p.addr, "GET "+tc.target+" HTTP/1.1\r\nHost: "+tc.host+"\r\nConnection: close\r\n\r\n", 3*time.Second)
		got := up.seen()[before:]
		if !strings.HasPrefix(resp, fmt.Sprintf("HTTP/1.1 %d ", tc.status)) {
			t.Errorf("%s (Host %s): got %q, want %d", tc.target, tc.host, firstLine(resp), tc.status)
		}
		switch {
		case tc.upstream == "" && len(got) > 0:
			t.Errorf("%s: reached the backend as %q", tc.target, got)
		case tc.upstream != "" && (len(got) != 1 || got[0] != tc.upstream):
			t.Errorf("%s: backend saw %q, want %q", tc.target, got, tc.upstream)
		}
	}
}

// TestHostileH2ConnectionHeaders: HTTP/2 requests with connection-specific
// fields are malformed (RFC 9113 §8.2.2) and end the connection: passed on
// to an HTTP/1.1 backend they would ask it for an upgrade. "te: trailers"
// (gRPC sends it) is fine.
func TestHostileH2ConnectionHeaders(t *testing.T) {
	var upgrades atomic.Int64
	srv := httptest.NewUnstartedServer(nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		if r.Header.Get("Upgrade") != "" || r.Header.Get("Connection") != "" {
			upgrades.Add(1)
		}
	}))
	var p2 nethttp.Protocols
	p2.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = &p2
	srv.Start()
	defer srv.Close()
	p := startProxy(t, Config{}, srv.Listener.Addr().String(), func(*policy.HTTPRequest) Decision { return Decision{Allowed: true} })
	base := [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "x"}, {":path", "/ws"}}
	for _, tc := range []struct {
		extra [][2]string
		ok    bool
	}{
		{[][2]string{{"connection", "upgrade"}, {"upgrade", "websocket"}}, false},
		{[][2]string{{"upgrade", "evil"}}, false},
		{[][2]string{{"keep-alive", "timeout=5"}}, false},
		{[][2]string{{"te", "gzip"}}, false},
		{[][2]string{{"te", "trailers"}}, true},
	} {
		got := h2Exchange(t, p.addr, append(append([][2]string(nil), base...), tc.extra...))
		if tc.ok != (len(got) > 0 && got[0] == "HEADERS :status 200") {
			t.Errorf("%v: got %v", tc.extra, got)
		}
	}
	if n := upgrades.Load(); n > 0 {
		t.Errorf("the backend received %d requests with connection-specific fields", n)
	}
}

// TestHostileSlowBodyH2: an HTTP/2 stream whose request body stops in the
// middle (allowed, so it is being forwarded) is reset after the body
// timeout, as an HTTP/1 connection is closed; the backend never gets a
// complete request, and the connection's other streams go on.
func TestHostileSlowBodyH2(t *testing.T) {
	var complete atomic.Int64
	ended := make(chan error, 4)
	srv := httptest.NewUnstartedServer(nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		b, err := io.ReadAll(r.Body)
		if r.Method == "POST" {
			if err == nil && len(b) == 10 {
				complete.Add(1)
			}
			ended <- err
		}
		io.WriteString(w, "ok")
	}))
	var p2 nethttp.Protocols
	p2.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = &p2
	srv.Start()
	defer srv.Close()
	p := startProxy(t, Config{BodyTimeout: 300 * time.Millisecond}, srv.Listener.Addr().String(), ruleDecider(t, policy.HTTPRule{Path: "/allowed"}))
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte(h2Preface))
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	headers := func(stream uint32, method string, fields ...[2]string) {
		var hb bytes.Buffer
		enc := hpack.NewEncoder(&hb)
		for _, f := range append([][2]string{{":method", method}, {":scheme", "http"}, {":authority", "x"}, {":path", "/allowed"}}, fields...) {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: method == "GET"}); err != nil {
			t.Fatal(err)
		}
	}
	headers(1, "POST", [2]string{"content-length", "10"})
	if err := fr.WriteData(1, false, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	// Then nothing more on stream 1.
	start := time.Now()
	c.SetReadDeadline(start.Add(5 * time.Second))
	stream1, stream3 := "", ""
	for stream1 == "" || stream3 == "" {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("after %s: stream 1 %q, stream 3 %q: %v", time.Since(start).Round(time.Millisecond), stream1, stream3, err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == 1 {
				stream1 = "RST_STREAM " + f.ErrCode.String()
				t.Logf("stream 1 reset after %s", time.Since(start).Round(time.Millisecond))
				headers(3, "GET")
			}
		case *http2.MetaHeadersFrame:
			switch f.StreamID {
			case 1:
				stream1 = "HEADERS :status " + f.PseudoValue("status")
			case 3:
				stream3 = "HEADERS :status " + f.PseudoValue("status")
			}
		case *http2.GoAwayFrame:
			t.Fatalf("GOAWAY %s: the connection ended, not the stream", f.ErrCode)
		}
	}
	if stream1 != "RST_STREAM INTERNAL_ERROR" && stream1 != "RST_STREAM CANCEL" {
		t.Errorf("stalled stream: %s, want it reset", stream1)
	}
	if stream3 != "HEADERS :status 200" {
		t.Errorf("next stream on the connection: %s, want 200", stream3)
	}
	select {
	case err := <-ended:
		if err == nil {
			t.Errorf("the backend's request body ended without an error")
		}
	case <-time.After(3 * time.Second):
		t.Errorf("the backend's request is still waiting for its body")
	}
	if n := complete.Load(); n != 0 {
		t.Errorf("backend received %d complete requests, want 0", n)
	}
}
