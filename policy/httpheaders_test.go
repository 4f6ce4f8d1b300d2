package policy

import (
	"reflect"
	"testing"
)

func TestMatchWithActions(t *testing.T) {
	rules := []HTTPRule{
		{Method: "GET", Path: "/a", Headers: []HeaderMatch{{Name: "X-Token", Value: "t", Mismatch: MismatchReplace}}},
		{Method: "GET", Headers: []HeaderMatch{{Name: "X-Trace", Presence: true, Mismatch: MismatchLog}}},
		{Method: "POST"},
	}
	refs := make([]HTTPRuleRef, len(rules))
	for i := range rules {
		refs[i] = HTTPRuleRef{AnyPeer: true, Rule: &rules[i]}
	}
	m, err := NewHTTPMatcher(refs)
	if err != nil {
		t.Fatal(err)
	}
	if !m.HasMismatchActions() {
		t.Fatal("HasMismatchActions: false")
	}
	i, acts := m.MatchWithActions(1, &HTTPRequest{Method: "GET", Path: "/a"})
	want := []HeaderMatch{rules[0].Headers[0], rules[1].Headers[0]}
	if i != 0 || !reflect.DeepEqual(acts, want) {
		t.Errorf("GET /a: %d %+v, want 0 %+v", i, acts, want)
	}
	i, acts = m.MatchWithActions(1, &HTTPRequest{Method: "GET", Path: "/b", Headers: []HTTPHeader{{Name: "x-trace", Value: "1"}}})
	if i != 1 || len(acts) != 0 {
		t.Errorf("GET /b with X-Trace: %d %+v", i, acts)
	}
	if i, _ := m.MatchWithActions(1, &HTTPRequest{Method: "PUT", Path: "/a"}); i != -1 {
		t.Errorf("PUT: %d, want -1", i)
	}
}
