package envoy

import (
	"testing"

	"github.com/l7gate/l7gate/flow"
)

func TestParsePolicyID(t *testing.T) {
	for _, c := range []struct {
		id   string
		want flow.Provenance
		ok   bool
	}{
		{"cnp:shop/http-rules:spec.ingress[0].http[1]", flow.Provenance{PolicyKind: flow.KindCNP, Policy: "shop/http-rules", Path: "spec.ingress[0]", L7: "http[1]"}, true},
		{"np:default/web:spec.ingress[0]#2", flow.Provenance{PolicyKind: flow.KindNP, Policy: "default/web", Path: "spec.ingress[0]"}, true},
		{"something-else", flow.Provenance{Policy: "something-else"}, false},
	} {
		got, ok := ParsePolicyID(c.id)
		if got != c.want || ok != c.ok {
			t.Errorf("ParsePolicyID(%q) = %+v %v, want %+v %v", c.id, got, ok, c.want, c.ok)
		}
	}
}

// TestPolicyIDRoundTrip: what the translation writes, the access-log
// service reads back.
func TestPolicyIDRoundTrip(t *testing.T) {
	for _, p := range []flow.Provenance{
		{PolicyKind: flow.KindCCNP, Policy: "cart-all", Path: "specs[1].ingress[0]", L7: "http[0]"},
		{PolicyKind: flow.KindCNP, Policy: "shop/http-rules", Path: "spec.egress[2]"},
	} {
		got, ok := ParsePolicyID(PolicyID(p) + "#3")
		if !ok || got != p {
			t.Errorf("%+v → %q → %+v", p, PolicyID(p), got)
		}
	}
}

func TestRouteName(t *testing.T) {
	n := RouteName(flow.Egress, 300, 50051)
	if n != "l7gate/egress/300/50051" {
		t.Fatalf("RouteName = %q", n)
	}
	d, id, port, ok := ParseRouteName(n)
	if !ok || d != flow.Egress || id != 300 || port != 50051 {
		t.Errorf("ParseRouteName(%q) = %v %v %v %v", n, d, id, port, ok)
	}
	for _, bad := range []string{"", "l7gate/original-dst", "l7gate/sideways/1/2", "l7gate/ingress/x/2", "other/ingress/1/2"} {
		if _, _, _, ok := ParseRouteName(bad); ok {
			t.Errorf("ParseRouteName(%q) ok", bad)
		}
	}
}
