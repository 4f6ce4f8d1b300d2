package policy

import (
	"fmt"
	"strings"
)

// This file is the one definition of HTTP request-target normalization:
// the Go proxy normalizes every request with it before matching and
// forwards the result, `l7gate policy trace` normalizes the traced path
// with it, and the Envoy translation configures Envoy's equivalent HCM
// settings. The rules are in EVALUATION.md ("Path normalization").

// EscapedSlashAction says what happens to a request path holding an
// encoded slash or backslash (%2F, %5C, either case).
type EscapedSlashAction string

// Escaped-slash actions (Envoy's path_with_escaped_slashes_action).
const (
	// EscapedSlashesReject answers 400 (the default).
	EscapedSlashesReject EscapedSlashAction = "reject"
	// EscapedSlashesKeep leaves them encoded: rules see and the backend
	// receives %2F / %5C.
	EscapedSlashesKeep EscapedSlashAction = "keep"
	// EscapedSlashesUnescape decodes both to "/" before the path is
	// normalized, so rules and the backend see path separators.
	EscapedSlashesUnescape EscapedSlashAction = "unescape"
)

// ParseEscapedSlashAction parses a flag value; "" is the default, reject.
func ParseEscapedSlashAction(s string) (EscapedSlashAction, error) {
	switch a := EscapedSlashAction(strings.ToLower(s)); a {
	case "":
		return EscapedSlashesReject, nil
	case EscapedSlashesReject, EscapedSlashesKeep, EscapedSlashesUnescape:
		return a, nil
	}
	return "", fmt.Errorf("escaped slashes: want reject, keep or unescape, not %q", s)
}

// PathError says why a request target is refused (the proxy answers 400).
type PathError struct{ Reason string }

func (e *PathError) Error() string { return "request target: " + e.Reason }

// NormalizeRequestTarget normalizes an origin-form request target (a path
// and an optional query) per RFC 3986 §6.2.2: percent-encoded unreserved
// characters are decoded, other percent-encodings get uppercase hex
// digits, a backslash becomes "/", runs of slashes merge into one, and
// "." and ".." segments are removed (".." never climbs above "/"). The
// query is returned as received. "*" (asterisk form) is returned as is.
//
// It refuses a target that is not origin form, has a fragment, holds a
// malformed or NUL percent-encoding, or (with EscapedSlashesReject) an
// encoded slash or backslash. A target that is already normal is returned
// unchanged without allocating.
func NormalizeRequestTarget(target string, slashes EscapedSlashAction) (string, error) {
	if target == "*" {
		return target, nil
	}
	if target == "" || target[0] != '/' {
		return "", &PathError{"not in origin form"}
	}
	path, query, hasQuery := target, "", false
	if i := strings.IndexByte(target, '?'); i >= 0 {
		path, query, hasQuery = target[:i], target[i+1:], true
	}
	if strings.IndexByte(target, '#') >= 0 {
		return "", &PathError{"fragment in request target"}
	}
	if isNormalPath(path) {
		return target, nil
	}
	decoded, err := decodePath(path, slashes)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	b.Grow(len(target))
	b.WriteString(removeDotSegments(decoded))
	if hasQuery {
		b.WriteByte('?')
		b.WriteString(query)
	}
	return b.String(), nil
}

// isNormalPath reports whether a path needs no normalization: no
// percent sign, no backslash, no empty, "." or ".." segment.
func isNormalPath(p string) bool {
	for i := 0; i < len(p); i++ {
		switch p[i] {
		case '%', '\\':
			return false
		case '/':
			rest := p[i+1:]
			if strings.HasPrefix(rest, "/") || rest == "." || rest == ".." ||
				strings.HasPrefix(rest, "./") || strings.HasPrefix(rest, "../") {
				return false
			}
		}
	}
	return true
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func isUnreserved(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'
}

// decodePath applies the percent-encoding and backslash rules.
func decodePath(p string, slashes EscapedSlashAction) (string, error) {
	const hexDigits = "0123456789ABCDEF"
	out := make([]byte, 0, len(p))
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch c {
		case '\\':
			out = append(out, '/')
			continue
		case '%':
		default:
			out = append(out, c)
			continue
		}
		if i+2 >= len(p) {
			return "", &PathError{"malformed percent-encoding"}
		}
		hi, ok1 := unhex(p[i+1])
		lo, ok2 := unhex(p[i+2])
		if !ok1 || !ok2 {
			return "", &PathError{"malformed percent-encoding"}
		}
		v := hi<<4 | lo
		i += 2
		switch {
		case v == 0:
			return "", &PathError{"encoded NUL in path"}
		case isUnreserved(v):
			out = append(out, v)
		case v == '/' || v == '\\':
			switch slashes {
			case EscapedSlashesKeep:
				out = append(out, '%', hexDigits[v>>4], hexDigits[v&15])
			case EscapedSlashesUnescape:
				out = append(out, '/')
			default:
				return "", &PathError{"encoded slash or backslash in path (%2F, %5C)"}
			}
		default:
			out = append(out, '%', hexDigits[v>>4], hexDigits[v&15])
		}
	}
	return string(out), nil
}

// removeDotSegments merges slashes and removes "." and ".." segments of an
// absolute path (RFC 3986 §5.2.4); a trailing slash is kept.
func removeDotSegments(p string) string {
	segs := strings.Split(p[1:], "/")
	out := make([]string, 0, len(segs))
	trailing := false
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case "", ".":
			trailing = last
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			trailing = last
		default:
			out = append(out, s)
			trailing = false
		}
	}
	if len(out) == 0 {
		return "/"
	}
	r := "/" + strings.Join(out, "/")
	if trailing {
		r += "/"
	}
	return r
}
