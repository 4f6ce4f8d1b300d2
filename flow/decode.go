package flow

import (
	"encoding/json"
	"strconv"
)

// decodeRecord decodes one JSON record (a line of the flow intake) into a
// zero r. Lines in the shape the Go proxy writes for most requests (no
// whitespace, strings of printable ASCII without escapes, scalar fields
// and topics) are read by decodeRecordFast; every other line (escapes,
// nested values such as decidedBy or srcEndpoint, unknown keys, null,
// ...) by encoding/json. The result is encoding/json's either way
// (FuzzDecodeRecordFast checks it); the fast path only skips its
// reflection, a third of the agent's CPU per Kafka request.
func decodeRecord(line []byte, r *Record) error {
	if decodeRecordFast(line, r) {
		return nil
	}
	*r = Record{}
	return json.Unmarshal(line, r)
}

// decodeRecordFast decodes b into a zero r when b is an object in the
// simple shape (see decodeRecord) and reports whether it did; when it
// reports false, r holds garbage.
func decodeRecordFast(b []byte, r *Record) bool {
	if len(b) < 2 || b[0] != '{' {
		return false
	}
	if b[1] == '}' {
		return len(b) == 2
	}
	i := 1
	for {
		key, n, ok := plainString(b, i)
		if !ok || n >= len(b) || b[n] != ':' {
			return false
		}
		i = n + 1
		switch string(key) {
		case "time":
			_, n, ok := plainString(b, i)
			if !ok || r.Time.UnmarshalJSON(b[i:n]) != nil {
				return false
			}
			i = n
		case "protocol":
			i, ok = stringField(b, i, &r.Protocol)
		case "direction":
			var s []byte
			s, i, ok = plainString(b, i)
			ok = ok && r.Direction.UnmarshalText(s) == nil
		case "source":
			var s []byte
			s, i, ok = plainString(b, i)
			ok = ok && r.Source.UnmarshalText(s) == nil
		case "destination":
			var s []byte
			s, i, ok = plainString(b, i)
			ok = ok && r.Destination.UnmarshalText(s) == nil
		case "srcIdentity":
			var v uint64
			v, i, ok = uintField(b, i, 32)
			r.SrcIdentity = Identity(v)
		case "dstIdentity":
			var v uint64
			v, i, ok = uintField(b, i, 32)
			r.DstIdentity = Identity(v)
		case "verdict":
			var s string
			i, ok = stringField(b, i, &s)
			r.Verdict = Verdict(s)
		case "latencyMs":
			var num []byte
			num, i, ok = number(b, i)
			if ok {
				f, err := strconv.ParseFloat(string(num), 64)
				r.LatencyMS, ok = f, err == nil
			}
		case "reason":
			i, ok = stringField(b, i, &r.Reason)
		case "error":
			i, ok = stringField(b, i, &r.Error)
		case "method":
			i, ok = stringField(b, i, &r.Method)
		case "path":
			i, ok = stringField(b, i, &r.Path)
		case "host":
			i, ok = stringField(b, i, &r.Host)
		case "status":
			var v int64
			v, i, ok = intField(b, i, strconv.IntSize)
			r.Status = int(v)
		case "rawPath":
			i, ok = stringField(b, i, &r.RawPath)
		case "apiKey":
			i, ok = stringField(b, i, &r.APIKey)
		case "apiVersion":
			var v int64
			v, i, ok = intField(b, i, 16)
			r.APIVersion = int16(v)
		case "clientID":
			i, ok = stringField(b, i, &r.ClientID)
		case "correlationID":
			var v int64
			v, i, ok = intField(b, i, 32)
			r.CorrelationID = int32(v)
		case "topics":
			r.Topics, i, ok = stringArray(b, i)
		case "errorCode":
			var v int64
			v, i, ok = intField(b, i, 16)
			r.ErrorCode = int16(v)
		case "dnsQuery":
			i, ok = stringField(b, i, &r.DNSQuery)
		case "dnsType":
			i, ok = stringField(b, i, &r.DNSType)
		case "dnsRcode":
			i, ok = stringField(b, i, &r.DNSRcode)
		case "ipProtocol":
			var v uint64
			v, i, ok = uintField(b, i, 8)
			r.IPProtocol = uint8(v)
		case "proxyPort":
			var v uint64
			v, i, ok = uintField(b, i, 16)
			r.ProxyPort = uint16(v)
		case "fromProxy":
			r.FromProxy, i, ok = boolField(b, i)
		case "endpoint":
			i, ok = stringField(b, i, &r.Endpoint)
		case "observer":
			i, ok = stringField(b, i, &r.Observer)
		case "node":
			i, ok = stringField(b, i, &r.Node)
		case "isReply":
			r.IsReply, i, ok = boolField(b, i)
		default:
			// decidedBy, headerMismatches, dnsIPs, srcEndpoint,
			// dstEndpoint, keys in another case, unknown keys
			return false
		}
		if !ok || i >= len(b) {
			return false
		}
		switch b[i] {
		case '}':
			return i+1 == len(b)
		case ',':
			i++
		default:
			return false
		}
	}
}

// plainString reads a JSON string at b[i] made of printable ASCII without
// escapes, returning its contents and the index after it.
func plainString(b []byte, i int) ([]byte, int, bool) {
	if i >= len(b) || b[i] != '"' {
		return nil, i, false
	}
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return b[i+1 : j], j + 1, true
		case c < 0x20 || c > 0x7e || c == '\\':
			return nil, i, false
		}
	}
	return nil, i, false
}

func stringField(b []byte, i int, dst *string) (int, bool) {
	s, n, ok := plainString(b, i)
	if ok {
		*dst = string(s)
	}
	return n, ok
}

// stringArray reads an array of plain strings; [] is an empty, non-nil
// slice, as encoding/json makes it.
func stringArray(b []byte, i int) ([]string, int, bool) {
	if i >= len(b) || b[i] != '[' {
		return nil, i, false
	}
	i++
	out := []string{}
	if i < len(b) && b[i] == ']' {
		return out, i + 1, true
	}
	for {
		s, n, ok := plainString(b, i)
		if !ok || n >= len(b) {
			return nil, i, false
		}
		out = append(out, string(s))
		switch b[n] {
		case ']':
			return out, n + 1, true
		case ',':
			i = n + 1
		default:
			return nil, i, false
		}
	}
}

// integer reads -?(0|[1-9][0-9]*), the integers JSON allows (a fraction
// or exponent after it ends the fast path at the caller).
func integer(b []byte, i int, signed bool) ([]byte, int, bool) {
	start := i
	if signed && i < len(b) && b[i] == '-' {
		i++
	}
	if i >= len(b) || b[i] < '0' || b[i] > '9' {
		return nil, start, false
	}
	if b[i] == '0' {
		i++
	} else {
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	}
	return b[start:i], i, true
}

func uintField(b []byte, i, bits int) (uint64, int, bool) {
	s, n, ok := integer(b, i, false)
	if !ok {
		return 0, i, false
	}
	v, err := strconv.ParseUint(string(s), 10, bits)
	return v, n, err == nil
}

func intField(b []byte, i, bits int) (int64, int, bool) {
	s, n, ok := integer(b, i, true)
	if !ok {
		return 0, i, false
	}
	v, err := strconv.ParseInt(string(s), 10, bits)
	return v, n, err == nil
}

// number reads a JSON number (integer, fraction, exponent).
func number(b []byte, i int) ([]byte, int, bool) {
	start := i
	_, i, ok := integer(b, i, true)
	if !ok {
		return nil, start, false
	}
	digits := func() bool {
		j := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		return i > j
	}
	if i < len(b) && b[i] == '.' {
		i++
		if !digits() {
			return nil, start, false
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if !digits() {
			return nil, start, false
		}
	}
	return b[start:i], i, true
}

func boolField(b []byte, i int) (bool, int, bool) {
	switch {
	case len(b)-i >= 4 && string(b[i:i+4]) == "true":
		return true, i + 4, true
	case len(b)-i >= 5 && string(b[i:i+5]) == "false":
		return false, i + 5, true
	}
	return false, i, false
}
