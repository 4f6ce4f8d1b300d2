package kafka

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// Verdict is a policy decision. The zero value denies, so a forgotten
// field fails closed.
type Verdict uint8

const (
	VerdictDeny Verdict = iota
	VerdictAllow
)

func (v Verdict) String() string {
	if v == VerdictAllow {
		return "allow"
	}
	return "deny"
}

// Decision is what a Decider returns for one request.
type Decision struct {
	Verdict Verdict
	// DeniedTopics names the topics that caused a denial (for the access
	// log). The whole request is denied regardless; see the package doc.
	DeniedTopics []string
	// Reason attributes the decision (policy and rule), for the access
	// log only; it is never sent to the client.
	Reason string
}

// Allow returns an allowing Decision.
func Allow(reason string) Decision { return Decision{Verdict: VerdictAllow, Reason: reason} }

// Deny returns a denying Decision naming the topics that caused it.
func Deny(reason string, topics ...string) Decision {
	return Decision{Verdict: VerdictDeny, DeniedTopics: topics, Reason: reason}
}

// Decider decides one request. The Request and its slices are only valid
// during the call. It runs on the connection's goroutines (both
// directions: denied Metadata responses are filtered topic by topic), so it
// must be safe for concurrent use, fast, and must not block.
type Decider func(*Request) Decision

// AccessRecord describes one request and what happened to it. Slices are
// borrowed: valid only during the AccessLogger call.
type AccessRecord struct {
	APIKey        int16
	APIName       string
	APIVersion    int16
	CorrelationID int32
	ClientID      string
	Topics        []string
	// UnresolvedTopicIDs are topic IDs that could not be named (denied).
	UnresolvedTopicIDs [][16]byte
	Groups             []string
	Verdict            Verdict
	DeniedTopics       []string
	Reason             string
	// ErrorCode is the Kafka error code the proxy sent in a denial (0
	// when allowed: broker responses are forwarded, not inspected).
	ErrorCode int16
	// ConnectionClosed reports that the request could not be answered
	// (unsupported API, or Produce with acks=0) and the connection was
	// closed instead, as a broker does.
	ConnectionClosed bool
}

// AccessLogger receives one record per request.
type AccessLogger func(*AccessRecord)

// Config configures a Filter.
type Config struct {
	// Decide decides each admitted request. Required.
	Decide Decider
	// AccessLog, if set, receives one record per request.
	AccessLog AccessLogger
	// OnResponse, when set, sees the API key and version of every broker
	// response before it is forwarded, on the goroutine that forwards
	// responses. It exists for tests (fault injection) and debugging;
	// production leaves it nil.
	OnResponse func(apiKey, apiVersion int16)
	// Logger logs connection-level events (closes and their reasons).
	// Nil discards.
	Logger *slog.Logger
	// MaxFrameSize bounds every frame in both directions; <= 0 means
	// DefaultMaxFrameSize.
	MaxFrameSize int32
	// MaxControlRequestSize bounds requests decoded into structs (all
	// but Produce, JoinGroup, SyncGroup, SASLAuthenticate); <= 0 means
	// DefaultMaxControlRequestSize.
	MaxControlRequestSize int
	// MaxInFlight bounds requests awaiting a response on one connection
	// (the client is not read while it is reached); <= 0 means 1024.
	MaxInFlight int
	// PassUnknown forwards requests with API keys or versions this
	// package does not decode when Decide allows them (Decide then sees
	// Supported == false and no topics), and leaves them advertised in
	// ApiVersions responses. By default they are denied: the connection
	// is closed after earlier responses, since no well-formed answer can
	// be built for an API we cannot parse.
	PassUnknown bool
	// AllowTopicIDs turns topic-ID mode on: topic-ID versions (Produce
	// and Fetch v13+, OffsetCommit/OffsetFetch v10+, TxnOffsetCommit v6+)
	// stay advertised in ApiVersions responses, and requests that address
	// topics by ID are admitted and resolved through the cluster's
	// TopicIDs table. Off (the default), such requests are denied without
	// asking Decide and the versions are hidden, so clients use names.
	AllowTopicIDs bool
	// TopicIDRegistry holds the topic-ID tables shared by every connection
	// to the same cluster (a client learns an ID from Metadata on one
	// connection and uses it on another); nil: each connection learns its
	// own. A connection resolves no ID until its broker has reported a
	// cluster id (Metadata v10+), and is closed if the broker reports
	// another one later.
	TopicIDRegistry *TopicIDRegistry
	// TopicIDScope is what the caller trusts the upstream to be (the
	// proxy: its security identity, or its address for reserved
	// identities); tables are per (scope, cluster id).
	TopicIDScope string
	// Budget, if set, is shared by every connection served with it (see
	// MemoryBudget); otherwise a connection's buffers are bounded only by
	// MaxFrameSize.
	Budget *MemoryBudget
	// IdleTimeout closes a client connection that sent nothing, and was
	// sent nothing, for this long while no request was awaiting an answer
	// (Kafka's own connections.max.idle.ms); 0 means 10 minutes, < 0
	// never.
	IdleTimeout time.Duration
	// FrameTimeout bounds the time from a request frame's first byte to
	// its last, including waits for Budget (a client that trickles a frame
	// is cut; Kafka clients give up on a request after 30 s by default);
	// 0 means 30 seconds, < 0 never.
	FrameTimeout time.Duration
	// DrainTimeout bounds how long responses are awaited after the client
	// stops sending; <= 0 means 30s.
	DrainTimeout time.Duration
	// Drain, when set, ends when the proxy drains (a restart or hand-over):
	// the connection is closed at the first moment it is between
	// request/response pairs (no request awaiting its answer, no byte of a
	// next request read), so a client never loses a request it sent. The
	// caller bounds the drain (by cancelling Serve's context).
	Drain context.Context
}

// maxQueuedDenialBytes bounds the denials one connection may have waiting
// behind earlier broker responses.
const maxQueuedDenialBytes = 16 << 20

// Filter enforces a Decider on Kafka connections.
type Filter struct {
	cfg Config
	log *slog.Logger
	// idle counts the connections whose buffers are given back now
	// (idle for idleRelease).
	idle atomic.Int64
}

// NewFilter validates cfg and returns a Filter.
func NewFilter(cfg Config) (*Filter, error) {
	if cfg.Decide == nil {
		return nil, errors.New("kafka filter: nil decider")
	}
	if cfg.MaxFrameSize <= 0 {
		cfg.MaxFrameSize = DefaultMaxFrameSize
	}
	if cfg.MaxControlRequestSize <= 0 {
		cfg.MaxControlRequestSize = DefaultMaxControlRequestSize
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 1024
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 30 * time.Second
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.FrameTimeout == 0 {
		cfg.FrameTimeout = DefaultFrameTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Filter{cfg: cfg, log: log}, nil
}

// Default read timeouts of client connections (see Config).
const (
	DefaultIdleTimeout  = 10 * time.Minute
	DefaultFrameTimeout = 30 * time.Second
)

var (
	// ErrIdleTimeout: the client connection was idle for
	// Config.IdleTimeout and was closed (as a broker closes idle
	// connections).
	ErrIdleTimeout = errors.New("kafka client connection idle")
	// ErrFrameTimeout: a request frame did not arrive whole within
	// Config.FrameTimeout.
	ErrFrameTimeout = errors.New("kafka request frame too slow")
)

// ErrClosedByPolicy is returned by Serve when it closed the connection
// because a denied request could not be answered (an unsupported API, or
// Produce with acks=0).
var ErrClosedByPolicy = errors.New("connection closed by policy")

// pending is one request awaiting its answer to the client, in request
// order: either a broker response (local == nil) or a local denial.
type pending struct {
	corr       int32
	key, ver   int16
	local      []byte
	closeAfter bool
	// filterMeta: a denied Metadata request was forwarded (with topic
	// auto-creation off); the response is filtered per topic.
	filterMeta bool
	allTopics  bool
	clientID   string // Metadata and DescribeTopicPartitions: per-topic decisions
	// internal: the proxy's own Metadata request, asking the broker's
	// cluster id; its answer goes nowhere.
	internal bool
}

type session struct {
	f        *Filter
	client   net.Conn
	upstream net.Conn
	// ids is the connection's topic-ID table: nil until the broker reports
	// its cluster id (set by the response goroutine, read by the request
	// goroutine's Decoder).
	ids atomic.Pointer[TopicIDs]
	// bound, cluster: the cluster id the broker reported first (response
	// goroutine only).
	bound   bool
	cluster *string
	// asked: the request goroutine sent the proxy's own Metadata request;
	// boundc is closed when its answer has been handled.
	asked  bool
	boundc chan struct{}

	cw *lazyWriter   // guarded by wmu
	uw *lazyWriter   // request goroutine only
	ur *bufio.Reader // response goroutine only (nil while idle)
	// release: the request side, idle for idleRelease, asks the response
	// side (by a read deadline in the past on the upstream) to give its
	// buffers back too; drainDeadline: Serve set the upstream's read
	// deadline for the drain (which the response side then keeps). Both
	// guarded by dmu.
	release, drainDeadline bool

	// Lock order: wmu before qmu. wmu is held while anything is written
	// to the client, so a local denial cannot overtake a broker response
	// being copied.
	wmu      sync.Mutex
	qmu      sync.Mutex
	queue    []pending // guarded by qmu; queue[qhead:] are waiting
	qhead    int
	draining bool // guarded by qmu: no more requests will come
	// localBytes counts denial bytes queued behind broker responses
	// (guarded by qmu), so a client cannot pile up unbounded denials
	// behind one slow request.
	localBytes int

	metaReq Request // response goroutine only: per-topic Metadata decisions

	slots chan struct{} // in-flight bound
	done  chan struct{} // closed when Serve ends its connections

	// frameDeadline is when the request being read must be complete
	// (request goroutine only).
	frameDeadline time.Time
	// lastResponse is when a response was last written to the client
	// (unix nanoseconds), for the idle timeout.
	lastResponse atomic.Int64
	// stopping is set when Config.Drain ends (under dmu, which also
	// orders it with the request side's read deadlines).
	dmu      sync.Mutex
	stopping bool
}

// drainPoll is how often a draining connection with a request awaiting
// its answer checks whether it is between request/response pairs.
const drainPoll = 20 * time.Millisecond

// startStopping marks the session draining and wakes a request side
// waiting for the next request.
func (s *session) startStopping() {
	s.dmu.Lock()
	defer s.dmu.Unlock()
	s.stopping = true
	_ = s.client.SetReadDeadline(time.Now())
}

// idleDeadline sets the read deadline of the wait for a next request. It
// reports true when the connection drains and is between request/response
// pairs: it is to close now.
func (s *session) idleDeadline(deadline time.Time, waiting bool) bool {
	s.dmu.Lock()
	defer s.dmu.Unlock()
	if s.stopping {
		if !waiting {
			return true
		}
		if poll := time.Now().Add(drainPoll); deadline.IsZero() || poll.Before(deadline) {
			deadline = poll
		}
	}
	_ = s.client.SetReadDeadline(deadline)
	return false
}

// Serve filters one client connection whose requests go to upstream, until
// either side closes, a frame is malformed or oversized, or ctx ends. It
// closes both connections before returning. A client that closes its side
// normally yields nil after pending responses are delivered; a connection
// closed because a request could not be answered yields ErrClosedByPolicy;
// otherwise the error says why the connection ended (ErrFrameTooLarge,
// ErrMalformed, an upstream read error, ctx.Err(), ...).
func (f *Filter) Serve(ctx context.Context, client, upstream net.Conn) error {
	s := &session{
		f:        f,
		client:   client,
		upstream: upstream,
		cw:       &lazyWriter{w: client, size: 64 << 10},
		uw:       &lazyWriter{w: upstream, size: 64 << 10},
		ur:       bufio.NewReaderSize(upstream, 64<<10),
		slots:    make(chan struct{}, f.cfg.MaxInFlight),
		done:     make(chan struct{}),
	}
	var closeOnce sync.Once
	closeAll := func() {
		closeOnce.Do(func() {
			close(s.done)
			client.Close()
			upstream.Close()
		})
	}
	var errOnce sync.Once
	var firstErr error
	setErr := func(err error) { errOnce.Do(func() { firstErr = err }) }
	stop := context.AfterFunc(ctx, closeAll)
	defer stop()
	if f.cfg.Drain != nil {
		stopDrain := context.AfterFunc(f.cfg.Drain, s.startStopping)
		defer stopDrain()
	}

	respDone := make(chan struct{})
	go func() {
		defer close(respDone)
		// A panic here would end the process: it ends this connection.
		defer func() {
			if v := recover(); v != nil {
				setErr(&PanicError{Value: v, Stack: debug.Stack()})
				closeAll()
			}
		}()
		if err := s.responses(); err != nil && !s.drainedOK(err) {
			setErr(err)
		}
		closeAll() // nothing more can be answered
	}()

	switch reqErr := s.recoveredRequests(); {
	case reqErr == nil || errors.Is(reqErr, ErrClosedByPolicy):
		if reqErr != nil {
			setErr(reqErr)
		}
		if s.startDrain() {
			upstream.Close() // nothing pending: stop the response reader
		} else {
			s.dmu.Lock()
			s.drainDeadline = true
			_ = upstream.SetReadDeadline(time.Now().Add(f.cfg.DrainTimeout))
			s.dmu.Unlock()
		}
	default:
		setErr(reqErr)
		closeAll()
	}
	<-respDone
	closeAll()
	setErr(nil)
	if b := f.cfg.Budget; b != nil {
		s.qmu.Lock()
		b.Release(int64(s.localBytes)) // denials never written
		s.localBytes = 0
		s.qmu.Unlock()
	}

	err := firstErr
	if ctx.Err() != nil {
		err = ctx.Err()
	}
	peer := client.RemoteAddr().String()
	switch {
	case err == nil:
		f.log.Debug("kafka connection closed", "client", peer)
	case errors.Is(err, ErrClosedByPolicy):
		f.log.Info("kafka connection closed by policy", "client", peer)
	case errors.Is(err, ErrIdleTimeout):
		f.log.Debug("kafka connection closed", "client", peer, "reason", err.Error())
	default:
		f.log.Warn("kafka connection closed", "client", peer, "reason", err.Error())
	}
	return err
}

// PanicError is what Serve returns when filtering the connection panicked
// (on either of its goroutines): the connection was closed, the process
// goes on. Callers count it.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string {
	return fmt.Sprintf("panic filtering kafka connection: %v", e.Value)
}

// recoveredRequests runs s.requests, turning a panic into a PanicError so
// that Serve still closes both sides and releases the budget.
func (s *session) recoveredRequests() (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = &PanicError{Value: v, Stack: debug.Stack()}
		}
	}()
	return s.requests()
}

// drainedOK reports whether the response goroutine's error is just the
// upstream closed after a completed drain.
func (s *session) drainedOK(err error) bool {
	if errors.Is(err, ErrClosedByPolicy) {
		return true
	}
	s.qmu.Lock()
	drained := s.draining && s.qhead == len(s.queue)
	s.qmu.Unlock()
	return drained && errors.Is(err, net.ErrClosed)
}

// startDrain marks that no more requests come and reports whether nothing
// is pending.
func (s *session) startDrain() bool {
	s.qmu.Lock()
	defer s.qmu.Unlock()
	s.draining = true
	return s.qhead == len(s.queue)
}

// acquire takes an in-flight slot. Before waiting it flushes requests
// buffered for the broker: their responses are what frees slots.
func (s *session) acquire() error {
	select {
	case s.slots <- struct{}{}:
		return nil
	default:
	}
	if err := s.uw.Flush(); err != nil {
		return fmt.Errorf("write request upstream: %w", err)
	}
	select {
	case s.slots <- struct{}{}:
		return nil
	case <-s.done:
		return net.ErrClosed
	}
}

func (s *session) enqueue(p pending) {
	s.qmu.Lock()
	s.queue = append(s.queue, p)
	s.qmu.Unlock()
}

// requests runs the client→broker direction.
func (s *session) requests() error {
	cfg := &s.f.cfg
	cr := bufio.NewReaderSize(s.client, 64<<10)
	fr := NewFrameReader(cr, cfg.MaxFrameSize)
	if b := cfg.Budget; b != nil {
		fr.charge = func(n int64) error { return b.Acquire(n, s.frameDeadline, s.done) }
		fr.release = b.Release
		defer fr.shrink()
	}
	dec := NewDecoder(nil, cfg.MaxControlRequestSize)
	dec.idsp = &s.ids
	var req Request
	var rec AccessRecord
	// (what the last request's decoding left points into the frame
	// buffer: dropped with it while idle)
	forget := func() { req, rec = Request{}, AccessRecord{} }
	for {
		// Requests the client pipelined go to the broker in one write;
		// flush before waiting on the client.
		if cr.Buffered() < 4 {
			if err := s.uw.Flush(); err != nil {
				return fmt.Errorf("write request upstream: %w", err)
			}
		}
		if cr.Buffered() == 0 {
			if err := s.awaitRequest(&cr, fr, forget); err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
		}
		s.startFrame(cr)
		frame, err := fr.Next()
		if err != nil {
			switch {
			case errors.Is(err, io.EOF):
				return nil
			case isTimeout(err):
				return fmt.Errorf("request frame not complete within %s: %w", cfg.FrameTimeout, ErrFrameTimeout)
			}
			return fmt.Errorf("read request: %w", err)
		}
		derr := dec.Decode(frame, &req)
		if derr != nil && !errors.Is(derr, ErrUnsupported) {
			return derr
		}
		if len(req.UnresolvedTopicIDs) > 0 && cfg.AllowTopicIDs && !s.asked && s.ids.Load() == nil {
			// IDs are resolved through the table of the broker's cluster:
			// before this connection has seen the cluster id, ask for it
			// (a client learns IDs on one connection and uses them on
			// another), then decode again.
			if err := s.askClusterID(req.ClientID); err != nil {
				return err
			}
			if err := dec.Decode(frame, &req); err != nil && !errors.Is(err, ErrUnsupported) {
				return err
			}
		}

		var d Decision
		// byID: denied for how it names topics, answered locally.
		byID, topicCode := false, ErrCodeTopicAuthorizationFailed
		switch {
		case !req.Supported && !cfg.PassUnknown:
			d = Deny(fmt.Sprintf("unsupported api %s v%d", req.APIName(), req.APIVersion))
		case req.Supported && !cfg.AllowTopicIDs && (len(req.TopicIDs) > 0 || topicIDVersion(req.APIKey, req.APIVersion)):
			d, byID = Deny("topic ids not enabled"), true
		case len(req.UnresolvedTopicIDs) > 0:
			// UNKNOWN_TOPIC_ID makes clients refresh their metadata,
			// which teaches the table the ID if its broker knows it.
			d, byID, topicCode = Deny("unresolved topic id"), true, ErrCodeUnknownTopicID
		default:
			d = s.decide(&req)
		}

		rec = AccessRecord{
			APIKey:             req.APIKey,
			APIName:            req.APIName(),
			APIVersion:         req.APIVersion,
			CorrelationID:      req.CorrelationID,
			ClientID:           req.ClientID,
			Topics:             req.Topics,
			UnresolvedTopicIDs: req.UnresolvedTopicIDs,
			Groups:             req.Groups,
			Verdict:            d.Verdict,
			DeniedTopics:       d.DeniedTopics,
			Reason:             d.Reason,
		}

		if d.Verdict == VerdictAllow {
			if req.APIKey == 1 && req.Supported {
				sessionlessFetch(&req)
			}
			if req.ExpectsResponse() {
				if err := s.acquire(); err != nil {
					return err
				}
				p := pending{corr: req.CorrelationID, key: req.APIKey, ver: req.APIVersion}
				if learnsFrom(req.APIKey, req.APIVersion) {
					p.clientID = req.ClientID
				}
				s.enqueue(p)
			}
			s.logAccess(&rec)
			if _, err := s.uw.Write(frame); err != nil {
				return fmt.Errorf("write request upstream: %w", err)
			}
			continue
		}

		if req.APIKey == 3 && req.Supported && req.APIVersion >= 4 && !byID {
			// Metadata is answered as Kafka's authorizer does: the
			// broker's answer with denied topics removed (all-topic
			// listings) or set to error 29 (named topics), so clients
			// still learn the brokers.
			out := rewriteMetadataRequest(frame, &req)
			if err := s.acquire(); err != nil {
				return err
			}
			s.enqueue(pending{
				corr: req.CorrelationID, key: req.APIKey, ver: req.APIVersion,
				filterMeta: true, allTopics: req.AllTopics, clientID: req.ClientID,
			})
			rec.ErrorCode = ErrCodeTopicAuthorizationFailed
			s.logAccess(&rec)
			if _, err := s.uw.Write(out); err != nil {
				return fmt.Errorf("write request upstream: %w", err)
			}
			continue
		}

		p := pending{corr: req.CorrelationID, key: req.APIKey, ver: req.APIVersion}
		if req.ExpectsResponse() {
			resp, code, err := appendDenial(nil, &req, topicCode)
			if err == nil {
				p.local, rec.ErrorCode = resp, code
			} else if !errors.Is(err, ErrUnsupported) {
				return err
			}
		}
		if p.local == nil {
			p.closeAfter = true
			rec.ConnectionClosed = true
		}
		s.logAccess(&rec)
		if err := s.acquire(); err != nil {
			return err
		}
		if err := s.answerLocally(p); err != nil {
			return err
		}
		if p.closeAfter {
			if err := s.uw.Flush(); err != nil {
				return fmt.Errorf("write request upstream: %w", err)
			}
			return ErrClosedByPolicy
		}
	}
}

// retainIdle is how long a client may pause before the large frame buffer
// kept from its last request (charged to the budget) is released.
const retainIdle = 100 * time.Millisecond

// idleRelease is how long a connection waits for its next request with
// its buffers: then (with no request in flight) both sides give them back
// (the request side's read and write buffers and frame buffer, the
// response side's) and wait for the next bytes without (an idle Kafka
// connection held about 420 KB otherwise: BenchmarkIdleKafkaConnMemory).
const idleRelease = 250 * time.Millisecond

// awaitRequest waits for the first byte of the next request, closing the
// connection when it stays idle (nothing read or written, nothing pending)
// for IdleTimeout. Idle for idleRelease with no request in flight, it
// gives the connection's buffers back and waits for the client's bytes
// without one (*cr is nil meanwhile, a new one taken when they come;
// forget drops what refers to the frame buffer).
func (s *session) awaitRequest(cr **bufio.Reader, fr *FrameReader, forget func()) (err error) {
	cfg := &s.f.cfg
	now := time.Now()
	if fr.charged > 0 {
		_ = s.client.SetReadDeadline(now.Add(retainIdle))
		if _, err := (*cr).Peek(1); err == nil || !isTimeout(err) {
			return err
		}
		fr.shrink()
	}
	released := false
	defer func() {
		if released {
			s.f.idle.Add(-1)
		}
		if released && err == nil {
			*cr = bufio.NewReaderSize(s.client, 64<<10)
			fr.r = *cr
		}
	}()
	for {
		var deadline time.Time // IdleTimeout < 0: none
		if cfg.IdleTimeout >= 0 {
			deadline = now.Add(cfg.IdleTimeout)
			if last := time.Unix(0, s.lastResponse.Load()).Add(cfg.IdleTimeout); last.After(deadline) {
				deadline = last
			}
		}
		s.qmu.Lock()
		waiting := s.qhead != len(s.queue)
		s.qmu.Unlock()
		t := time.Now()
		if waiting && cfg.IdleTimeout >= 0 {
			// The client waits for an answer (a long Fetch, a
			// rebalance): not idle.
			deadline = t.Add(cfg.IdleTimeout)
		} else if !deadline.IsZero() && !t.Before(deadline) {
			return fmt.Errorf("nothing sent or received for %s: %w", cfg.IdleTimeout, ErrIdleTimeout)
		}
		// (waits with the buffers end after idleRelease, to give them
		// back once no request is in flight)
		if !released && (deadline.IsZero() || t.Add(idleRelease).Before(deadline)) {
			deadline = t.Add(idleRelease)
		}
		if s.idleDeadline(deadline, waiting) {
			return io.EOF // draining, between request/response pairs
		}
		if released {
			err = waitReadable(s.client)
		} else {
			_, err = (*cr).Peek(1)
		}
		if err == nil || !isTimeout(err) {
			return err
		}
		if !released && !waiting {
			released = s.releaseIdle(fr)
			if released {
				*cr = nil
				forget()
				s.f.idle.Add(1)
			}
		}
	}
}

// releaseIdle gives the request side's buffers back (the client's read
// buffer is the caller's to drop) and asks the response side to give its
// own back, unless a request is in flight (or either connection is no
// socket: waitReadable cannot wait on it).
func (s *session) releaseIdle(fr *FrameReader) bool {
	if !isSocket(s.client) || !isSocket(s.upstream) {
		return false
	}
	s.qmu.Lock()
	idle := s.qhead == len(s.queue)
	s.qmu.Unlock()
	if !idle || !s.uw.release() {
		return false
	}
	fr.drop()
	fr.r = nil
	s.wmu.Lock()
	s.cw.release()
	s.wmu.Unlock()
	s.dmu.Lock()
	if !s.drainDeadline {
		s.release = true
		_ = s.upstream.SetReadDeadline(time.Unix(1, 0))
	}
	s.dmu.Unlock()
	return true
}

// takeRelease reports whether the response side's read timed out because
// the request side asked it to give its buffers back (then the upstream's
// deadline is cleared, unless a drain set one meanwhile).
func (s *session) takeRelease() bool {
	s.dmu.Lock()
	defer s.dmu.Unlock()
	if !s.release {
		return false
	}
	s.release = false
	if !s.drainDeadline {
		_ = s.upstream.SetReadDeadline(time.Time{})
	}
	return true
}

func isSocket(c net.Conn) bool {
	_, ok := c.(syscall.Conn)
	return ok
}

// waitReadable waits until conn has bytes to read, an end of stream or an
// error, holding no buffer (conn's read deadline applies; conns that are
// not sockets return at once).
func waitReadable(conn net.Conn) error {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	var perr error
	err = raw.Read(func(fd uintptr) bool {
		var b [1]byte
		for {
			_, _, e := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK)
			switch e {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false
			case nil:
				return true
			}
			perr = e
			return true
		}
	})
	if err != nil {
		return err
	}
	if perr != nil {
		return &net.OpError{Op: "read", Net: "tcp", Addr: conn.RemoteAddr(), Err: os.NewSyscallError("recvfrom", perr)}
	}
	return nil
}

// lazyWriter is a bufio.Writer taken when first written to and dropped
// (release) while the connection is idle.
type lazyWriter struct {
	w    io.Writer
	size int
	bw   *bufio.Writer
}

func (l *lazyWriter) Write(p []byte) (int, error) {
	if l.bw == nil {
		l.bw = bufio.NewWriterSize(l.w, l.size)
	}
	return l.bw.Write(p)
}

func (l *lazyWriter) Flush() error {
	if l.bw == nil {
		return nil
	}
	return l.bw.Flush()
}

// release drops the buffer if it holds nothing and reports whether it
// holds none now.
func (l *lazyWriter) release() bool {
	if l.bw != nil && l.bw.Buffered() > 0 {
		return false
	}
	l.bw = nil
	return true
}

// startFrame sets the deadline of the request frame about to be read,
// unless it is already buffered whole.
func (s *session) startFrame(cr *bufio.Reader) {
	ft := s.f.cfg.FrameTimeout
	if n := cr.Buffered(); n >= 4 {
		b, _ := cr.Peek(4)
		if size := int32(binary.BigEndian.Uint32(b)); size >= 0 && int64(n) >= 4+int64(size) {
			return // no read will block
		}
	}
	if ft < 0 {
		s.frameDeadline = time.Now().Add(s.f.cfg.DrainTimeout) // budget waits only
		_ = s.client.SetReadDeadline(time.Time{})
		return
	}
	s.frameDeadline = time.Now().Add(ft)
	_ = s.client.SetReadDeadline(s.frameDeadline)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// clusterIDVersion is the Metadata version of the proxy's own request: the
// first with topic IDs (Kafka 2.8), which every broker that accepts
// topic-ID requests answers.
const clusterIDVersion = 10

// askClusterID sends the broker a Metadata request for no topic, whose
// answer (brokers and cluster id only) binds the connection to its
// cluster's topic-ID table, and waits for it. It runs once per connection.
func (s *session) askClusterID(clientID string) error {
	s.asked = true
	s.boundc = make(chan struct{})
	m := kmsg.NewPtrMetadataRequest()
	m.SetVersion(clusterIDVersion)
	m.Topics = []kmsg.MetadataRequestTopic{}
	const corr = -0x7a7a7a7a // any value: answers are matched in order
	frame := kmsg.NewRequestFormatter(kmsg.FormatterClientID(clientID)).AppendRequest(nil, m, corr)
	if err := s.acquire(); err != nil {
		return err
	}
	s.enqueue(pending{corr: corr, key: 3, ver: clusterIDVersion, internal: true})
	if _, err := s.uw.Write(frame); err != nil {
		return fmt.Errorf("write request upstream: %w", err)
	}
	if err := s.uw.Flush(); err != nil {
		return fmt.Errorf("write request upstream: %w", err)
	}
	t := time.NewTimer(s.f.cfg.DrainTimeout)
	defer t.Stop()
	select {
	case <-s.boundc:
	case <-s.done:
		return net.ErrClosed
	case <-t.C:
		// No answer yet: the IDs stay unresolved (denied).
	}
	return nil
}

// sessionlessFetch turns an allowed Fetch request (v7+) into a full fetch
// without a session (SessionID 0, SessionEpoch -1, as Kafka's own legacy
// fetches), in place. With a session (KIP-227) the broker keeps the
// partitions of earlier requests and later requests name only what
// changed, often nothing: policy would see a Fetch naming no topic while
// the broker returns records of topics allowed long ago, also after policy
// revoked them. Without one, every Fetch names every partition it reads.
func sessionlessFetch(r *Request) {
	if r.APIVersion < 7 {
		return
	}
	// ReplicaID (int32, until v14), MaxWaitMillis, MinBytes, MaxBytes
	// (int32), IsolationLevel (int8), then SessionID and SessionEpoch;
	// tagged fields only follow the whole struct.
	off := 4 + 4 + 4 + 4 + 1
	if r.APIVersion >= 15 {
		off -= 4
	}
	if len(r.body) < off+8 {
		return // cannot happen: the body was validated
	}
	binary.BigEndian.PutUint32(r.body[off:], 0)
	binary.BigEndian.PutUint32(r.body[off+4:], 0xffffffff)
}

// decide asks the Decider, failing closed if it panics: a policy bug must
// neither pass traffic nor take the proxy down.
func (s *session) decide(r *Request) (d Decision) {
	defer func() {
		if p := recover(); p != nil {
			s.f.log.Error("kafka decider panicked", "api", r.APIName(), "panic", fmt.Sprint(p))
			d = Deny("decider panicked")
		}
	}()
	return s.f.cfg.Decide(r)
}

func (s *session) logAccess(rec *AccessRecord) {
	if s.f.cfg.AccessLog != nil {
		s.f.cfg.AccessLog(rec)
	}
}

// answerLocally writes a denial now when nothing is ahead of it, or queues
// it behind in-flight broker responses.
func (s *session) answerLocally(p pending) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	s.qmu.Lock()
	if s.qhead != len(s.queue) {
		if s.localBytes+len(p.local) > maxQueuedDenialBytes {
			s.qmu.Unlock()
			<-s.slots
			return fmt.Errorf("more than %d bytes of denials pending behind broker responses", maxQueuedDenialBytes)
		}
		if b := s.f.cfg.Budget; b != nil && !b.TryAcquire(int64(len(p.local))) {
			s.qmu.Unlock()
			<-s.slots
			return fmt.Errorf("queue a %d-byte denial: %w", len(p.local), ErrMemoryBudget)
		}
		s.localBytes += len(p.local)
		s.queue = append(s.queue, p)
		s.qmu.Unlock()
		return nil
	}
	s.qmu.Unlock()
	<-s.slots
	if p.local != nil {
		if _, err := s.cw.Write(p.local); err != nil {
			return fmt.Errorf("write denial: %w", err)
		}
	}
	if err := s.cw.Flush(); err != nil {
		return fmt.Errorf("write denial: %w", err)
	}
	return nil
}

// responses runs the broker→client direction: it reads each broker
// response, checks it answers the oldest forwarded request, forwards it
// (learning topic IDs and clamping ApiVersions on the way), then writes any
// local denials queued behind it.
func (s *session) responses() error {
	cfg := &s.f.cfg
	var hdr [8]byte
	var copyBuf []byte
	var full []byte // reused for responses that are parsed
	var locals []pending
	for {
		if s.ur == nil {
			s.ur = bufio.NewReaderSize(s.upstream, 64<<10)
		}
		if n, err := io.ReadFull(s.ur, hdr[:]); err != nil {
			if n == 0 && isTimeout(err) && s.takeRelease() {
				// The connection is idle (releaseIdle): wait for the
				// broker's next bytes (or its close) without buffers.
				s.ur, copyBuf, full = nil, nil, nil
				for {
					werr := waitReadable(s.upstream)
					if werr == nil {
						break
					}
					if isTimeout(werr) && s.takeRelease() {
						continue // (asked again: an answerless request came meanwhile)
					}
					return fmt.Errorf("read response: %w", werr)
				}
				continue
			}
			return fmt.Errorf("read response: %w", err)
		}
		size := int32(binary.BigEndian.Uint32(hdr[:4]))
		corr := int32(binary.BigEndian.Uint32(hdr[4:]))
		if size < 4 || size > cfg.MaxFrameSize {
			return fmt.Errorf("response frame size %d: %w", size, ErrMalformed)
		}

		s.wmu.Lock()
		s.qmu.Lock()
		var head pending
		ok := s.qhead < len(s.queue)
		if ok {
			head = s.queue[s.qhead]
		}
		s.qmu.Unlock()
		if !ok || head.local != nil || head.closeAfter || head.corr != corr {
			s.wmu.Unlock()
			return fmt.Errorf("response with unexpected correlation id %d: %w", corr, ErrMalformed)
		}
		if cfg.OnResponse != nil {
			cfg.OnResponse(head.key, head.ver)
		}

		var err error
		if learnsFrom(head.key, head.ver) || head.key == 18 || head.filterMeta {
			full, err = s.forwardParsed(head, hdr[:], int(size)-4, full)
		} else {
			if copyBuf == nil {
				copyBuf = make([]byte, 64<<10)
			}
			err = s.forwardStream(hdr[:], int64(size)-4, copyBuf)
		}
		if err != nil {
			s.wmu.Unlock()
			return err
		}

		s.qmu.Lock()
		s.qhead++
		locals = locals[:0]
		freed := 0
		for s.qhead < len(s.queue) && (s.queue[s.qhead].local != nil || s.queue[s.qhead].closeAfter) {
			locals = append(locals, s.queue[s.qhead])
			freed += len(s.queue[s.qhead].local)
			s.localBytes -= len(s.queue[s.qhead].local)
			s.queue[s.qhead] = pending{}
			s.qhead++
		}
		empty := s.qhead == len(s.queue)
		if empty {
			s.queue, s.qhead = s.queue[:0], 0
		}
		draining := s.draining
		s.qmu.Unlock()
		if b := cfg.Budget; b != nil {
			// Charged while queued; written below (or dropped with the
			// connection).
			b.Release(int64(freed))
		}
		for range 1 + len(locals) {
			<-s.slots
		}

		closing := false
		for _, p := range locals {
			if p.local != nil {
				if _, err := s.cw.Write(p.local); err != nil {
					s.wmu.Unlock()
					return fmt.Errorf("write denial: %w", err)
				}
			}
			closing = closing || p.closeAfter
		}
		if s.ur.Buffered() == 0 || closing || empty {
			if err := s.cw.Flush(); err != nil {
				s.wmu.Unlock()
				return fmt.Errorf("write response: %w", err)
			}
			if cfg.IdleTimeout > 0 {
				s.lastResponse.Store(time.Now().UnixNano())
			}
		}
		s.wmu.Unlock()
		if closing {
			return ErrClosedByPolicy
		}
		if draining && empty {
			return nil
		}
	}
}

// forwardStream copies one response to the client without buffering it
// whole. Caller holds wmu.
func (s *session) forwardStream(hdr []byte, rest int64, buf []byte) error {
	if _, err := s.cw.Write(hdr); err != nil {
		return fmt.Errorf("write response: %w", err)
	}
	for rest > 0 {
		n, err := s.ur.Read(buf[:min(int64(len(buf)), rest)])
		if n > 0 {
			if _, werr := s.cw.Write(buf[:n]); werr != nil {
				return fmt.Errorf("write response: %w", werr)
			}
			rest -= int64(n)
		}
		if err != nil && rest > 0 {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return fmt.Errorf("read response: %w", err)
		}
	}
	return nil
}

// forwardParsed reads a whole response (Metadata, DescribeTopicPartitions,
// ApiVersions), learns topic IDs or clamps versions, and writes it. Caller
// holds wmu.
func (s *session) forwardParsed(head pending, hdr []byte, rest int, buf []byte) ([]byte, error) {
	buf, charged, err := s.readResponse(buf, hdr, 8+rest)
	if b := s.f.cfg.Budget; b != nil && charged > 0 {
		defer b.Release(charged)
	}
	if err != nil {
		return nil, err
	}
	out := buf
	resp := kmsg.ResponseForKey(head.key)
	resp.SetVersion(head.ver)
	body := buf[8:]
	if head.key != 18 && resp.IsFlexible() {
		w := wire{b: body}
		w.skipTags()
		if w.bad {
			return buf, fmt.Errorf("response header tags: %w", ErrMalformed)
		}
		body = w.b
	}
	hdrEnd := len(buf) - len(body) // size, correlation id, header tags
	if head.internal {
		resp := kmsg.NewPtrMetadataResponse()
		resp.SetVersion(head.ver)
		if !responseSchema(3).validate(body, head.ver) || resp.ReadFrom(body) != nil {
			return buf, fmt.Errorf("decode metadata response v%d: %w", head.ver, ErrMalformed)
		}
		err := s.learn(true, resp.ClusterID, resp.Topics, nil)
		close(s.boundc)
		return buf, err
	}
	switch {
	case head.key == 18:
		if clamped, ok, _ := clampAPIVersions(buf[:8:8], head.ver, body, s.f.cfg.PassUnknown, s.f.cfg.AllowTopicIDs); ok {
			out = append([]byte(nil), clamped...)
			binary.BigEndian.PutUint32(out, uint32(len(out)-4))
		}
	case head.filterMeta:
		filtered, err := s.filterMetadata(append([]byte(nil), buf[:hdrEnd]...), head, body)
		if err != nil {
			// Never pass an answer we could not filter.
			return buf, err
		}
		out = filtered
		binary.BigEndian.PutUint32(out, uint32(len(out)-4))
	default: // Metadata v10+, DescribeTopicPartitions: topic IDs
		changed, err := s.topicIDs(head, buf[:hdrEnd:hdrEnd], body)
		if err != nil {
			// An answer we cannot read may carry IDs the client must not
			// see: close rather than pass it.
			return buf, err
		}
		if changed != nil {
			out = changed
			binary.BigEndian.PutUint32(out, uint32(len(out)-4))
		}
	}
	if _, err := s.cw.Write(out); err != nil {
		return buf, fmt.Errorf("write response: %w", err)
	}
	if cap(buf) > frameBase {
		buf = nil // only the uncharged base is kept
	}
	return buf, nil
}

// readResponse reads a whole response of need bytes (hdr, already read,
// first) into buf, which grows with the bytes received, never with the
// declared size alone; growth beyond frameBase is charged to the budget
// (charged, to be released by the caller).
func (s *session) readResponse(buf, hdr []byte, need int) (_ []byte, charged int64, _ error) {
	if cap(buf) < min(need, frameBase) {
		buf = make([]byte, 0, min(need, frameBase))
	}
	buf = append(buf[:0], hdr...)
	b := s.f.cfg.Budget
	deadline := time.Now().Add(s.f.cfg.DrainTimeout)
	if ft := s.f.cfg.FrameTimeout; ft > 0 {
		deadline = time.Now().Add(ft)
	}
	for len(buf) < need {
		if len(buf) == cap(buf) {
			grow := min(need, max(2*cap(buf), frameBase))
			var c int64
			if b != nil {
				c = int64(grow - frameBase)
				if err := b.Acquire(c, deadline, s.done); err != nil {
					return nil, charged, fmt.Errorf("read response: %w", err)
				}
			}
			nb := make([]byte, len(buf), grow)
			copy(nb, buf)
			if b != nil {
				b.Release(charged)
			}
			buf, charged = nb, c
		}
		n, err := io.ReadFull(s.ur, buf[len(buf):min(need, cap(buf))])
		buf = buf[:len(buf)+n]
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, charged, fmt.Errorf("read response: %w", err)
		}
	}
	return buf, charged, nil
}

// rewriteMetadataRequest returns a copy of a Metadata request frame (v4+)
// with topic auto-creation turned off, so forwarding a denied request
// cannot create a topic.
func rewriteMetadataRequest(frame []byte, r *Request) []byte {
	m := r.msg.(*kmsg.MetadataRequest)
	m.AllowAutoTopicCreation = false
	hdrLen := len(frame) - len(r.body)
	out := make([]byte, 0, len(frame))
	out = append(out, frame[:hdrLen]...)
	out = m.AppendTo(out)
	binary.BigEndian.PutUint32(out, uint32(len(out)-4))
	return out
}

// filterMetadata re-encodes a Metadata response (after header) for a
// denied request: each topic is decided on its own; denied ones are
// dropped from all-topic listings and answered with error 29 otherwise.
// The Decider is called from the response goroutine here.
func (s *session) filterMetadata(dst []byte, head pending, body []byte) ([]byte, error) {
	resp := kmsg.NewPtrMetadataResponse()
	resp.SetVersion(head.ver)
	if !responseSchema(3).validate(body, head.ver) || resp.ReadFrom(body) != nil {
		return dst, fmt.Errorf("decode metadata response v%d: %w", head.ver, ErrMalformed)
	}
	if head.ver >= 10 {
		if err := s.learn(true, resp.ClusterID, resp.Topics, nil); err != nil {
			return dst, err
		}
	}
	kept := resp.Topics[:0]
	for _, t := range resp.Topics {
		if s.topicAllowed(head, t.Topic, t.TopicID) {
			kept = append(kept, t)
			continue
		}
		if head.allTopics {
			continue
		}
		t.ErrorCode = ErrCodeTopicAuthorizationFailed
		t.TopicID = [16]byte{} // no ID for a topic the client may not use
		t.Partitions = nil
		t.IsInternal = false
		t.AuthorizedOperations = -2147483648
		kept = append(kept, t)
	}
	resp.Topics = kept
	return resp.AppendTo(dst), nil
}

// topicAllowed decides one topic of a Metadata or DescribeTopicPartitions
// answer as a request of that API naming only it. Called from the response
// goroutine.
func (s *session) topicAllowed(head pending, name *string, id [16]byte) bool {
	r := &s.metaReq
	r.reset()
	r.APIKey, r.APIVersion, r.CorrelationID, r.ClientID, r.Supported = head.key, head.ver, head.corr, head.clientID, true
	if name != nil {
		r.Topics = append(r.Topics, *name)
	} else {
		r.Topics = append(r.Topics, "")
	}
	if !isZeroID(id) {
		r.TopicIDs = append(r.TopicIDs, id)
	}
	return s.decide(r).Verdict == VerdictAllow
}

// learn binds the connection to the cluster its broker reports (Metadata
// v10+ answers; clusterID is ignored for DescribeTopicPartitions, which
// carries none) and, in topic-ID mode, learns the answer's topic IDs into
// that cluster's table. A broker that reports a second cluster id is
// lying to someone: the connection is closed.
func (s *session) learn(metadata bool, clusterID *string, md []kmsg.MetadataResponseTopic, dtp []kmsg.DescribeTopicPartitionsResponseTopic) error {
	if !s.f.cfg.AllowTopicIDs {
		return nil
	}
	if metadata {
		if !s.bound {
			s.bound = true
			if clusterID != nil {
				c := *clusterID
				s.cluster = &c
				var t *TopicIDs
				if reg := s.f.cfg.TopicIDRegistry; reg != nil {
					t = reg.Table(s.f.cfg.TopicIDScope, c)
				} else {
					t = NewTopicIDs(0)
				}
				if t != nil {
					s.ids.Store(t)
				}
			}
		} else if (s.cluster == nil) != (clusterID == nil) || (clusterID != nil && *s.cluster != *clusterID) {
			return fmt.Errorf("broker reported cluster id %s after %s: %w", quoteNullable(clusterID), quoteNullable(s.cluster), ErrMalformed)
		}
	}
	t := s.ids.Load()
	if t == nil {
		return nil // no cluster id yet: IDs stay unresolved
	}
	for i := range md {
		if tp := &md[i]; tp.Topic != nil && tp.ErrorCode == 0 {
			t.Learn(*tp.Topic, tp.TopicID)
		}
	}
	for i := range dtp {
		if tp := &dtp[i]; tp.Topic != nil && tp.ErrorCode == 0 {
			t.Learn(*tp.Topic, tp.TopicID)
		}
	}
	return nil
}

func quoteNullable(s *string) string {
	if s == nil {
		return "null"
	}
	return fmt.Sprintf("%q", *s)
}

// topicIDs handles an allowed Metadata v10+ or DescribeTopicPartitions
// answer: it learns the IDs (topic-ID mode) and clears the IDs of topics
// the client may not use. It returns the re-encoded frame (header hdr,
// size not set) when an ID was cleared, else nil.
func (s *session) topicIDs(head pending, hdr, body []byte) ([]byte, error) {
	var resp kmsg.Response
	if head.key == 3 {
		resp = kmsg.NewPtrMetadataResponse()
	} else {
		resp = kmsg.NewPtrDescribeTopicPartitionsResponse()
	}
	resp.SetVersion(head.ver)
	if !responseSchema(head.key).validate(body, head.ver) || resp.ReadFrom(body) != nil {
		return nil, fmt.Errorf("decode %s response v%d: %w", APIKeyName(head.key), head.ver, ErrMalformed)
	}
	changed := false
	switch m := resp.(type) {
	case *kmsg.MetadataResponse:
		if err := s.learn(true, m.ClusterID, m.Topics, nil); err != nil {
			return nil, err
		}
		for i := range m.Topics {
			tp := &m.Topics[i]
			if !isZeroID(tp.TopicID) && !s.topicAllowed(head, tp.Topic, tp.TopicID) {
				tp.TopicID, changed = [16]byte{}, true
			}
		}
	case *kmsg.DescribeTopicPartitionsResponse:
		if err := s.learn(false, nil, nil, m.Topics); err != nil {
			return nil, err
		}
		for i := range m.Topics {
			tp := &m.Topics[i]
			if !isZeroID(tp.TopicID) && !s.topicAllowed(head, tp.Topic, tp.TopicID) {
				tp.TopicID, changed = [16]byte{}, true
			}
		}
	}
	if !changed {
		return nil, nil
	}
	return resp.AppendTo(append([]byte(nil), hdr...)), nil
}
