package http

import (
	"fmt"
	"strings"

	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/policy"
)

// HeaderMismatch is a header-mismatch action taken on a request, for the
// access log (Cilium's missing_headers / rejected_headers).
type HeaderMismatch = flow.HeaderMismatch

// requestHeader returns the first value of a header of req.
func requestHeader(req *policy.HTTPRequest, name string) (string, bool) {
	for _, h := range req.Headers {
		if strings.EqualFold(h.Name, name) {
			return h.Value, true
		}
	}
	return "", false
}

// headerEdit is one change to a request's header fields.
type headerEdit struct {
	del   bool // remove every field with this name
	name  string
	value string // added after the deletions when add is set
	add   bool
}

// protectedHeader reports whether a header decides framing, the
// connection or the authority: a policy's header action never changes
// those (a REPLACE of Content-Length would be request smuggling by policy).
func protectedHeader(name string) bool {
	if strings.HasPrefix(name, ":") {
		return true
	}
	switch strings.ToLower(name) {
	case "content-length", "transfer-encoding", "host", "connection", "upgrade", "te", "trailer",
		"keep-alive", "proxy-connection", "http2-settings", "expect":
		return true
	}
	return false
}

func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// planHeaderActions turns the mismatch actions a decision carries into
// header edits and access-log entries, as Cilium's proxy applies them:
// LOG logs; ADD appends the rule's value (a header may then have two
// values); DELETE removes a header present with another value; REPLACE
// sets the header to the rule's value (adding it when absent). lookup
// returns a header's first value. An action on a protected header, or a
// value that is not a valid field value, is an error: the caller denies.
func planHeaderActions(actions []policy.HeaderMatch, lookup func(name string) (string, bool)) ([]headerEdit, []HeaderMismatch, error) {
	var edits []headerEdit
	var logs []HeaderMismatch
	for _, a := range actions {
		if a.Mismatch != policy.MismatchLog && protectedHeader(a.Name) {
			return nil, nil, fmt.Errorf("header action %s on %s is not applied (the proxy never changes framing or connection headers)", a.Mismatch, a.Name)
		}
		if !validHeaderValue(a.Value) {
			return nil, nil, fmt.Errorf("header action %s on %s: invalid value", a.Mismatch, a.Name)
		}
		switch a.Mismatch {
		case policy.MismatchLog:
			logs = append(logs, HeaderMismatch{Action: a.Mismatch, Name: a.Name, Value: a.Value})
		case policy.MismatchAdd:
			edits = append(edits, headerEdit{name: a.Name, value: a.Value, add: true})
			logs = append(logs, HeaderMismatch{Action: a.Mismatch, Name: a.Name, Value: a.Value})
		case policy.MismatchReplace:
			edits = append(edits, headerEdit{del: true, name: a.Name, value: a.Value, add: true})
			logs = append(logs, HeaderMismatch{Action: a.Mismatch, Name: a.Name, Value: a.Value})
		case policy.MismatchDelete:
			if a.Presence {
				continue // a presence match failed: the header is absent
			}
			v, ok := lookup(a.Name)
			if !ok {
				continue
			}
			edits = append(edits, headerEdit{del: true, name: a.Name})
			// v may alias the connection buffer: copy it for the log.
			logs = append(logs, HeaderMismatch{Action: a.Mismatch, Name: a.Name, Value: strings.Clone(v)})
		default:
			return nil, nil, fmt.Errorf("unknown header action %q on %s", a.Mismatch, a.Name)
		}
	}
	return edits, logs, nil
}

// headRewrite describes how a request head is forwarded when it cannot be
// forwarded byte for byte.
type headRewrite struct {
	// target replaces the request target when set.
	target string
	// stripUpgrade removes Upgrade and HTTP2-Settings and the matching
	// Connection tokens: the request is forwarded as a plain request.
	stripUpgrade bool
	edits        []headerEdit
}

func (r *headRewrite) needed() bool { return r.target != "" || r.stripUpgrade || len(r.edits) > 0 }

func (r *headRewrite) deleted(name []byte) bool {
	if r.stripUpgrade && (asciiEqualFold(name, "upgrade") || asciiEqualFold(name, "http2-settings")) {
		return true
	}
	for i := range r.edits {
		if r.edits[i].del && strings.EqualFold(str(name), r.edits[i].name) {
			return true
		}
	}
	return false
}

// appendTo renders the rewritten head of h (whose fields alias its parse
// buffer) after dst.
func (r *headRewrite) appendTo(dst []byte, h *RequestHead) []byte {
	dst = append(dst, h.Method...)
	dst = append(dst, ' ')
	switch {
	case r.target != "" && h.Absolute:
		dst = append(dst, "http://"...)
		dst = append(dst, h.Authority...)
		dst = append(dst, r.target...)
	case r.target != "":
		dst = append(dst, r.target...)
	case h.Absolute:
		dst = append(dst, "http://"...)
		dst = append(dst, h.Authority...)
		dst = append(dst, h.Target...)
	default:
		dst = append(dst, h.Target...)
	}
	dst = append(dst, " HTTP/1."...)
	dst = append(dst, byte('0'+h.Minor))
	dst = append(dst, "\r\n"...)
	for _, f := range h.Headers {
		if r.deleted(f.Name) {
			continue
		}
		value := f.Value
		if r.stripUpgrade && asciiEqualFold(f.Name, "connection") {
			value = dropTokens(value, "upgrade", "http2-settings")
			if len(value) == 0 {
				continue
			}
		}
		dst = append(dst, f.Name...)
		dst = append(dst, ": "...)
		dst = append(dst, value...)
		dst = append(dst, "\r\n"...)
	}
	for _, e := range r.edits {
		if e.add {
			dst = append(dst, e.name...)
			dst = append(dst, ": "...)
			dst = append(dst, e.value...)
			dst = append(dst, "\r\n"...)
		}
	}
	return append(dst, "\r\n"...)
}

// dropTokens returns a comma-separated list without the given tokens.
func dropTokens(v []byte, lower ...string) []byte {
	var out []byte
	for _, part := range strings.Split(str(v), ",") {
		t := strings.TrimSpace(part)
		if t == "" {
			continue
		}
		drop := false
		for _, l := range lower {
			if strings.EqualFold(t, l) {
				drop = true
			}
		}
		if drop {
			continue
		}
		if len(out) > 0 {
			out = append(out, ", "...)
		}
		out = append(out, t...)
	}
	return out
}

// onlyToken reports whether a comma-separated list is exactly one token.
func onlyToken(v []byte, lower string) bool {
	n := 0
	for _, part := range strings.Split(str(v), ",") {
		t := strings.TrimSpace(part)
		if t == "" {
			continue
		}
		if !strings.EqualFold(t, lower) {
			return false
		}
		n++
	}
	return n == 1
}
