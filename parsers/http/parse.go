package http

import (
	"bytes"
	"errors"
	"fmt"
)

// Limits bound what a peer may send. Zero values take the defaults.
type Limits struct {
	// MaxHeaderBytes bounds the request line plus headers (default 64 KiB).
	MaxHeaderBytes int
	// MaxRequestLine bounds the request line (default 16 KiB).
	MaxRequestLine int
	// MaxHeaders bounds the number of header fields (default 100).
	MaxHeaders int
}

func (l Limits) withDefaults() Limits {
	if l.MaxHeaderBytes <= 0 {
		l.MaxHeaderBytes = 64 << 10
	}
	if l.MaxRequestLine <= 0 {
		l.MaxRequestLine = 16 << 10
	}
	if l.MaxHeaders <= 0 {
		l.MaxHeaders = 100
	}
	return l
}

// ErrIncomplete means the buffer holds no complete head yet.
var ErrIncomplete = errors.New("incomplete message head")

// ParseError is a malformed or disallowed message; Status is the HTTP
// status to answer a request with.
type ParseError struct {
	Status int
	Reason string
}

func (e *ParseError) Error() string { return fmt.Sprintf("%d: %s", e.Status, e.Reason) }

func badRequest(format string, args ...any) error {
	return &ParseError{Status: 400, Reason: fmt.Sprintf(format, args...)}
}

// Header is one header field; Name and Value alias the parse buffer.
type Header struct {
	Name  []byte
	Value []byte
}

// Framing says how a message body is delimited.
type Framing uint8

// Body framings.
const (
	FramingNone    Framing = iota // no body
	FramingLength                 // Content-Length bytes
	FramingChunked                // chunked transfer coding
	FramingClose                  // until the connection closes (responses only)
)

// RequestHead is a parsed request head. Slices alias the parse buffer and
// are valid until the buffer is reused.
type RequestHead struct {
	Method []byte
	// Target is the request target in origin form (path and query) or
	// "*"; for an absolute-form request ("http://authority/path") it is
	// the path-and-query part and Authority holds the authority.
	Target    []byte
	Authority []byte
	// Absolute: the request line held an absolute-form target.
	Absolute bool
	Minor    int // HTTP/1.<Minor>
	Headers  []Header
	Host     []byte
	Framing  Framing
	Length   int64
	// KeepAlive: the client expects the connection to persist.
	KeepAlive bool
	// Upgrade holds the Upgrade header when the Connection header lists
	// "upgrade".
	Upgrade []byte
	// Expect100: "Expect: 100-continue".
	Expect100 bool
	// Size is the length of the head in bytes, CRLFCRLF included.
	Size int
}

// ResponseHead is a parsed response head.
type ResponseHead struct {
	Minor     int
	Status    int
	Framing   Framing
	Length    int64
	KeepAlive bool
	Size      int
	// Upgrade is the Upgrade header of a 101 response.
	Upgrade []byte
}

func isTokenChar(c byte) bool { return charClass[c]&classToken != 0 }

// Character classes of header bytes, looked up per byte (every request's
// and response's header block is checked byte by byte).
const (
	classToken      = 1 << iota // tchar (RFC 9110 §5.6.2)
	classFieldValue             // allowed in a field value: VCHAR, obs-text, SP, HTAB
)

// charClass is read-only: computed once, never written.
var charClass = func() (t [256]uint8) {
	for c := range 256 {
		b := byte(c)
		if b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' ||
			b == '!' || b == '#' || b == '$' || b == '%' || b == '&' || b == '\'' || b == '*' ||
			b == '+' || b == '-' || b == '.' || b == '^' || b == '_' || b == '`' || b == '|' || b == '~' {
			t[c] |= classToken
		}
		if !(b == 0 || b == '\r' || b == '\n' || (b < 0x20 && b != '\t') || b == 0x7f) {
			t[c] |= classFieldValue
		}
	}
	return t
}()

// trimOWS trims spaces and tabs at both ends (bytes.Trim(v, " \t")
// without building its cutset on every call).
func trimOWS(v []byte) []byte {
	for len(v) > 0 && (v[0] == ' ' || v[0] == '\t') {
		v = v[1:]
	}
	for len(v) > 0 && (v[len(v)-1] == ' ' || v[len(v)-1] == '\t') {
		v = v[:len(v)-1]
	}
	return v
}

// indexCRLF is bytes.Index(b, "\r\n"), fast when the first CR starts
// the CRLF (a well-formed header block).
func indexCRLF(b []byte) int {
	if i := bytes.IndexByte(b, '\r'); i < 0 || i+1 < len(b) && b[i+1] == '\n' {
		return i
	}
	return bytes.Index(b, []byte("\r\n"))
}

// hasBareLF reports whether b holds a LF not preceded by CR.
func hasBareLF(b []byte) bool {
	for off := 0; ; {
		i := bytes.IndexByte(b[off:], '\n')
		if i < 0 {
			return false
		}
		i += off
		if i == 0 || b[i-1] != '\r' {
			return true
		}
		off = i + 1
	}
}

// asciiEqualFold compares b with a lowercase ASCII literal.
func asciiEqualFold(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// hasToken reports whether a comma-separated header value lists token.
func hasToken(v []byte, lower string) bool {
	for len(v) > 0 {
		var part []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			part, v = v[:i], v[i+1:]
		} else {
			part, v = v, nil
		}
		if asciiEqualFold(bytes.TrimSpace(part), lower) {
			return true
		}
	}
	return false
}

// findHeadEnd returns the index just past "\r\n\r\n", or -1.
func findHeadEnd(buf []byte) int {
	i := bytes.Index(buf, []byte("\r\n\r\n"))
	if i < 0 {
		return -1
	}
	return i + 4
}

// parseVersion parses "HTTP/1.x".
func parseVersion(b []byte) (int, bool) {
	if len(b) != 8 || string(b[:7]) != "HTTP/1." || b[7] < '0' || b[7] > '9' {
		return 0, false
	}
	return int(b[7] - '0'), true
}

// fieldLines splits the header block (after the start line) into fields,
// rejecting obs-fold, bare LF, whitespace before the colon and control
// characters.
func parseFields(block []byte, max int, out []Header) ([]Header, error) {
	for len(block) > 0 {
		i := indexCRLF(block)
		if i < 0 {
			return out, badRequest("header line without CRLF")
		}
		line := block[:i]
		block = block[i+2:]
		if len(line) == 0 {
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			return out, badRequest("obsolete line folding")
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return out, badRequest("malformed header line")
		}
		name := line[:colon]
		for _, c := range name {
			if !isTokenChar(c) {
				return out, badRequest("invalid character in header name %q", name)
			}
		}
		value := line[colon+1:]
		for _, c := range value {
			if charClass[c]&classFieldValue == 0 {
				return out, badRequest("invalid character in value of header %q", name)
			}
		}
		value = trimOWS(value)
		if len(out) >= max {
			return out, &ParseError{Status: 431, Reason: "too many header fields"}
		}
		out = append(out, Header{Name: name, Value: value})
	}
	return out, nil
}

func parseLength(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// ParseRequestHead parses a request head at the start of buf. It returns
// ErrIncomplete when buf holds no complete head (and is still within
// limits), a *ParseError for malformed or disallowed input.
func ParseRequestHead(buf []byte, lim Limits, h *RequestHead) error {
	lim = lim.withDefaults()
	*h = RequestHead{Headers: h.Headers[:0]}
	end := findHeadEnd(buf)
	if end < 0 {
		if len(buf) > lim.MaxHeaderBytes {
			return &ParseError{Status: 431, Reason: "request header too large"}
		}
		if i := bytes.IndexByte(buf, '\n'); (i < 0 && len(buf) > lim.MaxRequestLine) || i > lim.MaxRequestLine {
			return &ParseError{Status: 414, Reason: "request line too long"}
		}
		if i := bytes.IndexByte(buf, '\n'); i >= 0 && (i == 0 || buf[i-1] != '\r') {
			return badRequest("bare LF in request line")
		}
		return ErrIncomplete
	}
	if end > lim.MaxHeaderBytes {
		return &ParseError{Status: 431, Reason: "request header too large"}
	}
	h.Size = end
	lineEnd := bytes.Index(buf, []byte("\r\n"))
	line := buf[:lineEnd]
	if lineEnd > lim.MaxRequestLine {
		return &ParseError{Status: 414, Reason: "request line too long"}
	}
	if hasBareLF(buf[:end]) {
		return badRequest("bare LF")
	}
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return badRequest("malformed request line")
	}
	sp2 := bytes.IndexByte(line[sp1+1:], ' ')
	if sp2 < 0 {
		return badRequest("malformed request line")
	}
	sp2 += sp1 + 1
	h.Method, h.Target = line[:sp1], line[sp1+1:sp2]
	for _, c := range h.Method {
		if !isTokenChar(c) {
			return badRequest("invalid method")
		}
	}
	minor, ok := parseVersion(line[sp2+1:])
	if !ok {
		return &ParseError{Status: 505, Reason: "unsupported HTTP version"}
	}
	h.Minor = minor
	if len(h.Target) == 0 {
		return badRequest("empty request target")
	}
	for _, c := range h.Target {
		if c <= 0x20 || c == 0x7f {
			return badRequest("invalid character in request target")
		}
	}
	switch {
	case h.Target[0] == '/':
	case len(h.Target) == 1 && h.Target[0] == '*' && string(h.Method) == "OPTIONS":
	case string(h.Method) == "CONNECT":
		return &ParseError{Status: 501, Reason: "CONNECT is not supported"}
	case len(h.Target) > 7 && asciiEqualFold(h.Target[:7], "http://"):
		// Absolute form (RFC 9112 §3.2.2), as clients of a forward proxy
		// send it: split off the authority; it must equal Host below.
		rest := h.Target[7:]
		end := bytes.IndexAny(rest, "/?")
		if end < 0 {
			end = len(rest)
		}
		h.Authority, h.Target, h.Absolute = rest[:end], rest[end:], true
		if len(h.Authority) == 0 || bytes.IndexByte(h.Authority, '@') >= 0 || bytes.IndexByte(h.Authority, '#') >= 0 {
			return badRequest("invalid authority in absolute-form request target")
		}
		if len(h.Target) == 0 || h.Target[0] != '/' {
			// "http://host" or "http://host?q": the path is empty, i.e. "/"
			// (the normalizer rejects a target without a leading slash).
			return badRequest("absolute-form request target without a path")
		}
	default:
		return badRequest("request target must be in origin form")
	}
	var err error
	h.Headers, err = parseFields(buf[lineEnd+2:end], lim.MaxHeaders, h.Headers)
	if err != nil {
		return err
	}
	h.KeepAlive = minor >= 1
	seenCL, seenTE, seenHost := false, false, false
	var connection []byte
	for _, f := range h.Headers {
		switch {
		case asciiEqualFold(f.Name, "content-length"):
			if seenCL {
				return badRequest("duplicate Content-Length")
			}
			seenCL = true
			n, ok := parseLength(f.Value)
			if !ok {
				return badRequest("invalid Content-Length")
			}
			h.Length = n
		case asciiEqualFold(f.Name, "transfer-encoding"):
			if seenTE {
				return badRequest("duplicate Transfer-Encoding")
			}
			seenTE = true
			if !asciiEqualFold(f.Value, "chunked") {
				return &ParseError{Status: 501, Reason: "unsupported Transfer-Encoding"}
			}
		case asciiEqualFold(f.Name, "host"):
			if seenHost {
				return badRequest("duplicate Host")
			}
			seenHost = true
			h.Host = f.Value
		case asciiEqualFold(f.Name, "connection"):
			connection = f.Value
		case asciiEqualFold(f.Name, "upgrade"):
			h.Upgrade = f.Value
		case asciiEqualFold(f.Name, "expect"):
			h.Expect100 = asciiEqualFold(f.Value, "100-continue")
		}
	}
	switch {
	case seenCL && seenTE:
		return badRequest("both Content-Length and Transfer-Encoding")
	case seenTE:
		if minor == 0 {
			return badRequest("Transfer-Encoding in HTTP/1.0")
		}
		h.Framing = FramingChunked
	case seenCL && h.Length > 0:
		h.Framing = FramingLength
	}
	if minor >= 1 && !seenHost {
		return badRequest("missing Host header")
	}
	if h.Absolute && seenHost && !bytes.EqualFold(h.Host, h.Authority) {
		// RFC 9112 says to ignore Host then; a proxy and a backend could
		// each pick a different one, so a disagreement is refused.
		return badRequest("Host header differs from the absolute-form authority")
	}
	if connection != nil {
		if hasToken(connection, "close") {
			h.KeepAlive = false
		} else if minor == 0 && hasToken(connection, "keep-alive") {
			h.KeepAlive = true
		}
		if !hasToken(connection, "upgrade") {
			h.Upgrade = nil
		}
	} else {
		h.Upgrade = nil
	}
	return nil
}

// ParseResponseHead parses a response head; method is the request's method
// (a HEAD response has no body).
func ParseResponseHead(buf []byte, method []byte, lim Limits, scratch []Header, h *ResponseHead) ([]Header, error) {
	lim = lim.withDefaults()
	*h = ResponseHead{}
	end := findHeadEnd(buf)
	if end < 0 {
		if len(buf) > lim.MaxHeaderBytes {
			return scratch, errors.New("response header too large")
		}
		return scratch, ErrIncomplete
	}
	if end > lim.MaxHeaderBytes {
		return scratch, errors.New("response header too large")
	}
	h.Size = end
	lineEnd := bytes.Index(buf, []byte("\r\n"))
	line := buf[:lineEnd]
	if len(line) < 12 || line[8] != ' ' {
		return scratch, errors.New("malformed status line")
	}
	minor, ok := parseVersion(line[:8])
	if !ok {
		return scratch, errors.New("unsupported HTTP version in response")
	}
	h.Minor = minor
	for _, c := range line[9:12] {
		if c < '0' || c > '9' {
			return scratch, errors.New("malformed status code")
		}
		h.Status = h.Status*10 + int(c-'0')
	}
	if h.Status < 100 {
		return scratch, errors.New("malformed status code")
	}
	if len(line) > 12 && line[12] != ' ' {
		return scratch, errors.New("malformed status line")
	}
	fields, err := parseFields(buf[lineEnd+2:end], lim.MaxHeaders, scratch[:0])
	if err != nil {
		return fields, fmt.Errorf("response: %w", err)
	}
	h.KeepAlive = minor >= 1
	seenCL, seenTE := false, false
	for _, f := range fields {
		switch {
		case asciiEqualFold(f.Name, "content-length"):
			n, ok := parseLength(f.Value)
			if !ok || (seenCL && n != h.Length) {
				return fields, errors.New("invalid Content-Length in response")
			}
			seenCL, h.Length = true, n
		case asciiEqualFold(f.Name, "transfer-encoding"):
			seenTE = true
			if !hasToken(f.Value, "chunked") {
				return fields, errors.New("unsupported Transfer-Encoding in response")
			}
		case asciiEqualFold(f.Name, "connection"):
			if hasToken(f.Value, "close") {
				h.KeepAlive = false
			} else if minor == 0 && hasToken(f.Value, "keep-alive") {
				h.KeepAlive = true
			}
		case asciiEqualFold(f.Name, "upgrade"):
			h.Upgrade = f.Value
		}
	}
	switch {
	case h.Status < 200 || h.Status == 204 || h.Status == 304 || string(method) == "HEAD":
		h.Framing = FramingNone
	case seenTE:
		if seenCL {
			return fields, errors.New("both Content-Length and Transfer-Encoding in response")
		}
		h.Framing = FramingChunked
	case seenCL:
		h.Framing = FramingLength
		if h.Length == 0 {
			h.Framing = FramingNone
		}
	default:
		h.Framing = FramingClose
		h.KeepAlive = false
	}
	return fields, nil
}
