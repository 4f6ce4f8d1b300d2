package endpoints

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/l7gate/l7gate/bpftranslate"
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

// matchLinear is match as it was: per address, a linear scan of the table
// for the first route containing it (the reference for the map lookup).
func matchLinear(eps []policy.Endpoint, table []route, veths map[int]string) []bpftranslate.LocalEndpoint {
	var out []bpftranslate.LocalEndpoint
	for _, ep := range eps {
		ips := slices.SortedStableFunc(slices.Values(ep.IPs), func(a, b netip.Addr) int {
			return boolInt(!a.Is4()) - boolInt(!b.Is4())
		})
		for _, ip := range ips {
			if !ip.Is4() && (!ip.Is6() || ip.IsLinkLocalUnicast()) {
				continue
			}
			i := slices.IndexFunc(table, func(r route) bool { return r.prefix.Contains(ip) })
			if i < 0 || !table[i].direct {
				continue
			}
			name, ok := veths[table[i].ifindex]
			if !ok {
				continue
			}
			out = append(out, bpftranslate.LocalEndpoint{Endpoint: ep, Ifindex: table[i].ifindex, Device: name})
			break
		}
	}
	return out
}

// TestMatchEqualsLinearScan: random route tables (host routes, covering
// and default routes, duplicates, gateways, IPv4 and IPv6, in any order,
// sorted or not) and endpoints (single, dual-stack, mapped and link-local
// addresses) give exactly the endpoints a linear first-match scan gives.
func TestMatchEqualsLinearScan(t *testing.T) {
	for seed := range uint64(300) {
		rng := rand.New(rand.NewPCG(seed, 7))
		addr := func() netip.Addr {
			switch rng.IntN(6) {
			case 0:
				return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 15: byte(rng.IntN(8))})
			case 1:
				return netip.AddrFrom16([16]byte{0xfe, 0x80, 15: byte(rng.IntN(4))})
			case 2:
				return netip.AddrFrom16(netip.AddrFrom4([4]byte{198, 18, byte(rng.IntN(2)), byte(rng.IntN(8))}).As16()) // mapped
			default:
				return netip.AddrFrom4([4]byte{198, 18, byte(rng.IntN(2)), byte(rng.IntN(8))})
			}
		}
		var table []route
		for range rng.IntN(14) {
			a := addr().Unmap()
			bits := a.BitLen()
			switch rng.IntN(4) {
			case 0:
				bits = rng.IntN(a.BitLen() + 1)
			case 1:
				bits = a.BitLen() - 8
			}
			table = append(table, route{prefix: netip.PrefixFrom(a, bits).Masked(), ifindex: 1 + rng.IntN(5), direct: rng.IntN(5) != 0})
		}
		if rng.IntN(2) == 0 {
			slices.SortStableFunc(table, func(a, b route) int { return b.prefix.Bits() - a.prefix.Bits() })
		}
		veths := map[int]string{}
		for i := range 5 {
			if rng.IntN(4) != 0 {
				veths[1+i] = fmt.Sprintf("lxc%d", i)
			}
		}
		var eps []policy.Endpoint
		for i := range 20 {
			ep := policy.Endpoint{Name: fmt.Sprint(i)}
			for range rng.IntN(4) {
				ep.IPs = append(ep.IPs, addr())
			}
			eps = append(eps, ep)
		}
		got, want := match(eps, table, veths), matchLinear(eps, table, veths)
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("seed %d: table %v\n got %+v\nwant %+v", seed, table, got, want)
		}
	}
}

// BenchmarkMatch: a node with 1000 local pods (one host route each) and
// 10k cluster pods, as Find sees them twice per revision; linear is the
// scan match replaced.
func BenchmarkMatch(b *testing.B) {
	var table []route
	veths := map[int]string{}
	var eps []policy.Endpoint
	for i := range 11000 {
		a := netip.AddrFrom4([4]byte{10, byte(i / 250 % 256), byte(i % 250), 1})
		if i < 1000 {
			table = append(table, route{prefix: netip.PrefixFrom(a, 32), ifindex: 100 + i, direct: true})
			veths[100+i] = fmt.Sprintf("lxc%d", i)
		}
		eps = append(eps, policy.Endpoint{Name: fmt.Sprint(i), IPs: []netip.Addr{a}})
	}
	table = append(table, route{prefix: netip.MustParsePrefix("10.0.0.0/16"), ifindex: 2}, route{prefix: netip.MustParsePrefix("0.0.0.0/0"), ifindex: 2})
	for _, bc := range []struct {
		name string
		f    func([]policy.Endpoint, []route, map[int]string) []bpftranslate.LocalEndpoint
	}{{"map", match}, {"linear", matchLinear}} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if got := bc.f(eps, table, veths); len(got) != 1000 {
					b.Fatalf("%d local endpoints", len(got))
				}
			}
		})
	}
}
