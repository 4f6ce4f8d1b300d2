package http

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/l7gate/l7gate/policy"
)

// The frame-level HTTP/2 path: the proxy speaks HTTP/2 to the client and
// to one upstream connection (dialed on the first allowed stream), reads
// frames with x/net's Framer (which checks frame order), assembles and
// decodes header blocks itself (h2hpack.go: HPACK within a header-list
// bound, field syntax, pseudo-headers), decides every stream's request on
// its decoded headers, re-encodes the headers of allowed streams for the
// other hop and forwards DATA frames as they come. Nothing passes a stream
// before its headers were decided; anything not understood ends the
// stream or the connection.
//
// Flow control is managed per hop: the proxy grants each sender windows
// of its own (h2StreamWindow per stream, h2ConnWindow per connection) and
// gives credit back only for bytes it passed on (or dropped), so what it
// holds for a slow receiver is bounded by those windows. A DATA frame that
// the receiver's window does not admit waits in its stream's queue until a
// WINDOW_UPDATE does.
//
// Concurrency: one goroutine reads the client, one each upstream; all
// state and both writers are guarded by h2Conn.mu. Each reader flushes
// the writers once its input holds no further complete frame, so a burst
// of frames costs one write system call per hop. A PING ACK alone does
// not make a hop's writer flush: it waits in the write buffer for the
// next frames that hop gets anyway (grpc-go pings with every batch of
// DATA it receives, so a hop would otherwise take two writes per burst:
// the frames passed on and, separately, the ACK), or for the
// connection's ACK timer when nothing else comes (h2AckDelay to twice
// that).

// h2LingerTimeout and h2LingerBytes bound how long and how much a
// connection we end reads from its client before the last close (net/http's
// server waits 1 s after its GOAWAY too).
const (
	h2LingerTimeout = time.Second
	h2LingerBytes   = 1 << 20
)

const (
	h2StreamWindow    = 256 << 10
	h2ConnWindow      = 1 << 20
	h2MaxStreams      = 250
	h2DefaultWindow   = 65535
	h2DefaultFrame    = 16384
	h2MaxWindow       = math.MaxInt32
	h2ResetBudget     = 200 // client resets per h2ResetInterval
	h2ResetInterval   = time.Second
	h2SettingsBudget  = 100 // SETTINGS frames per h2ResetInterval
	h2WriteBufferSize = 16 << 10
	h2ReadBufferSize  = 16 << 10
	// A PING ACK waits h2AckDelay to twice that for other frames to the
	// same hop (a peer's keepalive waits seconds for it).
	h2AckDelay = 10 * time.Millisecond
)

// errH2Closed ends a reader whose connection the proxy closed.
var errH2Closed = errors.New("http2 connection closed")

// h2Peer is one hop: the client, or an upstream connection.
type h2Peer struct {
	conn net.Conn
	// rd is what br reads (conn, or the client's conn with its first
	// bytes replayed); raw is conn's socket, for the poller (nil: the
	// connection cannot park).
	rd       io.Reader
	raw      syscall.RawConn
	br       *bufio.Reader
	bw       *bufio.Writer
	fr       *http2.Framer
	enc      *hpack.Encoder
	encBuf   bytes.Buffer
	maxFrame uint32 // the peer's SETTINGS_MAX_FRAME_SIZE
	initWin  int64  // the peer's SETTINGS_INITIAL_WINDOW_SIZE: our send window per new stream
	sendConn int64  // our connection-level send window toward the peer
	recvConn int64  // the peer's connection-level send window toward us
	grant    int64  // bytes received from the peer, passed on, not yet credited back
	// dirty: the write buffer holds frames to send now; lazy: it holds
	// frames (PING ACKs) that go out with the next flush or by the ACK
	// timer, the first of them since its tick lazyTick.
	dirty, lazy bool
	lazyTick    uint64
	// hdr decodes the peer's header blocks (used by its reader only).
	hdr *h2HeaderBlock
	// wto bounds each write to the peer; wdSet is when the deadline was
	// last moved (at most once a second: a timer update per flush costs).
	wto   time.Duration
	wdSet time.Time
	// blocked holds the streams with DATA queued toward this peer.
	blocked map[*h2Half]struct{}
	// gotSettings: the peer's first frame (SETTINGS) came (an upstream's,
	// checked by its reader).
	gotSettings bool
}

func newH2Peer(conn net.Conn, r io.Reader) *h2Peer {
	p := &h2Peer{conn: conn, rd: r, br: bufio.NewReaderSize(r, h2ReadBufferSize), bw: bufio.NewWriterSize(conn, h2WriteBufferSize),
		maxFrame: h2DefaultFrame, initWin: h2DefaultWindow, sendConn: h2DefaultWindow, recvConn: h2DefaultWindow,
		blocked: map[*h2Half]struct{}{}}
	p.newFramer()
	p.enc = hpack.NewEncoder(&p.encBuf)
	return p
}

// newFramer sets up the peer's Framer over br and bw.
func (p *h2Peer) newFramer() {
	p.fr = http2.NewFramer(p.bw, p.br)
	p.fr.SetMaxReadFrameSize(h2DefaultFrame)
	p.fr.SetReuseFrames()
}

// releaseBufs gives the peer's read and write buffers (empty) to the
// poller's pools and drops its Framer (whose own buffers grow to the
// largest frame) while the connection is parked. The HPACK encoder and
// decoder stay: their dynamic tables are connection state.
func (p *h2Peer) releaseBufs(pl *Poller) {
	p.br.Reset(nil)
	pl.h2Readers.Put(p.br)
	p.bw.Reset(nil)
	pl.h2Writers.Put(p.bw)
	p.br, p.bw, p.fr = nil, nil, nil
	p.encBuf = bytes.Buffer{}
	if p.hdr != nil {
		p.hdr.Fields = nil
	}
}

// restoreBufs takes buffers back and a new Framer once the connection
// resumes.
func (p *h2Peer) restoreBufs(pl *Poller) {
	if br, ok := pl.h2Readers.Get().(*bufio.Reader); ok {
		br.Reset(p.rd)
		p.br = br
	} else {
		p.br = bufio.NewReaderSize(p.rd, h2ReadBufferSize)
	}
	if bw, ok := pl.h2Writers.Get().(*bufio.Writer); ok {
		bw.Reset(p.conn)
		p.bw = bw
	} else {
		p.bw = bufio.NewWriterSize(p.conn, h2WriteBufferSize)
	}
	p.newFramer()
}

// idle reports that the peer has nothing buffered either way (p.br only
// when its reader is not running).
func (p *h2Peer) idle() bool {
	return p.br.Buffered() == 0 && p.bw.Buffered() == 0 && !p.dirty && !p.lazy && !p.hdr.active
}

// moreReady reports whether the read buffer holds a complete frame.
func (p *h2Peer) moreReady() bool {
	n := p.br.Buffered()
	if n < 9 {
		return false
	}
	h, _ := p.br.Peek(9)
	l := int(h[0])<<16 | int(h[1])<<8 | int(h[2])
	return n >= 9+l
}

func (p *h2Peer) flush() error {
	if !p.dirty {
		return nil
	}
	p.dirty, p.lazy = false, false
	if p.wto > 0 {
		if now := time.Now(); now.Sub(p.wdSet) > time.Second {
			p.conn.SetWriteDeadline(now.Add(p.wto))
			p.wdSet = now
		}
	}
	return p.bw.Flush()
}

// writeHeaders HPACK-encodes fields and writes them as HEADERS plus
// CONTINUATION frames no larger than the peer accepts.
func (p *h2Peer) writeHeaders(id uint32, fields []hpack.HeaderField, end bool) error {
	p.encBuf.Reset()
	for _, f := range fields {
		if err := p.enc.WriteField(f); err != nil {
			return err
		}
	}
	block := p.encBuf.Bytes()
	max := int(p.maxFrame)
	first := block
	if len(first) > max {
		first = block[:max]
	}
	block = block[len(first):]
	p.dirty = true
	if err := p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: first, EndStream: end, EndHeaders: len(block) == 0}); err != nil {
		return err
	}
	for len(block) > 0 {
		chunk := block
		if len(chunk) > max {
			chunk = block[:max]
		}
		block = block[len(chunk):]
		if err := p.fr.WriteContinuation(id, len(block) == 0, chunk); err != nil {
			return err
		}
	}
	return nil
}

// h2Item is one queued element of a half stream: DATA or trailers.
type h2Item struct {
	data     []byte
	end      bool
	trailers []hpack.HeaderField
}

// h2Half is one direction of a stream: from src through the proxy to dst.
type h2Half struct {
	s        *h2Stream
	src, dst *h2Peer
	srcID    uint32
	dstID    uint32
	send     int64 // our stream send window toward dst
	recv     int64 // src's stream send window toward us
	grant    int64 // bytes from src passed on, not yet credited back
	done     bool  // src ended its side (END_STREAM)
	sentEnd  bool  // END_STREAM passed on to dst
	q        []h2Item
}

// h2Stream is one client stream.
type h2Stream struct {
	id   uint32
	up   *h2Upstream // nil until forwarded (and for local answers)
	req  h2Half      // client → upstream
	resp h2Half      // upstream → client
	rec  *Record
	// recBuf is the record of a decided request (rec points to it): one
	// allocation with the stream.
	recBuf   Record
	start    time.Time
	grpc     bool
	declared int64 // request content-length, -1 when absent
	received int64
	// respFinal: the final response head went to the client.
	respFinal bool
	timer     *time.Timer
	closed    bool
}

// h2Upstream is one upstream HTTP/2 connection.
type h2Upstream struct {
	*h2Peer
	nextID    uint32
	streams   map[uint32]*h2Stream
	goingAway bool
	dead      bool
}

// h2Conn is one proxied client connection.
type h2Conn struct {
	srv    *Server
	cfg    Config
	ctx    context.Context
	dial   Dialer
	decide Decider
	access func(*Record)

	mu sync.Mutex
	// hdrs and out are the request's fields as the decider sees them and
	// as forwarded, req the request decided, reused from stream to stream
	// (under mu; all are used only while a HEADERS frame is handled, by
	// readClient).
	hdrs        []policy.HTTPHeader
	out         []hpack.HeaderField
	req         policy.HTTPRequest
	client      *h2Peer
	streams     map[uint32]*h2Stream
	maxClientID uint32
	up          *h2Upstream
	ups         map[*h2Upstream]struct{}
	goingAway   bool // GOAWAY sent to the client: no new streams
	closed      bool
	gotSettings bool
	started     bool // our SETTINGS went out
	resets      int
	completed   int // streams answered in the budget interval
	settings    int
	budgetStart time.Time
	lastActive  time.Time
	idle        *time.Timer
	// ackTimer sends PING ACKs no other frames took along (ackArmed: it
	// is set; ackUsed: ACKs were held since it was set; ackTick counts
	// its firings).
	ackTimer          *time.Timer
	ackArmed, ackUsed bool
	ackTick           uint64
	// unarmed holds forwarded streams whose request body is still open
	// and whose body timer is not running yet: readClient arms their
	// timers once it has handled every complete frame it holds, so a
	// request whose body ends in the same read as its HEADERS (a gRPC
	// unary call) never costs a timer.
	unarmed  []*h2Stream
	wg       sync.WaitGroup
	panicked *PanicError
	// linger: the next close ends our side with FIN and reads what the
	// client still sends for a while (lingering) instead of closing at
	// once, which with unread input makes the kernel send a reset that
	// can destroy our GOAWAY before the client reads it.
	linger, lingering bool

	// Parking (Server.Serve with a Poller): park is set when the
	// connection may park; pk is its poller entry. parking: the upstream
	// readers are being stopped (their reads time out and they return);
	// parked: no goroutine serves the connection, its buffers are given
	// back (its timers and Drain wake it instead of writing). stopCtx and
	// stopDrain end the ctx and Drain registrations, endConn the
	// connection (Serve's done) when it ends after a resume.
	park, parking, parked bool
	// waiting: readClient waits for the client's next frame (idleWait);
	// idleDeadline: with a read deadline set for the connection's idle
	// wait (it is cleared when a frame comes).
	waiting, idleDeadline bool
	pk                    parkedConn
	parkDeadline          time.Time
	stopCtx, stopDrain    func() bool
	endConn               func(error)
}

// errH2Park: readClient returns, the connection parked.
var errH2Park = errors.New("http2 connection parked")

// h2ConnError ends the connection with GOAWAY and code.
type h2ConnError struct {
	code http2.ErrCode
	why  string
}

func (e h2ConnError) Error() string { return "http2 " + e.code.String() + ": " + e.why }

// serveH2Frames serves an HTTP/2 connection with prior knowledge on the
// frame-level path. With park (Server.Serve and a Poller) it returns the
// connection when it parked: it goes on (resume) on a goroutine the
// poller starts.
func (srv *Server) serveH2Frames(ctx context.Context, conn net.Conn, dial Dialer, decide Decider, access func(*Record), park bool) (parker, error) {
	c := &h2Conn{srv: srv, cfg: srv.cfg, ctx: ctx, dial: dial, decide: decide, access: access,
		streams: map[uint32]*h2Stream{}, ups: map[*h2Upstream]struct{}{}, lastActive: time.Now(), budgetStart: time.Now()}
	c.client = newH2Peer(conn, conn)
	if park {
		c.client.raw = rawConn(conn)
		c.park = c.client.raw != nil
		c.pk.raw, c.pk.resume = c.client.raw, c.resume
	}
	// A peer that stops reading cannot hold the connection (and its
	// other hop) forever.
	c.client.wto = c.cfg.IdleTimeout
	c.client.hdr = newH2HeaderBlock(uint32(c.cfg.Limits.MaxHeaderBytes))
	c.stopCtx = context.AfterFunc(ctx, c.cancelled)
	c.stopDrain = func() bool { return false }
	if c.cfg.Drain != nil {
		c.stopDrain = context.AfterFunc(c.cfg.Drain, c.drain)
	}
	preface := make([]byte, len(h2Preface))
	conn.SetReadDeadline(time.Now().Add(c.cfg.HeaderTimeout))
	if _, err := io.ReadFull(c.client.br, preface); err != nil || string(preface) != h2Preface {
		return nil, c.finish()
	}
	conn.SetReadDeadline(time.Time{})
	c.mu.Lock()
	err := c.client.fr.WriteSettings(
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: h2MaxStreams},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: h2StreamWindow},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: uint32(c.cfg.Limits.MaxHeaderBytes)},
	)
	if err == nil {
		err = c.client.fr.WriteWindowUpdate(0, h2ConnWindow-h2DefaultWindow)
		c.client.recvConn = h2ConnWindow
	}
	c.client.dirty = true
	if err == nil {
		err = c.client.flush()
	}
	c.idle = time.AfterFunc(c.cfg.IdleTimeout, c.idleCheck)
	c.started = true
	if c.goingAway && err == nil {
		// The drain began before our SETTINGS went out.
		c.goingAway = false
		c.mu.Unlock()
		c.drain()
		return nil, c.finish()
	}
	c.mu.Unlock()
	if err != nil {
		return nil, c.finish()
	}
	if c.readClient() == errH2Park {
		return c, nil
	}
	return nil, c.finish()
}

// rawConn returns the socket of conn (a prefixConn's), or nil.
func rawConn(conn net.Conn) syscall.RawConn {
	if pc, ok := conn.(*prefixConn); ok {
		conn = pc.Conn
	}
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return raw
}

// finish ends the connection once readClient returned (not parked): it
// ends every stream, waits for the upstream readers, lingers when asked
// and returns what ServeConn returns.
func (c *h2Conn) finish() error {
	c.shutdown() // waits for the upstream readers (which may have panicked)
	if c.lingering {
		// Our side is shut (FIN sent); discard what the client still
		// sends until it closes too, the deadline passes or the bound is
		// read (readClient, the only other reader, has returned).
		io.Copy(io.Discard, io.LimitReader(c.client.br, h2LingerBytes))
		c.client.conn.Close()
	}
	c.stopCtx()
	c.stopDrain()
	if c.panicked != nil {
		return c.panicked
	}
	return nil
}

// cancelled ends the connection when ServeConn's context ends (a parked
// one is handed back to end).
func (c *h2Conn) cancelled() {
	c.mu.Lock()
	c.closeLocked()
	parked := c.parked
	c.mu.Unlock()
	if parked {
		c.srv.cfg.Poller.wake(&c.pk)
	}
}

// parkWith parks the connection (the last use of it on the goroutine
// that served it); end ends it after a resume.
func (c *h2Conn) parkWith(end func(error)) {
	c.endConn = end
	c.srv.cfg.Poller.park(&c.pk, c.parkDeadline)
}

// parkableLocked reports that the connection may park: no stream open,
// nothing buffered or owed either way, no drain or close under way.
// With readers, the upstream readers run (their read buffers are theirs
// and not looked at).
func (c *h2Conn) parkableLocked(readers bool) bool {
	if !c.park || c.closed || c.goingAway || c.lingering || !c.started || !c.gotSettings ||
		len(c.streams) > 0 || c.ackArmed || len(c.unarmed) > 0 || !c.client.idle() {
		return false
	}
	for u := range c.ups {
		if u.raw == nil || len(u.streams) > 0 || u.bw.Buffered() > 0 || u.dirty || u.lazy {
			return false
		}
		if !readers && (u.br.Buffered() > 0 || u.hdr.active) {
			return false
		}
	}
	return true
}

// idleWait waits for the client's next frame without consuming it
// (readClient reads it then). Once the connection has had no stream for
// the poller's delay (a read deadline: set here, or by endStreamLocked
// when the last stream ends during the wait), it parks the connection if
// it may (else waits again: a PING ACK or an upstream frame may still be
// on its way): the upstream readers are stopped (a read deadline in the
// past ends their wait for a frame), the buffers of both hops given back.
// It reports whether the connection parked.
func (c *h2Conn) idleWait() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		if c.closed || c.goingAway || c.lingering || !c.started {
			return false
		}
		if len(c.streams) == 0 {
			c.setIdleDeadlineLocked()
		}
		c.waiting = true
		c.mu.Unlock()
		_, err := c.client.br.Peek(1)
		c.mu.Lock()
		c.waiting = false
		if c.closed {
			return false // (a close that lingers set its own deadline)
		}
		if c.idleDeadline {
			c.client.conn.SetReadDeadline(time.Time{})
			c.idleDeadline = false
		}
		if err == nil || !isTimeout(err) {
			return false
		}
		if !c.parkableLocked(true) {
			continue
		}
		c.parking = true
		for u := range c.ups {
			u.conn.SetReadDeadline(time.Unix(1, 0))
		}
		c.mu.Unlock()
		c.wg.Wait()
		c.mu.Lock()
		c.parking = false
		if !c.parkableLocked(false) {
			// an upstream frame came meanwhile (or the connection ended)
			c.startReadersLocked()
			continue
		}
		pl := c.srv.cfg.Poller
		c.client.releaseBufs(pl)
		c.pk.extra = c.pk.extra[:0]
		for u := range c.ups {
			u.releaseBufs(pl)
			c.pk.extra = append(c.pk.extra, u.raw)
		}
		c.hdrs, c.out, c.req = nil, nil, policy.HTTPRequest{}
		c.idle.Stop()
		c.parkDeadline = c.lastActive.Add(c.cfg.IdleTimeout)
		c.parked = true
		return true
	}
}

// setIdleDeadlineLocked ends the client reader's wait for a frame after
// the poller's delay (idleWait then parks the connection if it may).
func (c *h2Conn) setIdleDeadlineLocked() {
	c.client.conn.SetReadDeadline(time.Now().Add(c.srv.cfg.Poller.delay))
	c.idleDeadline = true
}

// startReadersLocked starts a reader for every upstream connection (none
// runs).
func (c *h2Conn) startReadersLocked() {
	for u := range c.ups {
		u.conn.SetReadDeadline(time.Time{})
		c.wg.Add(1)
		go c.readUpstream(u)
	}
}

// resume goes on with a parked connection on a goroutine the poller
// started: a frame came from the client or an upstream (or either closed),
// its idle timeout passed, or a drain or its context's end woke it. The
// idle timeout and the drain are handled as when the connection does not
// park; then it reads the client until it ends or parks again.
func (c *h2Conn) resume() {
	pl := c.srv.cfg.Poller
	pl.unregister(&c.pk)
	parked := false
	defer func() {
		if v := recover(); v != nil {
			parked = false
			c.mu.Lock()
			if c.panicked == nil {
				c.panicked = newPanicError(v)
			}
			c.closeLocked()
			c.mu.Unlock()
		}
		if parked {
			pl.park(&c.pk, c.parkDeadline)
			return
		}
		c.endConn(c.finish())
	}()
	c.mu.Lock()
	c.parked = false
	c.client.restoreBufs(pl)
	for u := range c.ups {
		u.restoreBufs(pl)
	}
	c.startReadersLocked()
	c.mu.Unlock()
	if d := c.cfg.Drain; d != nil && d.Err() != nil {
		c.drain()
	}
	c.idleCheck()
	parked = c.readClient() == errH2Park
}

func (c *h2Conn) readClient() (err error) {
	// held: c.mu is locked (a panic may come with or without it).
	held := false
	lock := func() { c.mu.Lock(); held = true }
	unlock := func() { held = false; c.mu.Unlock() }
	defer func() {
		if v := recover(); v != nil {
			if !held {
				c.mu.Lock()
			}
			// One bad request must not end the process: remember the
			// panic for ServeConn's caller and end this connection.
			c.panicked = newPanicError(v)
			c.closeLocked()
			c.mu.Unlock()
			err = c.panicked
		}
	}()
	p := c.client
	for {
		if !p.moreReady() {
			lock()
			c.armBodyTimersLocked()
			ferr := c.flushAllLocked()
			unlock()
			if ferr != nil {
				return ferr
			}
		}
		if c.park && p.br.Buffered() == 0 && c.idleWait() {
			return errH2Park
		}
		f, rerr := p.fr.ReadFrame()
		// Header blocks are decoded here, outside c.mu.
		var hb *h2HeaderBlock
		if rerr == nil {
			switch hf := f.(type) {
			case *http2.HeadersFrame:
				hb, rerr = p.hdr.headers(hf)
			case *http2.ContinuationFrame:
				hb, rerr = p.hdr.continuation(hf)
			}
			if hb == nil && rerr == nil && p.hdr.active {
				continue // CONTINUATION follows
			}
		}
		lock()
		if c.closed {
			unlock()
			return errH2Closed
		}
		if rerr != nil {
			err = c.onClientReadError(rerr)
		} else {
			err = c.onClientFrame(f, hb)
		}
		if err != nil {
			// (ce is declared here: a variable whose address errors.As
			// takes is allocated where it is declared, once per frame
			// in the loop's body.)
			var ce h2ConnError
			if errors.As(err, &ce) {
				c.goAwayLocked(ce.code, ce.why)
				c.linger = true
				err = errH2Closed
			}
			c.closeLocked()
			unlock()
			return err
		}
		unlock()
	}
}

func (c *h2Conn) onClientReadError(err error) error {
	var se http2.StreamError
	var ce http2.ConnectionError
	switch {
	case errors.As(err, &se):
		if se.StreamID%2 == 0 {
			return h2ConnError{http2.ErrCodeProtocol, "frame on an even stream id"}
		}
		if s := c.streams[se.StreamID]; s != nil {
			c.resetLocked(s, se.Code, "malformed frame: "+errString(se.Cause))
		} else {
			if se.StreamID > c.maxClientID && se.StreamID%2 == 1 {
				c.maxClientID = se.StreamID
			}
			c.client.dirty = true
			c.client.fr.WriteRSTStream(se.StreamID, se.Code)
			if c.access != nil && se.Code == http2.ErrCodeProtocol {
				c.access(&Record{Start: time.Now(), Status: 400, Error: "malformed HTTP/2 request: " + errString(se.Cause)})
			}
		}
		return nil
	case errors.As(err, &ce):
		return h2ConnError{http2.ErrCode(ce), "client frame"}
	case errors.Is(err, http2.ErrFrameTooLarge):
		return h2ConnError{http2.ErrCodeFrameSize, "frame too large"}
	}
	return err
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func (c *h2Conn) flushAllLocked() error {
	err := c.client.flush()
	lazy := c.client.lazy
	for u := range c.ups {
		if ferr := u.flush(); ferr != nil {
			c.upstreamFailedLocked(u, ferr)
		}
		lazy = lazy || u.lazy && !u.dead
	}
	if lazy && err == nil {
		c.ackUsed = true
		if !c.ackArmed && !c.closed {
			c.ackArmed = true
			if c.ackTimer == nil {
				c.ackTimer = time.AfterFunc(h2AckDelay, c.ackTimeout)
			} else {
				c.ackTimer.Reset(h2AckDelay)
			}
		}
	}
	return err
}

// ackTimeout ticks every h2AckDelay while PING ACKs are being held and
// sends those held since before the previous tick (so an ACK waits
// h2AckDelay to twice that; one held for less goes on waiting, as the
// next frames to its hop are likely to come first). The timer is not
// moved per ACK: a busy connection moves it at most once per h2AckDelay.
func (c *h2Conn) ackTimeout() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.parked {
		c.ackArmed = false
		return
	}
	used := c.ackUsed
	c.ackUsed = false
	prev := c.ackTick
	c.ackTick++
	c.client.dirty = c.client.dirty || c.client.lazy && c.client.lazyTick < prev
	for u := range c.ups {
		u.dirty = u.dirty || u.lazy && u.lazyTick < prev
	}
	if err := c.flushAllLocked(); err != nil {
		c.closeLocked()
		c.ackArmed = false
		return
	}
	if used || c.ackUsed {
		c.ackTimer.Reset(h2AckDelay)
		return
	}
	c.ackArmed = false
}

// holdAckLocked marks p's write buffer as holding a PING ACK that may
// wait for other frames.
func (c *h2Conn) holdAckLocked(p *h2Peer) {
	if !p.lazy {
		p.lazy = true
		p.lazyTick = c.ackTick
	}
}

// goAwayLocked tells the client the connection ends with code.
func (c *h2Conn) goAwayLocked(code http2.ErrCode, why string) {
	if c.closed {
		return
	}
	c.cfg.Logger.Debug("http2 connection error", "code", code.String(), "reason", why)
	c.client.dirty = true
	c.client.fr.WriteGoAway(c.maxClientID, code, nil)
	c.client.flush()
}

func (c *h2Conn) closeLocked() {
	if c.closed {
		return
	}
	c.closed = true
	if cw, ok := c.client.conn.(interface{ CloseWrite() error }); c.linger && ok && cw.CloseWrite() == nil {
		c.client.conn.SetReadDeadline(time.Now().Add(h2LingerTimeout))
		c.lingering = true
	} else {
		c.client.conn.Close()
	}
	for u := range c.ups {
		u.conn.Close()
	}
	if c.idle != nil {
		c.idle.Stop()
	}
	if c.ackTimer != nil {
		c.ackTimer.Stop()
	}
}

// shutdown ends every stream (records for those still open) and waits for
// the upstream readers.
func (c *h2Conn) shutdown() {
	c.mu.Lock()
	c.closeLocked()
	for _, s := range c.streams {
		if s.rec != nil && s.rec.Error == "" && !(s.req.done && s.resp.done) {
			s.rec.Error = "connection closed"
		}
		c.endStreamLocked(s)
	}
	c.mu.Unlock()
	c.wg.Wait()
}

func (c *h2Conn) drain() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.parked {
		// resume drains it
		c.srv.cfg.Poller.wake(&c.pk)
		return
	}
	if c.closed || c.goingAway {
		return
	}
	c.goingAway = true
	if !c.started {
		return // serveH2Frames sends GOAWAY after its SETTINGS
	}
	c.client.dirty = true
	c.client.fr.WriteGoAway(c.maxClientID, http2.ErrCodeNo, nil)
	c.client.flush()
	if len(c.streams) == 0 {
		c.closeLocked()
	}
}

func (c *h2Conn) idleCheck() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.parked {
		// (a firing the park's Stop came too late for: resume checks)
		c.srv.cfg.Poller.wake(&c.pk)
		return
	}
	if c.closed {
		return
	}
	if len(c.streams) == 0 {
		if wait := c.cfg.IdleTimeout - time.Since(c.lastActive); wait > 0 {
			c.idle.Reset(wait)
			return
		}
		c.goAwayLocked(http2.ErrCodeNo, "idle")
		c.closeLocked()
		return
	}
	c.idle.Reset(c.cfg.IdleTimeout)
}

func (c *h2Conn) overBudget(n *int, budget int) bool {
	if now := time.Now(); now.Sub(c.budgetStart) > h2ResetInterval {
		c.budgetStart, c.resets, c.settings, c.completed = now, 0, 0, 0
	}
	*n++
	return *n > budget
}

// onClientFrame handles a frame of the client; hb is the header block a
// HEADERS or CONTINUATION frame completed.
func (c *h2Conn) onClientFrame(f http2.Frame, hb *h2HeaderBlock) error {
	if !c.gotSettings {
		sf, ok := f.(*http2.SettingsFrame)
		if !ok || sf.IsAck() {
			return h2ConnError{http2.ErrCodeProtocol, "first frame is not SETTINGS"}
		}
		c.gotSettings = true
	}
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		if c.overBudget(&c.settings, h2SettingsBudget) {
			return h2ConnError{http2.ErrCodeEnhanceYourCalm, "SETTINGS flood"}
		}
		return c.applySettings(c.client, f)
	case *http2.PingFrame:
		if f.IsAck() {
			return nil
		}
		c.holdAckLocked(c.client)
		return c.client.fr.WritePing(true, f.Data)
	case *http2.HeadersFrame, *http2.ContinuationFrame:
		return c.onClientHeaders(hb)
	case *http2.DataFrame:
		return c.onClientData(f)
	case *http2.WindowUpdateFrame:
		return c.onWindowUpdate(c.client, f, func(id uint32) *h2Half {
			if s := c.streams[id]; s != nil {
				return &s.resp
			}
			return nil
		}, f.StreamID > c.maxClientID)
	case *http2.RSTStreamFrame:
		if f.StreamID > c.maxClientID {
			return h2ConnError{http2.ErrCodeProtocol, "RST_STREAM on an idle stream"}
		}
		s := c.streams[f.StreamID]
		if s == nil {
			return nil
		}
		if !s.resp.done && c.overBudget(&c.resets, h2ResetBudget) && c.resets > c.completed {
			// Rapid reset (CVE-2023-44487): every reset stream cost the
			// upstream a request. A client whose answered streams
			// outnumber its resets is cancelling, not attacking.
			return h2ConnError{http2.ErrCodeEnhanceYourCalm, "too many stream resets"}
		}
		if s.rec != nil && s.rec.Error == "" && !s.resp.done {
			s.rec.Error = "client reset the stream: " + f.ErrCode.String()
		}
		if s.up != nil && !s.up.dead && !(s.req.sentEnd && s.resp.done) {
			s.up.dirty = true
			s.up.fr.WriteRSTStream(s.req.dstID, http2.ErrCodeCancel)
		}
		c.endStreamLocked(s)
		return nil
	case *http2.PriorityFrame:
		if f.StreamID == f.StreamDep {
			return c.streamErrorLocked(f.StreamID, http2.ErrCodeProtocol, "stream depends on itself")
		}
		return nil
	case *http2.GoAwayFrame:
		// The client opens no more streams; end once they are done.
		if !c.goingAway {
			c.goingAway = true
			c.client.dirty = true
			c.client.fr.WriteGoAway(c.maxClientID, http2.ErrCodeNo, nil)
		}
		if len(c.streams) == 0 {
			c.client.flush()
			c.linger = true
			c.closeLocked()
			return errH2Closed
		}
		return nil
	case *http2.PushPromiseFrame:
		return h2ConnError{http2.ErrCodeProtocol, "PUSH_PROMISE from a client"}
	}
	return nil // unknown frame types are ignored (RFC 9113 §5.5)
}

// streamErrorLocked resets one stream (open or not) with code.
func (c *h2Conn) streamErrorLocked(id uint32, code http2.ErrCode, why string) error {
	if s := c.streams[id]; s != nil {
		c.resetLocked(s, code, why)
		return nil
	}
	c.client.dirty = true
	return c.client.fr.WriteRSTStream(id, code)
}

// applySettings checks a peer's SETTINGS, acknowledges them and applies
// them (the ACK goes first: DATA a larger window releases follows it).
func (c *h2Conn) applySettings(p *h2Peer, f *http2.SettingsFrame) error {
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				return h2ConnError{http2.ErrCode(ce), "invalid setting " + s.String()}
			}
			return err
		}
		return nil
	})
	if err != nil {
		return err
	}
	p.dirty = true
	if err := p.fr.WriteSettingsAck(); err != nil {
		return err
	}
	return f.ForeachSetting(func(s http2.Setting) error {
		switch s.ID {
		case http2.SettingMaxFrameSize:
			p.maxFrame = s.Val
		case http2.SettingHeaderTableSize:
			p.enc.SetMaxDynamicTableSizeLimit(s.Val)
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - p.initWin
			p.initWin = int64(s.Val)
			for _, h := range c.halvesTo(p) {
				h.send += delta
				if h.send > h2MaxWindow {
					return h2ConnError{http2.ErrCodeFlowControl, "window overflow"}
				}
			}
			if delta > 0 {
				c.drainLocked(p)
			}
		}
		return nil
	})
}

// halvesTo returns the open half streams whose destination is p.
func (c *h2Conn) halvesTo(p *h2Peer) []*h2Half {
	var hs []*h2Half
	if p == c.client {
		for _, s := range c.streams {
			if s.up != nil {
				hs = append(hs, &s.resp)
			}
		}
		return hs
	}
	for u := range c.ups {
		if u.h2Peer == p {
			for _, s := range u.streams {
				hs = append(hs, &s.req)
			}
		}
	}
	return hs
}

// onWindowUpdate credits p's send windows. idle: the stream was never
// opened.
func (c *h2Conn) onWindowUpdate(p *h2Peer, f *http2.WindowUpdateFrame, half func(uint32) *h2Half, idle bool) error {
	inc := int64(f.Increment)
	if f.StreamID == 0 {
		p.sendConn += inc
		if p.sendConn > h2MaxWindow {
			return h2ConnError{http2.ErrCodeFlowControl, "connection window overflow"}
		}
		c.drainLocked(p)
		return nil
	}
	h := half(f.StreamID)
	if h == nil {
		if idle {
			return h2ConnError{http2.ErrCodeProtocol, "WINDOW_UPDATE on an idle stream"}
		}
		return nil
	}
	h.send += inc
	if h.send > h2MaxWindow {
		if p == c.client {
			c.resetLocked(h.s, http2.ErrCodeFlowControl, "stream window overflow")
		} else {
			c.upstreamResetLocked(h.s, http2.ErrCodeFlowControl, "upstream stream window overflow")
		}
		return nil
	}
	c.drainHalfLocked(h)
	return nil
}

// drainLocked passes on queued DATA toward p as far as windows allow.
func (c *h2Conn) drainLocked(p *h2Peer) {
	for h := range p.blocked {
		c.drainHalfLocked(h)
		if p.sendConn <= 0 {
			return
		}
	}
}

func (c *h2Conn) drainHalfLocked(h *h2Half) {
	for len(h.q) > 0 {
		it := &h.q[0]
		if it.trailers != nil {
			h.dst.writeHeaders(h.dstID, it.trailers, true)
			h.sentEnd = true
			h.q = h.q[1:]
			continue
		}
		n := int64(len(it.data))
		if n > h.send {
			n = h.send
		}
		if n > h.dst.sendConn {
			n = h.dst.sendConn
		}
		if n <= 0 && len(it.data) > 0 {
			return
		}
		end := it.end && n == int64(len(it.data))
		c.writeDataLocked(h, it.data[:n], end)
		it.data = it.data[n:]
		if len(it.data) == 0 {
			h.q = h.q[1:]
		}
	}
	h.q = nil
	delete(h.dst.blocked, h)
	c.maybeEndLocked(h.s)
}

func (c *h2Conn) writeDataLocked(h *h2Half, data []byte, end bool) {
	n := int64(len(data))
	h.send -= n
	h.dst.sendConn -= n
	h.dst.dirty = true
	h.dst.fr.WriteData(h.dstID, end, data)
	if end {
		h.sentEnd = true
	}
	c.consumedLocked(h, n)
}

// consumedLocked credits n bytes back to h's sender.
func (c *h2Conn) consumedLocked(h *h2Half, n int64) {
	if n == 0 {
		return
	}
	src := h.src
	if h.s != nil && !h.done {
		h.grant += n
		if h.grant >= h2StreamWindow/2 {
			src.dirty = true
			src.fr.WriteWindowUpdate(h.srcID, uint32(h.grant))
			h.recv += h.grant
			h.grant = 0
		}
	}
	c.connConsumedLocked(src, n)
}

func (c *h2Conn) connConsumedLocked(src *h2Peer, n int64) {
	src.grant += n
	if src.grant >= h2ConnWindow/2 {
		src.dirty = true
		src.fr.WriteWindowUpdate(0, uint32(src.grant))
		src.recvConn += src.grant
		src.grant = 0
	}
}

// forwardLocked passes data on (or queues it behind earlier data).
func (c *h2Conn) forwardLocked(h *h2Half, data []byte, end bool) {
	n := int64(len(data))
	if len(h.q) == 0 && n <= h.send && n <= h.dst.sendConn {
		c.writeDataLocked(h, data, end)
		return
	}
	h.q = append(h.q, h2Item{data: append([]byte(nil), data...), end: end})
	h.dst.blocked[h] = struct{}{}
	c.drainHalfLocked(h)
}

// receiveLocked accounts n received bytes against src's windows; false
// when the sender overran one (the error is handled).
func (c *h2Conn) receiveConnLocked(src *h2Peer, n int64) error {
	if n > src.recvConn {
		return h2ConnError{http2.ErrCodeFlowControl, "connection window exceeded"}
	}
	src.recvConn -= n
	return nil
}

func (c *h2Conn) onClientData(f *http2.DataFrame) error {
	n := int64(f.Length)
	if err := c.receiveConnLocked(c.client, n); err != nil {
		return err
	}
	s := c.streams[f.StreamID]
	if s == nil {
		if f.StreamID > c.maxClientID {
			return h2ConnError{http2.ErrCodeProtocol, "DATA on an idle stream"}
		}
		c.connConsumedLocked(c.client, n)
		c.client.dirty = true
		return c.client.fr.WriteRSTStream(f.StreamID, http2.ErrCodeStreamClosed)
	}
	if s.req.done {
		c.connConsumedLocked(c.client, n)
		c.resetLocked(s, http2.ErrCodeStreamClosed, "DATA after END_STREAM")
		return nil
	}
	if n > s.req.recv {
		c.connConsumedLocked(c.client, n)
		c.resetLocked(s, http2.ErrCodeFlowControl, "stream window exceeded")
		return nil
	}
	s.req.recv -= n
	data := f.Data()
	if pad := n - int64(len(data)); pad > 0 {
		c.consumedLocked(&s.req, pad)
	}
	end := f.StreamEnded()
	s.received += int64(len(data))
	if s.declared >= 0 && (s.received > s.declared || end && s.received != s.declared) {
		c.connConsumedLocked(c.client, int64(len(data)))
		if s.rec != nil {
			s.rec.Error = "request body does not match its Content-Length"
		}
		c.resetLocked(s, http2.ErrCodeProtocol, "content-length mismatch")
		return nil
	}
	if end {
		s.req.done = true
		if s.timer != nil {
			s.timer.Stop()
		}
	} else if s.timer != nil {
		s.timer.Reset(c.cfg.BodyTimeout)
	}
	if s.up == nil {
		// A stream answered locally: its body goes nowhere.
		c.connConsumedLocked(c.client, int64(len(data)))
		c.maybeEndLocked(s)
		return nil
	}
	c.forwardLocked(&s.req, data, end)
	c.maybeEndLocked(s)
	return nil
}

// resetLocked ends a stream toward the client with code, and its upstream
// stream with CANCEL.
func (c *h2Conn) resetLocked(s *h2Stream, code http2.ErrCode, why string) {
	if s.closed {
		return
	}
	c.client.dirty = true
	c.client.fr.WriteRSTStream(s.id, code)
	if s.rec != nil && s.rec.Error == "" {
		s.rec.Error = why
	}
	if s.up != nil && !s.up.dead {
		s.up.dirty = true
		s.up.fr.WriteRSTStream(s.req.dstID, http2.ErrCodeCancel)
	}
	c.endStreamLocked(s)
}

// upstreamResetLocked ends a stream the upstream broke: the client's
// stream is reset (or answered, when no response began).
func (c *h2Conn) upstreamResetLocked(s *h2Stream, code http2.ErrCode, why string) {
	if s.closed {
		return
	}
	if s.up != nil && !s.up.dead {
		s.up.dirty = true
		s.up.fr.WriteRSTStream(s.req.dstID, code)
	}
	if s.rec != nil && s.rec.Error == "" {
		s.rec.Error = why
	}
	c.client.dirty = true
	c.client.fr.WriteRSTStream(s.id, code)
	c.endStreamLocked(s)
}

func (c *h2Conn) maybeEndLocked(s *h2Stream) {
	if !s.closed && s.req.done && len(s.req.q) == 0 && s.resp.done && len(s.resp.q) == 0 && (s.up == nil || s.req.sentEnd) {
		c.endStreamLocked(s)
	}
}

// endStreamLocked forgets a stream and writes its access record.
func (c *h2Conn) endStreamLocked(s *h2Stream) {
	if s.closed {
		return
	}
	s.closed = true
	if s.timer != nil {
		s.timer.Stop()
	}
	delete(c.streams, s.id)
	// Bytes held for the stream are dropped: credit the senders' connections.
	for _, h := range []*h2Half{&s.req, &s.resp} {
		var held int64
		for _, it := range h.q {
			held += int64(len(it.data))
		}
		h.q = nil
		if h.dst != nil {
			delete(h.dst.blocked, h)
		}
		if held > 0 && h.src != nil {
			c.connConsumedLocked(h.src, held)
		}
	}
	if u := s.up; u != nil {
		delete(u.streams, s.req.dstID)
		if (u.goingAway || u.dead) && len(u.streams) == 0 && u != c.up {
			u.flush()
			u.conn.Close()
		}
	}
	c.lastActive = time.Now()
	if c.waiting && len(c.streams) == 0 && !c.idleDeadline && !c.closed {
		c.setIdleDeadlineLocked()
	}
	if s.resp.done {
		c.completed++
	}
	if s.rec != nil && c.access != nil {
		s.rec.Duration = time.Since(s.start)
		c.access(s.rec)
	}
	if c.goingAway && len(c.streams) == 0 && !c.closed {
		c.client.flush()
		c.closeLocked()
	}
}

// connectionSpecificField reports an RFC 9113 §8.2.2 field.
func connectionSpecificField(name, value string) bool {
	switch name {
	case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "http2-settings":
		return true
	case "te":
		return !strings.EqualFold(strings.TrimSpace(value), "trailers")
	}
	return false
}

func (c *h2Conn) onClientHeaders(f *h2HeaderBlock) error {
	id := f.StreamID
	if s := c.streams[id]; s != nil {
		return c.onClientTrailers(s, f)
	}
	if id%2 == 0 {
		return h2ConnError{http2.ErrCodeProtocol, "HEADERS on an even stream id"}
	}
	if id <= c.maxClientID {
		return h2ConnError{http2.ErrCodeProtocol, "HEADERS on a closed stream"}
	}
	c.maxClientID = id
	if f.HasPriority() && f.Priority.StreamDep == id {
		return c.streamErrorLocked(id, http2.ErrCodeProtocol, "stream depends on itself")
	}
	if c.goingAway {
		// After GOAWAY new streams are ignored (RFC 9113 §6.8); the
		// client retries them elsewhere.
		if !f.StreamEnded() {
			c.client.dirty = true
			c.client.fr.WriteRSTStream(id, http2.ErrCodeRefusedStream)
		}
		return nil
	}
	if len(c.streams) >= h2MaxStreams {
		c.client.dirty = true
		return c.client.fr.WriteRSTStream(id, http2.ErrCodeRefusedStream)
	}
	start := time.Now()
	// The idle timer is not moved per stream (a timer update costs):
	// idleCheck never ends a connection with open streams and measures
	// the idle time from lastActive.
	c.lastActive = start
	s := &h2Stream{id: id, start: start, declared: -1}
	s.req = h2Half{s: s, src: c.client, srcID: id, recv: h2StreamWindow, done: f.StreamEnded()}
	s.resp = h2Half{s: s, dst: c.client, dstID: id, send: c.client.initWin}
	var method, path, scheme, authority, host, protocol string
	var status bool
	for _, hf := range f.PseudoFields() {
		switch hf.Name {
		case ":method":
			method = hf.Value
		case ":path":
			path = hf.Value
		case ":scheme":
			scheme = hf.Value
		case ":authority":
			authority = hf.Value
		case ":protocol":
			protocol = hf.Value
		case ":status":
			status = true
		}
	}
	bad := func(why string) error {
		if c.access != nil {
			c.access(&Record{Start: start, Method: method, RawPath: path, Host: authority, Status: 400, Error: why, Duration: time.Since(start)})
		}
		c.client.dirty = true
		return c.client.fr.WriteRSTStream(id, http2.ErrCodeProtocol)
	}
	switch {
	case status || protocol != "":
		return bad("invalid pseudo-header in an HTTP/2 request")
	case method == "":
		return bad("missing :method")
	case method == "CONNECT":
		return bad("CONNECT is not proxied")
	case path == "" || scheme == "":
		return bad("missing :path or :scheme")
	}
	// The request as the decider sees it lives in c (the decider keeps
	// no reference): one allocation less per stream.
	req := &c.req
	*req = policy.HTTPRequest{Method: method, Headers: c.hdrs[:0]}
	fields := f.RegularFields()
	for _, hf := range fields {
		if connectionSpecificField(hf.Name, hf.Value) {
			return bad("connection-specific header " + hf.Name + " in an HTTP/2 request")
		}
		switch hf.Name {
		case "host":
			if host == "" {
				host = hf.Value
			}
		case "content-length":
			v, err := strconv.ParseInt(hf.Value, 10, 64)
			if err != nil || v < 0 || s.declared >= 0 && s.declared != v {
				return bad("invalid content-length")
			}
			s.declared = v
		case "content-type":
			s.grpc = strings.HasPrefix(hf.Value, "application/grpc")
		}
		req.Headers = append(req.Headers, policy.HTTPHeader{Name: hf.Name, Value: hf.Value})
	}
	c.hdrs = req.Headers[:0]
	if s.declared > 0 && f.StreamEnded() {
		return bad("request body does not match its Content-Length")
	}
	if authority == "" {
		authority = host
	}
	req.Host = authority
	c.streams[id] = s
	if f.Truncated {
		s.rec = &Record{Start: start, Method: method, RawPath: path, Host: authority, Status: 431, Error: "request headers too large"}
		return c.localResponseLocked(s, 431, "Request Header Fields Too Large")
	}
	norm, perr := policy.NormalizeRequestTarget(path, c.cfg.EscapedSlashes)
	if perr != nil {
		s.rec = &Record{Start: start, Method: method, RawPath: path, Host: authority, Status: 400, Error: perr.Error()}
		return c.localResponseLocked(s, 400, "Bad Request")
	}
	req.Path = norm
	if c.cfg.OnRequest != nil {
		c.cfg.OnRequest(req)
	}
	d := c.decide(req)
	s.recBuf = Record{Start: start, Method: method, Path: norm, Host: authority, Allowed: d.Allowed, DecidedBy: d.DecidedBy}
	rec := &s.recBuf
	if norm != path {
		rec.RawPath = path
	}
	s.rec = rec
	var edits []headerEdit
	if d.Allowed && len(d.MismatchActions) > 0 {
		e, logs, err := planHeaderActions(d.MismatchActions, func(name string) (string, bool) { return requestHeader(req, name) })
		if err != nil {
			d.Allowed, rec.Allowed, rec.Error = false, false, err.Error()
		} else {
			edits, rec.HeaderMismatches = e, logs
		}
	}
	if !d.Allowed {
		if s.grpc {
			rec.Status, rec.Error = 200, "grpc-status 7"
			return c.grpcStatusLocked(s, "7", "Access denied")
		}
		rec.Status = 403
		return c.localResponseLocked(s, 403, "Access denied")
	}
	// The upstream first: dialing a new one unlocks c.mu, and another
	// stream's response head may use c.out meanwhile.
	u, err := c.upstreamLocked()
	if err != nil {
		c.cfg.Logger.Debug("upstream error", "error", err)
		if s.closed {
			return nil
		}
		rec.Error = "upstream unavailable: " + err.Error()
		if s.grpc {
			rec.Status = 200
			return c.grpcStatusLocked(s, "14", "upstream unavailable")
		}
		rec.Status = 502
		return c.localResponseLocked(s, 502, "upstream connect error")
	}
	if s.closed || c.closed {
		return nil
	}
	// Forward: the decided (normalized) path, the other fields as sent,
	// with the policy's header edits.
	out := append(c.out[:0], hpack.HeaderField{Name: ":method", Value: method}, hpack.HeaderField{Name: ":scheme", Value: scheme})
	if authority != "" {
		out = append(out, hpack.HeaderField{Name: ":authority", Value: authority})
	}
	fwdPath := path
	if norm != path && norm != "*" {
		fwdPath = norm
	}
	out = append(out, hpack.HeaderField{Name: ":path", Value: fwdPath})
	for _, hf := range fields {
		out = append(out, hpack.HeaderField{Name: hf.Name, Value: hf.Value, Sensitive: hf.Sensitive})
	}
	for _, e := range edits {
		name := strings.ToLower(e.name)
		if e.del {
			kept := out[:0]
			for _, hf := range out {
				if hf.Name != name {
					kept = append(kept, hf)
				}
			}
			out = kept
		}
		if e.add {
			out = append(out, hpack.HeaderField{Name: name, Value: e.value})
		}
	}
	uid := u.nextID
	u.nextID += 2
	s.up = u
	u.streams[uid] = s
	s.req.dst, s.req.dstID, s.req.send = u.h2Peer, uid, u.initWin
	s.resp.src, s.resp.srcID, s.resp.recv = u.h2Peer, uid, h2StreamWindow
	err = u.writeHeaders(uid, out, s.req.done) // encodes out before it returns
	c.out = out[:0]
	if err != nil {
		c.upstreamFailedLocked(u, err)
		return nil
	}
	if s.req.done {
		s.req.sentEnd = true
	} else if c.cfg.BodyTimeout > 0 {
		c.unarmed = append(c.unarmed, s)
	}
	return nil
}

// armBodyTimersLocked starts the body timers of the streams whose request
// body is still open after the frames read so far. readClient calls it
// before it waits for more input, at least once per read buffer, so a
// timer starts at most one buffer's frames after its stream's HEADERS.
func (c *h2Conn) armBodyTimersLocked() {
	for i, s := range c.unarmed {
		c.unarmed[i] = nil
		if s.closed || s.req.done || s.timer != nil {
			continue
		}
		s.timer = time.AfterFunc(c.cfg.BodyTimeout, func() { c.bodyTimeout(s) })
	}
	c.unarmed = c.unarmed[:0]
}

func (c *h2Conn) bodyTimeout(s *h2Stream) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s.closed || s.req.done || c.closed {
		return
	}
	c.resetLocked(s, http2.ErrCodeCancel, "request body timeout")
	c.flushAllLocked()
}

func (c *h2Conn) onClientTrailers(s *h2Stream, f *h2HeaderBlock) error {
	if s.req.done {
		c.resetLocked(s, http2.ErrCodeStreamClosed, "HEADERS after END_STREAM")
		return nil
	}
	if !f.StreamEnded() || len(f.PseudoFields()) > 0 {
		c.resetLocked(s, http2.ErrCodeProtocol, "malformed trailers")
		return nil
	}
	for _, hf := range f.RegularFields() {
		if connectionSpecificField(hf.Name, hf.Value) {
			c.resetLocked(s, http2.ErrCodeProtocol, "connection-specific trailer "+hf.Name)
			return nil
		}
	}
	if s.declared >= 0 && s.received != s.declared {
		if s.rec != nil {
			s.rec.Error = "request body does not match its Content-Length"
		}
		c.resetLocked(s, http2.ErrCodeProtocol, "content-length mismatch")
		return nil
	}
	s.req.done = true
	if s.timer != nil {
		s.timer.Stop()
	}
	if s.up == nil {
		c.maybeEndLocked(s)
		return nil
	}
	tr := append([]hpack.HeaderField(nil), f.RegularFields()...)
	if len(s.req.q) > 0 {
		s.req.q = append(s.req.q, h2Item{trailers: tr})
		return nil
	}
	if err := s.req.dst.writeHeaders(s.req.dstID, tr, true); err != nil {
		return err
	}
	s.req.sentEnd = true
	c.maybeEndLocked(s)
	return nil
}

// localResponseLocked answers a stream from the proxy with a short text.
func (c *h2Conn) localResponseLocked(s *h2Stream, status int, body string) error {
	c.client.dirty = true
	err := c.client.writeHeaders(s.id, []hpack.HeaderField{
		{Name: ":status", Value: strconv.Itoa(status)},
		{Name: "content-type", Value: "text/plain"},
		{Name: "content-length", Value: strconv.Itoa(len(body))},
	}, false)
	if err == nil {
		// 13 bytes fit every window the client may open with; a client
		// that opened none gets the head only.
		err = c.client.fr.WriteData(s.id, true, []byte(body))
	}
	c.finishLocalLocked(s)
	return err
}

// grpcStatusLocked answers a gRPC call with a trailers-only response.
func (c *h2Conn) grpcStatusLocked(s *h2Stream, code, msg string) error {
	err := c.client.writeHeaders(s.id, []hpack.HeaderField{
		{Name: ":status", Value: "200"},
		{Name: "content-type", Value: "application/grpc"},
		{Name: "grpc-status", Value: code},
		{Name: "grpc-message", Value: msg},
	}, true)
	c.finishLocalLocked(s)
	return err
}

func (c *h2Conn) finishLocalLocked(s *h2Stream) {
	s.resp.done = true
	s.respFinal = true
	if !s.req.done {
		// The rest of the request is not wanted (RFC 9113 §8.1).
		c.client.fr.WriteRSTStream(s.id, http2.ErrCodeNo)
		s.req.done = true
	}
	c.endStreamLocked(s)
}

// upstreamLocked returns the upstream connection, dialing one (with mu
// released) when there is none that takes new streams.
func (c *h2Conn) upstreamLocked() (*h2Upstream, error) {
	if u := c.up; u != nil && !u.dead && !u.goingAway && u.nextID < 1<<31-1 {
		return u, nil
	}
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(c.ctx, c.cfg.DialTimeout)
	conn, err := c.dial(ctx)
	cancel()
	c.mu.Lock()
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	if c.closed {
		conn.Close()
		return nil, errH2Closed
	}
	u := &h2Upstream{h2Peer: newH2Peer(conn, conn), nextID: 1, streams: map[uint32]*h2Stream{}}
	u.wto = c.cfg.IdleTimeout
	u.hdr = newH2HeaderBlock(1 << 20)
	if c.park {
		u.raw = rawConn(conn)
	}
	u.dirty = true
	u.bw.WriteString(h2Preface)
	u.fr.WriteSettings(
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: h2StreamWindow},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: 1 << 20},
	)
	u.fr.WriteWindowUpdate(0, h2ConnWindow-h2DefaultWindow)
	u.recvConn = h2ConnWindow
	if old := c.up; old != nil && len(old.streams) == 0 {
		old.conn.Close()
	}
	c.up = u
	c.ups[u] = struct{}{}
	c.wg.Add(1)
	go c.readUpstream(u)
	return u, nil
}

func (c *h2Conn) readUpstream(u *h2Upstream) {
	defer c.wg.Done()
	var err error
	held := false
	defer func() {
		if v := recover(); v != nil {
			if !held {
				c.mu.Lock()
			}
			if c.panicked == nil {
				c.panicked = newPanicError(v)
			}
			c.closeLocked()
			held = false
			c.mu.Unlock()
		}
	}()
	for {
		if !u.moreReady() {
			c.mu.Lock()
			held = true
			ferr := c.flushAllLocked()
			if ferr != nil {
				c.closeLocked()
			}
			held = false
			c.mu.Unlock()
		}
		var f http2.Frame
		err = nil
		if u.br.Buffered() == 0 {
			// The wait for a next frame consumes nothing: the
			// connection parking ends it (a read deadline in the past)
			// and this reader returns with the frame stream intact.
			if _, perr := u.br.Peek(1); perr != nil {
				if isTimeout(perr) {
					c.mu.Lock()
					parking := c.parking
					c.mu.Unlock()
					if parking {
						return
					}
				}
				err = perr
			}
		}
		if err == nil {
			f, err = u.fr.ReadFrame()
		}
		var hb *h2HeaderBlock
		if err == nil {
			switch hf := f.(type) {
			case *http2.HeadersFrame:
				hb, err = u.hdr.headers(hf)
			case *http2.ContinuationFrame:
				hb, err = u.hdr.continuation(hf)
			}
			if hb == nil && err == nil && u.hdr.active {
				continue // CONTINUATION follows
			}
		}
		c.mu.Lock()
		held = true
		if c.closed || u.dead {
			held = false
			c.mu.Unlock()
			return
		}
		if err == nil {
			if !u.gotSettings {
				if sf, ok := f.(*http2.SettingsFrame); !ok || sf.IsAck() {
					err = errors.New("upstream did not start with SETTINGS")
				}
				u.gotSettings = true
			}
			if err == nil {
				err = c.onUpstreamFrame(u, f, hb)
			}
		} else {
			var se http2.StreamError
			if errors.As(err, &se) {
				if s := u.streams[se.StreamID]; s != nil {
					c.upstreamResetLocked(s, http2.ErrCodeProtocol, "malformed upstream frame: "+errString(se.Cause))
				} else {
					u.dirty = true
					u.fr.WriteRSTStream(se.StreamID, se.Code)
				}
				err = nil
			}
		}
		if err != nil {
			var ce h2ConnError
			if errors.As(err, &ce) {
				u.dirty = true
				u.fr.WriteGoAway(0, ce.code, nil)
				u.flush()
			}
			c.upstreamFailedLocked(u, err)
			c.flushAllLocked()
			held = false
			c.mu.Unlock()
			return
		}
		held = false
		c.mu.Unlock()
	}
}

// upstreamFailedLocked ends an upstream connection: its streams are
// answered with 502 / gRPC UNAVAILABLE when no response began, else reset.
func (c *h2Conn) upstreamFailedLocked(u *h2Upstream, err error) {
	if u.dead {
		return
	}
	u.dead = true
	u.conn.Close()
	delete(c.ups, u)
	if c.up == u {
		c.up = nil
	}
	if !c.closed && !errors.Is(err, io.EOF) && !isClosed(err) {
		c.cfg.Logger.Debug("upstream connection failed", "error", err)
	}
	for _, s := range u.streams {
		c.failStreamLocked(s, "upstream connection ended")
	}
}

func (c *h2Conn) failStreamLocked(s *h2Stream, why string) {
	if s.closed {
		return
	}
	if s.rec != nil && s.rec.Error == "" {
		s.rec.Error = why
	}
	if !s.respFinal && !c.closed {
		if s.grpc {
			s.rec.Status = 200
			c.grpcStatusLocked(s, "14", "upstream unavailable")
			return
		}
		s.rec.Status = 502
		c.localResponseLocked(s, 502, "upstream connect error")
		return
	}
	c.client.dirty = true
	c.client.fr.WriteRSTStream(s.id, http2.ErrCodeInternal)
	c.endStreamLocked(s)
}

// onUpstreamFrame handles a frame of an upstream; hb is the header block
// a HEADERS or CONTINUATION frame completed.
func (c *h2Conn) onUpstreamFrame(u *h2Upstream, f http2.Frame, hb *h2HeaderBlock) error {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		return c.applySettings(u.h2Peer, f)
	case *http2.PingFrame:
		if !f.IsAck() {
			c.holdAckLocked(u.h2Peer)
			return u.fr.WritePing(true, f.Data)
		}
		return nil
	case *http2.HeadersFrame, *http2.ContinuationFrame:
		s := u.streams[hb.StreamID]
		if s == nil {
			if hb.StreamID >= u.nextID {
				return h2ConnError{http2.ErrCodeProtocol, "HEADERS on an idle upstream stream"}
			}
			return nil
		}
		return c.onUpstreamHeaders(s, hb)
	case *http2.DataFrame:
		n := int64(f.Length)
		if err := c.receiveConnLocked(u.h2Peer, n); err != nil {
			return err
		}
		s := u.streams[f.StreamID]
		if s == nil || s.resp.done {
			c.connConsumedLocked(u.h2Peer, n)
			if s == nil && f.StreamID >= u.nextID {
				return h2ConnError{http2.ErrCodeProtocol, "DATA on an idle upstream stream"}
			}
			if s != nil {
				c.upstreamResetLocked(s, http2.ErrCodeStreamClosed, "upstream DATA after END_STREAM")
			}
			return nil
		}
		if n > s.resp.recv || !s.respFinal {
			c.connConsumedLocked(u.h2Peer, n)
			c.upstreamResetLocked(s, http2.ErrCodeProtocol, "upstream DATA before the response head or beyond its window")
			return nil
		}
		s.resp.recv -= n
		data := f.Data()
		if pad := n - int64(len(data)); pad > 0 {
			c.consumedLocked(&s.resp, pad)
		}
		if f.StreamEnded() {
			s.resp.done = true
		}
		c.forwardLocked(&s.resp, data, f.StreamEnded())
		c.maybeEndLocked(s)
		return nil
	case *http2.WindowUpdateFrame:
		return c.onWindowUpdate(u.h2Peer, f, func(id uint32) *h2Half {
			if s := u.streams[id]; s != nil {
				return &s.req
			}
			return nil
		}, f.StreamID >= u.nextID)
	case *http2.RSTStreamFrame:
		s := u.streams[f.StreamID]
		if s == nil {
			return nil
		}
		if f.ErrCode == http2.ErrCodeNo && s.resp.done {
			// The response is complete and the upstream wants no more
			// of the request: pass that on.
			c.client.dirty = true
			c.client.fr.WriteRSTStream(s.id, http2.ErrCodeNo)
			s.req.done = true
			c.endStreamLocked(s)
			return nil
		}
		code := f.ErrCode
		if s.rec != nil && s.rec.Error == "" {
			s.rec.Error = "upstream reset the stream: " + code.String()
		}
		c.client.dirty = true
		c.client.fr.WriteRSTStream(s.id, code)
		c.endStreamLocked(s)
		return nil
	case *http2.GoAwayFrame:
		u.goingAway = true
		for uid, s := range u.streams {
			if uid > f.LastStreamID {
				// Not processed upstream: the client may retry it.
				s.rec.Error = "upstream went away"
				c.client.dirty = true
				c.client.fr.WriteRSTStream(s.id, http2.ErrCodeRefusedStream)
				c.endStreamLocked(s)
			}
		}
		if f.ErrCode != http2.ErrCodeNo {
			return fmt.Errorf("upstream GOAWAY %s", f.ErrCode)
		}
		if len(u.streams) == 0 {
			return io.EOF
		}
		return nil
	case *http2.PushPromiseFrame:
		return h2ConnError{http2.ErrCodeProtocol, "PUSH_PROMISE with push disabled"}
	}
	return nil
}

func (c *h2Conn) onUpstreamHeaders(s *h2Stream, f *h2HeaderBlock) error {
	if s.resp.done {
		c.upstreamResetLocked(s, http2.ErrCodeStreamClosed, "upstream HEADERS after END_STREAM")
		return nil
	}
	end := f.StreamEnded()
	out := c.out[:0] // reused: encoded before this returns, or cloned when queued
	if !s.respFinal {
		st := f.PseudoValue("status")
		code, err := strconv.Atoi(st)
		if err != nil || len(st) != 3 || len(f.PseudoFields()) != 1 {
			c.upstreamResetLocked(s, http2.ErrCodeProtocol, "malformed upstream response head")
			return nil
		}
		if code >= 200 {
			s.respFinal = true
			if s.rec != nil {
				s.rec.Status = code
			}
		} else if end {
			c.upstreamResetLocked(s, http2.ErrCodeProtocol, "interim response with END_STREAM")
			return nil
		}
		out = append(out, hpack.HeaderField{Name: ":status", Value: st})
	} else if !end || len(f.PseudoFields()) > 0 {
		c.upstreamResetLocked(s, http2.ErrCodeProtocol, "malformed upstream trailers")
		return nil
	}
	for _, hf := range f.RegularFields() {
		if connectionSpecificField(hf.Name, hf.Value) {
			c.upstreamResetLocked(s, http2.ErrCodeProtocol, "connection-specific upstream header "+hf.Name)
			return nil
		}
		out = append(out, hpack.HeaderField{Name: hf.Name, Value: hf.Value, Sensitive: hf.Sensitive})
	}
	if end {
		s.resp.done = true
	}
	if len(s.resp.q) > 0 {
		s.resp.q = append(s.resp.q, h2Item{trailers: slices.Clone(out)})
		return nil
	}
	err := c.client.writeHeaders(s.id, out, end)
	c.out = out[:0]
	if err != nil {
		return err
	}
	if end {
		s.resp.sentEnd = true
	}
	c.maybeEndLocked(s)
	return nil
}
