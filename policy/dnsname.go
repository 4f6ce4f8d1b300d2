package policy

import (
	"errors"
	"fmt"
	"strings"
)

// DNS name matching with Cilium's semantics (pkg/fqdn/matchpattern and
// pkg/policy/api/fqdn.go, Cilium 1.19). It lives here, next to the HTTP
// and Kafka matchers, because policy validates rules.dns and toFQDNs when
// it decodes a policy and explains names in trace; the DNS proxy
// (parsers/dns, proxy/dns) matches with the same code.
//
//   - Names are compared lowercased and fully qualified ("Example.COM" and
//     "example.com." are the same name).
//   - matchName is one exact name: letters, digits, '-', '_' and '.'.
//   - matchPattern adds '*': within one label it stands for zero or more
//     name characters ([-a-z0-9_], never a dot). A pattern made of stars
//     only ("*", "**", "*.") matches every name (and the root "."). A
//     pattern starting with two or more stars and a dot ("**.example.com")
//     matches one or more whole labels in front of the rest, at any depth
//     ("a.example.com", "a.b.example.com", not "example.com"). Stars
//     elsewhere in a run ("a**b") are one star.
//   - A name holding any character outside [-a-z0-9_.] (miekg/dns renders
//     such bytes escaped, "\032" or "\.") matches no pattern, not even "*":
//     fail closed, as Cilium's regexes do.

// MaxDNSNameLength is the longest name in presentation form without the
// trailing dot: 255 wire octets hold at most 253 characters.
const MaxDNSNameLength = 253

// maxDNSSelectorLength bounds matchName/matchPattern text as Cilium's
// validation does.
const maxDNSSelectorLength = 255

// Errors of name normalisation.
var (
	ErrDNSNameEmpty   = errors.New("empty DNS name")
	ErrDNSNameTooLong = fmt.Errorf("DNS name longer than %d characters", MaxDNSNameLength)
	ErrDNSNameChars   = errors.New("DNS name has characters outside [-a-zA-Z0-9_.]")
	ErrDNSNameLabel   = errors.New("DNS name has an empty label or a label longer than 63 characters")
)

// NormalizeDNSName returns name lowercased and fully qualified ("a.b."),
// or an error when it cannot be matched by any selector (too long, an
// empty or oversized label, a character outside [-a-zA-Z0-9_.]). "." is
// the root.
func NormalizeDNSName(name string) (string, error) {
	if name == "" {
		return "", ErrDNSNameEmpty
	}
	if name == "." {
		return ".", nil
	}
	bare := strings.TrimSuffix(name, ".")
	if len(bare) > MaxDNSNameLength {
		return "", ErrDNSNameTooLong
	}
	label := 0
	for i := 0; i < len(bare); i++ {
		c := bare[i]
		switch {
		case c == '.':
			if label == 0 {
				return "", ErrDNSNameLabel
			}
			label = 0
			continue
		case !dnsNameChar(c):
			return "", ErrDNSNameChars
		}
		if label++; label > 63 {
			return "", ErrDNSNameLabel
		}
	}
	if label == 0 {
		return "", ErrDNSNameLabel
	}
	return strings.ToLower(bare) + ".", nil
}

func dnsNameChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

// DNSSelector is one compiled matchName or matchPattern.
type DNSSelector struct {
	// MatchName / MatchPattern as written in the policy (one is set).
	MatchName    string `json:"matchName,omitempty"`
	MatchPattern string `json:"matchPattern,omitempty"`

	exact    string   // normalised matchName
	all      bool     // the pattern matches every name
	anyDepth bool     // leading "**.": one or more labels, then labels
	labels   []string // the pattern's labels (stars collapsed), right of "**."
}

// CompileDNSName compiles a matchName.
func CompileDNSName(name string) (DNSSelector, error) {
	s := DNSSelector{MatchName: name}
	name = strings.TrimSpace(name)
	if len(name) > maxDNSSelectorLength {
		return s, fmt.Errorf("matchName %q: longer than %d characters", name, maxDNSSelectorLength)
	}
	n, err := NormalizeDNSName(name)
	if err != nil {
		return s, fmt.Errorf("matchName %q: %w", name, err)
	}
	s.exact = n
	return s, nil
}

// CompileDNSPattern compiles a matchPattern.
func CompileDNSPattern(pattern string) (DNSSelector, error) {
	s := DNSSelector{MatchPattern: pattern}
	p := strings.ToLower(strings.TrimSpace(pattern))
	switch {
	case p == "":
		return s, errors.New("matchPattern is empty")
	case len(p) > maxDNSSelectorLength:
		return s, fmt.Errorf("matchPattern %q: longer than %d characters", pattern, maxDNSSelectorLength)
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; !dnsNameChar(c) && c != '.' && c != '*' {
			return s, fmt.Errorf("matchPattern %q: only letters, digits, '-', '_', '.' and '*' are allowed", pattern)
		}
	}
	if strings.Trim(strings.TrimSuffix(p, "."), "*") == "" && p != "." {
		s.all = true
		return s, nil
	}
	p = strings.TrimSuffix(p, ".")
	if stars := len(p) - len(strings.TrimLeft(p, "*")); stars >= 2 && stars < len(p) && p[stars] == '.' {
		s.anyDepth = true
		p = p[stars+1:]
	}
	for _, l := range strings.Split(p, ".") {
		if l == "" {
			return s, fmt.Errorf("matchPattern %q: empty label", pattern)
		}
		for strings.Contains(l, "**") {
			l = strings.ReplaceAll(l, "**", "*")
		}
		if len(strings.ReplaceAll(l, "*", "")) > 63 {
			return s, fmt.Errorf("matchPattern %q: label longer than 63 characters", pattern)
		}
		s.labels = append(s.labels, l)
	}
	return s, nil
}

// String is the selector as written: "matchName: x" or "matchPattern: y".
func (s *DNSSelector) String() string {
	if s.MatchPattern != "" {
		return "matchPattern: " + s.MatchPattern
	}
	return "matchName: " + s.MatchName
}

// Key is the selector's FQDN label key (fqdn:<key>): the normalised name
// without its trailing dot, or the lowercased pattern (trailing dot
// dropped). A pattern without stars and the matchName of the same name
// share a key: they select the same names.
func (s *DNSSelector) Key() string {
	if s.MatchPattern != "" {
		p := strings.ToLower(strings.TrimSpace(s.MatchPattern))
		if s.all {
			return "*"
		}
		return strings.TrimSuffix(p, ".")
	}
	if s.exact == "." {
		return "."
	}
	return strings.TrimSuffix(s.exact, ".")
}

// Matches reports whether the selector matches name, which must be
// normalised (NormalizeDNSName); any other name matches nothing.
func (s *DNSSelector) Matches(name string) bool {
	switch {
	case s.exact != "":
		return name == s.exact
	case s.all:
		n, err := NormalizeDNSName(name)
		return err == nil && n == name
	case len(s.labels) == 0:
		return false
	}
	if name == "." || !strings.HasSuffix(name, ".") {
		return false
	}
	labels := strings.Split(name[:len(name)-1], ".")
	switch {
	case len(labels) < len(s.labels):
		return false
	case !s.anyDepth && len(labels) != len(s.labels):
		return false
	case s.anyDepth && len(labels) == len(s.labels):
		return false // "**." needs at least one label in front
	}
	prefix := labels[:len(labels)-len(s.labels)]
	for _, l := range prefix {
		if !validMatchLabel(l) {
			return false
		}
	}
	tail := labels[len(labels)-len(s.labels):]
	for i, pl := range s.labels {
		if !globLabel(pl, tail[i]) {
			return false
		}
	}
	return true
}

// validMatchLabel: a non-empty label of [-a-z0-9_] (lowercase: names are
// normalised).
func validMatchLabel(l string) bool {
	if l == "" {
		return false
	}
	for i := 0; i < len(l); i++ {
		if c := l[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// globLabel matches one label against a pattern label where '*' stands for
// zero or more of [-a-z0-9_]. Iterative with one backtrack point: linear
// in practice, bounded by 63×63 for hostile input.
func globLabel(pattern, label string) bool {
	p, l := 0, 0
	star, mark := -1, 0
	for l < len(label) {
		c := label[l]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
		switch {
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, l
			p++
		case p < len(pattern) && pattern[p] == c:
			p++
			l++
		case star >= 0:
			p = star + 1
			mark++
			l = mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

// Compile compiles a selector decoded from JSON (its compiled form is not
// serialised); an uncompiled selector matches nothing.
func (s DNSSelector) Compile() (DNSSelector, error) {
	if s.MatchPattern != "" {
		return CompileDNSPattern(s.MatchPattern)
	}
	return CompileDNSName(s.MatchName)
}

// DNSMatcher is a compiled list of selectors: exact names in a map,
// patterns tried in order.
type DNSMatcher struct {
	exact    map[string]int
	patterns []int
	sels     []DNSSelector
}

// NewDNSMatcher compiles selectors (already compiled one by one) into a
// matcher; Match returns indexes into sels.
func NewDNSMatcher(sels []DNSSelector) *DNSMatcher {
	m := &DNSMatcher{exact: map[string]int{}, sels: sels}
	for i := range sels {
		if sels[i].exact != "" {
			if _, dup := m.exact[sels[i].exact]; !dup {
				m.exact[sels[i].exact] = i
			}
			continue
		}
		m.patterns = append(m.patterns, i)
	}
	return m
}

// Match returns the lowest index of a selector matching name (normalised
// here; a name that does not normalise matches nothing), or -1.
func (m *DNSMatcher) Match(name string) int {
	n, err := NormalizeDNSName(name)
	if err != nil {
		return -1
	}
	best := -1
	if i, ok := m.exact[n]; ok {
		best = i
	}
	for _, i := range m.patterns {
		if best >= 0 && i > best {
			break
		}
		if m.sels[i].Matches(n) {
			return i
		}
	}
	return best
}

// MatchAll returns every index of a selector matching name, ascending.
func (m *DNSMatcher) MatchAll(name string) []int {
	n, err := NormalizeDNSName(name)
	if err != nil {
		return nil
	}
	var out []int
	for i := range m.sels {
		if m.sels[i].Matches(n) {
			out = append(out, i)
		}
	}
	return out
}
