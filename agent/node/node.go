// Package node prepares the agent's network namespace (the node) for
// redirects: the sysctls, the policy routing that delivers packets the
// datapath marked for the proxy locally, the nftables rule that keeps
// netfilter from tracking the packets it turned around (the marks and the
// table come from package bpf, which owns the mark encoding), and the
// per-veth sysctls of an endpoint.
package node

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/l7gate/l7gate/bpf"
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

// nodeSysctls6 are IPv6's, written where the node has IPv6.
var nodeSysctls6 = [][2]string{
	{"net/ipv6/conf/all/forwarding", "1"},
}

// IPv6Enabled reports whether the node's kernel has IPv6 (not disabled at
// boot): where it has, Setup adds IPv6's policy routing, and proxies can
// bind IPv6 listeners.
func IPv6Enabled() bool { return ipv6Enabled() }

// ipv6Enabled: the kernel has IPv6 (not disabled at boot).
func ipv6Enabled() bool {
	_, err := os.Stat("/proc/sys/net/ipv6")
	return err == nil
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

// ToProxyRule is the fwmark selector of the policy-routing rule: the
// to-proxy magic under the magic mask, e.g. "0x200/0xf00".
func ToProxyRule() string {
	return fmt.Sprintf("%#x/%#x", bpf.MarkMagicToProxy, bpf.MarkMagicMask)
}

// Setup prepares the node for redirects: sysctls, the policy routing
// that delivers packets marked for the proxy locally, and the nftables
// rule that keeps netfilter from tracking packets the datapath turned
// around (NoTrackRule). It is idempotent and removes nothing: all of it is
// node state the pinned datapath relies on, also while no agent runs.
func Setup(ctx context.Context) error {
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
	if !strings.Contains(string(rules), "fwmark "+ToProxyRule()+" lookup "+table) {
		if _, err := runIP(ctx, "rule", "add", "fwmark", ToProxyRule(), "lookup", table); err != nil {
			return err
		}
	}
	if _, err := runIP(ctx, "route", "replace", "local", "0.0.0.0/0", "dev", "lo", "table", table); err != nil {
		return err
	}
	if ipv6Enabled() {
		if err := setupIPv6(ctx, table); err != nil {
			return err
		}
	}
	if err := ensureNoTrack(); err != nil {
		return err
	}
	return bpf.CheckNode()
}

// setupIPv6 is Setup's IPv6 policy routing: the same fwmark rule and a
// local default route in the proxy table, so that IPv6 packets marked for
// the proxy are delivered locally (to its IPv6 listener).
func setupIPv6(ctx context.Context, table string) error {
	for _, kv := range nodeSysctls6 {
		if err := writeSysctl(kv[0], kv[1]); err != nil {
			return err
		}
	}
	rules, err := runIP(ctx, "-6", "rule", "show")
	if err != nil {
		return err
	}
	if !strings.Contains(string(rules), "fwmark "+ToProxyRule()+" lookup "+table) {
		if _, err := runIP(ctx, "-6", "rule", "add", "fwmark", ToProxyRule(), "lookup", table); err != nil {
			return err
		}
	}
	_, err = runIP(ctx, "-6", "route", "replace", "local", "::/0", "dev", "lo", "table", table)
	return err
}

// PrepareEndpoint relaxes reverse-path filtering on a pod's host veth
// (redirected replies leave from addresses that are not routed there). A
// veth that is gone is not an error.
func PrepareEndpoint(dev string) error {
	err := writeSysctl("net/ipv4/conf/"+dev+"/rp_filter", "0")
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}
