package flow

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"time"
)

// MaxRecordLine bounds one JSON-lines record on the agent's flow intake.
const MaxRecordLine = 256 << 10

// Forwarder streams records to the agent's flow intake (a Unix socket;
// JSON lines, the access-log format) from a bounded queue. Send never
// blocks: while the queue is full (the agent is away or slow) records are
// dropped and counted, so a proxy's requests never wait for observability.
type Forwarder struct {
	// Linger is how long the first record of a batch waits for more
	// before the batch is written (0: written as soon as the queue is
	// empty). Set it before Run: a busy proxy then wakes the forwarder and
	// writes to the socket once per batch instead of once per request.
	Linger time.Duration

	path    string
	q       chan *Record
	log     *slog.Logger
	sent    atomic.Uint64
	dropped atomic.Uint64
}

// NewForwarder returns a forwarder to the socket at path with a queue of
// queue records (default 8192); Run sends them.
func NewForwarder(path string, queue int, log *slog.Logger) *Forwarder {
	if queue <= 0 {
		queue = 8192
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Forwarder{path: path, q: make(chan *Record, queue), log: log}
}

// Send queues r (the forwarder owns it from now on) or drops it when the
// queue is full.
func (f *Forwarder) Send(r *Record) {
	select {
	case f.q <- r:
	default:
		f.dropped.Add(1)
	}
}

// Stats returns how many records were written to the intake and how many
// were dropped (queue full, or lost with a broken connection).
func (f *Forwarder) Stats() (sent, dropped uint64) { return f.sent.Load(), f.dropped.Load() }

// Run connects to the intake and writes queued records until ctx ends,
// reconnecting (with backoff) when the agent goes away.
func (f *Forwarder) Run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	warned := false
	for ctx.Err() == nil {
		var d net.Dialer
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := d.DialContext(dctx, "unix", f.path)
		cancel()
		if err != nil {
			if !warned {
				f.log.Warn("agent flow intake unreachable; access records are dropped while it is", "socket", f.path, "error", err)
				warned = true
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 5*time.Second)
			continue
		}
		if warned {
			f.log.Info("agent flow intake connected", "socket", f.path)
		}
		warned, backoff = false, 100*time.Millisecond
		err = f.stream(ctx, conn)
		conn.Close()
		if err != nil && ctx.Err() == nil {
			f.log.Warn("agent flow intake", "socket", f.path, "error", err)
		}
	}
}

// stream writes records to conn until ctx ends or a write fails; the
// records of a failed write are counted as dropped.
func (f *Forwarder) stream(ctx context.Context, conn net.Conn) error {
	stop := context.AfterFunc(ctx, func() { conn.SetWriteDeadline(time.Now()) })
	defer stop()
	w := bufio.NewWriterSize(conn, 64<<10)
	var buf []byte
	var tc timeCache
	pending := uint64(0) // records in w not yet flushed
	flush := func() error {
		if err := w.Flush(); err != nil {
			f.dropped.Add(pending)
			pending = 0
			return err
		}
		f.sent.Add(pending)
		pending = 0
		return nil
	}
	for {
		var r *Record
		select {
		case <-ctx.Done():
			flush()
			return nil
		case r = <-f.q:
		}
		if pending == 0 && f.Linger > 0 {
			t := time.NewTimer(f.Linger)
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
		}
		buf = appendJSON(buf[:0], r, &tc)
		// (records a full buffer flushed on its own are counted at the
		// next flush; a failure counts every record since the last one)
		if _, err := w.Write(buf); err != nil {
			f.dropped.Add(pending + 1)
			return err
		}
		pending++
		if len(f.q) == 0 {
			if err := flush(); err != nil {
				return err
			}
		}
	}
}

// ErrRecordTooLong: a line on the flow intake exceeds MaxRecordLine.
var ErrRecordTooLong = errors.New("flow record line too long")

// DecodeJSONLines reads JSON-lines records from r until EOF and hands
// each to fn. Lines that do not decode are skipped and counted (bad); a
// line longer than maxLine (default MaxRecordLine) ends the stream with
// ErrRecordTooLong.
func DecodeJSONLines(r io.Reader, maxLine int, fn func(*Record)) (bad int, err error) {
	if maxLine <= 0 {
		maxLine = MaxRecordLine
	}
	br := bufio.NewReaderSize(r, 64<<10)
	var long []byte
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			long = append(long, line...)
			if len(long) > maxLine {
				return bad, fmt.Errorf("%w (more than %d bytes)", ErrRecordTooLong, maxLine)
			}
			continue
		}
		if long != nil {
			line = append(long, line...)
			long = nil
		}
		if len(line) > maxLine {
			return bad, fmt.Errorf("%w (%d bytes)", ErrRecordTooLong, len(line))
		}
		if t := bytes.TrimSpace(line); len(t) > 0 {
			rec := new(Record)
			if decodeRecord(t, rec) != nil {
				bad++
			} else {
				fn(rec)
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return bad, nil
			}
			return bad, err
		}
	}
}
