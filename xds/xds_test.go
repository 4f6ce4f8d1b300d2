package xds

import (
	"testing"

	l7gatev1 "github.com/l7gate/l7gate/proto/l7gatev1"
)

func TestTypeURLs(t *testing.T) {
	cases := map[string]string{
		TypeNetworkPolicy:      TypeURL(&l7gatev1.NetworkPolicy{}),
		TypeIdentityMembership: TypeURL(&l7gatev1.IdentityMembership{}),
		TypeListener:           TypeURL(&l7gatev1.Listener{}),
	}
	for c, got := range cases {
		if c != got {
			t.Errorf("type URL constant %q, descriptor says %q", c, got)
		}
	}
	if NodeOf(L7ProxyNodeID("n1")) != "n1" || NodeOf("bad") != "" {
		t.Error("NodeOf")
	}
}
