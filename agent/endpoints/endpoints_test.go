package endpoints

import (
	"net/netip"
	"testing"

	"github.com/l7gate/l7gate/policy"
)

func TestMatch(t *testing.T) {
	eps := []policy.Endpoint{
		{Name: "a", IPs: []netip.Addr{netip.MustParseAddr("fd00::1"), netip.MustParseAddr("198.18.1.10")}},
		{Name: "remote", IPs: []netip.Addr{netip.MustParseAddr("198.18.9.1")}},
		{Name: "via-gw", IPs: []netip.Addr{netip.MustParseAddr("198.18.2.1")}},
		{Name: "not-veth", IPs: []netip.Addr{netip.MustParseAddr("198.18.3.1")}},
		{Name: "b", IPs: []netip.Addr{netip.MustParseAddr("198.18.1.11")}},
	}
	table := []route{
		{prefix: netip.MustParsePrefix("198.18.1.10/32"), ifindex: 7, direct: true},
		{prefix: netip.MustParsePrefix("198.18.1.11/32"), ifindex: 8, direct: true},
		{prefix: netip.MustParsePrefix("198.18.2.0/24"), ifindex: 7, direct: false},
		{prefix: netip.MustParsePrefix("198.18.3.1/32"), ifindex: 2, direct: true},
		{prefix: netip.MustParsePrefix("198.18.1.0/24"), ifindex: 9, direct: true},
		{prefix: netip.MustParsePrefix("0.0.0.0/0"), ifindex: 2, direct: false},
	}
	got := match(eps, table, map[int]string{7: "lxca", 8: "lxcb", 9: "lxcc"})
	if len(got) != 2 || got[0].Name != "a" || got[0].Ifindex != 7 || got[0].Device != "lxca" || got[1].Name != "b" || got[1].Ifindex != 8 {
		t.Errorf("local endpoints %+v", got)
	}
}

// TestMatchIPv6: an IPv6-only pod is found by its IPv6 route; a dual-stack
// pod by its IPv4 route whatever the order of its addresses; link-local
// routes never make an endpoint.
func TestMatchIPv6(t *testing.T) {
	eps := []policy.Endpoint{
		{Name: "v6only", IPs: []netip.Addr{netip.MustParseAddr("2001:db8:1::a")}},
		{Name: "dual", IPs: []netip.Addr{netip.MustParseAddr("2001:db8:1::b"), netip.MustParseAddr("198.18.1.11")}},
		{Name: "linklocal", IPs: []netip.Addr{netip.MustParseAddr("fe80::1")}},
		{Name: "v6-via-gw", IPs: []netip.Addr{netip.MustParseAddr("2001:db8:9::1")}},
	}
	table := []route{
		{prefix: netip.MustParsePrefix("2001:db8:1::a/128"), ifindex: 7, direct: true},
		{prefix: netip.MustParsePrefix("2001:db8:1::b/128"), ifindex: 9, direct: true},
		{prefix: netip.MustParsePrefix("198.18.1.11/32"), ifindex: 8, direct: true},
		{prefix: netip.MustParsePrefix("fe80::/64"), ifindex: 7, direct: true},
		{prefix: netip.MustParsePrefix("::/0"), ifindex: 2, direct: false},
	}
	got := match(eps, table, map[int]string{7: "lxca", 8: "lxcb", 9: "lxcc"})
	if len(got) != 2 || got[0].Name != "v6only" || got[0].Ifindex != 7 || got[1].Name != "dual" || got[1].Ifindex != 8 {
		t.Errorf("local endpoints %+v", got)
	}
}
