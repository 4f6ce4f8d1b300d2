package policy

import (
	"errors"
	"strings"
	"testing"
)

// TestDNSPatternSemantics pins Cilium's matchPattern/matchName semantics
// (pkg/fqdn/matchpattern: '*' within a label, "**." any depth, all-stars
// matches everything, names lowercased and fully qualified).
func TestDNSPatternSemantics(t *testing.T) {
	cases := []struct {
		pattern string
		name    bool // pattern is a matchName
		match   []string
		nomatch []string
	}{
		{pattern: "example.com", name: true, match: []string{"example.com", "EXAMPLE.com.", "Example.Com"},
			nomatch: []string{"www.example.com", "example.co", "example.com.evil", "."}},
		{pattern: "*", match: []string{"a.", "a.b.c.d.", "x_y-1.example.com.", "."},
			nomatch: []string{"a b.", `a\032b.`, ""}},
		{pattern: "**", match: []string{"a.b."}},
		{pattern: "*.", match: []string{"a.b."}},
		{pattern: "*.example.com", match: []string{"www.example.com", "a-b_c.example.com."},
			nomatch: []string{"example.com", "a.b.example.com", "wwwexample.com", "www.example.com.evil"}},
		{pattern: "**.example.com", match: []string{"a.example.com", "a.b.example.com", "x.y.z.example.com."},
			nomatch: []string{"example.com", "aexample.com", "a.example.org"}},
		{pattern: "***.example.com", match: []string{"a.b.example.com"}, nomatch: []string{"example.com"}},
		{pattern: "api*.example.com", match: []string{"api.example.com", "api-2.example.com"},
			nomatch: []string{"xapi.example.com", "api.x.example.com"}},
		{pattern: "*api*.ex*.com", match: []string{"myapi2.example.com", "api.ex.com"}, nomatch: []string{"ap.ex.com"}},
		{pattern: "a**b.com", match: []string{"ab.com", "axxb.com"}, nomatch: []string{"a.b.com"}},
		{pattern: "sub.**.example.com", match: []string{"sub.x.example.com"}, nomatch: []string{"sub.x.y.example.com"}},
		{pattern: "Cilium.IO.", match: []string{"cilium.io", "CILIUM.io."}, nomatch: []string{"www.cilium.io"}},
	}
	for _, c := range cases {
		var s DNSSelector
		var err error
		if c.name {
			s, err = CompileDNSName(c.pattern)
		} else {
			s, err = CompileDNSPattern(c.pattern)
		}
		if err != nil {
			t.Fatalf("%q: %v", c.pattern, err)
		}
		m := NewDNSMatcher([]DNSSelector{s})
		for _, n := range c.match {
			if m.Match(n) != 0 {
				t.Errorf("%s should match %q", s.String(), n)
			}
		}
		for _, n := range c.nomatch {
			if m.Match(n) != -1 {
				t.Errorf("%s should not match %q", s.String(), n)
			}
		}
	}
}

func TestDNSSelectorValidation(t *testing.T) {
	long := strings.Repeat("a.", 127) + "a" // 255 characters
	for _, bad := range []string{"", "a..b", "a b", "a/b", "[a]", "a.com,", long + "x", strings.Repeat("a", 64) + ".com"} {
		if _, err := CompileDNSPattern(bad); err == nil {
			t.Errorf("matchPattern %q accepted", bad)
		}
	}
	for _, bad := range []string{"", "*.a.com", "a..b", "a b", "é.com", strings.Repeat("a", 64) + ".com", strings.Repeat("a.", 127) + "aa"} {
		if _, err := CompileDNSName(bad); err == nil {
			t.Errorf("matchName %q accepted", bad)
		}
	}
}

// TestHostileDNSNames: over-long names, oversized labels and escaped
// bytes are errors (named), and match nothing — not even "*".
func TestHostileDNSNames(t *testing.T) {
	// 3 labels of 63, one of 61: 63*3+61+3 dots = 253 characters.
	ok253 := strings.Repeat(strings.Repeat("a", 63)+".", 3) + strings.Repeat("b", 61)
	if len(ok253) != 253 {
		t.Fatalf("setup: %d", len(ok253))
	}
	if _, err := NormalizeDNSName(ok253); err != nil {
		t.Fatalf("253 characters: %v", err)
	}
	all, _ := CompileDNSPattern("*")
	m := NewDNSMatcher([]DNSSelector{all})
	for name, want := range map[string]error{
		ok253 + "a":              ErrDNSNameTooLong,
		strings.Repeat("a", 300): ErrDNSNameTooLong,
		strings.Repeat("a", 64):  ErrDNSNameLabel,
		"a..b":                   ErrDNSNameLabel,
		`a\032b.com`:             ErrDNSNameChars,
		"a\x00b.com":             ErrDNSNameChars,
		"":                       ErrDNSNameEmpty,
		".a":                     ErrDNSNameLabel,
	} {
		if _, err := NormalizeDNSName(name); !errors.Is(err, want) {
			t.Errorf("%q: err %v, want %v", name, err, want)
		}
		if m.Match(name) != -1 {
			t.Errorf("* matched hostile name %q", name)
		}
	}
}

func TestDNSMatcherOrder(t *testing.T) {
	var sels []DNSSelector
	for _, p := range []string{"*.b.com", "a.b.com", "*"} {
		s, err := CompileDNSPattern(p)
		if err != nil {
			t.Fatal(err)
		}
		sels = append(sels, s)
	}
	exact, _ := CompileDNSName("x.org")
	sels = append(sels, exact)
	m := NewDNSMatcher(sels)
	for name, want := range map[string]int{"a.b.com": 0, "x.org": 2, "zzz": 2} {
		if got := m.Match(name); got != want {
			t.Errorf("%s: %d, want %d", name, got, want)
		}
	}
	if got := m.MatchAll("a.b.com"); len(got) != 3 {
		t.Errorf("MatchAll: %v", got)
	}
}

// FuzzDNSPattern: compiling and matching arbitrary patterns and names
// never panics, and a match implies the name normalises.
func FuzzDNSPattern(f *testing.F) {
	for _, s := range [][2]string{{"*", "a.b"}, {"**.a.com", "x.y.a.com"}, {"a*b*c.d", "axbxc.d"}, {"*.*", "a.b."}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, name string) {
		s, err := CompileDNSPattern(pattern)
		if err != nil {
			return
		}
		m := NewDNSMatcher([]DNSSelector{s})
		if m.Match(name) == 0 {
			if _, err := NormalizeDNSName(name); err != nil {
				t.Fatalf("%q matched unnormalisable %q", pattern, name)
			}
		}
	})
}
