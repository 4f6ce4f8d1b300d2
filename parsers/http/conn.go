package http

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/l7gate/l7gate/policy"
)

// Decision is the verdict on one request.
type Decision struct {
	Allowed bool
	// DecidedBy names the rule(s) behind the verdict, for access logs.
	DecidedBy []policy.Provenance
	// MismatchActions lists the header-mismatch actions to take on an
	// allowed request, in order: ADD, DELETE and REPLACE change the
	// forwarded request (see planHeaderActions), every action is logged.
	MismatchActions []policy.HeaderMatch
}

// Decider decides a request. The request's strings alias the connection
// buffer and are only valid during the call.
type Decider func(req *policy.HTTPRequest) Decision

// Dialer opens the upstream connection (to the original destination).
type Dialer func(ctx context.Context) (net.Conn, error)

// Record is one access-log record: a request and its response or denial.
type Record struct {
	Start    time.Time
	Duration time.Duration
	Method   string
	// Path is the normalized request target the decision saw (and the
	// backend received); RawPath is the target as sent when that differs.
	Path      string
	RawPath   string
	Host      string
	Status    int
	Allowed   bool
	DecidedBy []policy.Provenance
	// HeaderMismatches are the header-mismatch actions taken.
	HeaderMismatches []HeaderMismatch
	// Error is set when the exchange failed (malformed request, upstream
	// gone).
	Error string
}

// Config configures connection handling. Zero values take the defaults.
type Config struct {
	Limits Limits
	// HeaderTimeout bounds reading one request head (default 30s).
	HeaderTimeout time.Duration
	// IdleTimeout bounds the wait for the next request on a kept-alive
	// connection (default 5m).
	IdleTimeout time.Duration
	// DialTimeout bounds connecting upstream (default 10s).
	DialTimeout time.Duration
	// BodyTimeout bounds the wait for each read of a request body (default
	// 30s): a client that stops sending mid-body (slowloris) has its
	// HTTP/1 connection closed, or its HTTP/2 stream reset (the
	// connection's other streams go on). A gRPC client stream that sends
	// nothing for this long is reset too.
	BodyTimeout time.Duration
	// EscapedSlashes: what a path with %2F or %5C gets (default reject:
	// 400). See policy.NormalizeRequestTarget.
	EscapedSlashes policy.EscapedSlashAction
	// MaxH2CUpgradeBody bounds the body of an HTTP/1.1 request asking for
	// an h2c upgrade (default 64 KiB): the upgrade buffers that body, so a
	// larger or chunked one is served as plain HTTP/1.1 without upgrading.
	MaxH2CUpgradeBody int64
	// LegacyHTTP2 serves HTTP/2 with prior knowledge through net/http's
	// server and ReverseProxy (the path before the frame-level one, kept
	// for comparison); the default is the frame-level path (h2frame.go).
	LegacyHTTP2 bool
	// OnRequest, when set, sees every parsed request before it is decided.
	// It exists for tests (fault injection) and debugging; production
	// leaves it nil.
	OnRequest func(*policy.HTTPRequest)
	Logger    *slog.Logger
	// Drain, when set, ends when the proxy drains (a restart or a
	// hand-over to another process): an HTTP/1.1 connection answers its
	// next response with "Connection: close" added and then closes, or is
	// closed once idle for a second; an HTTP/2 connection gets
	// GOAWAY with the last stream id and closes once its streams are done.
	// Clients that retry a request on a closed idle connection (net/http,
	// curl, grpc-go) see no failure. The caller bounds the drain (by
	// cancelling ServeConn's context).
	Drain context.Context
	// Poller, when set, parks the idle HTTP/1 and HTTP/2 connections of
	// Serve (not ServeConn): see Server.Serve.
	Poller *Poller
	// ReuseRecords: the access callback's Record is the callee's only
	// until it returns (the server reuses it for a later request, saving
	// an allocation per request); the callee copies what it keeps.
	ReuseRecords bool
}

func (c Config) withDefaults() Config {
	c.Limits = c.Limits.withDefaults()
	if c.HeaderTimeout <= 0 {
		c.HeaderTimeout = 30 * time.Second
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 5 * time.Minute
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 10 * time.Second
	}
	if c.BodyTimeout <= 0 {
		c.BodyTimeout = 30 * time.Second
	}
	if c.EscapedSlashes == "" {
		c.EscapedSlashes = policy.EscapedSlashesReject
	}
	if c.MaxH2CUpgradeBody <= 0 {
		c.MaxH2CUpgradeBody = 64 << 10
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

const bufSize = 16 << 10

// Server serves proxied connections with one Config and shared buffer
// pools. Create one per proxy and call ServeConn for every connection.
type Server struct {
	cfg      Config
	bufs     sync.Pool // *[]byte of bufSize, connection read buffers
	copyBufs sync.Pool // *[]byte, ReverseProxy body buffers (HTTP/2)
	// pendings holds answered HTTP/1 requests' pending (and record) for
	// reuse, with ReuseRecords.
	pendings sync.Pool
	// held counts the HTTP/1 connection buffers (bufs) taken and not
	// yet given back.
	held atomic.Int64
}

// NewServer returns a Server for cfg.
func NewServer(cfg Config) *Server {
	s := &Server{cfg: cfg.withDefaults()}
	s.bufs.New = func() any { b := make([]byte, bufSize); return &b }
	s.copyBufs.New = func() any { b := make([]byte, 32<<10); return &b }
	return s
}

// connBuf is a read buffer over a connection. Its buffer comes from the
// server's pool and goes back whenever no byte is pending (idle), so an idle
// kept-alive connection holds no buffer: fill takes one again when bytes
// arrive (on a client connection, after the socket became readable).
type connBuf struct {
	conn net.Conn
	buf  []byte // nil while released
	r, w int
	max  int
	srv  *Server
	ptr  *[]byte // the pooled buffer held, or nil
	// raw, when set, is the connection's raw socket: fill on a released
	// buffer waits for readability without a buffer (see readIdle).
	raw syscall.RawConn
	// readFn, n and rerr: readIdle's callback and its results (kept here:
	// a closure per wait would be an allocation per request).
	readFn func(uintptr) bool
	n      int
	rerr   error
	// readTimeout, when set, bounds every read: setDeadline is called
	// with now+readTimeout before it.
	readTimeout time.Duration
	setDeadline func(time.Time)
}

// newConnBuf returns a connBuf over c with no buffer held yet.
func newConnBuf(srv *Server, c net.Conn, max int) *connBuf {
	return &connBuf{conn: c, max: max, srv: srv}
}

// acquire takes a pooled buffer.
func (b *connBuf) acquire() {
	b.ptr = b.srv.bufs.Get().(*[]byte)
	b.buf = *b.ptr
	b.srv.held.Add(1)
}

// release gives the buffer back (a grown one is dropped). Bytes still
// pending are lost: callers release idle buffers only (releaseIdle) or at
// the end of the connection.
func (b *connBuf) release() {
	if b.buf == nil {
		return
	}
	b.srv.held.Add(-1)
	if b.ptr != nil && cap(b.buf) == bufSize {
		b.srv.bufs.Put(b.ptr)
	}
	b.ptr, b.buf = nil, nil
	b.r, b.w = 0, 0
}

// releaseIdle gives the buffer back when no byte is pending.
func (b *connBuf) releaseIdle() {
	if b.r == b.w {
		b.release()
	}
}

func (b *connBuf) bytes() []byte { return b.buf[b.r:b.w] }

func (b *connBuf) consume(n int) {
	b.r += n
	if b.r == b.w {
		b.r, b.w = 0, 0
	}
}

// fill reads more bytes, compacting or growing the buffer (up to max).
func (b *connBuf) fill() error {
	if b.buf == nil {
		if b.readTimeout > 0 {
			b.setDeadline(time.Now().Add(b.readTimeout))
		}
		if b.raw != nil {
			return b.readIdle()
		}
		b.acquire()
	} else if b.w == len(b.buf) {
		if b.r > 0 {
			b.w = copy(b.buf, b.buf[b.r:b.w])
			b.r = 0
		} else {
			if len(b.buf) >= b.max {
				return errBufferFull
			}
			nb := make([]byte, min(2*len(b.buf), b.max))
			copy(nb, b.buf[:b.w])
			b.buf = nb
		}
	}
	if b.readTimeout > 0 {
		b.setDeadline(time.Now().Add(b.readTimeout))
	}
	n, err := b.conn.Read(b.buf[b.w:])
	b.w += n
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// readIdle reads into a buffer taken only once the socket has bytes (or
// EOF, or an error): the wait for readability holds none. It costs the
// system calls a plain Read costs (a read that finds nothing, the wait in
// the runtime's poller, the read), and honours the read deadline and a
// Close as Read does.
func (b *connBuf) readIdle() error {
	if b.readFn == nil {
		b.readFn = b.tryRead
	}
	b.n, b.rerr = 0, nil
	err := b.raw.Read(b.readFn)
	if err == nil && b.rerr != nil {
		err = &net.OpError{Op: "read", Net: "tcp", Addr: b.conn.RemoteAddr(), Err: os.NewSyscallError("read", b.rerr)}
	}
	if b.n > 0 {
		b.w = b.n
		return nil
	}
	b.release()
	if err == nil {
		err = io.EOF
	}
	return err
}

// tryRead is readIdle's non-blocking read: false (wait for readability)
// when the socket has nothing yet, with the buffer given back meanwhile.
func (b *connBuf) tryRead(fd uintptr) bool {
	if b.buf == nil {
		b.acquire()
	}
	for {
		b.n, b.rerr = syscall.Read(int(fd), b.buf)
		if b.rerr != syscall.EINTR {
			break
		}
	}
	if b.rerr == syscall.EAGAIN {
		b.release()
		return false
	}
	return true
}

var errBufferFull = errors.New("buffer full")

// pending is one response owed to the client, in request order.
type pending struct {
	local   []byte // a response we generate; nil: read it from upstream
	method  string
	close   bool // close the connection after this response
	record  *Record
	upgrade bool // the request asked to switch protocols
	// rec holds the record of an allowed or denied request (record
	// points to it), one allocation with the pending response.
	rec Record
	// switched receives true when the upstream answered an upgrade
	// request with 101, false otherwise.
	switched chan bool
	// last: the connection's last request, with no body to forward (the
	// request side ends right after enqueueing it): when no response
	// goroutine runs, run answers it on the connection's goroutine
	// instead of starting one.
	last bool
}

// ServeConn proxies one client connection: HTTP/1.1, HTTP/2 with prior
// knowledge (gRPC included) or HTTP/1.1 upgraded to h2c on its first
// request. The upstream, which dial opens on the first allowed request, is
// spoken to in the client's protocol (HTTP/1.1 after an h2c upgrade).
// It returns when either side is done and closes both. access, when set,
// receives one record per request.
// A panic while serving ends the connection: ServeConn returns a
// PanicError.
func (srv *Server) ServeConn(ctx context.Context, client net.Conn, dial Dialer, decide Decider, access func(*Record)) error {
	var err error
	srv.serve(ctx, client, dial, decide, access, false, func(e error) { err = e })
	return err
}

// Serve is ServeConn for a caller that lets idle HTTP/1 connections park
// (Config.Poller): it returns once the connection ended or parked, and
// done receives what ServeConn would return, exactly once, when the
// connection ended: before Serve returns, or later on a goroutine the
// poller started (the connection resumed there). A parked connection
// holds no goroutine. HTTP/2 connections with prior knowledge park too
// (with no stream open); h2c upgrades and Config.LegacyHTTP2 do not.
func (srv *Server) Serve(ctx context.Context, client net.Conn, dial Dialer, decide Decider, access func(*Record), done func(error)) {
	srv.serve(ctx, client, dial, decide, access, srv.cfg.Poller != nil, done)
}

// serve runs the connection until it ends (then done) or parks.
func (srv *Server) serve(ctx context.Context, client net.Conn, dial Dialer, decide Decider, access func(*Record), park bool, done func(error)) {
	// Cancelling ctx ends the connection: unblock both directions (one
	// registration on ctx per connection: the HTTP/1 session's upstream
	// is closed from here too, and a parked one is handed back).
	var sess atomic.Pointer[session]
	stop := context.AfterFunc(ctx, func() {
		client.Close()
		if s := sess.Load(); s != nil {
			s.closeUpstream()
			s.wake()
		}
	})
	end := func(err error) {
		stop()
		client.Close()
		done(err)
	}
	var parked parker
	var err error
	defer func() {
		if v := recover(); v != nil {
			parked, err = nil, newPanicError(v)
		}
		if parked != nil {
			// the last use of the connection on this goroutine
			parked.parkWith(end)
			return
		}
		end(err)
	}()
	parked, err = srv.serveConn(ctx, client, &sess, dial, decide, access, park)
}

// serveConn is ServeConn's body; it returns the connection when it parked.
func (srv *Server) serveConn(ctx context.Context, client net.Conn, sess *atomic.Pointer[session], dial Dialer, decide Decider, access func(*Record), park bool) (parker, error) {
	cfg := srv.cfg
	// The first bytes are read into the HTTP/1 request buffer: HTTP/1
	// goes on with them in place; HTTP/2 replays a copy.
	in := newConnBuf(srv, client, cfg.Limits.MaxHeaderBytes+bufSize)
	first, err := sniff(client, cfg.HeaderTimeout, in)
	if len(first) == 0 || bytes.HasPrefix(first, []byte("PRI ")) {
		// (copied before the buffer goes back: another connection may
		// take it and read into it at once)
		first = bytes.Clone(first)
		in.release()
		if len(first) == 0 && err != nil && !isClosed(err) && !isTimeout(err) {
			return nil, err
		}
		// PRI: a full HTTP/2 preface, or a broken one (PRI is no
		// HTTP/1.1 method) which gets closed below.
		if len(first) == 0 {
			return nil, nil
		}
	}
	if bytes.HasPrefix(first, []byte(h2Preface)) {
		conn := &prefixConn{Conn: client, prefix: first}
		if cfg.LegacyHTTP2 {
			return nil, srv.serveH2(ctx, conn, dial, decide, access)
		}
		return srv.serveH2Frames(ctx, conn, dial, decide, access, park)
	}
	if bytes.HasPrefix(first, []byte("PRI ")) {
		// A broken HTTP/2 preface (PRI is no HTTP/1.1 method): close, as
		// an HTTP/2 endpoint does (RFC 9113 §3.4), rather than answer in
		// HTTP/1.1.
		return nil, nil
	}
	handoff, parked, err := srv.serveHTTP1(ctx, client, in, sess, dial, decide, access, park)
	if parked != nil {
		return parked, nil
	}
	if handoff != nil {
		return nil, srv.serveH2CUpgrade(ctx, &prefixConn{Conn: client, prefix: handoff}, dial, decide, access)
	}
	return nil, err
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// serveHTTP1 runs the HTTP/1.1 session. When the first request asks for an
// h2c upgrade it stops before answering and returns the bytes read so far.
// ServeConn's cancellation closes the client and, through sess, the
// session's upstream. With park, an idle session may park: it is
// returned, to be handed to the poller, and resumes on another goroutine
// (session.resume).
func (srv *Server) serveHTTP1(ctx context.Context, client net.Conn, in *connBuf, sess *atomic.Pointer[session], dial Dialer, decide Decider, access func(*Record), park bool) ([]byte, *session, error) {
	s := &session{srv: srv, cfg: &srv.cfg, client: client, in: in, dial: dial, decide: decide, access: access,
		done: make(chan struct{})}
	if park {
		s.ctx, s.park = ctx, true
		if sc, ok := client.(syscall.Conn); ok {
			s.pk.raw, _ = sc.SyscallConn()
		}
		s.park = s.pk.raw != nil
		s.pk.resume = s.resume
	}
	sess.Store(s)
	// (A ctx cancelled before that closed the client: the session's
	// first read or write fails, and a dial on ctx fails at once.)
	s.stopDrain = func() bool { return false }
	if d := srv.cfg.Drain; d != nil {
		s.stopDrain = context.AfterFunc(d, s.startDrain)
	}
	err := s.run(ctx)
	if err == errPark {
		return nil, s, nil
	}
	s.stopDrain()
	if errors.Is(err, errH2CUpgrade) {
		return s.handoff, nil, nil
	}
	return nil, nil, err
}

// errPark: the session's request side is idle and parks (its goroutine
// returns; resume goes on).
var errPark = errors.New("park")

// resume goes on with a parked session on a goroutine the poller started,
// and ends the connection (endConn) or parks it again.
func (s *session) resume() {
	poller := s.srv.cfg.Poller
	poller.unregister(&s.pk)
	var err error
	parked := false
	defer func() {
		if v := recover(); v != nil {
			// (the request side recovers its own: this is the session's
			// end, or the poller's)
			parked, err = false, newPanicError(v)
			s.client.Close()
			s.closeUpstream()
		}
		if parked {
			poller.park(&s.pk, s.idleDeadline)
			return
		}
		s.stopDrain()
		s.endConn(err)
	}()
	s.resumed = true
	err = s.run(s.ctx)
	parked = err == errPark
}

// wake hands a parked session back to a goroutine (a drain, or the end
// of its context), or makes its next park do so at once.
func (s *session) wake() {
	if s.park {
		s.srv.cfg.Poller.wake(&s.pk)
	}
}

// parkable reports that the session may park once idle for the poller's
// delay: the request side waits for a next request (called then), no
// response is owed and the upstream sent nothing more.
func (s *session) parkable() bool {
	if !s.park || s.in.raw == nil || !s.noneOwed() {
		return false
	}
	s.upMu.Lock()
	defer s.upMu.Unlock()
	return s.upBuf == nil || len(s.upBuf.bytes()) == 0
}

// lingerEnd decides what a session that waited idle for the poller's
// delay (with no byte come) does: park, end (stopped, draining and idle
// for drainIdleGrace, or its idle deadline passed), or wait again (a
// response is still being written, or draining: the deadline is set for
// another delay, or the grace's end).
func (s *session) lingerEnd() (park, wait bool) {
	s.dlMu.Lock()
	defer s.dlMu.Unlock()
	now := time.Now()
	if s.stopped || !now.Before(s.idleDeadline) || s.ctx.Err() != nil {
		return false, false
	}
	deadline := now.Add(s.srv.cfg.Poller.delay)
	if s.draining.Load() {
		// closed once idle for drainIdleGrace, as any idle session
		grace := s.idleSince.Add(drainIdleGrace)
		if !now.Before(grace) {
			return false, false
		}
		deadline = grace
	} else if s.parkable() {
		return true, false
	}
	if s.idleDeadline.Before(deadline) {
		deadline = s.idleDeadline
	}
	s.client.SetReadDeadline(deadline)
	return false, true
}

// resumeWait sets the deadline of a resumed session's wait for the next
// request: its idle deadline, when draining drainIdleGrace after the idle
// wait began (passed, mostly: a drain wakes a parked session then), now
// when stopped.
func (s *session) resumeWait() {
	s.dlMu.Lock()
	defer s.dlMu.Unlock()
	s.idle = true
	deadline := s.idleDeadline
	if grace := s.idleSince.Add(drainIdleGrace); s.draining.Load() && grace.Before(deadline) {
		deadline = grace
	}
	if s.stopped {
		deadline = time.Now()
	}
	s.client.SetReadDeadline(deadline)
}

// pipelineDepth bounds the responses a connection owes at once: a client
// that pipelines more requests waits (its bytes stay in the socket) until
// the first are answered. Small: the queue is allocated per connection.
const pipelineDepth = 32

type session struct {
	srv    *Server
	cfg    *Config // the server's
	client net.Conn
	in     *connBuf // the client's bytes (ServeConn read the first ones)
	dial   Dialer
	decide Decider
	access func(*Record)

	upMu     sync.Mutex
	upstream net.Conn
	upBuf    *connBuf

	queue chan *pending // (made by the first enqueue, with respErr)
	done  chan struct{} // closed when the response side stops
	// respMu guards respRunning (a response goroutine runs: see enqueue)
	// and queueClosed; respErr receives the response side's end.
	respMu      sync.Mutex
	respRunning bool
	queueClosed bool
	// respLater: a last request (pending.last) is owed and no response
	// goroutine was started for it: run answers it (guarded by respMu).
	respLater bool
	respErr   chan error
	// respFields is the response head parser's scratch, kept across the
	// response goroutines of a connection.
	respFields []Header
	// exchangeFields and exchangeHead: the same for responses the request
	// side answers itself (exchange).
	exchangeFields []Header
	exchangeHead   ResponseHead

	dlMu    sync.Mutex
	stopped bool // the response side closed the client
	// idle: the request side waits for the first byte of a next request
	// (guarded by dlMu); draining is set when Config.Drain ends (written
	// under dlMu).
	idle     bool
	draining atomic.Bool

	// handoff holds the bytes of an h2c upgrade request (and anything
	// after it) for the HTTP/2 path.
	handoff []byte
	// scratch holds rewritten request heads.
	scratch []byte
	// host is the Host of the last request recorded (a connection's
	// requests mostly name one: recorded without a copy each).
	host string

	// Parking (Server.Serve with a Poller): park is set when the session
	// may park; pk is its poller entry; ctx is ServeConn's; stopDrain
	// ends the drain registration and endConn the connection once the
	// session is done. started: the request side ran before (a resumed
	// one goes on); resumed: it goes on waiting for a next request until
	// idleDeadline (lingering: it waits the poller's delay first, then
	// parks).
	park         bool
	pk           parkedConn
	ctx          context.Context
	stopDrain    func() bool
	endConn      func(error)
	started      bool
	resumed      bool
	lingering    bool
	idleDeadline time.Time
	// idleSince: when the last wait for a next request began (guarded by
	// dlMu).
	idleSince time.Time
}

// hostString returns b as a string, the previous request's when equal.
func (s *session) hostString(b []byte) string {
	if str(b) != s.host {
		s.host = string(b)
	}
	return s.host
}

// methodString returns a method as a string without allocating for the
// registered methods (RFC 9110 §9 and PATCH).
func methodString(b []byte) string {
	switch string(b) {
	case "GET":
		return "GET"
	case "POST":
		return "POST"
	case "PUT":
		return "PUT"
	case "DELETE":
		return "DELETE"
	case "HEAD":
		return "HEAD"
	case "OPTIONS":
		return "OPTIONS"
	case "PATCH":
		return "PATCH"
	case "CONNECT":
		return "CONNECT"
	case "TRACE":
		return "TRACE"
	}
	return string(b)
}

var errH2CUpgrade = errors.New("h2c upgrade")

// setReadDeadline sets the client read deadline unless the response side
// has already ended the connection (then reads must fail at once).
func (s *session) setReadDeadline(t time.Time) {
	s.dlMu.Lock()
	defer s.dlMu.Unlock()
	if s.stopped {
		t = time.Now()
	}
	s.client.SetReadDeadline(t)
}

// drainIdleGrace is how long a draining HTTP/1.1 connection may stay
// idle before it is closed. A client that sends its next request within
// it gets the response with "Connection: close" instead: only connections
// idle that long are closed under a client (which then may race a request
// with the close; net/http retries idempotent ones).
const drainIdleGrace = time.Second

// startDrain marks the session draining and, when it waits idle for a
// next request, shortens that wait to drainIdleGrace.
//
// A parked session is handed back (and closed) once idle for
// drainIdleGrace: at once if it was idle that long, else when it will
// have been (the poller's deadline, no goroutine meanwhile).
func (s *session) startDrain() {
	s.dlMu.Lock()
	s.draining.Store(true)
	if s.idle && !s.stopped {
		s.client.SetReadDeadline(time.Now().Add(drainIdleGrace))
	}
	closeAt := s.idleSince.Add(drainIdleGrace)
	s.dlMu.Unlock()
	if s.park {
		s.srv.cfg.Poller.wakeAt(&s.pk, closeAt)
	}
}

// awaitNext sets the deadline for the wait for a next request (at most
// drainIdleGrace when draining) and marks the session idle.
func (s *session) awaitNext(deadline time.Time) {
	s.dlMu.Lock()
	defer s.dlMu.Unlock()
	if s.draining.Load() {
		if grace := time.Now().Add(drainIdleGrace); grace.Before(deadline) {
			deadline = grace
		}
	}
	s.idle = true
	s.idleSince = time.Now()
	if s.stopped {
		deadline = time.Now()
	}
	s.client.SetReadDeadline(deadline)
}

// busy marks the session as reading a request (a drain no longer closes
// it before that request is answered).
func (s *session) busy() {
	s.dlMu.Lock()
	s.idle = false
	s.dlMu.Unlock()
}

func (s *session) run(ctx context.Context) error {
	reqErr := s.safeRequests(ctx)
	if reqErr == errPark {
		return reqErr
	}
	s.respMu.Lock()
	if s.queue != nil {
		close(s.queue)
	}
	s.queueClosed = true
	responder, later := s.respRunning, s.respLater
	s.respMu.Unlock()
	if reqErr != nil && !errors.Is(reqErr, errStop) {
		// The request stream broke (a malformed body, the client gone
		// mid-request): the upstream may be mid-message, so abandon it;
		// the response side then answers 502 if it had not started.
		s.upMu.Lock()
		if s.upstream != nil {
			s.upstream.Close()
		}
		s.upMu.Unlock()
	}
	var err error
	switch {
	case responder:
		err = <-s.respErr
	case later:
		err = s.respondHere()
	default:
		close(s.done) // nothing was owed: the response side is done
	}
	s.upMu.Lock()
	if s.upstream != nil {
		s.upstream.Close()
	}
	if s.upBuf != nil {
		s.upBuf.release()
	}
	s.upMu.Unlock()
	if errors.Is(reqErr, errH2CUpgrade) {
		return reqErr
	}
	var pe *PanicError
	if errors.As(reqErr, &pe) || errors.As(err, &pe) {
		return pe
	}
	if reqErr != nil && !isClosed(reqErr) {
		return reqErr
	}
	if err != nil && !isClosed(err) {
		return err
	}
	return nil
}

// PanicError is what ServeConn returns when handling a connection
// panicked: the connection was closed and the process goes on. The caller
// logs and counts it.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string { return fmt.Sprintf("panic serving connection: %v", e.Value) }

func newPanicError(v any) *PanicError { return &PanicError{Value: v, Stack: debug.Stack()} }

// safeRequests runs the request side and turns a panic into an error, so
// that run still ends the response side and closes the upstream.
func (s *session) safeRequests(ctx context.Context) (err error) {
	defer func() {
		if v := recover(); v != nil {
			s.closeClient()
			s.client.Close()
			err = newPanicError(v)
		}
	}()
	return s.requests(ctx)
}

func isClosed(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, errStop)
}

var errStop = errors.New("stop")

// enqueue hands a pending response to the response side, starting its
// goroutine if none runs: it runs only while responses are owed, so an
// idle connection has the request side's goroutine alone.
func (s *session) enqueue(p *pending) bool {
	if s.queue == nil {
		// (first needed: a connection whose requests were all answered
		// by exchange, or that is parked, holds neither)
		s.queue, s.respErr = make(chan *pending, pipelineDepth), make(chan error, 1)
	}
	select {
	case s.queue <- p:
	case <-s.done:
		return false
	}
	s.respMu.Lock()
	if !s.respRunning && !s.respLater {
		if p.last || p.local != nil && p.close {
			// nothing to stream after it: the request side ends
			// now, and run answers (a goroutine fewer per
			// connection with "Connection: close")
			s.respLater = true
		} else {
			s.respRunning = true
			go s.respond()
		}
	}
	s.respMu.Unlock()
	return true
}

// respondHere runs the response side on the caller's goroutine once the
// request side has ended (see pending.last), a panic turned into an error
// as respond does.
func (s *session) respondHere() (err error) {
	defer func() {
		if v := recover(); v != nil {
			s.closeClient()
			err = newPanicError(v)
		}
	}()
	err, _ = s.responses() // the queue is closed: never idle
	return err
}

// respond runs the response side until no response is owed (then it
// ends, and the next enqueue starts another) or the side stops (its error
// goes to respErr, and no other starts: done is closed).
func (s *session) respond() {
	defer func() {
		if v := recover(); v != nil {
			s.closeClient()
			s.respErr <- newPanicError(v)
		}
	}()
	err, idle := s.responses()
	if !idle {
		s.respErr <- err
	}
}

// nextOwed returns the next pending response, or idle when none is owed
// (respRunning cleared: the caller ends, its response head scratch fields
// kept for the next response goroutine), or ok false when the queue was
// closed and drained.
func (s *session) nextOwed(fields []Header) (p *pending, ok, idle bool) {
	select {
	case p, ok = <-s.queue:
		return p, ok, false
	default:
	}
	s.respMu.Lock()
	if len(s.queue) == 0 && !s.queueClosed {
		// (before respRunning is cleared: the next response goroutine,
		// started once it is, reads them; cleared, as they point into
		// upBuf, given back while idle)
		s.respFields = clearHeaders(fields)
		s.respRunning = false
		s.respMu.Unlock()
		return nil, false, true
	}
	s.respMu.Unlock()
	p, ok = <-s.queue
	return p, ok, false
}

// localResponse renders a response we generate.
func localResponse(status int, body string, keepAlive bool, extra string) []byte {
	b := make([]byte, 0, 160+len(body))
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, ' ')
	b = append(b, statusText(status)...)
	b = append(b, "\r\nContent-Type: text/plain\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	b = append(b, "\r\n"...)
	b = append(b, extra...)
	if !keepAlive {
		b = append(b, "Connection: close\r\n"...)
	}
	b = append(b, "\r\n"...)
	return append(b, body...)
}

func statusText(code int) string {
	switch code {
	case 400:
		return "Bad Request"
	case 403:
		return "Forbidden"
	case 408:
		return "Request Timeout"
	case 414:
		return "URI Too Long"
	case 431:
		return "Request Header Fields Too Large"
	case 501:
		return "Not Implemented"
	case 502:
		return "Bad Gateway"
	case 503:
		return "Service Unavailable"
	case 505:
		return "HTTP Version Not Supported"
	}
	return "Error"
}

// str views b as a string without copying; valid while b is unchanged.
func str(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

func (s *session) requests(ctx context.Context) error {
	in := s.in
	first := !s.started
	if first {
		s.started = true
		in.setDeadline = s.setReadDeadline
		if sc, ok := s.client.(syscall.Conn); ok {
			in.raw, _ = sc.SyscallConn()
		}
	}
	defer in.release()
	var head RequestHead
	req := policy.HTTPRequest{}
	for {
		if s.resumed {
			// Handed back by the poller: go on waiting for the next
			// request (bytes, a hang-up, the idle deadline, or a drain).
			s.resumed, s.lingering = false, false
			s.resumeWait()
		} else {
			// Wait for the next request: idle timeout before its first byte,
			// header timeout for the whole head.
			idle := s.cfg.IdleTimeout
			if first {
				idle = s.cfg.HeaderTimeout
			}
			in.readTimeout = 0
			if first || len(in.bytes()) > 0 {
				s.setReadDeadline(time.Now().Add(idle))
			} else {
				deadline := time.Now().Add(idle)
				// Wait the poller's delay here, then park (see the read's
				// timeout below).
				s.lingering = s.park && in.raw != nil
				if s.lingering {
					s.idleDeadline = deadline
					if d := time.Now().Add(s.srv.cfg.Poller.delay); d.Before(deadline) {
						deadline = d
					}
				}
				s.awaitNext(deadline)
				// Idle: the wait for the next request holds no buffer, nor
				// the last request's head and decider view, which point
				// into one (given back, the pool may drop it: an idle
				// connection must not keep it alive).
				in.releaseIdle()
				s.forget(&head, &req)
			}
		}
		headStarted := false
		// headDeadline: the head's first bytes came with a read whose
		// deadline was the idle one; the header timeout (from that read)
		// is set only if the head needs another read (a head that came
		// in one read, the common case, costs no deadline change).
		var headDeadline time.Time
		var err error
		for {
			if len(in.bytes()) > 0 {
				err = ParseRequestHead(in.bytes(), s.cfg.Limits, &head)
				if err != ErrIncomplete {
					break
				}
			}
			if len(in.bytes()) > 0 && !headStarted {
				headStarted = true
				s.busy()
				s.setReadDeadline(time.Now().Add(s.cfg.HeaderTimeout))
			}
			if !headDeadline.IsZero() {
				s.setReadDeadline(headDeadline)
				headDeadline = time.Time{}
			}
			if ferr := in.fill(); ferr != nil {
				if len(in.bytes()) == 0 {
					if s.lingering && isTimeout(ferr) {
						park, wait := s.lingerEnd()
						if park {
							return errPark // (its head and decider view dropped)
						}
						if wait {
							continue
						}
					}
					return nil // clean close between requests (idle timeout, or a drain)
				}
				var ne net.Error
				if errors.As(ferr, &ne) && ne.Timeout() {
					s.enqueue(&pending{local: localResponse(408, "Request Timeout", false, ""), close: true,
						record: &Record{Start: time.Now(), Status: 408, Error: "request head timeout"}})
					return errStop
				}
				return ferr
			}
			if !headStarted {
				headStarted = true
				s.lingering = false
				s.busy()
				headDeadline = time.Now().Add(s.cfg.HeaderTimeout)
			}
		}
		isFirst := first
		first = false
		start := time.Now()
		var target, path string
		if err == nil {
			// Decide on what the backend will see: the normalized target.
			target = str(head.Target)
			path, err = policy.NormalizeRequestTarget(target, s.cfg.EscapedSlashes)
		}
		if err != nil {
			var pe *ParseError
			var pathErr *policy.PathError
			status, reason := 400, err.Error()
			if errors.As(err, &pe) {
				status, reason = pe.Status, pe.Reason
			} else if errors.As(err, &pathErr) {
				reason = pathErr.Error()
			}
			s.cfg.Logger.Debug("rejecting malformed request", "status", status, "reason", reason, "client", s.client.RemoteAddr())
			rec := &Record{Start: start, Status: status, Error: reason}
			if pathErr != nil {
				rec.Method, rec.RawPath, rec.Host = string(head.Method), string(head.Target), string(head.Host)
			}
			s.enqueue(&pending{local: localResponse(status, statusText(status), false, ""), close: true, record: rec})
			return errStop
		}
		// The head's deadline stays: every later read of the client sets
		// its own (a body's reads, the wait for the next request), and the
		// paths that give the client to something else (an upgrade's
		// tunnel, the h2c hand-off) clear it.

		host := head.Host
		if head.Absolute {
			host = head.Authority
		}
		req.Method, req.Path, req.Host = str(head.Method), path, str(host)
		req.Headers = req.Headers[:0]
		for _, h := range head.Headers {
			req.Headers = append(req.Headers, policy.HTTPHeader{Name: str(h.Name), Value: str(h.Value)})
		}
		if s.cfg.OnRequest != nil {
			s.cfg.OnRequest(&req)
		}
		d := s.decide(&req)
		method := methodString(head.Method)
		p := s.newPending(method)
		var rec *Record
		if s.access != nil {
			p.rec = Record{Start: start, Method: method, Path: strings.Clone(path), Host: s.hostString(host),
				Allowed: d.Allowed, DecidedBy: d.DecidedBy}
			rec = &p.rec
			if path != target {
				rec.RawPath = string(head.Target)
			}
		}
		var rw headRewrite
		if path != target {
			rw.target = path
		}
		if d.Allowed && len(d.MismatchActions) > 0 {
			edits, logs, err := planHeaderActions(d.MismatchActions, func(name string) (string, bool) { return requestHeader(&req, name) })
			if err != nil {
				d.Allowed = false
				if rec != nil {
					rec.Allowed, rec.Error = false, err.Error()
				}
			} else {
				rw.edits = edits
				if rec != nil {
					rec.HeaderMismatches = logs
				}
			}
		}
		if !d.Allowed {
			// Answer in order; the body is read and dropped so the
			// connection stays usable, unless the client is waiting for
			// 100-continue (then we close after the answer).
			// A draining connection ends with this answer (said with
			// "Connection: close"), as an allowed request's does.
			keep := head.KeepAlive && !(head.Expect100 && head.Framing != FramingNone) && !s.draining.Load()
			if rec != nil {
				rec.Status = 403
			}
			p.local, p.close, p.record = localResponse(403, "Access denied", keep, ""), !keep, rec
			if !s.enqueue(p) {
				return errStop
			}
			in.consume(head.Size)
			if !keep {
				return errStop
			}
			in.readTimeout = s.cfg.BodyTimeout
			if err := s.discardBody(in, &head); err != nil {
				return err
			}
			continue
		}
		upgrade := head.Upgrade != nil
		if upgrade && isFirst && hasToken(head.Upgrade, "h2c") &&
			(head.Framing == FramingNone || head.Framing == FramingLength && head.Length <= s.cfg.MaxH2CUpgradeBody) {
			// Hand the connection to the HTTP/2 path, which answers the
			// upgrade and applies policy to this request and the rest. The
			// upgrade buffers the request body, hence the bound.
			s.handoff = append([]byte(nil), in.bytes()...)
			s.setReadDeadline(time.Time{})
			return errH2CUpgrade
		}
		if upgrade && !onlyToken(head.Upgrade, "websocket") {
			// Only WebSocket becomes a tunnel (as in Envoy mode). Any other
			// protocol switch (h2c after the first request or with a large
			// body, TLS, anything unknown) would carry bytes this parser
			// cannot see: the request is forwarded without Upgrade, which
			// a server may always ignore (RFC 9110 §7.8).
			rw.stripUpgrade = true
			upgrade = false
		}
		up, err := s.upstreamConn(ctx)
		if err != nil {
			s.cfg.Logger.Debug("upstream unavailable", "error", err)
			if rec != nil {
				rec.Status, rec.Error = 503, err.Error()
			}
			p.local, p.close, p.record = localResponse(503, "upstream connect error", false, ""), true, rec
			s.enqueue(p)
			return errStop
		}
		closeAfter := !head.KeepAlive
		p.close, p.record, p.upgrade = closeAfter, rec, upgrade
		// (a body is streamed while its response may already come; a
		// draining session's request side ends after this one too, but
		// is left as it was)
		p.last = closeAfter && !upgrade && head.Framing == FramingNone
		if !upgrade && head.Framing == FramingNone && s.noneOwed() {
			// No response is owed before this one and the request has no
			// body: its response is read and written here, on the request
			// side's goroutine, with no response goroutine started (and
			// ended) per request, the common keep-alive exchange. A
			// request pipelined behind it waits until it is answered.
			err := s.exchange(up, in, &head, &rw, p)
			s.reuse(p) // answered and recorded: no one holds it
			if err != nil {
				return err
			}
			continue
		}
		if upgrade {
			p.switched = make(chan bool, 1)
		}
		if !s.enqueue(p) {
			return errStop
		}
		var newHead []byte
		if rw.needed() {
			s.scratch = rw.appendTo(s.scratch[:0], &head)
			newHead = s.scratch
		}
		in.readTimeout = s.cfg.BodyTimeout
		err = writeMessageHead(up, in, newHead, head.Size, head.Framing, head.Length)
		in.readTimeout = 0
		if newHead != nil {
			s.scratch = newHead[:0]
		}
		if err != nil {
			return fmt.Errorf("forward request: %w", err)
		}
		if upgrade {
			select {
			case ok := <-p.switched:
				if ok {
					// After 101 the connection is a WebSocket tunnel.
					s.setReadDeadline(time.Time{})
					if b := in.bytes(); len(b) > 0 {
						if _, err := up.Write(b); err != nil {
							return err
						}
						in.consume(len(b))
					}
					_, err := io.Copy(up, s.client)
					if cw, ok := up.(interface{ CloseWrite() error }); ok {
						cw.CloseWrite()
					}
					return err
				}
			case <-s.done:
				return errStop
			}
		}
		if closeAfter || s.draining.Load() {
			// Draining: the response side adds "Connection: close" to this
			// request's response and ends the connection after it.
			return errStop
		}
	}
}

// newPending returns a pending request for method: a reused one, with
// ReuseRecords.
func (s *session) newPending(method string) *pending {
	if s.cfg.ReuseRecords {
		if p, _ := s.srv.pendings.Get().(*pending); p != nil {
			p.method = method
			return p
		}
	}
	return &pending{method: method}
}

// reuse gives back a pending request the request side answered itself
// (exchange: never queued, its record handed to access, which with
// ReuseRecords keeps none), cleared.
func (s *session) reuse(p *pending) {
	if !s.cfg.ReuseRecords || p.switched != nil {
		return
	}
	*p = pending{}
	s.srv.pendings.Put(p)
}

// forget clears what points into the connection's buffers once they were
// given back: the last request's head and decider view, and the last
// response head the request side read (exchange). Header slices keep
// their capacity, every entry up to it cleared (a longer earlier message
// may have set those past the last one's).
func (s *session) forget(head *RequestHead, req *policy.HTTPRequest) {
	*head = RequestHead{Headers: clearHeaders(head.Headers)}
	rh := req.Headers[:cap(req.Headers)]
	clear(rh)
	*req = policy.HTTPRequest{Headers: rh[:0]}
	s.exchangeFields = clearHeaders(s.exchangeFields)
	s.exchangeHead = ResponseHead{}
}

// clearHeaders returns h emptied, its entries up to its capacity zeroed.
func clearHeaders(h []Header) []Header {
	h = h[:cap(h)]
	clear(h)
	return h[:0]
}

// noneOwed reports that no response is owed to the client (so none is
// written but by the caller, the request side).
func (s *session) noneOwed() bool {
	s.respMu.Lock()
	defer s.respMu.Unlock()
	return !s.respRunning && !s.respLater
}

// exchange forwards a request without a body (head, rewritten by rw) to
// up and answers it with the upstream's response, on the request side's
// goroutine: only when noneOwed. A nil error means the connection goes
// on (errStop: it ended after this response).
func (s *session) exchange(up net.Conn, in *connBuf, head *RequestHead, rw *headRewrite, p *pending) error {
	var newHead []byte
	if rw.needed() {
		s.scratch = rw.appendTo(s.scratch[:0], head)
		newHead = s.scratch
	}
	werr := writeMessageHead(up, in, newHead, head.Size, FramingNone, 0)
	if newHead != nil {
		s.scratch = newHead[:0]
	}
	if werr != nil {
		// as when the response side reads while the request side fails:
		// the upstream is abandoned, the client answered 502 (unless a
		// response came already) and the request recorded
		s.closeUpstream()
	}
	fields, stop, err := s.answer(p, s.exchangeFields, &s.exchangeHead)
	s.exchangeFields = fields[:0]
	if werr != nil {
		return fmt.Errorf("forward request: %w", werr)
	}
	if stop {
		if err == nil {
			err = errStop
		}
		return err
	}
	if s.draining.Load() {
		return errStop // (answer said "Connection: close" and stopped)
	}
	return nil
}

// closeUpstream closes the upstream connection, if one is open.
func (s *session) closeUpstream() {
	s.upMu.Lock()
	if s.upstream != nil {
		s.upstream.Close()
	}
	s.upMu.Unlock()
}

func (s *session) upstreamConn(ctx context.Context) (net.Conn, error) {
	s.upMu.Lock()
	defer s.upMu.Unlock()
	if s.upstream != nil {
		return s.upstream, nil
	}
	dctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
	defer cancel()
	c, err := s.dial(dctx)
	if err != nil {
		return nil, err
	}
	s.upstream = c
	s.upBuf = newConnBuf(s.srv, c, s.cfg.Limits.MaxHeaderBytes+bufSize)
	return c, nil
}

// forwardBody copies a request body to the upstream.
func (s *session) forwardBody(in *connBuf, up net.Conn, framing Framing, length int64) error {
	switch framing {
	case FramingLength:
		return copyLength(up, in, length)
	case FramingChunked:
		return copyChunked(up, in)
	}
	return nil
}

func (s *session) discardBody(in *connBuf, head *RequestHead) error {
	return s.forwardBody(in, discardConn{}, head.Framing, head.Length)
}

type discardConn struct{ net.Conn }

func (discardConn) Write(p []byte) (int, error) { return len(p), nil }

// copyLength copies exactly n body bytes from in (buffer first) to w.
func copyLength(w io.Writer, in *connBuf, n int64) error {
	for n > 0 {
		if len(in.bytes()) == 0 {
			if err := in.fill(); err != nil {
				if err == io.EOF {
					return io.ErrUnexpectedEOF
				}
				return err
			}
		}
		b := in.bytes()
		if int64(len(b)) > n {
			b = b[:n]
		}
		if _, err := w.Write(b); err != nil {
			return err
		}
		in.consume(len(b))
		n -= int64(len(b))
	}
	return nil
}

// copyChunked copies a chunked body, validating its framing.
func copyChunked(w io.Writer, in *connBuf) error {
	return copyChunkedFrom(w, in, &chunkedScanner{})
}

// copyChunkedFrom continues a chunked body whose start sc has seen.
func copyChunkedFrom(w io.Writer, in *connBuf, sc *chunkedScanner) error {
	for {
		if len(in.bytes()) == 0 {
			if err := in.fill(); err != nil {
				if err == io.EOF {
					return io.ErrUnexpectedEOF
				}
				return err
			}
		}
		b := in.bytes()
		n, done, err := sc.scan(b)
		if n > 0 {
			if _, werr := w.Write(b[:n]); werr != nil {
				return werr
			}
			in.consume(n)
		}
		if err != nil {
			return fmt.Errorf("request body: %w", err)
		}
		if done {
			return nil
		}
	}
}

// responses writes the responses owed to the client in request order:
// generated ones directly, upstream ones as they arrive.
func (s *session) responses() (_ error, idle bool) {
	defer func() {
		if !idle {
			close(s.done)
		}
	}()
	fields := s.respFields
	var rh ResponseHead
	for {
		p, ok, wait := s.nextOwed(fields)
		if wait {
			return nil, true
		}
		if !ok {
			return nil, false
		}
		if p.local != nil {
			_, err := s.client.Write(p.local)
			s.finish(p, err)
			if err != nil || p.close {
				s.closeClient()
				return errStop, false
			}
			continue
		}
		var stop bool
		var err error
		fields, stop, err = s.answer(p, fields, &rh)
		if stop {
			return err, false
		}
	}
}

// answer writes the upstream's response to p (1xx responses first) to
// the client. stop reports that the response side ends here (err says
// why: errStop after closing the client, a write error, or a tunnel's
// end); fields is the response head parser's scratch.
func (s *session) answer(p *pending, fields []Header, rh *ResponseHead) (_ []Header, stop bool, _ error) {
	s.upMu.Lock()
	up := s.upBuf
	s.upMu.Unlock()
	wrote := false
	for {
		var err error
		for {
			if len(up.bytes()) > 0 {
				fields, err = ParseResponseHead(up.bytes(), []byte(p.method), s.cfg.Limits, fields, rh)
				if err != ErrIncomplete {
					break
				}
			}
			if ferr := up.fill(); ferr != nil {
				err = fmt.Errorf("upstream closed before the response: %w", ferr)
				break
			}
		}
		if err != nil {
			if !wrote {
				s.client.Write(localResponse(502, "upstream protocol error", false, ""))
				if p.record != nil {
					p.record.Status = 502
				}
			}
			s.finish(p, err)
			s.closeClient()
			return fields, true, errStop
		}
		if rh.Status >= 200 {
			break // the final response: written with its body below
		}
		if _, err := s.client.Write(up.bytes()[:rh.Size]); err != nil {
			s.finish(p, err)
			return fields, true, err
		}
		wrote = true
		up.consume(rh.Size)
		if rh.Status == 101 {
			if !p.upgrade || !onlyToken(rh.Upgrade, "websocket") {
				// Only a WebSocket upgrade was forwarded; a switch to
				// anything else would be a tunnel policy never allowed.
				s.finish(p, fmt.Errorf("101 response switching to %q: only websocket upgrades are forwarded", rh.Upgrade))
				s.closeClient()
				return fields, true, errStop
			}
			if p.record != nil {
				p.record.Status = 101
			}
			s.finish(p, nil)
			p.switched <- true
			if b := up.bytes(); len(b) > 0 {
				if _, err := s.client.Write(b); err != nil {
					return fields, true, err
				}
				up.consume(len(b))
			}
			_, err := io.Copy(s.client, up.conn)
			if cw, ok := s.client.(interface{ CloseWrite() error }); ok {
				cw.CloseWrite()
			}
			return fields, true, err
		}
		// 100 Continue, 103 Early Hints: the final response follows
	}
	var err error
	if rh.Framing == FramingClose {
		if b := up.bytes(); len(b) > 0 {
			if _, err = s.client.Write(b); err == nil {
				up.consume(len(b))
			}
		}
		if err == nil {
			_, err = io.Copy(s.client, up.conn)
		}
	} else if (p.close || s.draining.Load()) && rh.KeepAlive {
		// The connection ends after this response: say so, so the
		// client does not send its next request on it.
		head := up.bytes()[:rh.Size]
		closeHead := make([]byte, 0, len(head)+len(connectionClose))
		closeHead = append(append(closeHead, head[:len(head)-2]...), connectionClose...)
		err = writeMessageHead(s.client, up, closeHead, rh.Size, rh.Framing, rh.Length)
		rh.KeepAlive = false
	} else {
		err = writeMessage(s.client, up, rh.Size, rh.Framing, rh.Length)
	}
	if p.record != nil {
		p.record.Status = rh.Status
	}
	s.finish(p, err)
	if p.switched != nil {
		p.switched <- false
	}
	if err != nil || !rh.KeepAlive || p.close || rh.Framing == FramingClose {
		s.closeClient()
		return fields, true, errStop
	}
	// Between responses the upstream side holds no buffer (unless the
	// upstream sent more already).
	up.releaseIdle()
	return fields, false, nil
}

// connectionClose ends a response head whose connection is to close.
const connectionClose = "Connection: close\r\n\r\n"

// finish completes a record and hands it to the access log.
func (s *session) finish(p *pending, err error) {
	if p.record == nil || s.access == nil {
		return
	}
	p.record.Duration = time.Since(p.record.Start)
	if err != nil && p.record.Error == "" {
		p.record.Error = err.Error()
	}
	s.access(p.record)
}

// closeClient ends the client connection after what was written (the
// request side sees its reads fail and stops).
func (s *session) closeClient() {
	if cw, ok := s.client.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	s.dlMu.Lock()
	s.stopped = true
	s.client.SetReadDeadline(time.Now())
	s.dlMu.Unlock()
}

// writeMessage writes a message head of size head (at the start of in's
// buffer) together with whatever of its body is already buffered, in one
// write, then streams the rest of the body. It saves a system call per
// message for the common case of small bodies.
func writeMessage(w io.Writer, in *connBuf, head int, framing Framing, length int64) error {
	return writeMessageHead(w, in, nil, head, framing, length)
}

// writeMessageHead is writeMessage with the head replaced by newHead when
// that is not nil (newHead's spare capacity is used for the first write).
func writeMessageHead(w io.Writer, in *connBuf, newHead []byte, head int, framing Framing, length int64) error {
	buf := in.bytes()
	n := head
	var sc chunkedScanner
	done := true
	switch framing {
	case FramingLength:
		avail := int64(len(buf) - head)
		if avail > length {
			avail = length
		}
		n += int(avail)
		length -= avail
		done = length == 0
	case FramingChunked:
		k, fin, err := sc.scan(buf[head:])
		if err != nil {
			return fmt.Errorf("body: %w", err)
		}
		n += k
		done = fin
	}
	out := buf[:n]
	if newHead != nil {
		out = append(newHead, buf[head:n]...)
	}
	if _, err := w.Write(out); err != nil {
		return err
	}
	in.consume(n)
	if done {
		return nil
	}
	switch framing {
	case FramingLength:
		return copyLength(w, in, length)
	case FramingChunked:
		return copyChunkedFrom(w, in, &sc)
	}
	return nil
}
