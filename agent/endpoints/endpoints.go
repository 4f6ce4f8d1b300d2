// Package endpoints finds this node's endpoints: the pods whose IPv4 (or,
// for an IPv6-only pod, IPv6) address routes directly to a veth in the
// agent's network namespace, as a
// CNI plugin leaves them. It reads routes and links over netlink (one dump
// each, whatever the number of pods) and watches link and route changes so
// the agent attaches a new pod's veth as soon as its route exists.
//
// It imports policy and bpftranslate (for the LocalEndpoint type) only.
package endpoints

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/l7gate/l7gate/bpftranslate"
	"github.com/l7gate/l7gate/policy"
)

type route struct {
	prefix  netip.Prefix
	ifindex int
	direct  bool
}

// Find returns the endpoints of eps whose first routable IPv4 address (or,
// with none, IPv6 address) routes directly (no gateway, unicast) to a veth
// here, by longest-prefix match over the main table, in the order of eps.
func Find(eps []policy.Endpoint) ([]bpftranslate.LocalEndpoint, error) {
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	var table []route
	for _, r := range routes {
		p := netip.MustParsePrefix("0.0.0.0/0")
		if r.Family == netlink.FAMILY_V6 {
			p = netip.MustParsePrefix("::/0")
		}
		if r.Dst != nil {
			a, ok := netip.AddrFromSlice(r.Dst.IP)
			if !ok {
				continue
			}
			ones, _ := r.Dst.Mask.Size()
			p = netip.PrefixFrom(a.Unmap(), ones).Masked()
		}
		direct := r.Gw == nil && len(r.MultiPath) == 0 && (r.Type == 0 || r.Type == unix.RTN_UNICAST)
		table = append(table, route{prefix: p, ifindex: r.LinkIndex, direct: direct})
	}
	// longest prefix first
	slices.SortStableFunc(table, func(a, b route) int { return b.prefix.Bits() - a.prefix.Bits() })
	links, err := netlink.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("list links: %w", err)
	}
	veths := map[int]string{}
	for _, l := range links {
		if l.Type() == "veth" {
			veths[l.Attrs().Index] = l.Attrs().Name
		}
	}
	return match(eps, table, veths), nil
}

// match is Find's pure part: per endpoint, its first routable IPv4
// address (else IPv6 address, in the order of its addresses) whose first
// route in table order containing it is direct to a veth. Host routes
// (/32, /128: one per local pod) are looked up in a map, the other routes
// scanned (a few), so a node with 1000 local pods and 10k cluster pods
// costs 10k lookups, not 10M prefix tests (TestMatchEqualsLinearScan).
func match(eps []policy.Endpoint, table []route, veths map[int]string) []bpftranslate.LocalEndpoint {
	host := make(map[netip.Addr]int, len(table))
	var other []int // indexes of the routes that are not host routes
	for i, r := range table {
		if r.prefix.IsSingleIP() {
			if _, ok := host[r.prefix.Addr()]; !ok {
				host[r.prefix.Addr()] = i
			}
			continue
		}
		other = append(other, i)
	}
	// first: the index of the first route containing ip, or -1.
	first := func(ip netip.Addr) int {
		h, ok := host[ip]
		if !ok {
			h = len(table)
		}
		for _, i := range other {
			if i > h {
				break
			}
			if table[i].prefix.Contains(ip) {
				return i
			}
		}
		if ok {
			return h
		}
		return -1
	}
	var out []bpftranslate.LocalEndpoint
	for _, ep := range eps {
		// IPv4 first: a dual-stack pod is found by its IPv4 route.
		found := false
		for _, v4 := range []bool{true, false} {
			for _, ip := range ep.IPs {
				if found || ip.Is4() != v4 {
					continue
				}
				if !ip.Is4() && (!ip.Is6() || ip.IsLinkLocalUnicast()) {
					continue
				}
				i := first(ip)
				if i < 0 || !table[i].direct {
					continue
				}
				name, ok := veths[table[i].ifindex]
				if !ok {
					continue
				}
				out = append(out, bpftranslate.LocalEndpoint{Endpoint: ep, Ifindex: table[i].ifindex, Device: name})
				found = true
			}
		}
	}
	return out
}

// Watch signals on the returned channel whenever a link or an IPv4 route
// is added, changed or removed in this network namespace, until ctx ends.
// Signals coalesce: a receiver that is busy gets one signal for many
// changes. If the netlink subscription fails later the channel is closed.
func Watch(ctx context.Context) (<-chan struct{}, error) {
	out := make(chan struct{}, 1)
	signal := func() {
		select {
		case out <- struct{}{}:
		default:
		}
	}
	links := make(chan netlink.LinkUpdate, 64)
	routes := make(chan netlink.RouteUpdate, 64)
	done := make(chan struct{})
	errc := make(chan error, 2)
	onErr := func(err error) {
		select {
		case errc <- err:
		default:
		}
	}
	if err := netlink.LinkSubscribeWithOptions(links, done, netlink.LinkSubscribeOptions{ErrorCallback: onErr}); err != nil {
		close(done)
		return nil, fmt.Errorf("subscribe to link changes: %w", err)
	}
	if err := netlink.RouteSubscribeWithOptions(routes, done, netlink.RouteSubscribeOptions{ErrorCallback: onErr}); err != nil {
		close(done)
		return nil, fmt.Errorf("subscribe to route changes: %w", err)
	}
	go func() {
		defer close(out)
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-errc:
				return
			case _, ok := <-links:
				if !ok {
					return
				}
				signal()
			case u, ok := <-routes:
				if !ok {
					return
				}
				if u.Family == 0 || u.Family == netlink.FAMILY_V4 || u.Family == netlink.FAMILY_V6 {
					signal()
				}
			}
		}
	}()
	return out, nil
}

// HostAddresses lists this namespace's own IPv4 and IPv6 addresses except
// loopback and pod addresses (isPod; the host identity).
func HostAddresses(isPod func(netip.Addr) bool) ([]netip.Addr, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(ipn.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if ip.IsLoopback() || isPod(ip) {
			continue
		}
		out = append(out, ip)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out), nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
