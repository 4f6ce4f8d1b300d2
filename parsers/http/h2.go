package http

//lint:file-ignore SA1019 x/net/http2/h2c is the only implementation of the HTTP/1.1 Upgrade: h2c mechanism (net/http serves prior-knowledge h2c only)

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	nethttp "net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"

	"github.com/l7gate/l7gate/policy"
)

// h2Preface starts every HTTP/2 connection with prior knowledge.
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// prefixConn replays bytes already read before reading from the conn.
type prefixConn struct {
	net.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// isGRPC reports whether a request is a gRPC call.
func isGRPC(r *nethttp.Request) bool {
	ct := r.Header.Get("Content-Type")
	return strings.HasPrefix(ct, "application/grpc")
}

// h2Handler applies policy to each HTTP/2 (or upgraded h2c) request and
// proxies allowed ones to the upstream.
type h2Handler struct {
	cfg    Config
	decide Decider
	access func(*Record)
	proxy  *httputil.ReverseProxy
	// decideMu serialises decisions: the Decider's contract is one call
	// at a time per connection, as on the HTTP/1 path.
	decideMu sync.Mutex
	// conn is the client connection: a panic or a malformed request
	// closes it.
	conn     net.Conn
	panicked atomic.Pointer[PanicError]
	// upgraded: the connection began as HTTP/1.1 and was upgraded to h2c
	// (its first request still carries the upgrade's HTTP/1.1 headers).
	upgraded bool
}

// connectionSpecific returns the first connection-specific header field
// of a request (RFC 9113 §8.2.2: Connection and the fields it governs,
// and TE other than "trailers"), or "".
func connectionSpecific(h nethttp.Header) string {
	for _, name := range []string{"Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade", "Http2-Settings"} {
		if _, ok := h[name]; ok {
			return name
		}
	}
	if te, ok := h["Te"]; ok && (len(te) != 1 || !strings.EqualFold(strings.TrimSpace(te[0]), "trailers")) {
		return "TE"
	}
	return ""
}

// abort closes the client connection: RFC 9113 §5.4.1 lets an endpoint
// treat a stream error as a connection error, and net/http offers no way
// to reset one stream with PROTOCOL_ERROR.
func (h *h2Handler) abort() {
	if h.conn != nil {
		h.conn.Close()
	}
}

type malformedKey struct{}

// clBody checks that a request body matches its declared Content-Length.
// Go's HTTP/2 server resets a stream that sends more than declared itself;
// one that ends early only fails the body read, which a proxy must not
// answer like an upstream error (RFC 9113 §8.1.1: the request is
// malformed).
type clBody struct {
	io.ReadCloser
	declared, read int64
	malformed      atomic.Bool
}

func (b *clBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.read += int64(n)
	switch {
	case err == io.EOF && b.read != b.declared:
		b.malformed.Store(true)
	case err != nil && err != io.EOF && strings.Contains(err.Error(), "Content-Length"):
		// net/http: "request declared a Content-Length of N but only
		// wrote M bytes" / "sender tried to send more than declared".
		b.malformed.Store(true)
	}
	return n, err
}

// slowBody bounds the wait for each read of an HTTP/2 request body (the
// HTTP/1 path's BodyTimeout): before every read it moves the stream's read
// deadline (http.ResponseController, which the HTTP/2 servers of net/http
// and x/net implement per stream) timeout ahead, and clears it at the end
// of the body. A stalled body fails the read; the stream is then reset.
type slowBody struct {
	io.ReadCloser
	timeout  time.Duration
	timedOut atomic.Bool
	// mu guards rc: the transport may still read the body after the
	// handler returned (the response came first), when the stream's
	// ResponseWriter is no longer usable; detach clears it then.
	mu sync.Mutex
	rc *nethttp.ResponseController
}

type slowBodyKey struct{}

// errBodyAfterHandler ends a request body read after its handler returned.
var errBodyAfterHandler = errors.New("request body read after the request ended")

func (b *slowBody) setDeadline(t time.Time) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.rc == nil {
		return errBodyAfterHandler
	}
	if err := b.rc.SetReadDeadline(t); err != nil {
		// No deadline, no body: a stream we cannot bound is not forwarded.
		return fmt.Errorf("request body deadline: %w", err)
	}
	return nil
}

// detach is called when the handler returns.
func (b *slowBody) detach() {
	b.mu.Lock()
	b.rc = nil
	b.mu.Unlock()
}

func (b *slowBody) Read(p []byte) (int, error) {
	if err := b.setDeadline(time.Now().Add(b.timeout)); err != nil {
		return 0, err
	}
	n, err := b.ReadCloser.Read(p)
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		b.timedOut.Store(true)
	case err != nil:
		_ = b.setDeadline(time.Time{})
	}
	return n, err
}

func bodyTimedOut(r *nethttp.Request) bool {
	b, _ := r.Context().Value(slowBodyKey{}).(*slowBody)
	return b != nil && b.timedOut.Load()
}

func isMalformed(r *nethttp.Request) bool {
	b, _ := r.Context().Value(malformedKey{}).(*clBody)
	return b != nil && b.malformed.Load()
}

func (srv *Server) newH2Handler(dial Dialer, decide Decider, access func(*Record), upstreamH2 bool) *h2Handler {
	cfg := srv.cfg
	h := &h2Handler{cfg: cfg, decide: decide, access: access}
	transport := &nethttp.Transport{
		DialContext:         func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) },
		MaxIdleConnsPerHost: 16,
		DisableCompression:  true,
	}
	if upstreamH2 {
		// The client spoke HTTP/2 with prior knowledge to this address, so
		// the upstream does too.
		var p nethttp.Protocols
		p.SetUnencryptedHTTP2(true)
		transport.Protocols = &p
	}
	h.proxy = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			// The upstream is the connection's original destination; the
			// dialer ignores the URL host.
			r.Out.URL.Scheme = "http"
			r.Out.URL.Host = "upstream"
			r.Out.Host = r.In.Host
			r.Out.Header["X-Forwarded-For"] = nil // transparent: add nothing
		},
		Transport: transport,
		// Responses without a Content-Length (gRPC, streams) are flushed
		// as they come (ReverseProxy does that for ContentLength -1 by
		// itself). A fixed interval, even a negative one, would start a
		// flush timer that races the end of a trailers-only response
		// (HEADERS with END_STREAM, how gRPC answers a call with a status
		// and no message): when the timer wins, the headers leave without
		// END_STREAM, grpc-status arrives as a header instead of a
		// trailer, and the client reports "server closed the stream
		// without sending trailers" instead of the server's status.
		FlushInterval: 0,
		BufferPool:    copyBuffers{&srv.copyBufs},
		ErrorLog:      nil,
		ErrorHandler: func(w nethttp.ResponseWriter, r *nethttp.Request, err error) {
			if bodyTimedOut(r) {
				// As an HTTP/1 connection is closed: reset the stream
				// (net/http sends RST_STREAM for ErrAbortHandler).
				h.cfg.Logger.Debug("request body timeout", "error", err)
				panic(nethttp.ErrAbortHandler)
			}
			if isMalformed(r) {
				h.cfg.Logger.Debug("malformed request body", "error", err)
				h.abort()
				return
			}
			h.cfg.Logger.Debug("upstream error", "error", err)
			if isGRPC(r) {
				w.Header().Set("Content-Type", "application/grpc")
				w.Header().Set("Grpc-Status", "14")
				w.Header().Set("Grpc-Message", "upstream unavailable")
				w.WriteHeader(nethttp.StatusOK)
				return
			}
			nethttp.Error(w, "upstream connect error", nethttp.StatusBadGateway)
		},
	}
	return h
}

type statusRecorder struct {
	nethttp.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(p []byte) (int, error) {
	if s.status == 0 {
		s.status = nethttp.StatusOK
	}
	return s.ResponseWriter.Write(p)
}

func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(nethttp.Flusher); ok {
		f.Flush()
	}
}

func (s *statusRecorder) Unwrap() nethttp.ResponseWriter { return s.ResponseWriter }

func (h *h2Handler) ServeHTTP(w nethttp.ResponseWriter, r *nethttp.Request) {
	defer func() {
		if v := recover(); v != nil {
			if v == nethttp.ErrAbortHandler {
				panic(v)
			}
			// One bad request must not end the process: remember the
			// panic for ServeConn's caller and end this connection.
			h.panicked.CompareAndSwap(nil, newPanicError(v))
			h.abort()
		}
	}()
	start := time.Now()
	if name := connectionSpecific(r.Header); name != "" {
		if !h.upgraded {
			// Malformed (RFC 9113 §8.2.2). Such fields would otherwise
			// reach an HTTP/1.1 upstream as an upgrade request.
			if h.access != nil {
				h.access(&Record{Start: start, Method: r.Method, RawPath: r.RequestURI, Host: r.Host, Status: nethttp.StatusBadRequest,
					Error: "connection-specific header " + name + " in an HTTP/2 request", Duration: time.Since(start)})
			}
			h.abort()
			return
		}
		// The upgraded first request keeps its HTTP/1.1 Connection,
		// Upgrade and HTTP2-Settings: they belong to the hop that ended.
		for _, n := range []string{"Connection", "Keep-Alive", "Proxy-Connection", "Transfer-Encoding", "Upgrade", "Http2-Settings"} {
			r.Header.Del(n)
		}
		if te := r.Header.Get("Te"); te != "" && !strings.EqualFold(te, "trailers") {
			r.Header.Del("Te")
		}
	}
	path, perr := policy.NormalizeRequestTarget(r.RequestURI, h.cfg.EscapedSlashes)
	if perr != nil {
		if h.access != nil {
			h.access(&Record{Start: start, Method: r.Method, RawPath: r.RequestURI, Host: r.Host, Status: nethttp.StatusBadRequest,
				Error: perr.Error(), Duration: time.Since(start)})
		}
		nethttp.Error(w, "Bad Request", nethttp.StatusBadRequest)
		return
	}
	req := policy.HTTPRequest{Method: r.Method, Path: path, Host: r.Host}
	for name, vals := range r.Header {
		for _, v := range vals {
			req.Headers = append(req.Headers, policy.HTTPHeader{Name: name, Value: v})
		}
	}
	if h.cfg.OnRequest != nil {
		h.cfg.OnRequest(&req)
	}
	h.decideMu.Lock()
	d := h.decide(&req)
	h.decideMu.Unlock()
	rec := &Record{Start: start, Method: r.Method, Path: path, Host: r.Host, Allowed: d.Allowed, DecidedBy: d.DecidedBy}
	if path != r.RequestURI {
		rec.RawPath = r.RequestURI
	}
	defer func() {
		if h.access != nil {
			rec.Duration = time.Since(start)
			h.access(rec)
		}
	}()
	if d.Allowed && len(d.MismatchActions) > 0 {
		edits, logs, err := planHeaderActions(d.MismatchActions, func(name string) (string, bool) { return requestHeader(&req, name) })
		if err != nil {
			d.Allowed, rec.Allowed, rec.Error = false, false, err.Error()
		} else {
			rec.HeaderMismatches = logs
			for _, e := range edits {
				if e.del {
					r.Header.Del(e.name)
				}
				if e.add {
					r.Header.Add(e.name, e.value)
				}
			}
		}
	}
	if !d.Allowed {
		if isGRPC(r) {
			// A trailers-only gRPC response: PERMISSION_DENIED.
			w.Header().Set("Content-Type", "application/grpc")
			w.Header().Set("Grpc-Status", "7")
			w.Header().Set("Grpc-Message", "Access denied")
			w.WriteHeader(nethttp.StatusOK)
			rec.Status = nethttp.StatusOK
			rec.Error = "grpc-status 7"
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		w.WriteHeader(nethttp.StatusForbidden)
		io.WriteString(w, "Access denied")
		rec.Status = nethttp.StatusForbidden
		return
	}
	if path != r.RequestURI && path != "*" {
		// Forward what was decided: the normalized path.
		p, q, _ := strings.Cut(path, "?")
		u := *r.URL
		u.Path, u.RawPath, u.RawQuery = p, "", q
		if dec, err := url.PathUnescape(p); err == nil {
			u.Path, u.RawPath = dec, p
		}
		r.URL = &u
	}
	if r.ProtoMajor == 2 && r.Header.Get("Content-Length") != "" && r.Body != nil && r.Body != nethttp.NoBody {
		b := &clBody{ReadCloser: r.Body, declared: r.ContentLength}
		r.Body = b
		r = r.WithContext(context.WithValue(r.Context(), malformedKey{}, b))
	}
	if r.Body != nil && r.Body != nethttp.NoBody && h.cfg.BodyTimeout > 0 {
		b := &slowBody{ReadCloser: r.Body, rc: nethttp.NewResponseController(w), timeout: h.cfg.BodyTimeout}
		r.Body = b
		r = r.WithContext(context.WithValue(r.Context(), slowBodyKey{}, b))
		defer func() {
			b.detach()
			if b.timedOut.Load() {
				rec.Error = "request body timeout"
			}
		}()
	}
	sr := &statusRecorder{ResponseWriter: w}
	h.proxy.ServeHTTP(sr, r)
	rec.Status = sr.status
	if isMalformed(r) {
		rec.Error = "request body does not match its Content-Length"
		h.abort()
	}
}

// serveH2 serves an HTTP/2 connection with prior knowledge.
func (srv *Server) serveH2(ctx context.Context, conn net.Conn, dial Dialer, decide Decider, access func(*Record)) error {
	cfg := srv.cfg
	h := srv.newH2Handler(dial, decide, access, true)
	h.conn = conn
	var protocols nethttp.Protocols
	protocols.SetUnencryptedHTTP2(true)
	err := serveOneWith(ctx, cfg, conn, h, &protocols, h, nil)
	if pe := h.panicked.Load(); pe != nil {
		return pe
	}
	return err
}

// serveOneWith runs a net/http server on one connection until it closes.
func serveOneWith(ctx context.Context, cfg Config, conn net.Conn, handler nethttp.Handler, protocols *nethttp.Protocols, h *h2Handler, hook func(*oneConnListener)) error {
	ln := &oneConnListener{conn: conn, done: make(chan struct{}), stop: make(chan struct{})}
	if hook != nil {
		hook(ln)
	}
	srv := &nethttp.Server{
		Handler:           handler,
		Protocols:         protocols,
		ReadHeaderTimeout: cfg.HeaderTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		HTTP2:             &nethttp.HTTP2Config{MaxReadFrameSize: 1 << 20},
		ConnState: func(c net.Conn, st nethttp.ConnState) {
			if st == nethttp.StateClosed {
				ln.finish()
			}
		},
		BaseContext: func(net.Listener) context.Context { return ctx },
		ErrorLog:    slogErrorLog(cfg),
	}
	var drain <-chan struct{}
	if cfg.Drain != nil {
		drain = cfg.Drain.Done()
	}
	go func() {
		select {
		case <-ctx.Done():
			srv.Close()
			return
		case <-ln.done:
			return
		case <-drain:
		}
		// Draining: an HTTP/2 connection gets GOAWAY (last stream id) and
		// closes once its streams are done; an HTTP/1.1 one (the request
		// of an h2c upgrade) closes when idle. ctx ends it hard.
		go srv.Shutdown(ctx)
		select {
		case <-ctx.Done():
			srv.Close()
		case <-ln.done:
		}
	}()
	err := srv.Serve(ln)
	if ln.take() != nil {
		// Shut down before the connection was handed to the server.
		conn.Close()
		ln.finish()
	}
	select {
	case <-ln.done:
	case <-ctx.Done():
		// A hijacked connection (an h2c upgrade) reports no StateClosed.
	}
	srv.Close()
	h.proxy.Transport.(*nethttp.Transport).CloseIdleConnections()
	if errors.Is(err, errListenerDone) || errors.Is(err, nethttp.ErrServerClosed) {
		return nil
	}
	return err
}

// serveH2CUpgrade serves a connection whose first request asks for an h2c
// upgrade: net/http with the h2c handler performs the upgrade (the first
// request goes through policy like every other), then speaks HTTP/2. The
// upstream is spoken to over HTTP/1.1, which every server understands.
func (srv *Server) serveH2CUpgrade(ctx context.Context, conn net.Conn, dial Dialer, decide Decider, access func(*Record)) error {
	cfg := srv.cfg
	h := srv.newH2Handler(dial, decide, access, false)
	h.upgraded = true
	// net/http serves HTTP/2 with prior knowledge but not the HTTP/1.1
	// Upgrade: h2c mechanism; x/net's h2c handler still does.
	h2s := &http2.Server{IdleTimeout: cfg.IdleTimeout}
	if cfg.Drain != nil {
		// The upgraded connection is hijacked: net/http's Shutdown does not
		// reach it. http2.ConfigureServer ties h2s's connections to a
		// server of their own whose Shutdown sends them GOAWAY (last
		// stream id) and closes each once its streams are done, as a
		// prior-knowledge connection drains.
		shut := &nethttp.Server{}
		if err := http2.ConfigureServer(shut, h2s); err != nil {
			return fmt.Errorf("h2c upgrade: %w", err)
		}
		stop := context.AfterFunc(cfg.Drain, func() { shut.Shutdown(context.Background()) })
		defer stop()
	}
	upgrader := h2c.NewHandler(h, h2s)
	var ln *oneConnListener
	handler := nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		// After a successful upgrade the h2c handler hijacks the connection
		// and serves HTTP/2 on it until it ends, then returns here.
		// (Read before serving: the upgraded request's handling edits
		// its headers.)
		upgrade := strings.EqualFold(r.Header.Get("Upgrade"), "h2c")
		upgrader.ServeHTTP(w, r)
		if upgrade && ln != nil {
			ln.finish()
		}
	})
	h.conn = conn
	var protocols nethttp.Protocols
	protocols.SetHTTP1(true)
	err := serveOneWith(ctx, cfg, conn, handler, &protocols, h, func(l *oneConnListener) { ln = l })
	if pe := h.panicked.Load(); pe != nil {
		return pe
	}
	return err
}

var errListenerDone = errors.New("listener done")

// oneConnListener hands out one connection, then blocks until it is done
// or the listener is closed (a server shutting down).
type oneConnListener struct {
	mu     sync.Mutex
	conn   net.Conn
	done   chan struct{} // closed when the connection ended
	closed bool
	stop   chan struct{} // closed by Close
	halted bool
}

func (l *oneConnListener) take() net.Conn {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.conn
	l.conn = nil
	return c
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	if c := l.take(); c != nil {
		return c, nil
	}
	select {
	case <-l.done:
	case <-l.stop:
	}
	return nil, errListenerDone
}

func (l *oneConnListener) finish() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.closed = true
		close(l.done)
	}
}

// Close stops Accept; the connection handed out goes on (a graceful
// shutdown drains it).
func (l *oneConnListener) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.halted {
		l.halted = true
		close(l.stop)
	}
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return &net.TCPAddr{} }

// sniff reads the first bytes of a connection to choose HTTP/1 or HTTP/2
// (prior knowledge). It returns the bytes read.
func sniff(conn net.Conn, timeout time.Duration, in *connBuf) ([]byte, error) {
	// One read usually brings the whole first request: hand all of it on
	// rather than reading the preface's length first (a system call saved
	// per connection). The bytes stay in in's buffer.
	in.acquire()
	conn.SetReadDeadline(time.Now().Add(timeout))
	defer conn.SetReadDeadline(time.Time{})
	for {
		k, err := conn.Read(in.buf[in.w:])
		in.w += k
		got := in.bytes()
		switch {
		case len(got) >= len(h2Preface) || !bytes.HasPrefix([]byte(h2Preface), got):
			return got, nil // complete preface, or not HTTP/2
		case err != nil:
			return got, err
		}
	}
}

// slogErrorLog routes net/http's internal error log to the logger at debug
// level (client resets are routine for a proxy).
func slogErrorLog(cfg Config) *log.Logger {
	return slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelDebug)
}

// copyBuffers recycles ReverseProxy's body copy buffers (it would allocate
// 32 KiB per request otherwise).
type copyBuffers struct{ pool *sync.Pool }

func (c copyBuffers) Get() []byte  { return *c.pool.Get().(*[]byte) }
func (c copyBuffers) Put(b []byte) { c.pool.Put(&b) }
