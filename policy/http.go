package policy

import (
	"fmt"
	"regexp"
	"regexp/syntax"
	"slices"
	"strings"
	"sync"
	"unicode/utf8"
)

// HTTPRule is one entry of rules.http. Method, Path and Host are extended
// regular expressions (RE2 syntax) anchored at both ends; Path is matched
// against the request target as sent (path and query, as Envoy's :path).
type HTTPRule struct {
	Method  string        `json:"method,omitempty"`
	Path    string        `json:"path,omitempty"`
	Host    string        `json:"host,omitempty"`
	Headers []HeaderMatch `json:"headers,omitempty"`
	// Unsupported, when set, says why this rule matches nothing (a header
	// value kept in a Kubernetes Secret, which l7gate cannot read).
	Unsupported string `json:"unsupported,omitempty"`
}

// HeaderMatch requires a header. Presence-only matches have an empty Value
// and Presence set. Mismatch (LOG, ADD, DELETE, REPLACE) turns a required
// match into an action taken when the header does not match; the request is
// then not denied for it.
type HeaderMatch struct {
	Name     string `json:"name"`
	Value    string `json:"value,omitempty"`
	Presence bool   `json:"presence,omitempty"`
	Mismatch string `json:"mismatch,omitempty"`
}

// Header mismatch actions (Cilium's headerMatches[].mismatch).
const (
	MismatchLog     = "LOG"
	MismatchAdd     = "ADD"
	MismatchDelete  = "DELETE"
	MismatchReplace = "REPLACE"
)

// compileAnchored compiles an anchored extended regex and renders Go's
// parse error the way the policy author wrote it.
func compileAnchored(expr string) (*regexp.Regexp, error) {
	re, err := regexp.Compile("^(?:" + expr + ")$")
	if err != nil {
		// Parse on its own so the message is about the author's text,
		// not our anchoring wrapper.
		if _, perr := syntax.Parse(expr, syntax.Perl); perr != nil {
			var se *syntax.Error
			if asSyntax(perr, &se) {
				return nil, fmt.Errorf("invalid regex %q: %s", expr, se.Code)
			}
			return nil, fmt.Errorf("invalid regex %q: %w", expr, perr)
		}
		return nil, fmt.Errorf("invalid regex %q: %w", expr, err)
	}
	return re, nil
}

// validAnchored returns compileAnchored's error, without compiling the
// regex when it is valid: regexp.Compile fails only where syntax.Parse
// does (its program compiler returns no error). Decoding validates every
// L7 regex of a policy; compiling them only to throw them away was most
// of a 101-rule CNP's decode (BenchmarkDecodeCNP).
func validAnchored(expr string) error {
	if _, err := syntax.Parse("^(?:"+expr+")$", syntax.Perl); err != nil {
		_, err := compileAnchored(expr)
		return err
	}
	return nil
}

func asSyntax(err error, target **syntax.Error) bool {
	se, ok := err.(*syntax.Error)
	if ok {
		*target = se
	}
	return ok
}

// validHeaderName checks an HTTP field name (RFC 9110 token).
func validHeaderName(n string) bool {
	if n == "" {
		return false
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' {
			continue
		}
		if !strings.ContainsRune("!#$%&'*+-.^_`|~", rune(c)) {
			return false
		}
	}
	return true
}

type pathWarning struct {
	path fieldPath
	msg  string
}

func compileHTTPRule(w wireHTTPRule, p fieldPath) (HTTPRule, []pathWarning, error) {
	var warns []pathWarning
	r := HTTPRule{Method: w.Method, Path: w.Path, Host: w.Host}
	for _, f := range []struct {
		name, val string
	}{{"method", w.Method}, {"path", w.Path}, {"host", w.Host}} {
		if f.val == "" {
			continue
		}
		if err := checkRegexSize(f.val); err != nil {
			return r, nil, p.child(f.name).errorf("%w", err)
		}
		if err := validAnchored(f.val); err != nil {
			return r, nil, p.child(f.name).errorf("%w", err)
		}
	}
	for i, h := range w.Headers {
		hp := p.child("headers").index(i)
		name, val, hasVal := strings.Cut(h, ":")
		name = strings.TrimSpace(name)
		if !validHeaderName(name) {
			return r, nil, hp.errorf("invalid header %q: want \"Name: value\" or \"Name\"", h)
		}
		m := HeaderMatch{Name: name}
		if hasVal {
			m.Value = strings.TrimSpace(val)
		} else {
			m.Presence = true
		}
		r.Headers = append(r.Headers, m)
	}
	for i, h := range w.HeaderMatches {
		hp := p.child("headerMatches").index(i)
		if !validHeaderName(h.Name) {
			return r, nil, hp.child("name").errorf("invalid header name %q", h.Name)
		}
		m := HeaderMatch{Name: h.Name, Value: h.Value, Mismatch: strings.ToUpper(h.Mismatch)}
		switch m.Mismatch {
		case "", MismatchLog, MismatchAdd, MismatchDelete, MismatchReplace:
		default:
			return r, nil, hp.child("mismatch").errorf("unknown mismatch action %q (want LOG, ADD, DELETE or REPLACE)", h.Mismatch)
		}
		if h.Secret != nil {
			r.Unsupported = "headerMatches[" + fmt.Sprint(i) + "].secret: header values from Secrets are not supported"
			warns = append(warns, pathWarning{hp.child("secret"), "unsupported: header values from Kubernetes Secrets are not read by l7gate; this HTTP rule matches no request"})
		}
		if m.Value == "" && h.Secret == nil {
			m.Presence = true
		}
		r.Headers = append(r.Headers, m)
	}
	return r, warns, nil
}

// HTTPRequest is what the HTTP matcher needs of a request. Path is the
// request target as received (path and query). Header names compare
// case-insensitively.
type HTTPRequest struct {
	Method  string
	Path    string
	Host    string
	Headers []HTTPHeader
}

// HTTPHeader is one request header.
type HTTPHeader struct {
	Name  string
	Value string
}

// header returns the first value of a header.
func (r *HTTPRequest) header(name string) (string, bool) {
	for i := range r.Headers {
		if strings.EqualFold(r.Headers[i].Name, name) {
			return r.Headers[i].Value, true
		}
	}
	return "", false
}

// stringMatcher matches a string against an anchored regex, using a plain
// comparison when the regex is a literal.
type stringMatcher struct {
	any     bool
	literal string
	isLit   bool
	re      *regexp.Regexp
	// prefix, rest: the regex is the literal prefix followed by rest (see
	// splitLiteralPrefix), and rest, compiled on its own, decides what
	// follows prefix; re is nil. Expressions that differ only in their
	// literal prefix ("/api/v1/r1/[a-z]+", "/api/v1/r2/[a-z]+") share
	// rest's compiled regex through the cache: a compiled regex is ~3 KB,
	// most of a rule's memory.
	prefix, restExpr string
	rest             *stringMatcher
	// set: every string the regex matches, when small and finite
	set []string
	// suffix: a literal every match ends with
	suffix string
	// shape, lit, nl: see simpleShape
	shape int
	lit   string
	nl    bool
}

// HTTPMatcherCache keeps the compiled expressions (method, path and host
// regexes) of HTTP rules between matchers: a proxy applying a config in
// which one rule of a hundred changed compiles one regex, not a hundred
// (compiling was most of a config change's cost in the Go proxy). A
// compiled expression is immutable, so matchers share it. Entries unused
// during two consecutive generations (Rotate) are dropped, so the cache
// holds at most what the last two generations used. Safe for concurrent
// use; the zero value is ready; a nil cache compiles every time.
type HTTPMatcherCache struct {
	mu        sync.Mutex
	cur, prev map[string]stringMatcher
	compiled  uint64
	reused    uint64
}

// HTTPMatcherCacheStats counts what a cache compiled and reused.
type HTTPMatcherCacheStats struct {
	Compiled, Reused uint64
	Entries          int
}

// Stats returns the counters.
func (c *HTTPMatcherCache) Stats() HTTPMatcherCacheStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return HTTPMatcherCacheStats{Compiled: c.compiled, Reused: c.reused, Entries: len(c.cur) + len(c.prev)}
}

// Rotate starts a generation: what was not used since the previous
// Rotate is forgotten.
func (c *HTTPMatcherCache) Rotate() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.prev, c.cur = c.cur, nil
}

// stringMatcher compiles expr, or returns its compiled form from c.
// Errors are not kept.
func (c *HTTPMatcherCache) stringMatcher(expr string) (stringMatcher, error) {
	if c == nil || expr == "" {
		return newStringMatcher(expr, c)
	}
	c.mu.Lock()
	m, ok := c.cur[expr]
	if !ok {
		m, ok = c.prev[expr]
	}
	if ok {
		c.reused++
		c.put(expr, m)
		c.mu.Unlock()
		return m, nil
	}
	c.mu.Unlock()
	m, err := newStringMatcher(expr, c)
	if err != nil {
		return m, err
	}
	c.mu.Lock()
	c.compiled++
	c.put(expr, m)
	c.mu.Unlock()
	return m, nil
}

func (c *HTTPMatcherCache) put(expr string, m stringMatcher) {
	if c.cur == nil {
		c.cur = map[string]stringMatcher{}
	}
	c.cur[expr] = m
	if m.rest != nil {
		c.cur[m.restExpr] = *m.rest // in use as long as expr is
	}
}

// newStringMatcher compiles expr; the rest of a split expression comes
// from c (nil: compiled here).
func newStringMatcher(expr string, c *HTTPMatcherCache) (stringMatcher, error) {
	if expr == "" {
		return stringMatcher{any: true}, nil
	}
	re, err := compileAnchored(expr)
	if err != nil {
		return stringMatcher{}, err
	}
	if lit, complete := re.LiteralPrefix(); complete {
		return stringMatcher{literal: lit, isLit: true, set: []string{lit}}, nil
	}
	m := stringMatcher{re: re, set: literalSet(expr), suffix: literalSuffix(expr)}
	m.shape, m.lit, m.nl = simpleShape(expr)
	if m.set != nil || m.shape != shapeRegex {
		return m, nil // decided without the regex (which the index reads)
	}
	if prefix, rest, ok := splitLiteralPrefix(expr); ok {
		if r, err := c.stringMatcher(rest); err == nil {
			m.re, m.prefix, m.restExpr, m.rest = nil, prefix, rest, &r
		}
	}
	return m, nil
}

// splitLiteralPrefix splits expr, when it is a concatenation that starts
// with a case-sensitive literal, into that literal and the rest, so that
// a string matches expr (anchored) exactly when it starts with prefix and
// what follows matches rest (anchored). That holds when rest has no
// empty-width assertion (^, $, \A, \z, \b, \B: those would see the start
// of the remainder as the start of the text, or miss the prefix's last
// character) and prefix has no U+FFFD (which a regex also matches on an
// invalid byte that HasPrefix does not). rest is rest's syntax tree
// printed, used only when it parses back to the same tree.
func splitLiteralPrefix(expr string) (prefix, rest string, ok bool) {
	re, err := syntax.Parse(expr, syntax.Perl)
	if err != nil {
		return "", "", false
	}
	re = re.Simplify()
	if re.Op != syntax.OpConcat {
		return "", "", false
	}
	var b strings.Builder
	i := 0
	for ; i < len(re.Sub) && re.Sub[i].Op == syntax.OpLiteral && re.Sub[i].Flags&syntax.FoldCase == 0; i++ {
		b.WriteString(string(re.Sub[i].Rune))
	}
	if i == 0 || i == len(re.Sub) || strings.ContainsRune(b.String(), utf8.RuneError) {
		return "", "", false
	}
	tail := re.Sub[i]
	if i < len(re.Sub)-1 {
		tail = &syntax.Regexp{Op: syntax.OpConcat, Flags: re.Flags, Sub: re.Sub[i:]}
	}
	if hasAssertion(tail) {
		return "", "", false
	}
	rest = tail.String()
	back, err := syntax.Parse(rest, syntax.Perl)
	if err != nil || !back.Simplify().Equal(tail) {
		return "", "", false
	}
	return b.String(), rest, true
}

// hasAssertion reports whether re holds an empty-width assertion.
func hasAssertion(re *syntax.Regexp) bool {
	switch re.Op {
	case syntax.OpBeginLine, syntax.OpEndLine, syntax.OpBeginText, syntax.OpEndText, syntax.OpWordBoundary, syntax.OpNoWordBoundary:
		return true
	}
	for _, s := range re.Sub {
		if hasAssertion(s) {
			return true
		}
	}
	return false
}

// indexPrefix is a literal every string m matches starts with ("" when
// m has no regex).
func (m *stringMatcher) indexPrefix() string {
	switch {
	case m.rest != nil:
		return m.prefix + m.rest.indexPrefix()
	case m.re != nil:
		return literalPrefix(m.re)
	}
	return ""
}

// hasRegex reports whether m decides with a regex (re, or prefix and rest).
func (m *stringMatcher) hasRegex() bool { return m.re != nil || m.rest != nil }

// Shapes of regexes common in policies that a string comparison decides
// completely.
const (
	shapeRegex  = iota
	shapePrefix // "lit.*"
	shapeSuffix // ".*lit"
)

// simpleShape recognises "lit.*" and ".*lit". nl reports whether "."
// excludes newlines (it does unless the (?s) flag is set).
func simpleShape(expr string) (shape int, lit string, nl bool) {
	re, err := syntax.Parse(expr, syntax.Perl)
	if err != nil {
		return shapeRegex, "", false
	}
	re = re.Simplify()
	if re.Op != syntax.OpConcat || len(re.Sub) != 2 {
		return shapeRegex, "", false
	}
	isAny := func(r *syntax.Regexp) (bool, bool) {
		if r.Op != syntax.OpStar || r.Sub[0].Op != syntax.OpAnyChar && r.Sub[0].Op != syntax.OpAnyCharNotNL {
			return false, false
		}
		return true, r.Sub[0].Op == syntax.OpAnyCharNotNL
	}
	isLit := func(r *syntax.Regexp) bool { return r.Op == syntax.OpLiteral && r.Flags&syntax.FoldCase == 0 }
	if ok, notNL := isAny(re.Sub[1]); ok && isLit(re.Sub[0]) {
		return shapePrefix, string(re.Sub[0].Rune), notNL
	}
	if ok, notNL := isAny(re.Sub[0]); ok && isLit(re.Sub[1]) {
		return shapeSuffix, string(re.Sub[1].Rune), notNL
	}
	return shapeRegex, "", false
}

// literalSuffix returns the literal every match must end with, if any, so
// the matcher can reject most strings without running the regex.
func literalSuffix(expr string) string {
	re, err := syntax.Parse(expr, syntax.Perl)
	if err != nil {
		return ""
	}
	re = re.Simplify()
	if re.Op == syntax.OpConcat && len(re.Sub) > 0 {
		re = re.Sub[len(re.Sub)-1]
	}
	if re.Op == syntax.OpLiteral && re.Flags&syntax.FoldCase == 0 {
		return string(re.Rune)
	}
	return ""
}

// maxLiteralSet bounds the strings a regex may expand to for indexing.
const maxLiteralSet = 32

// literalSet returns every string an (anchored) regex matches when that
// language is small and finite ("GET|HEAD", "/v[12]/items"), else nil.
func literalSet(expr string) []string {
	re, err := syntax.Parse(expr, syntax.Perl)
	if err != nil {
		return nil
	}
	set, ok := expand(re.Simplify())
	if !ok || len(set) == 0 {
		return nil
	}
	slices.Sort(set)
	return slices.Compact(set)
}

func expand(re *syntax.Regexp) ([]string, bool) {
	switch re.Op {
	case syntax.OpLiteral:
		if re.Flags&syntax.FoldCase != 0 {
			return nil, false
		}
		return []string{string(re.Rune)}, true
	case syntax.OpEmptyMatch:
		return []string{""}, true
	case syntax.OpCapture:
		return expand(re.Sub[0])
	case syntax.OpQuest:
		sub, ok := expand(re.Sub[0])
		return append(sub, ""), ok && len(sub) < maxLiteralSet
	case syntax.OpCharClass:
		var out []string
		for i := 0; i+1 < len(re.Rune); i += 2 {
			for r := re.Rune[i]; r <= re.Rune[i+1]; r++ {
				if len(out) >= maxLiteralSet {
					return nil, false
				}
				out = append(out, string(r))
			}
		}
		return out, true
	case syntax.OpAlternate:
		var out []string
		for _, sub := range re.Sub {
			s, ok := expand(sub)
			if !ok || len(out)+len(s) > maxLiteralSet {
				return nil, false
			}
			out = append(out, s...)
		}
		return out, true
	case syntax.OpConcat:
		out := []string{""}
		for _, sub := range re.Sub {
			s, ok := expand(sub)
			if !ok || len(out)*len(s) > maxLiteralSet {
				return nil, false
			}
			next := make([]string, 0, len(out)*len(s))
			for _, a := range out {
				for _, b := range s {
					next = append(next, a+b)
				}
			}
			out = next
		}
		return out, true
	}
	return nil, false
}

func (m *stringMatcher) match(s string) bool {
	switch {
	case m.any:
		return true
	case m.isLit:
		return s == m.literal
	case m.set != nil:
		_, ok := slices.BinarySearch(m.set, s)
		return ok
	case !strings.HasSuffix(s, m.suffix):
		return false
	case m.shape == shapePrefix:
		return strings.HasPrefix(s, m.lit) && (!m.nl || strings.IndexByte(s, '\n') < 0)
	case m.shape == shapeSuffix:
		return strings.HasSuffix(s, m.lit) && (!m.nl || strings.IndexByte(s, '\n') < 0)
	case m.rest != nil:
		return strings.HasPrefix(s, m.prefix) && m.rest.match(s[len(m.prefix):])
	}
	return m.re.MatchString(s)
}

// HTTPRuleRef is an HTTP rule as the matcher receives it: the peers it
// applies to and an opaque index the caller uses for attribution.
type HTTPRuleRef struct {
	Rule    *HTTPRule // nil: allow every request (an L4 allow on a redirected port)
	AnyPeer bool
	Peers   []Identity // sorted
}

type compiledHTTPRule struct {
	anyPeer bool
	peers   []Identity
	never   bool
	method  stringMatcher
	path    stringMatcher
	host    stringMatcher
	headers []HeaderMatch
}

func (c *compiledHTTPRule) matches(peer Identity, req *HTTPRequest) bool {
	if c.never {
		return false
	}
	if !c.anyPeer {
		if _, ok := slices.BinarySearch(c.peers, peer); !ok {
			return false
		}
	}
	if !c.method.match(req.Method) || !c.path.match(req.Path) || !c.host.match(req.Host) {
		return false
	}
	for i := range c.headers {
		h := &c.headers[i]
		if h.Mismatch != "" {
			continue // a mismatch triggers an action, not a denial
		}
		v, ok := req.header(h.Name)
		if !ok || (!h.Presence && v != h.Value) {
			return false
		}
	}
	return true
}

// HTTPMatcher decides HTTP requests against an allow-list of rules. It
// indexes rules by the literal prefix of their path regex, so a request is
// compared only with rules whose literal part it starts with. Matching does
// not allocate.
type HTTPMatcher struct {
	rules []compiledHTTPRule
	exact map[string][]int32
	trie  []trieNode
	// suffixTrie indexes rules without a literal prefix by the reversed
	// literal their path must end with.
	suffixTrie []trieNode
	// Rules whose path has no literal prefix (including no path at all),
	// by method when the method regex is a small finite set, else in
	// anyMethod.
	byMethod  map[string][]int32
	anyMethod []int32
}

type trieNode struct {
	edges []trieEdge
	rules []int32
}

type trieEdge struct {
	b     byte
	child int32
}

// NewHTTPMatcher compiles rules; a rule's position is its index in Match's
// result.
func NewHTTPMatcher(rules []HTTPRuleRef) (*HTTPMatcher, error) { return newHTTPMatcher(rules, nil) }

// NewHTTPMatcherCached is NewHTTPMatcher taking compiled expressions from
// c (and adding the new ones).
func NewHTTPMatcherCached(rules []HTTPRuleRef, c *HTTPMatcherCache) (*HTTPMatcher, error) {
	return newHTTPMatcher(rules, c)
}

func newHTTPMatcher(rules []HTTPRuleRef, cache *HTTPMatcherCache) (*HTTPMatcher, error) {
	m := &HTTPMatcher{exact: map[string][]int32{}, trie: []trieNode{{}}, suffixTrie: []trieNode{{}}, byMethod: map[string][]int32{}}
	for i, ref := range rules {
		c := compiledHTTPRule{anyPeer: ref.AnyPeer, peers: ref.Peers, method: stringMatcher{any: true}, path: stringMatcher{any: true}, host: stringMatcher{any: true}}
		idx := int32(i)
		if ref.Rule == nil {
			m.rules = append(m.rules, c)
			m.anyMethod = append(m.anyMethod, idx)
			continue
		}
		r := ref.Rule
		var err error
		if c.method, err = cache.stringMatcher(r.Method); err != nil {
			return nil, fmt.Errorf("rule %d: method: %w", i, err)
		}
		if c.path, err = cache.stringMatcher(r.Path); err != nil {
			return nil, fmt.Errorf("rule %d: path: %w", i, err)
		}
		if c.host, err = cache.stringMatcher(r.Host); err != nil {
			return nil, fmt.Errorf("rule %d: host: %w", i, err)
		}
		c.headers = r.Headers
		c.never = r.Unsupported != ""
		m.rules = append(m.rules, c)
		switch {
		case c.path.set != nil:
			for _, p := range c.path.set {
				m.exact[p] = append(m.exact[p], idx)
			}
		case c.path.hasRegex() && c.path.indexPrefix() != "":
			m.trie = insertTrie(m.trie, c.path.indexPrefix(), false, idx)
		case c.path.hasRegex() && c.path.suffix != "":
			m.suffixTrie = insertTrie(m.suffixTrie, c.path.suffix, true, idx)
		case c.method.set != nil:
			for _, meth := range c.method.set {
				m.byMethod[meth] = append(m.byMethod[meth], idx)
			}
		default:
			m.anyMethod = append(m.anyMethod, idx)
		}
	}
	return m, nil
}

func literalPrefix(re *regexp.Regexp) string {
	p, _ := re.LiteralPrefix()
	return p
}

// insertTrie adds idx under key (walked backwards when reverse).
func insertTrie(trie []trieNode, key string, reverse bool, idx int32) []trieNode {
	n := int32(0)
	for i := range len(key) {
		b := key[i]
		if reverse {
			b = key[len(key)-1-i]
		}
		next := int32(-1)
		for _, e := range trie[n].edges {
			if e.b == b {
				next = e.child
				break
			}
		}
		if next < 0 {
			next = int32(len(trie))
			trie = append(trie, trieNode{})
			trie[n].edges = append(trie[n].edges, trieEdge{b: b, child: next})
		}
		n = next
	}
	trie[n].rules = append(trie[n].rules, idx)
	return trie
}

// Match returns the index of the first rule (in the order given to
// NewHTTPMatcher) that allows the request from peer, or -1.
func (m *HTTPMatcher) Match(peer Identity, req *HTTPRequest) int {
	best := int32(-1)
	better := func(list []int32) {
		for _, i := range list {
			if best >= 0 && i >= best {
				return // lists are ascending
			}
			if m.rules[i].matches(peer, req) {
				best = i
				return
			}
		}
	}
	better(m.exact[req.Path])
	better(m.byMethod[req.Method])
	better(m.anyMethod)
	best = m.walk(m.trie, req.Path, false, best, peer, req)
	best = m.walk(m.suffixTrie, req.Path, true, best, peer, req)
	return int(best)
}

// walk visits the trie nodes along path (from its end when reverse) and
// returns the lowest matching rule index below best.
func (m *HTTPMatcher) walk(trie []trieNode, path string, reverse bool, best int32, peer Identity, req *HTTPRequest) int32 {
	n := int32(0)
	for i := 0; ; i++ {
		for _, r := range trie[n].rules {
			if best >= 0 && r >= best {
				break
			}
			if m.rules[r].matches(peer, req) {
				best = r
				break
			}
		}
		if i == len(path) || len(trie[n].edges) == 0 {
			return best
		}
		b := path[i]
		if reverse {
			b = path[len(path)-1-i]
		}
		next := int32(-1)
		for _, e := range trie[n].edges {
			if e.b == b {
				next = e.child
				break
			}
		}
		if next < 0 {
			return best
		}
		n = next
	}
}

// MismatchActions returns the header-mismatch actions rule i asks for on
// req (for LOG/ADD/DELETE/REPLACE handling by the proxy).
func (m *HTTPMatcher) MismatchActions(i int, req *HTTPRequest) []HeaderMatch {
	var out []HeaderMatch
	if i < 0 || i >= len(m.rules) {
		return nil
	}
	for _, h := range m.rules[i].headers {
		if h.Mismatch == "" {
			continue
		}
		v, ok := req.header(h.Name)
		if !ok || (!h.Presence && v != h.Value) {
			out = append(out, h)
		}
	}
	return out
}
