package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"

	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/policy"
)

// sysctls the redirect needs on the node (see bpf/doc.go): forwarding (a
// node routes for its pods; any CNI has it on already); early demux
// would attach the proxy's socket to forwarded packets, which the stack
// then drops; accept_local lets the node's own connections, turned around
// into a pod by an ingress redirect, back in.
var nodeSysctls = [][2]string{
	{"net/ipv4/ip_forward", "1"}, // the node routes its pods' traffic
	{"net/ipv4/tcp_early_demux", "0"},
	{"net/ipv4/conf/all/accept_local", "1"},
	{"net/ipv4/conf/default/accept_local", "1"},
}

func writeSysctl(key, value string) error {
	if err := os.WriteFile("/proc/sys/"+key, []byte(value), 0o644); err != nil {
		return fmt.Errorf("set %s=%s: %w", strings.ReplaceAll(key, "/", "."), value, err)
	}
	return nil
}

func runIP(ctx context.Context, args ...string) ([]byte, error) {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// setupNode prepares the node for redirects: sysctls, and the policy
// routing that delivers packets marked for the proxy locally.
func setupNode(ctx context.Context) error {
	for _, kv := range nodeSysctls {
		if err := writeSysctl(kv[0], kv[1]); err != nil {
			return err
		}
	}
	table := strconv.Itoa(bpf.ProxyRoutingTable)
	rules, err := runIP(ctx, "rule", "show")
	if err != nil {
		return err
	}
	if !strings.Contains(string(rules), "fwmark 0x200/0xf00 lookup "+table) {
		if _, err := runIP(ctx, "rule", "add", "fwmark", "0x200/0xf00", "lookup", table); err != nil {
			return err
		}
	}
	if _, err := runIP(ctx, "route", "replace", "local", "0.0.0.0/0", "dev", "lo", "table", table); err != nil {
		return err
	}
	return bpf.CheckNode()
}

// findLocalEndpoints returns the endpoints whose IPv4 address routes
// directly to a veth on this node: those are ours to enforce. It reads the
// routing table and the links once (two `ip` calls, whatever the number of
// endpoints) and does the longest-prefix match itself.
func findLocalEndpoints(ctx context.Context, eps []policy.Endpoint) ([]LocalEndpoint, error) {
	raw, err := runIP(ctx, "-j", "-4", "route", "show", "table", "main")
	if err != nil {
		return nil, err
	}
	var routes []struct {
		Dst     string `json:"dst"`
		Dev     string `json:"dev"`
		Gateway string `json:"gateway"`
		Type    string `json:"type"`
	}
	if err := json.Unmarshal(raw, &routes); err != nil {
		return nil, fmt.Errorf("parse routes: %w", err)
	}
	type route struct {
		prefix netip.Prefix
		dev    string
		direct bool
	}
	var table []route
	for _, r := range routes {
		var p netip.Prefix
		switch {
		case r.Dst == "default":
			p = netip.MustParsePrefix("0.0.0.0/0")
		case strings.Contains(r.Dst, "/"):
			if p, err = netip.ParsePrefix(r.Dst); err != nil {
				continue
			}
		default:
			a, err := netip.ParseAddr(r.Dst)
			if err != nil {
				continue
			}
			p = netip.PrefixFrom(a, 32)
		}
		table = append(table, route{prefix: p.Masked(), dev: r.Dev, direct: r.Gateway == "" && (r.Type == "" || r.Type == "unicast")})
	}
	// longest prefix first
	slices.SortStableFunc(table, func(a, b route) int { return b.prefix.Bits() - a.prefix.Bits() })
	veths, err := vethIndexes(ctx)
	if err != nil {
		return nil, err
	}
	var out []LocalEndpoint
	for _, ep := range eps {
		for _, ip := range ep.IPs {
			if !ip.Is4() {
				continue
			}
			var best *route
			for i := range table {
				if table[i].prefix.Contains(ip) {
					best = &table[i]
					break
				}
			}
			if best == nil || !best.direct || best.dev == "" || best.dev == "lo" {
				continue
			}
			idx, ok := veths[best.dev]
			if !ok {
				continue
			}
			out = append(out, LocalEndpoint{Endpoint: ep, Ifindex: idx, Device: best.dev})
			break
		}
	}
	return out, nil
}

// vethIndexes maps the names of this namespace's veth links to their
// indexes.
func vethIndexes(ctx context.Context) (map[string]int, error) {
	raw, err := runIP(ctx, "-j", "-d", "link", "show", "type", "veth")
	if err != nil {
		return nil, err
	}
	var links []struct {
		Index int    `json:"ifindex"`
		Name  string `json:"ifname"`
	}
	if err := json.Unmarshal(raw, &links); err != nil {
		return nil, fmt.Errorf("parse links: %w", err)
	}
	out := make(map[string]int, len(links))
	for _, l := range links {
		out[l.Name] = l.Index
	}
	return out, nil
}

// hostAddresses lists the node's own IPv4 addresses (the host identity).
func hostAddresses(podIPs map[netip.Addr]bool) ([]netip.Addr, error) {
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
		if ip.IsLoopback() || !ip.Is4() || podIPs[ip] {
			continue
		}
		out = append(out, ip)
	}
	return out, nil
}

// setEndpointSysctls relaxes reverse-path filtering on a pod's host veth
// (redirected replies leave from addresses that are not routed there).
func setEndpointSysctls(dev string) error {
	err := writeSysctl("net/ipv4/conf/"+dev+"/rp_filter", "0")
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}
