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
	"sync"
	"sync/atomic"
	"time"
)

// MaxRecordLine bounds one JSON-lines record on the agent's flow intake.
const MaxRecordLine = 256 << 10

// Forwarder streams records to the agent's flow intake (a Unix socket;
// JSON lines, the access-log format) from a bounded queue. Send never
// blocks: while the queue is full (the agent is away or slow) records are
// dropped and counted, so a proxy's requests never wait for observability.
//
// A record is encoded when it is sent, into the queue (a buffer of JSON
// lines): the forwarder keeps no pointer to it, so the caller may reuse
// it as soon as Send returns, and a batch is one write to the socket.
type Forwarder struct {
	// Linger is how long the first record of a batch waits for more
	// before the batch is written (0: written as soon as the writer
	// wakes). Set it before Run: a busy proxy then wakes the forwarder and
	// writes to the socket once per batch instead of once per request.
	Linger time.Duration

	path     string
	log      *slog.Logger
	max      int // records the queue holds
	maxBytes int // bytes the queue holds
	wake     chan struct{}
	sent     atomic.Uint64
	dropped  atomic.Uint64

	mu     sync.Mutex
	chunks [][]byte  // queued records, JSON lines (guarded by mu)
	n      int       // records in chunks (guarded by mu)
	bytes  int       // bytes in chunks (guarded by mu)
	free   [][]byte  // written chunks for reuse (guarded by mu)
	list   [][]byte  // the last batch's chunk list, for reuse (guarded by mu)
	tc     timeCache // guarded by mu
}

// chunkSize is the size of the queue's buffers: a batch is a list of
// them (written with one writev), so a burst costs no growing copies;
// maxFreeChunks are kept for reuse.
const (
	chunkSize     = 64 << 10
	maxFreeChunks = 4
)

// NewForwarder returns a forwarder to the socket at path with a queue of
// queue records (default 8192, and at most 1 KiB a record on average:
// bounded in bytes too); Run sends them.
func NewForwarder(path string, queue int, log *slog.Logger) *Forwarder {
	if queue <= 0 {
		queue = 8192
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Forwarder{path: path, max: queue, maxBytes: max(queue<<10, 1<<20), log: log, wake: make(chan struct{}, 1)}
}

// Send queues r, encoded (r is not kept: the caller may reuse it), or
// drops it when the queue is full.
func (f *Forwarder) Send(r *Record) {
	f.mu.Lock()
	if f.n >= f.max {
		f.mu.Unlock()
		f.dropped.Add(1)
		return
	}
	c := f.tail(512)
	before := len(*c)
	*c = appendJSON(*c, r, &f.tc)
	f.queuedLocked(len(*c) - before)
}

// SendLine queues one record already encoded as a JSON line (AppendJSON's
// output; line is not kept), or drops it when the queue is full.
func (f *Forwarder) SendLine(line []byte) {
	f.mu.Lock()
	if f.n >= f.max {
		f.mu.Unlock()
		f.dropped.Add(1)
		return
	}
	c := f.tail(len(line))
	*c = append(*c, line...)
	f.queuedLocked(len(line))
}

// tail returns the queue's last chunk, with room for need bytes (a new
// chunk when the last has not; a record is never split between two).
func (f *Forwarder) tail(need int) *[]byte {
	if k := len(f.chunks); k > 0 && cap(f.chunks[k-1])-len(f.chunks[k-1]) >= need {
		return &f.chunks[k-1]
	}
	var c []byte
	if k := len(f.free); k > 0 && need <= chunkSize {
		c, f.free = f.free[k-1], f.free[:k-1]
	} else {
		c = make([]byte, 0, max(chunkSize, need))
	}
	f.chunks = append(f.chunks, c)
	return &f.chunks[len(f.chunks)-1]
}

// queuedLocked counts a record of size bytes appended to the queue (or
// takes it back and drops it when the queue's bytes overflow), unlocks,
// and wakes the writer for a batch's first record.
func (f *Forwarder) queuedLocked(size int) {
	if f.bytes+size > f.maxBytes && f.n > 0 {
		c := &f.chunks[len(f.chunks)-1]
		*c = (*c)[:len(*c)-size]
		f.mu.Unlock()
		f.dropped.Add(1)
		return
	}
	f.n++
	f.bytes += size
	first := f.n == 1
	f.mu.Unlock()
	if first {
		select {
		case f.wake <- struct{}{}:
		default:
		}
	}
}

// take returns the queued batch and how many records it holds, leaving
// the queue empty.
func (f *Forwarder) take() ([][]byte, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, n := f.chunks, f.n
	f.chunks, f.n, f.bytes, f.list = f.list[:0], 0, 0, nil
	return b, n
}

// giveBack keeps a written batch's chunks for reuse (up to
// maxFreeChunks: a burst's are let go, an idle proxy holds little).
func (f *Forwarder) giveBack(b [][]byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, c := range b {
		if cap(c) == chunkSize && len(f.free) < maxFreeChunks {
			f.free = append(f.free, c[:0])
		}
		b[i] = nil
	}
	f.list = b[:0]
}

// Stats returns how many records were written to the intake and how many
// were dropped (queue full, or lost with a broken connection).
func (f *Forwarder) Stats() (sent, dropped uint64) { return f.sent.Load(), f.dropped.Load() }

// finalWrite bounds the writes after Run's context ended: the batch
// being written and what is queued then reach the intake if it takes
// them within this time.
const finalWrite = time.Second

// Run connects to the intake and writes queued records until ctx ends,
// reconnecting (with backoff) when the agent goes away. When ctx ends,
// what is queued is written (within finalWrite) before Run returns; what
// could not be is counted as dropped.
func (f *Forwarder) Run(ctx context.Context) {
	defer func() {
		// what could not be written (no intake, or it failed) is lost:
		// counted
		if _, n := f.take(); n > 0 {
			f.dropped.Add(uint64(n))
		}
	}()
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

// stream writes queued records to conn, a batch a write, until ctx ends
// or a write fails; the records of a failed write are counted as
// dropped. When ctx ends, the write under way and one last one of what
// is queued then have finalWrite to complete.
func (f *Forwarder) stream(ctx context.Context, conn net.Conn) error {
	stop := context.AfterFunc(ctx, func() { conn.SetWriteDeadline(time.Now().Add(finalWrite)) })
	defer stop()
	var list [][]byte
	write := func() error {
		b, n := f.take()
		if n == 0 {
			f.giveBack(b)
			return nil
		}
		list = append(list[:0], b...)
		bufs := net.Buffers(list) // (WriteTo consumes bufs, not list)
		_, err := bufs.WriteTo(conn)
		clear(list)
		f.giveBack(b)
		if err != nil {
			f.dropped.Add(uint64(n))
			return err
		}
		f.sent.Add(uint64(n))
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return write()
		case <-f.wake:
		}
		if f.Linger > 0 {
			t := time.NewTimer(f.Linger)
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
		}
		if err := write(); err != nil {
			return err
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
