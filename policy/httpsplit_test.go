package policy

import (
	"fmt"
	"regexp"
	"runtime"
	"testing"
)

// splitCases: expressions with a literal prefix, those the split must
// leave whole, and strings around each.
var splitCases = []struct {
	expr  string
	split bool
	in    []string
}{
	{"/api/v1/r7/[a-z]+", true, []string{"/api/v1/r7/abc", "/api/v1/r7/", "/api/v1/r7/ABC", "/api/v1/r7/abc/", "/api/v1/r77/abc", "x/api/v1/r7/abc", "/api/v1/r7/a\xffb"}},
	{"/a/(x|yz)*/[0-9]{2,3}", false, []string{"/a//12", "/a/xyzx/123", "/a/xy/12", "/a/x/1234", "/a/x/1"}}, // its rest prints back to another tree: kept whole
	{"/files/(?s).+", true, []string{"/files/a\nb", "/files/", "/files/\n"}},
	{"/files/.+", true, []string{"/files/a\nb", "/files/ab"}},
	{"/q\\?a=[^&]*", true, []string{"/q?a=1", "/q?a=1&b", "/q?a="}},
	{"/é/[ä-ö]+", true, []string{"/é/ö", "/é/\xff", "/\xff/ö"}},
	{"/api(/v1)?/x[0-9]+", true, []string{"/api/x1", "/api/v1/x2", "/api/v2/x3", "/api/v1/x"}},
	{"/api(/v1)?/x[0-9]", false, []string{"/api/x1", "/api/v1/x2"}}, // a small set
	{"/(?i)abc[0-9]", true, []string{"/abc1", "/ABC1"}},             // the folded part is the rest
	{"(?i)/abc/[0-9]", false, []string{"/abc/1", "/ABC/1"}},         // no case-sensitive prefix
	{"/a\\b[a-z]+", false, []string{"/a", "/ab", "/a-b"}},           // \b sees the prefix's last byte
	{"/a/\\A[a-z]+", false, []string{"/a/b", "b"}},                  // \A is the text's start, not the rest's
	{"/a/(?m:^)b", false, []string{"/a/b", "b"}},                    // so is ^
	{"/a/b$[a-z]*", false, []string{"/a/b", "/a/bc"}},               // and $ the end
	{"/\ufffd/[a-z]+", false, []string{"/\ufffd/a", "/\xff/a"}},     // U+FFFD also matches an invalid byte
	{"/v[12]/x", false, []string{"/v1/x", "/v3/x"}},                 // a small set: no regex at all
	{"/static/.*", false, []string{"/static/", "/static/a\nb"}},
	{"/a|/b[0-9]", false, []string{"/a", "/b1", "/b"}},
}

// TestSplitLiteralPrefix: an expression split into its literal prefix and
// the rest (compiled once for every expression with that rest) matches
// exactly what the whole regex matches; expressions where that would not
// hold (assertions, folded case, U+FFFD) are not split.
func TestSplitLiteralPrefix(t *testing.T) {
	for _, c := range splitCases {
		var cache HTTPMatcherCache
		m, err := cache.stringMatcher(c.expr)
		if err != nil {
			t.Fatal(err)
		}
		if (m.rest != nil) != c.split {
			t.Errorf("%q: split %v, want %v (prefix %q rest %q)", c.expr, m.rest != nil, c.split, m.prefix, m.restExpr)
		}
		whole := regexp.MustCompile("^(?:" + c.expr + ")$")
		for _, s := range c.in {
			if got, want := m.match(s), whole.MatchString(s); got != want {
				t.Errorf("%q on %q: matcher %v, regex %v", c.expr, s, got, want)
			}
		}
		if p := m.indexPrefix(); m.hasRegex() && !isPrefixOfAll(p, c.in, whole) {
			t.Errorf("%q: index prefix %q is not a prefix of every match", c.expr, p)
		}
	}
}

func isPrefixOfAll(p string, in []string, re *regexp.Regexp) bool {
	for _, s := range in {
		if re.MatchString(s) && (len(s) < len(p) || s[:len(p)] != p) {
			return false
		}
	}
	return true
}

// TestSplitSharesRest: expressions that differ only in their literal
// prefix share one compiled regex through the cache (a matcher's layout:
// the regex is most of a rule's memory), and the bytes per rule of a
// 1000-rule matcher like make bench's are printed.
func TestSplitSharesRest(t *testing.T) {
	var c HTTPMatcherCache
	a, err := c.stringMatcher("/api/v1/r1/[a-z]+")
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.stringMatcher("/api/v1/r2/[a-z]+")
	if err != nil {
		t.Fatal(err)
	}
	if a.rest == nil || b.rest == nil || a.rest.re == nil || a.rest.re != b.rest.re || a.re != nil || b.re != nil {
		t.Fatalf("not one shared regex: %+v %+v", a, b)
	}
	var rules []HTTPRuleRef
	for i := range 1000 {
		rules = append(rules, HTTPRuleRef{Rule: &HTTPRule{Method: "GET", Path: fmt.Sprintf("/api/v1/r%d/[a-z]+", i)}, Peers: []Identity{1000}})
	}
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.HeapAlloc
	var cache HTTPMatcherCache
	m, err := NewHTTPMatcherCached(rules, &cache)
	if err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	t.Logf("1000 rules /api/v1/rN/[a-z]+: %d B per rule (matcher and cache)", (int64(ms.HeapAlloc)-int64(before))/1000)
	if got := m.Match(1000, &HTTPRequest{Method: "GET", Path: "/api/v1/r999/x"}); got != 999 {
		t.Errorf("/api/v1/r999/x matched rule %d", got)
	}
	runtime.KeepAlive(&cache)
}

// FuzzSplitLiteralPrefix: for any expression and string, the matcher
// (split or not) decides as the whole anchored regex does.
func FuzzSplitLiteralPrefix(f *testing.F) {
	for _, c := range splitCases {
		for _, s := range c.in {
			f.Add(c.expr, s)
		}
	}
	f.Fuzz(func(t *testing.T, expr, s string) {
		whole, err := regexp.Compile("^(?:" + expr + ")$")
		if err != nil {
			return
		}
		var cache HTTPMatcherCache
		m, err := cache.stringMatcher(expr)
		if err != nil {
			return // (compileAnchored's parse may reject what this wrapper does not)
		}
		if got, want := m.match(s), whole.MatchString(s); got != want {
			t.Fatalf("%q on %q: matcher %v (prefix %q rest %q), regex %v", expr, s, got, m.prefix, m.restExpr, want)
		}
		if p := m.indexPrefix(); m.hasRegex() && whole.MatchString(s) && (len(s) < len(p) || s[:len(p)] != p) {
			t.Fatalf("%q: index prefix %q, but %q matches", expr, p, s)
		}
	})
}
