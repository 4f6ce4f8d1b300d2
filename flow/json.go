package flow

import (
	"net/netip"
	"strconv"
	"unicode/utf8"
)

// AppendJSON appends r as one JSON object and a newline, field for field
// what encoding/json produces for Record (the test checks that), at a
// fraction of its cost: access logs are written for every request.
func AppendJSON(b []byte, r *Record) []byte { return appendJSON(b, r, nil) }

// appendJSON is AppendJSON rendering the time through tc (nil: without a
// cache).
func appendJSON(b []byte, r *Record, tc *timeCache) []byte {
	b = append(b, `{"time":"`...)
	b = tc.appendTime(b, r.Time)
	b = append(b, `","protocol":`...)
	b = appendString(b, r.Protocol)
	b = append(b, `,"direction":`...)
	b = appendString(b, r.Direction.String())
	b = append(b, `,"source":`...)
	b = appendAddrPort(b, r.Source)
	b = append(b, `,"destination":`...)
	b = appendAddrPort(b, r.Destination)
	b = append(b, `,"srcIdentity":`...)
	b = strconv.AppendUint(b, uint64(r.SrcIdentity), 10)
	b = append(b, `,"dstIdentity":`...)
	b = strconv.AppendUint(b, uint64(r.DstIdentity), 10)
	b = append(b, `,"verdict":`...)
	b = appendString(b, string(r.Verdict))
	if len(r.DecidedBy) > 0 {
		b = append(b, `,"decidedBy":[`...)
		for i, p := range r.DecidedBy {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendProvenance(b, p)
		}
		b = append(b, ']')
	}
	b = append(b, `,"latencyMs":`...)
	b = strconv.AppendFloat(b, r.LatencyMS, 'f', -1, 64)
	b = appendOptString(b, `,"reason":`, r.Reason)
	b = appendOptString(b, `,"error":`, r.Error)
	b = appendOptString(b, `,"method":`, r.Method)
	b = appendOptString(b, `,"path":`, r.Path)
	b = appendOptString(b, `,"host":`, r.Host)
	if r.Status != 0 {
		b = append(b, `,"status":`...)
		b = strconv.AppendInt(b, int64(r.Status), 10)
	}
	b = appendOptString(b, `,"rawPath":`, r.RawPath)
	if len(r.HeaderMismatches) > 0 {
		b = append(b, `,"headerMismatches":[`...)
		for i, h := range r.HeaderMismatches {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"action":`...)
			b = appendString(b, h.Action)
			b = append(b, `,"name":`...)
			b = appendString(b, h.Name)
			b = append(b, `,"value":`...)
			b = appendString(b, h.Value)
			b = append(b, '}')
		}
		b = append(b, ']')
	}
	b = appendOptString(b, `,"apiKey":`, r.APIKey)
	if r.APIVersion != 0 {
		b = append(b, `,"apiVersion":`...)
		b = strconv.AppendInt(b, int64(r.APIVersion), 10)
	}
	b = appendOptString(b, `,"clientID":`, r.ClientID)
	if r.CorrelationID != 0 {
		b = append(b, `,"correlationID":`...)
		b = strconv.AppendInt(b, int64(r.CorrelationID), 10)
	}
	if len(r.Topics) > 0 {
		b = append(b, `,"topics":[`...)
		for i, t := range r.Topics {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, t)
		}
		b = append(b, ']')
	}
	if r.ErrorCode != 0 {
		b = append(b, `,"errorCode":`...)
		b = strconv.AppendInt(b, int64(r.ErrorCode), 10)
	}
	b = appendOptString(b, `,"dnsQuery":`, r.DNSQuery)
	b = appendOptString(b, `,"dnsType":`, r.DNSType)
	b = appendOptString(b, `,"dnsRcode":`, r.DNSRcode)
	if len(r.DNSIPs) > 0 {
		b = append(b, `,"dnsIPs":[`...)
		for i, ip := range r.DNSIPs {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, '"')
			b = ip.AppendTo(b)
			b = append(b, '"')
		}
		b = append(b, ']')
	}
	if r.IPProtocol != 0 {
		b = append(b, `,"ipProtocol":`...)
		b = strconv.AppendUint(b, uint64(r.IPProtocol), 10)
	}
	if r.ProxyPort != 0 {
		b = append(b, `,"proxyPort":`...)
		b = strconv.AppendUint(b, uint64(r.ProxyPort), 10)
	}
	if r.FromProxy {
		b = append(b, `,"fromProxy":true`...)
	}
	b = appendOptString(b, `,"endpoint":`, r.Endpoint)
	b = appendOptString(b, `,"observer":`, r.Observer)
	b = appendOptString(b, `,"node":`, r.Node)
	if r.SrcEndpoint != nil {
		b = appendEndpoint(append(b, `,"srcEndpoint":`...), r.SrcEndpoint)
	}
	if r.DstEndpoint != nil {
		b = appendEndpoint(append(b, `,"dstEndpoint":`...), r.DstEndpoint)
	}
	if r.IsReply {
		b = append(b, `,"isReply":true`...)
	}
	return append(b, "}\n"...)
}

func appendEndpoint(b []byte, e *Endpoint) []byte {
	b = append(b, '{')
	n := len(b)
	field := func(key, v string) {
		if v == "" {
			return
		}
		if len(b) > n {
			b = append(b, ',')
		}
		b = appendString(append(b, key...), v)
	}
	field(`"namespace":`, e.Namespace)
	field(`"pod":`, e.Pod)
	if len(e.Labels) > 0 {
		if len(b) > n {
			b = append(b, ',')
		}
		b = append(b, `"labels":[`...)
		for i, l := range e.Labels {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, l)
		}
		b = append(b, ']')
	}
	field(`"workloadKind":`, e.WorkloadKind)
	field(`"workload":`, e.Workload)
	field(`"service":`, e.Service)
	return append(b, '}')
}

// appendAddrPort renders an address as its MarshalText does ("" when
// unset); addresses need no escaping.
func appendAddrPort(b []byte, ap netip.AddrPort) []byte {
	b = append(b, '"')
	if ap.IsValid() {
		b = ap.AppendTo(b)
	}
	return append(b, '"')
}

func appendProvenance(b []byte, p Provenance) []byte {
	b = append(b, `{"policy":`...)
	b = appendString(b, p.Policy)
	b = append(b, `,"policyKind":`...)
	b = appendString(b, string(p.PolicyKind))
	b = append(b, `,"direction":`...)
	b = appendString(b, p.Direction.String())
	b = append(b, `,"rule":`...)
	b = strconv.AppendInt(b, int64(p.Rule), 10)
	b = append(b, `,"kind":`...)
	b = appendString(b, string(p.Kind))
	b = append(b, `,"path":`...)
	b = appendString(b, p.Path)
	b = appendOptString(b, `,"l7":`, p.L7)
	if p.Audit {
		b = append(b, `,"audit":true`...)
	}
	return append(b, '}')
}

func appendOptString(b []byte, key, s string) []byte {
	if s == "" {
		return b
	}
	return appendString(append(b, key...), s)
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string, escaping as encoding/json does
// (including <, > and & and invalid UTF-8 as \ufffd).
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
