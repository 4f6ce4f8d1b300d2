package http

import "errors"

// chunkedScanner follows a chunked body through arbitrary splits of the
// byte stream and reports where it ends. It validates chunk sizes strictly
// (hex digits only, no sign, no "0x", bounded length) because a proxy and a
// server that disagree on chunk boundaries are a request-smuggling vector.
type chunkedScanner struct {
	state     chunkState
	remaining int64
	digits    int
	lineLen   int
	trailers  int
}

type chunkState uint8

const (
	csSize chunkState = iota
	csExt
	csSizeLF
	csData
	csDataCR
	csDataLF
	csTrailerStart
	csTrailer
	csTrailerLF
	csLastLF
	csDone
)

const (
	maxChunkLine    = 4096
	maxTrailerBytes = 64 << 10
	maxChunkSizeHex = 15
)

var (
	errChunkSize    = errors.New("invalid chunk size")
	errChunkFraming = errors.New("invalid chunked framing")
	errChunkLine    = errors.New("chunk line too long")
)

func hexVal(c byte) (int64, bool) {
	switch {
	case c >= '0' && c <= '9':
		return int64(c - '0'), true
	case c >= 'a' && c <= 'f':
		return int64(c-'a') + 10, true
	case c >= 'A' && c <= 'F':
		return int64(c-'A') + 10, true
	}
	return 0, false
}

// scan consumes p and returns how many bytes of p belong to the body and
// whether the body ended there.
func (c *chunkedScanner) scan(p []byte) (int, bool, error) {
	i := 0
	for i < len(p) {
		b := p[i]
		switch c.state {
		case csSize:
			if v, ok := hexVal(b); ok {
				c.digits++
				if c.digits > maxChunkSizeHex {
					return i, false, errChunkSize
				}
				c.remaining = c.remaining<<4 | v
				i++
				continue
			}
			if c.digits == 0 {
				return i, false, errChunkSize
			}
			switch b {
			case ';':
				c.state, c.lineLen = csExt, 0
			case '\r':
				c.state = csSizeLF
			default:
				return i, false, errChunkSize
			}
			i++
		case csExt:
			switch {
			case b == '\r':
				c.state = csSizeLF
			case b == '\n' || b == 0:
				return i, false, errChunkFraming
			default:
				c.lineLen++
				if c.lineLen > maxChunkLine {
					return i, false, errChunkLine
				}
			}
			i++
		case csSizeLF:
			if b != '\n' {
				return i, false, errChunkFraming
			}
			i++
			if c.remaining == 0 {
				c.state = csTrailerStart
			} else {
				c.state = csData
			}
		case csData:
			n := int64(len(p) - i)
			if n > c.remaining {
				n = c.remaining
			}
			i += int(n)
			c.remaining -= n
			if c.remaining == 0 {
				c.state = csDataCR
			}
		case csDataCR:
			if b != '\r' {
				return i, false, errChunkFraming
			}
			c.state = csDataLF
			i++
		case csDataLF:
			if b != '\n' {
				return i, false, errChunkFraming
			}
			c.state, c.digits = csSize, 0
			i++
		case csTrailerStart:
			if b == '\r' {
				c.state = csLastLF
			} else {
				c.state, c.lineLen = csTrailer, 1
				if b == '\n' || b == ' ' || b == '\t' {
					return i, false, errChunkFraming
				}
			}
			i++
		case csTrailer:
			if b == '\r' {
				c.state = csTrailerLF
			} else if b == '\n' || b == 0 {
				return i, false, errChunkFraming
			} else {
				c.lineLen++
				c.trailers++
				if c.lineLen > maxChunkLine || c.trailers > maxTrailerBytes {
					return i, false, errChunkLine
				}
			}
			i++
		case csTrailerLF:
			if b != '\n' {
				return i, false, errChunkFraming
			}
			c.state = csTrailerStart
			i++
		case csLastLF:
			if b != '\n' {
				return i, false, errChunkFraming
			}
			c.state = csDone
			return i + 1, true, nil
		case csDone:
			return i, true, nil
		}
	}
	return i, false, nil
}
