package http

import (
	"errors"
	"fmt"
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// The header blocks of the frame-level HTTP/2 path are decoded here, not
// by x/net's Framer (ReadMetaHeaders): the Framer hands over HEADERS and
// CONTINUATION frames as they are (it still checks their order: nothing
// but CONTINUATION of the same stream may follow a HEADERS frame without
// END_HEADERS), and h2HeaderBlock feeds each fragment to one hpack.Decoder
// per hop, whose emit callback (bound once per hop) appends the fields to
// a slice reused from block to block. x/net's MetaHeadersFrame path costs
// a frame, a closure, a growing field slice and a deferred callback reset
// per block; this one, once warm, allocates only the strings HPACK
// literals decode to.
//
// The checks and their outcomes are x/net's (readMetaFrame, checkPseudos,
// x/net v0.62.0), so that both hops behave as before:
//   - a field value that is not a valid field value, a regular field name
//     that is empty, not a token or has an uppercase letter, or a
//     pseudo-header after a regular field makes the block invalid: the
//     rest of the block is decoded (the dynamic table stays in step) but
//     not kept, and the stream is reset with PROTOCOL_ERROR
//     (http2.StreamError); a further CONTINUATION after an invalid field
//     ends the connection (PROTOCOL_ERROR);
//   - the decoded header list is bounded by maxList (the "trailer" field
//     counted as x/net does): past it the fields are dropped and the
//     block is marked truncated (the request is answered 431); a
//     fragment larger than twice the list bytes still allowed ends the
//     connection (PROTOCOL_ERROR), so an endless block is not read;
//   - HPACK that does not decode (including a dynamic table size update
//     beyond 4096, a string longer than maxList, or a block that ends
//     inside a field) ends the connection with COMPRESSION_ERROR;
//   - unknown or duplicate pseudo-headers, or request and response
//     pseudo-headers mixed, reset the stream with PROTOCOL_ERROR.
//
// No header block is re-used raw: the handlers re-encode what they
// forward with the other hop's encoder (the two hops' dynamic tables
// differ, and the proxy rewrites :path).

var (
	errH2PseudoAfterRegular = errors.New("pseudo header field after regular")
	errH2MixedPseudo        = errors.New("mix of request and response pseudo headers")
)

// h2HeaderBlock is one hop's header block decoder and the last block it
// decoded. It is used by the hop's reader goroutine only (decoding runs
// outside h2Conn.mu); the handlers read the block under mu, before the
// reader decodes the next one.
type h2HeaderBlock struct {
	dec     *hpack.Decoder
	maxList uint32

	// The block being decoded (or the last one).
	active    bool // a HEADERS frame without END_HEADERS was read
	StreamID  uint32
	endStream bool
	prio      bool
	Priority  http2.PriorityParam
	// Truncated: the header list passed maxList; Fields holds what came
	// before.
	Truncated bool
	// Fields: the pseudo-header fields, then the regular ones.
	Fields []hpack.HeaderField
	// npseudo counts the leading pseudo-header fields.
	npseudo        int
	headersRemain  uint32
	trailersRemain uint32
	sawRegular     bool
	invalid        error
}

// newH2HeaderBlock returns a decoder for a hop whose header lists may hold
// maxList bytes (0: x/net's default, 16 MiB).
func newH2HeaderBlock(maxList uint32) *h2HeaderBlock {
	if maxList == 0 {
		maxList = 16 << 20
	}
	b := &h2HeaderBlock{maxList: maxList}
	b.dec = hpack.NewDecoder(4096, b.emit)
	if int(maxList) > 0 {
		b.dec.SetMaxStringLength(int(maxList))
	}
	return b
}

func (b *h2HeaderBlock) emit(hf hpack.HeaderField) {
	if !httpguts.ValidHeaderFieldValue(hf.Value) {
		// (The value is not in the error: it may be sensitive.)
		b.invalid = fmt.Errorf("invalid header field value for %q", hf.Name)
	}
	if strings.HasPrefix(hf.Name, ":") {
		if b.sawRegular {
			b.invalid = errH2PseudoAfterRegular
		}
	} else {
		b.sawRegular = true
		if !validH2FieldName(hf.Name) {
			b.invalid = fmt.Errorf("invalid header field name %q", hf.Name)
		}
	}
	if b.invalid != nil {
		b.dec.SetEmitEnabled(false)
		return
	}
	remain := &b.headersRemain
	var size uint32
	if hf.Name == "trailer" {
		// x/net's accounting: the names a trailer field announces are
		// counted as fields of their own.
		remain = &b.trailersRemain
		n := strings.Count(hf.Value, ",") + 1
		size = uint32(len(hf.Value)-n+1) + uint32(n)*hpack.HeaderField{}.Size()
	} else {
		size = hf.Size()
	}
	if size > *remain {
		b.dec.SetEmitEnabled(false)
		b.Truncated = true
		b.headersRemain, b.trailersRemain = 0, 0
		return
	}
	*remain -= size
	if !b.sawRegular {
		b.npseudo++
	}
	b.Fields = append(b.Fields, hf)
}

// validH2FieldName: a regular field name as HTTP/2 carries it (a token,
// lowercase).
func validH2FieldName(v string) bool {
	if len(v) == 0 {
		return false
	}
	for _, r := range v {
		if !httpguts.IsTokenRune(r) || 'A' <= r && r <= 'Z' {
			return false
		}
	}
	return true
}

// headers starts a block with a HEADERS frame. It returns the block when
// the frame ended it (END_HEADERS), nil when CONTINUATION must follow.
func (b *h2HeaderBlock) headers(f *http2.HeadersFrame) (*h2HeaderBlock, error) {
	// Drop what the last block kept (its strings) but keep the slice,
	// unless an unusually long list grew it.
	clear(b.Fields)
	b.Fields = b.Fields[:0]
	if cap(b.Fields) > 64 {
		b.Fields = nil
	}
	b.active = true
	b.StreamID = f.StreamID
	b.endStream = f.StreamEnded()
	b.prio = f.HasPriority()
	b.Priority = f.Priority
	b.Truncated = false
	b.npseudo = 0
	b.headersRemain, b.trailersRemain = b.maxList, b.maxList
	b.sawRegular = false
	b.invalid = nil
	b.dec.SetEmitEnabled(true)
	return b.fragment(f.HeaderBlockFragment(), f.HeadersEnded())
}

// continuation adds a CONTINUATION frame to the block.
func (b *h2HeaderBlock) continuation(f *http2.ContinuationFrame) (*h2HeaderBlock, error) {
	if !b.active || f.StreamID != b.StreamID {
		// The Framer's frame order check makes this unreachable.
		return nil, http2.ConnectionError(http2.ErrCodeProtocol)
	}
	return b.fragment(f.HeaderBlockFragment(), f.HeadersEnded())
}

func (b *h2HeaderBlock) fragment(frag []byte, end bool) (*h2HeaderBlock, error) {
	// A fragment far beyond what the list may still hold is not decoded;
	// nor is anything after an invalid field (its size is not counted).
	if int64(len(frag)) > 2*(int64(b.headersRemain)+int64(b.trailersRemain)) || b.invalid != nil {
		b.active = false
		return nil, http2.ConnectionError(http2.ErrCodeProtocol)
	}
	if _, err := b.dec.Write(frag); err != nil {
		b.active = false
		return nil, http2.ConnectionError(http2.ErrCodeCompression)
	}
	if !end {
		return nil, nil
	}
	b.active = false
	if err := b.dec.Close(); err != nil {
		return nil, http2.ConnectionError(http2.ErrCodeCompression)
	}
	if b.invalid != nil {
		return nil, http2.StreamError{StreamID: b.StreamID, Code: http2.ErrCodeProtocol, Cause: b.invalid}
	}
	if err := b.checkPseudos(); err != nil {
		return nil, http2.StreamError{StreamID: b.StreamID, Code: http2.ErrCodeProtocol, Cause: err}
	}
	return b, nil
}

func (b *h2HeaderBlock) checkPseudos() error {
	var req, resp bool
	pf := b.PseudoFields()
	for i, hf := range pf {
		switch hf.Name {
		case ":method", ":path", ":scheme", ":authority", ":protocol":
			req = true
		case ":status":
			resp = true
		default:
			return fmt.Errorf("invalid pseudo-header %q", hf.Name)
		}
		for _, prev := range pf[:i] {
			if hf.Name == prev.Name {
				return fmt.Errorf("duplicate pseudo-header %q", hf.Name)
			}
		}
	}
	if req && resp {
		return errH2MixedPseudo
	}
	return nil
}

// The accessors of http2.MetaHeadersFrame the handlers use.

func (b *h2HeaderBlock) StreamEnded() bool                  { return b.endStream }
func (b *h2HeaderBlock) HasPriority() bool                  { return b.prio }
func (b *h2HeaderBlock) PseudoFields() []hpack.HeaderField  { return b.Fields[:b.npseudo] }
func (b *h2HeaderBlock) RegularFields() []hpack.HeaderField { return b.Fields[b.npseudo:] }

// PseudoValue returns the value of the pseudo-header :name, or "".
func (b *h2HeaderBlock) PseudoValue(name string) string {
	for _, hf := range b.PseudoFields() {
		if len(hf.Name) == len(name)+1 && hf.Name[1:] == name {
			return hf.Value
		}
	}
	return ""
}
