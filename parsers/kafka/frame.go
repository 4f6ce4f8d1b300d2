package kafka

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// DefaultMaxFrameSize is the largest frame accepted by default: 100 MiB,
// Kafka's own socket.request.max.bytes default.
const DefaultMaxFrameSize = 100 << 20

// Errors returned for bad input. They are wrapped with context; test with
// errors.Is.
var (
	// ErrFrameTooLarge: a frame declares a size above the configured limit.
	ErrFrameTooLarge = errors.New("frame too large")
	// ErrMalformed: a frame or message does not follow the Kafka protocol.
	ErrMalformed = errors.New("malformed kafka message")
	// ErrUnsupported: an API key or version this package does not decode.
	ErrUnsupported = errors.New("unsupported api key or version")
)

const (
	// frameChunk is how much buffer is added at a time while a large frame
	// arrives, so a peer that declares a huge size but sends little costs
	// little memory.
	frameChunk = 64 << 10
	// retainFrameBuf is the largest buffer kept for the next frame; a
	// larger one (from a rare big frame) is dropped after use.
	retainFrameBuf = 4 << 20
	// frameBase is the buffer every reader keeps; memory beyond it is
	// charged to a MemoryBudget when the reader has one.
	frameBase = 4 + frameChunk
)

// FrameReader reads length-prefixed Kafka frames (a big-endian int32 size
// followed by that many bytes) from a stream, reusing one buffer. Memory
// grows with the bytes actually received, never with the declared size
// alone, and never beyond the limit.
type FrameReader struct {
	r   io.Reader
	max int32
	buf []byte
	hdr [4]byte
	// charge, when set, is asked for n more bytes before the buffer
	// grows beyond frameBase, and release gets them back; charged is what
	// buf holds now.
	charge  func(n int64) error
	release func(n int64)
	charged int64
}

// NewFrameReader returns a FrameReader on r that rejects frames larger than
// maxSize bytes (excluding the 4-byte size prefix); maxSize <= 0 means
// DefaultMaxFrameSize. Wrap r in a bufio.Reader for small frames.
func NewFrameReader(r io.Reader, maxSize int32) *FrameReader {
	if maxSize <= 0 {
		maxSize = DefaultMaxFrameSize
	}
	return &FrameReader{r: r, max: maxSize}
}

// Next reads one frame and returns it including its 4-byte size prefix, so
// it can be forwarded unchanged. The slice is valid until the next call.
// A clean end of stream before a frame starts returns io.EOF; a stream
// ending inside a frame returns io.ErrUnexpectedEOF.
func (f *FrameReader) Next() ([]byte, error) {
	if _, err := io.ReadFull(f.r, f.hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("read frame size: %w", err)
		}
		return nil, err
	}
	size := int32(binary.BigEndian.Uint32(f.hdr[:]))
	switch {
	case size < 0:
		return nil, fmt.Errorf("negative frame size %d: %w", size, ErrMalformed)
	case size > f.max:
		return nil, fmt.Errorf("frame size %d above limit %d: %w", size, f.max, ErrFrameTooLarge)
	}
	need := 4 + int(size)
	if cap(f.buf) > retainFrameBuf && need <= retainFrameBuf {
		f.drop()
	}
	if cap(f.buf) < frameBase {
		f.buf = make([]byte, 0, frameBase)
	}
	f.buf = append(f.buf[:0], f.hdr[:]...)
	for len(f.buf) < need {
		if len(f.buf) == cap(f.buf) {
			grow := min(need, max(2*cap(f.buf), frameBase))
			var charge int64
			if f.charge != nil {
				// The new buffer is charged before it exists; the old
				// one's charge goes once it is copied.
				charge = int64(grow - frameBase)
				if err := f.charge(charge); err != nil {
					return nil, fmt.Errorf("read frame body: %w", err)
				}
			}
			nb := make([]byte, len(f.buf), grow)
			copy(nb, f.buf)
			f.drop()
			f.buf, f.charged = nb, charge
		}
		end := min(need, cap(f.buf))
		n, err := io.ReadFull(f.r, f.buf[len(f.buf):end])
		f.buf = f.buf[:len(f.buf)+n]
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("read frame body: %w", err)
		}
	}
	return f.buf, nil
}

// drop forgets the buffer and returns its charge.
func (f *FrameReader) drop() {
	if f.charged > 0 {
		f.release(f.charged)
		f.charged = 0
	}
	f.buf = nil
}

// shrink drops a buffer that holds budget (larger than frameBase), e.g.
// while the connection is idle.
func (f *FrameReader) shrink() {
	if f.charged > 0 {
		f.drop()
	}
}
