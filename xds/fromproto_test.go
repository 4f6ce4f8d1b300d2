package xds

import (
	"errors"
	"testing"

	l7gatev1 "github.com/l7gate/l7gate/proto/l7gatev1"
)

func TestInvalidResources(t *testing.T) {
	bad := []*l7gatev1.NetworkPolicy{
		{Name: "x"},
		{Name: "198.18.0.1", EndpointIps: []string{"nope"}},
		{Name: "198.18.0.1", EndpointIps: []string{"198.18.0.1"}, Ingress: &l7gatev1.DirectionPolicy{
			Entries: []*l7gatev1.Entry{{Verdict: l7gatev1.Verdict_VERDICT_UNSPECIFIED}}}},
		{Name: "198.18.0.1", EndpointIps: []string{"198.18.0.1"}, Ingress: &l7gatev1.DirectionPolicy{
			L7: []*l7gatev1.L7RuleSet{{Protocol: 6, Port: 80, Parser: "http", Rules: []*l7gatev1.L7Rule{{
				AnyRemote: true,
				Rule:      &l7gatev1.L7Rule_Http{Http: &l7gatev1.HTTPRule{Path: "/a(["}},
				Origin:    &l7gatev1.Provenance{Direction: l7gatev1.Direction_DIRECTION_INGRESS, Kind: l7gatev1.RuleKind_RULE_KIND_ALLOW},
			}}}}}},
	}
	// DNS rule sets: a bad selector, both fields, or a non-DNS rule is a
	// NACK (never an allow-all).
	origin := &l7gatev1.Provenance{Direction: l7gatev1.Direction_DIRECTION_EGRESS, Kind: l7gatev1.RuleKind_RULE_KIND_ALLOW}
	for _, r := range []*l7gatev1.L7Rule{
		{AnyRemote: true, Rule: &l7gatev1.L7Rule_Dns{Dns: &l7gatev1.DNSRule{MatchPattern: "a..b"}}, Origin: origin},
		{AnyRemote: true, Rule: &l7gatev1.L7Rule_Dns{Dns: &l7gatev1.DNSRule{MatchName: "a.com", MatchPattern: "*"}}, Origin: origin},
		{AnyRemote: true, Rule: &l7gatev1.L7Rule_Dns{Dns: &l7gatev1.DNSRule{}}, Origin: origin},
		{AnyRemote: true, Rule: &l7gatev1.L7Rule_Generic{Generic: &l7gatev1.GenericRule{Fields: map[string]string{"x": "y"}}}, Origin: origin},
	} {
		bad = append(bad, &l7gatev1.NetworkPolicy{Name: "198.18.0.1", EndpointIps: []string{"198.18.0.1"}, Egress: &l7gatev1.DirectionPolicy{
			L7: []*l7gatev1.L7RuleSet{{Protocol: 17, Port: 53, Parser: "dns", Rules: []*l7gatev1.L7Rule{r}}}}})
	}
	for i, np := range bad {
		if _, _, err := PolicyFromProto(np); !errors.Is(err, ErrInvalidResource) {
			t.Errorf("case %d: err = %v, want ErrInvalidResource", i, err)
		}
	}
	if _, err := ListenerFromProto(&l7gatev1.Listener{Name: "ingress/http", Direction: l7gatev1.Direction_DIRECTION_INGRESS, Parser: "http"}); !errors.Is(err, ErrInvalidResource) {
		t.Errorf("listener without port: %v", err)
	}
}
