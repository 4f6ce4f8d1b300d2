package kafka

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

func frameOf(payload []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(payload))), payload...)
}

func TestFrameReaderReadsConsecutiveFrames(t *testing.T) {
	a, b := frameOf([]byte("hello")), frameOf(bytes.Repeat([]byte{7}, 200_000))
	fr := NewFrameReader(bytes.NewReader(append(append([]byte(nil), a...), b...)), 0)
	for i, want := range [][]byte{a, b} {
		got, err := fr.Next()
		if err != nil {
			t.Fatalf("frame %d: %v", i, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("frame %d differs", i)
		}
	}
	if _, err := fr.Next(); err != io.EOF {
		t.Fatalf("after last frame: %v, want io.EOF", err)
	}
}

func TestFrameReaderRejectsBadSizes(t *testing.T) {
	for _, tc := range []struct {
		name  string
		input []byte
		want  error
	}{
		{"oversized", []byte{0, 0x10, 0, 1}, ErrFrameTooLarge},
		{"negative", []byte{0x80, 0, 0, 0}, ErrMalformed},
		{"truncated size", []byte{0, 0}, io.ErrUnexpectedEOF},
		{"truncated body", []byte{0, 0, 0, 10, 1, 2}, io.ErrUnexpectedEOF},
	} {
		_, err := NewFrameReader(bytes.NewReader(tc.input), 1<<20).Next()
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
	}
}

func TestFrameReaderMemoryFollowsReceivedBytes(t *testing.T) {
	// A peer declares 90 MiB but sends 100 bytes: the buffer must not
	// grow to the declared size.
	in := append([]byte{0x05, 0xa0, 0, 0}, make([]byte, 100)...)
	fr := NewFrameReader(bytes.NewReader(in), 0)
	if _, err := fr.Next(); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("err = %v", err)
	}
	if c := cap(fr.buf); c > 4+frameChunk {
		t.Fatalf("buffer grew to %d bytes for 100 received", c)
	}
}

func TestFrameReaderDropsHugeBufferAfterUse(t *testing.T) {
	big := frameOf(make([]byte, 8<<20))
	small := frameOf([]byte("x"))
	fr := NewFrameReader(bytes.NewReader(append(big, small...)), 0)
	if _, err := fr.Next(); err != nil {
		t.Fatal(err)
	}
	if _, err := fr.Next(); err != nil {
		t.Fatal(err)
	}
	if c := cap(fr.buf); c > retainFrameBuf {
		t.Fatalf("kept a %d byte buffer after a small frame", c)
	}
}
