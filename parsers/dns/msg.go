package dns

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	mdns "github.com/miekg/dns"

	"github.com/l7gate/l7gate/policy"
)

// MaxMessageSize is the largest DNS message (TCP's two-byte length).
const MaxMessageSize = 65535

// headerSize is a DNS header's size.
const headerSize = 12

// maxCNAMEChain bounds how many CNAMEs Resolve follows.
const maxCNAMEChain = 16

// Errors of message parsing. Every parse error wraps one of them.
var (
	ErrMalformed = errors.New("malformed DNS message")
	ErrTooLarge  = fmt.Errorf("DNS message larger than %d bytes", MaxMessageSize)
	ErrNotQuery  = errors.New("not a DNS query (response bit or opcode)")
	ErrQuestions = errors.New("DNS query must carry exactly one question")
	ErrName      = errors.New("unmatchable DNS name")
	ErrMismatch  = errors.New("DNS response does not answer the query")
)

// Question is a query's one question with its name normalised (lowercase,
// fully qualified; policy.NormalizeDNSName). Raw is the name as sent.
type Question struct {
	Name  string
	Raw   string
	Type  uint16
	Class uint16
}

// TypeString is the question type's mnemonic ("A", "AAAA", "TYPE65534").
func (q Question) TypeString() string { return mdns.Type(q.Type).String() }

// ParseQuery parses a query. On ErrName the message and the question (Raw
// set, Name empty) are returned too, so the caller can answer it.
func ParseQuery(b []byte) (*mdns.Msg, Question, error) {
	var q Question
	m, err := unpack(b)
	if err != nil {
		return nil, q, err
	}
	if m.Response || m.Opcode != mdns.OpcodeQuery {
		return m, q, ErrNotQuery
	}
	if len(m.Question) != 1 {
		return m, q, fmt.Errorf("%w: %d questions", ErrQuestions, len(m.Question))
	}
	mq := m.Question[0]
	q = Question{Raw: mq.Name, Type: mq.Qtype, Class: mq.Qclass}
	name, err := policy.NormalizeDNSName(mq.Name)
	if err != nil {
		return m, q, fmt.Errorf("%w: %q: %w", ErrName, truncate(mq.Name), err)
	}
	q.Name = name
	return m, q, nil
}

// ParseResponse parses a response and checks that it answers query (same
// id, the response bit, the same question).
func ParseResponse(b []byte, query *mdns.Msg) (*mdns.Msg, error) {
	m, err := unpack(b)
	if err != nil {
		return nil, err
	}
	if !m.Response || m.Id != query.Id {
		return nil, fmt.Errorf("%w: id %d response %v", ErrMismatch, m.Id, m.Response)
	}
	// A response may omit the question (some servers do on errors); when
	// present it must be the query's.
	if len(m.Question) > 0 && (len(m.Question) != 1 || len(query.Question) != 1 ||
		!strings.EqualFold(m.Question[0].Name, query.Question[0].Name) || m.Question[0].Qtype != query.Question[0].Qtype) {
		return nil, fmt.Errorf("%w: question differs", ErrMismatch)
	}
	return m, nil
}

func unpack(b []byte) (*mdns.Msg, error) {
	switch {
	case len(b) > MaxMessageSize:
		return nil, ErrTooLarge
	case len(b) < headerSize:
		return nil, fmt.Errorf("%w: %d bytes, shorter than a header", ErrMalformed, len(b))
	}
	m := new(mdns.Msg)
	if err := m.Unpack(b); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return m, nil
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// Deny builds the denial of query: rcode (mdns.RcodeRefused or
// mdns.RcodeNameError) with the question echoed, no records.
func Deny(query *mdns.Msg, rcode int) *mdns.Msg {
	r := new(mdns.Msg)
	r.SetRcode(query, rcode)
	r.RecursionAvailable = true
	return r
}

// Answer is what a response says about the queried name: the A/AAAA
// addresses at the end of its CNAME chain (they belong to the queried
// name), the chain's names, and the smallest TTL on the way.
type Answer struct {
	Name   string       // the queried name, normalised
	IPs    []netip.Addr // sorted, distinct
	CNAMEs []string     // the chain's targets in order, normalised
	TTL    uint32
}

// Resolve follows qname's CNAME chain through m's answer section (at most
// maxCNAMEChain links, loops stopped) and collects the addresses of the
// names on it. Records for names off the chain are ignored: a server
// cannot attach addresses to names nobody asked about.
func Resolve(m *mdns.Msg, qname string) Answer {
	a := Answer{Name: qname}
	byName := map[string][]mdns.RR{}
	for _, rr := range m.Answer {
		h := rr.Header()
		if h.Class != mdns.ClassINET {
			continue
		}
		n, err := policy.NormalizeDNSName(h.Name)
		if err != nil {
			continue
		}
		byName[n] = append(byName[n], rr)
	}
	first := true
	seen := map[string]bool{}
	name := qname
	for hops := 0; hops <= maxCNAMEChain && !seen[name]; hops++ {
		seen[name] = true
		var next string
		for _, rr := range byName[name] {
			switch v := rr.(type) {
			case *mdns.A:
				if ip, ok := netip.AddrFromSlice(v.A.To4()); ok {
					a.IPs = append(a.IPs, ip)
					a.TTL, first = minTTL(a.TTL, v.Hdr.Ttl, first), false
				}
			case *mdns.AAAA:
				if ip, ok := netip.AddrFromSlice(v.AAAA.To16()); ok && len(v.AAAA) == 16 {
					a.IPs = append(a.IPs, ip)
					a.TTL, first = minTTL(a.TTL, v.Hdr.Ttl, first), false
				}
			case *mdns.CNAME:
				if t, err := policy.NormalizeDNSName(v.Target); err == nil && next == "" {
					next = t
					a.TTL, first = minTTL(a.TTL, v.Hdr.Ttl, first), false
				}
			}
		}
		if next == "" {
			break
		}
		a.CNAMEs = append(a.CNAMEs, next)
		name = next
	}
	a.IPs = sortAddrs(a.IPs)
	return a
}

func minTTL(cur, ttl uint32, first bool) uint32 {
	if first || ttl < cur {
		return ttl
	}
	return cur
}

func sortAddrs(ips []netip.Addr) []netip.Addr {
	if len(ips) == 0 {
		return nil
	}
	out := make([]netip.Addr, 0, len(ips))
	seen := map[netip.Addr]bool{}
	for _, ip := range ips {
		if !seen[ip] {
			seen[ip] = true
			out = append(out, ip)
		}
	}
	slicesSortAddrs(out)
	return out
}
