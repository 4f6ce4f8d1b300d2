package kafka

//go:generate go run ./internal/schemagen

// The wire layouts in schema_gen.go let the proxy check a message's
// structure before kmsg decodes it. kmsg trusts the counts it reads: a
// tagged-field count of 2^31 in a 70-byte request makes it loop 2^31 times
// (seconds of CPU per request), and a known tagged struct hides another
// such count. validate walks the same positions kmsg will read and rejects
// any length or count the bytes present cannot hold, so kmsg only ever sees
// messages whose loops are bounded by their size.

type fkind uint8

const (
	fInt8 fkind = iota
	fInt16
	fInt32
	fInt64
	fBool
	fUUID
	fString // compact when flexible; null accepted
	fBytes  // compact when flexible; null accepted
	fArray  // array of structs; null accepted
	fArrayInt32
	fArrayInt64
	fArrayString
	fStruct     // inline struct
	fNullStruct // int8 presence marker (-1: null), then the struct
)

// sfield is one field of a message layout, present in versions min..max.
// tag >= 0 marks a known tagged field, read only inside the tag section.
type sfield struct {
	kind     fkind
	min, max int16
	tag      int32
	fields   []sfield
}

type schema struct {
	flexFrom int16
	fields   []sfield
}

// validate reports whether body is a well-formed message of this layout at
// version v: every length and count fits the bytes present, known tagged
// fields are well formed, and the whole body is consumed.
func (s *schema) validate(body []byte, v int16) bool {
	w := wire{b: body}
	walkStruct(&w, s.fields, v, v >= s.flexFrom)
	return !w.bad && len(w.b) == 0
}

func walkStruct(w *wire, fields []sfield, v int16, flex bool) {
	for i := range fields {
		f := &fields[i]
		if f.tag >= 0 || v < f.min || v > f.max {
			continue
		}
		walkField(w, f, v, flex)
		if w.bad {
			return
		}
	}
	if flex {
		walkTags(w, fields, v)
	}
}

func walkTags(w *wire, fields []sfield, v int16) {
	n := w.uvarint()
	// Each tag takes at least two bytes (key, size).
	if w.bad || uint64(n) > uint64(len(w.b))/2 {
		w.fail()
		return
	}
	for i := uint32(0); i < n && !w.bad; i++ {
		key := w.uvarint()
		data := w.take(int(w.uvarint()))
		if w.bad {
			return
		}
		for j := range fields {
			f := &fields[j]
			if f.tag < 0 || uint32(f.tag) != key || v < f.min || v > f.max {
				continue
			}
			sub := wire{b: data}
			walkField(&sub, f, v, true)
			if sub.bad {
				w.fail()
			}
		}
	}
}

func walkField(w *wire, f *sfield, v int16, flex bool) {
	switch f.kind {
	case fInt8, fBool:
		w.skip(1)
	case fInt16:
		w.skip(2)
	case fInt32:
		w.skip(4)
	case fInt64:
		w.skip(8)
	case fUUID:
		w.skip(16)
	case fString:
		w.nullableString(flex)
	case fBytes:
		w.skipNullableBytes(flex)
	case fArrayInt32:
		w.skip(max(w.arrayLen(flex, 4), 0) * 4)
	case fArrayInt64:
		w.skip(max(w.arrayLen(flex, 8), 0) * 8)
	case fArrayString:
		n := w.arrayLen(flex, 1)
		for i := 0; i < n && !w.bad; i++ {
			w.nullableString(flex)
		}
	case fArray:
		n := w.arrayLen(flex, 1)
		for i := 0; i < n && !w.bad; i++ {
			walkStruct(w, f.fields, v, flex)
		}
	case fStruct:
		walkStruct(w, f.fields, v, flex)
	case fNullStruct:
		if w.int8() != -1 && !w.bad {
			walkStruct(w, f.fields, v, flex)
		}
	}
}
