package kafka

import (
	"encoding/binary"
	"math"
)

// wire is a bounds-checked cursor over a Kafka message. The first failure
// sets bad and every later read returns zero values, so decoders check once
// at the end (or at loop heads, to stop early).
type wire struct {
	b   []byte
	bad bool
}

func (w *wire) fail() { w.bad = true; w.b = nil }

func (w *wire) int8() int8 {
	if len(w.b) < 1 {
		w.fail()
		return 0
	}
	v := int8(w.b[0])
	w.b = w.b[1:]
	return v
}

func (w *wire) int16() int16 {
	if len(w.b) < 2 {
		w.fail()
		return 0
	}
	v := int16(binary.BigEndian.Uint16(w.b))
	w.b = w.b[2:]
	return v
}

func (w *wire) int32() int32 {
	if len(w.b) < 4 {
		w.fail()
		return 0
	}
	v := int32(binary.BigEndian.Uint32(w.b))
	w.b = w.b[4:]
	return v
}

func (w *wire) uuid() (id [16]byte) {
	if len(w.b) < 16 {
		w.fail()
		return id
	}
	copy(id[:], w.b)
	w.b = w.b[16:]
	return id
}

// uvarint reads a 32-bit unsigned varint exactly as kmsg does (at most
// five bytes, the fifth at most 0x0f), so both agree on every position.
func (w *wire) uvarint() uint32 {
	var v uint32
	for i := 0; i < 5; i++ {
		if len(w.b) == 0 {
			w.fail()
			return 0
		}
		c := w.b[0]
		w.b = w.b[1:]
		if i == 4 {
			if c > 0x0f {
				w.fail()
				return 0
			}
			return v | uint32(c)<<28
		}
		v |= uint32(c&0x7f) << (7 * i)
		if c < 0x80 {
			return v
		}
	}
	return v
}

func (w *wire) skip(n int) {
	if n < 0 || n > len(w.b) {
		w.fail()
		return
	}
	w.b = w.b[n:]
}

func (w *wire) take(n int) []byte {
	if n < 0 || n > len(w.b) {
		w.fail()
		return nil
	}
	v := w.b[:n:n]
	w.b = w.b[n:]
	return v
}

// nullableString reads a (compact when flexible) nullable string and returns
// its bytes without copying; null is reported as (nil, true).
func (w *wire) nullableString(flexible bool) (s []byte, null bool) {
	var n int
	if flexible {
		u := w.uvarint()
		if u == 0 {
			return nil, !w.bad
		}
		n = int(u) - 1
	} else {
		n = int(w.int16())
		if n < 0 {
			return nil, !w.bad
		}
	}
	return w.take(n), false
}

// nullableBytes skips a (compact when flexible) nullable byte array.
func (w *wire) skipNullableBytes(flexible bool) {
	var n int
	if flexible {
		u := w.uvarint()
		if u == 0 {
			return
		}
		n = int(u) - 1
	} else {
		n = int(w.int32())
		if n < 0 {
			return
		}
	}
	w.skip(n)
}

// arrayLen reads an array length (compact when flexible); null arrays are
// returned as -1. Lengths larger than the remaining bytes could possibly
// hold (each element takes at least minElem bytes) mark the input bad, so
// callers never allocate for lies.
func (w *wire) arrayLen(flexible bool, minElem int) int {
	var n int
	if flexible {
		u := w.uvarint()
		if u == 0 {
			return -1
		}
		if u-1 > math.MaxInt32 {
			w.fail()
			return 0
		}
		n = int(u) - 1
	} else {
		n = int(w.int32())
		if n < 0 {
			return -1
		}
	}
	if minElem > 0 && n > len(w.b)/minElem {
		w.fail()
		return 0
	}
	return n
}

// skipTags skips a tagged-field section.
func (w *wire) skipTags() {
	n := w.uvarint()
	for i := uint32(0); i < n && !w.bad; i++ {
		w.uvarint() // tag
		w.skip(int(w.uvarint()))
	}
}
