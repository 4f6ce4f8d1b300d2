package policy

// HasMismatchActions reports whether any rule carries a headerMatches entry
// with a mismatch action (then MatchWithActions must be used to find every
// action a request triggers).
func (m *HTTPMatcher) HasMismatchActions() bool {
	for i := range m.rules {
		for _, h := range m.rules[i].headers {
			if h.Mismatch != "" {
				return true
			}
		}
	}
	return false
}

// MatchWithActions is Match for rule sets with header-mismatch actions,
// following Cilium's proxy: every rule that matches the request (its
// mismatch-action headers aside) contributes its mismatch actions, in rule
// order, not only the first one. It returns the first matching rule (-1:
// denied) and the actions to take on an allowed request; mismatches are
// computed on the request as received.
func (m *HTTPMatcher) MatchWithActions(peer Identity, req *HTTPRequest) (int, []HeaderMatch) {
	first := -1
	var actions []HeaderMatch
	for i := range m.rules {
		if !m.rules[i].matches(peer, req) {
			continue
		}
		if first < 0 {
			first = i
		}
		actions = append(actions, m.MismatchActions(i, req)...)
	}
	return first, actions
}
