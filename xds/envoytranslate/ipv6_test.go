package envoytranslate

import (
	"slices"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
)

// TestIPv6Listener: on a dual-stack node (Config.IPv6) every listener
// binds [::] beside 0.0.0.0 on its proxy port, and filter chains match
// local endpoints by their IPv6 addresses too; otherwise a listener binds
// IPv4 only and IPv6 addresses are left out (IPv6 redirects find no
// listener: dropped, never passed).
func TestIPv6Listener(t *testing.T) {
	snap := loadSnapshot(t, "testdata/in/dualstack.yaml")
	for _, v6 := range []bool{false, true} {
		cfg := testConfig()
		cfg.IPv6 = v6
		res, err := Translate(snap, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Listeners) == 0 {
			t.Fatal("no listener")
		}
		for _, l := range res.Listeners {
			var addrs []string
			for _, a := range append([]*listenerv3.AdditionalAddress{{Address: l.Address}}, l.AdditionalAddresses...) {
				s := a.Address.GetSocketAddress()
				if s.GetPortValue() != l.Address.GetSocketAddress().GetPortValue() {
					t.Errorf("%s: address %s on port %d, want the proxy port", l.Name, s.Address, s.GetPortValue())
				}
				addrs = append(addrs, s.Address)
			}
			want := []string{"0.0.0.0"}
			if v6 {
				want = append(want, "::")
			}
			if !slices.Equal(addrs, want) {
				t.Errorf("IPv6 %v: %s binds %v, want %v", v6, l.Name, addrs, want)
			}
			if !l.Transparent.GetValue() {
				t.Errorf("%s is not transparent", l.Name)
			}
			var v6Match bool
			for _, fc := range l.FilterChains {
				for _, r := range append(fc.FilterChainMatch.PrefixRanges, fc.FilterChainMatch.SourcePrefixRanges...) {
					if r.AddressPrefix == "2001:db8:1::10" {
						v6Match = true
					}
				}
			}
			if l.Name == "l7gate/ingress/http/15001" && v6Match != v6 {
				t.Errorf("IPv6 %v: %s matches the deathstar's IPv6 address: %v", v6, l.Name, v6Match)
			}
		}
	}
}
