// Package netns builds the network a node runs on, out of named network
// namespaces: a node namespace and hosts (pods, external hosts) behind
// veth pairs, the way a CNI plugin wires a pod:
//
//	host ns "eth0" (IP/32, default via the node address)
//	  <-> node ns HostDev (node address/32, route IP/32)
//
// It is the one topology builder of the tree: the bpf and agent namespace
// tests, the proxy conformance suites, `l7gate demo` (demo.NewTopology)
// and the data-path benchmark all build on it. A Topology records every
// namespace it creates, Close deletes them all (their veths go with them)
// and Leaks reports any namespace with the topology's prefix that is still
// there. For tests, NewT registers Close and the leak check with
// t.Cleanup.
//
// Names: every namespace is "<prefix>-<name>"; RandomPrefix gives a short
// random prefix, so parallel runs never collide. Everything here shells
// out to ip(8) or switches an OS thread into a namespace (In); it needs
// root.
package netns

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Dir is where `ip netns add` puts named namespaces.
const Dir = "/run/netns"

// maxDev is the longest interface name (IFNAMSIZ-1).
const maxDev = 15

// RandomPrefix is kind followed by 6 random hex digits ("l7gt3fa9c1").
func RandomPrefix(kind string) string {
	b := make([]byte, 3)
	rand.Read(b)
	return kind + hex.EncodeToString(b)
}

// Config configures New.
type Config struct {
	// Prefix names the namespaces: "<Prefix>-node", "<Prefix>-<host>".
	// Empty: RandomPrefix("l7ns").
	Prefix string
	// NodeAddr is the node side's address on every host veth, the hosts'
	// gateway.
	NodeAddr netip.Addr
	// NodeAddr6, if set, is the node side's IPv6 address on the veth of
	// every host with an IPv6 address (AddDualHost), those hosts' IPv6
	// gateway. IPv6 forwarding is turned on in the node namespace.
	NodeAddr6 netip.Addr
	// Sysctls are written in the node namespace (keys below
	// /proc/sys/net/, e.g. "ipv4/ip_forward").
	Sysctls map[string]string
	// Created, if set, is called with each namespace right after it is
	// created (before anything else is done with it), e.g. to record it
	// in a state file for a later teardown by another process. An error
	// stops the build.
	Created func(ns string) error
}

// Topology is a node namespace with hosts behind veths.
type Topology struct {
	// Prefix of every namespace name; Node is the node namespace.
	Prefix, Node string
	NodeAddr     netip.Addr
	NodeAddr6    netip.Addr // invalid: no IPv6
	created      func(string) error

	mu     sync.Mutex
	hosts  []*Host
	owned  []string // namespaces to delete, in creation order
	closed bool
}

// Host is a namespace behind a veth pair into the node namespace.
type Host struct {
	Name string
	// NS is the host's namespace, HostDev its veth in the node namespace.
	NS, HostDev string
	IP          netip.Addr
	IP6         netip.Addr // invalid: IPv4 only
}

// New creates the node namespace (loopback up, cfg.Sysctls written). On
// error everything it created is removed again.
func New(ctx context.Context, cfg Config) (t *Topology, err error) {
	if cfg.Prefix == "" {
		cfg.Prefix = RandomPrefix("l7ns")
	}
	if !cfg.NodeAddr.Is4() {
		return nil, fmt.Errorf("topology %s: node address %v is not IPv4", cfg.Prefix, cfg.NodeAddr)
	}
	if cfg.NodeAddr6.IsValid() && !cfg.NodeAddr6.Is6() {
		return nil, fmt.Errorf("topology %s: node address %v is not IPv6", cfg.Prefix, cfg.NodeAddr6)
	}
	t = &Topology{Prefix: cfg.Prefix, Node: cfg.Prefix + "-node", NodeAddr: cfg.NodeAddr, NodeAddr6: cfg.NodeAddr6, created: cfg.Created}
	defer func() {
		if err != nil {
			err = errors.Join(err, t.Close(context.WithoutCancel(ctx)))
			t = nil
		}
	}()
	if err := t.AddNS(ctx, t.Node); err != nil {
		return t, err
	}
	if err := SetSysctls(t.Node, cfg.Sysctls); err != nil {
		return t, err
	}
	if t.NodeAddr6.IsValid() {
		if err := SetSysctls(t.Node, map[string]string{"ipv6/conf/all/forwarding": "1"}); err != nil {
			return t, err
		}
	}
	return t, nil
}

// AddNS creates a namespace owned by the topology (deleted by Close) with
// its loopback up. ns should start with the topology's prefix, so that
// Leaks sees it.
func (t *Topology) AddNS(ctx context.Context, ns string) error {
	if len(ns) > 200 {
		return fmt.Errorf("namespace name too long: %s", ns)
	}
	if err := IP(ctx, "netns", "add", ns); err != nil {
		return err
	}
	t.mu.Lock()
	t.owned = append(t.owned, ns)
	t.mu.Unlock()
	if t.created != nil {
		if err := t.created(ns); err != nil {
			return err
		}
	}
	return IP(ctx, "-n", ns, "link", "set", "lo", "up")
}

// HostNS is the namespace name a host called name gets.
func (t *Topology) HostNS(name string) string { return t.Prefix + "-" + name }

// AddHost creates host name in namespace HostNS(name), wired to the node
// by a veth whose node side is hostDev, with ip/32 and a default route via
// the node address.
func (t *Topology) AddHost(ctx context.Context, name, hostDev string, ip netip.Addr) (*Host, error) {
	return t.AddDualHost(ctx, name, hostDev, ip, netip.Addr{})
}

// AddDualHost is AddHost with an IPv6 address too (ip6/128, a default
// route via the topology's NodeAddr6, which must be set); an invalid ip6
// makes it AddHost.
func (t *Topology) AddDualHost(ctx context.Context, name, hostDev string, ip, ip6 netip.Addr) (*Host, error) {
	if !ip.Is4() {
		return nil, fmt.Errorf("host %s: address %v is not IPv4", name, ip)
	}
	if ip6.IsValid() && (!ip6.Is6() || ip6.Is4In6()) {
		return nil, fmt.Errorf("host %s: address %v is not IPv6", name, ip6)
	}
	if ip6.IsValid() && !t.NodeAddr6.IsValid() {
		return nil, fmt.Errorf("host %s: IPv6 address %v without a node IPv6 address", name, ip6)
	}
	if hostDev == "" || len(hostDev) > maxDev {
		return nil, fmt.Errorf("host %s: interface name %q: want 1 to %d characters", name, hostDev, maxDev)
	}
	h := &Host{Name: name, NS: t.HostNS(name), HostDev: hostDev, IP: ip, IP6: ip6}
	if err := t.AddNS(ctx, h.NS); err != nil {
		return nil, err
	}
	if err := t.Wire(ctx, h); err != nil {
		return nil, err
	}
	t.mu.Lock()
	t.hosts = append(t.hosts, h)
	t.mu.Unlock()
	return h, nil
}

// Wire adds the veth pair, addresses and routes between the node and an
// existing namespace h.NS, in the order a CNI plugin does (the node's
// route to the host last but one). IPv6 (h.IP6) addresses skip duplicate
// address detection; the host resolves its gateway by neighbour discovery.
func (t *Topology) Wire(ctx context.Context, h *Host) error {
	ip, node := h.IP.String(), t.NodeAddr.String()
	cmds := [][]string{
		{"-n", t.Node, "link", "add", h.HostDev, "type", "veth", "peer", "name", "eth0", "netns", h.NS},
		{"-n", t.Node, "addr", "add", node + "/32", "dev", h.HostDev},
		{"-n", t.Node, "link", "set", h.HostDev, "up"},
		{"-n", t.Node, "route", "add", ip + "/32", "dev", h.HostDev},
		{"-n", h.NS, "addr", "add", ip + "/32", "dev", "eth0"},
		{"-n", h.NS, "link", "set", "eth0", "up"},
		{"-n", h.NS, "route", "add", node + "/32", "dev", "eth0"},
		{"-n", h.NS, "route", "add", "default", "via", node, "dev", "eth0"},
	}
	if h.IP6.IsValid() {
		if !t.NodeAddr6.IsValid() {
			return fmt.Errorf("host %s: IPv6 address %v without a node IPv6 address", h.Name, h.IP6)
		}
		ip6, node6 := h.IP6.String(), t.NodeAddr6.String()
		cmds = append(cmds,
			[]string{"-n", t.Node, "addr", "add", node6 + "/128", "dev", h.HostDev, "nodad"},
			[]string{"-n", t.Node, "route", "add", ip6 + "/128", "dev", h.HostDev},
			[]string{"-n", h.NS, "addr", "add", ip6 + "/128", "dev", "eth0", "nodad"},
			[]string{"-n", h.NS, "route", "add", node6 + "/128", "dev", "eth0"},
			[]string{"-n", h.NS, "route", "add", "default", "via", node6, "dev", "eth0"})
	}
	for _, args := range cmds {
		if err := IP(ctx, args...); err != nil {
			return fmt.Errorf("host %s: %w", h.Name, err)
		}
	}
	return nil
}

// Hosts lists the hosts in the order they were added.
func (t *Topology) Hosts() []*Host {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.hosts)
}

// Namespaces lists the namespaces the topology created, in order.
func (t *Topology) Namespaces() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.owned)
}

// Close ends the processes still inside the topology's namespaces
// (SIGTERM, then SIGKILL after a grace period) and deletes the namespaces,
// hosts first; their veths go with them. It goes on after errors and
// returns them all. A second Close does nothing.
func (t *Topology) Close(ctx context.Context) error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	owned := slices.Clone(t.owned)
	t.mu.Unlock()
	return Delete(ctx, owned, 5*time.Second)
}

// Leaks lists the namespaces named with the topology's prefix that exist
// (after Close: what it failed to remove, or what someone created beside
// it and left behind).
func (t *Topology) Leaks() []string { return WithPrefix(t.Prefix + "-") }

// WithPrefix lists the named namespaces whose name starts with prefix.
func WithPrefix(prefix string) []string {
	ents, err := os.ReadDir(Dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	return out
}

// Delete ends every process inside the namespaces (killing those left
// after grace) and deletes the namespaces that exist, last created first.
func Delete(ctx context.Context, namespaces []string, grace time.Duration) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	var errs []error
	if err := KillProcesses(ctx, namespaces, grace); err != nil {
		errs = append(errs, err)
	}
	for _, ns := range slices.Backward(namespaces) {
		if !Exists(ns) {
			continue
		}
		if err := IP(ctx, "netns", "del", ns); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// IP runs ip(8) with a bound on its run time.
func IP(ctx context.Context, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// In runs f on an OS thread switched into the named namespace; sockets f
// creates stay in that namespace. The thread is switched back afterwards
// and returned to the runtime, or discarded (left locked, so it exits with
// its goroutine) when that fails. Switching back matters: a thread that
// exits sends the parent-death signal (Pdeathsig) to every child forked
// from it, and the runtime may have forked a server from this very thread
// before. f that changes other per-thread state must call
// runtime.LockOSThread itself, so the thread is discarded.
func In(ns string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open own netns: %w", err)
			return
		}
		defer unix.Close(orig)
		if err := Enter(ns); err != nil {
			runtime.UnlockOSThread() // still in its own namespace
			errc <- err
			return
		}
		err = f()
		if unix.Setns(orig, unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// Enter switches the calling OS thread into the named namespace. The
// caller must have locked the goroutine to its thread and keep it locked
// (see In).
func Enter(ns string) error {
	fd, err := unix.Open(filepath.Join(Dir, ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", ns, err)
	}
	defer unix.Close(fd)
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("setns %s: %w", ns, err)
	}
	return nil
}

// SetSysctls writes /proc/sys/net/<key> inside a namespace (that file
// shows the namespace of the thread that opens it), keys in sorted order.
func SetSysctls(ns string, kv map[string]string) error {
	if len(kv) == 0 {
		return nil
	}
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range kv {
			if !yield(k) {
				return
			}
		}
	})
	return In(ns, func() error {
		for _, k := range keys {
			if err := os.WriteFile("/proc/sys/net/"+k, []byte(kv[k]), 0o644); err != nil {
				return fmt.Errorf("sysctl %s in %s: %w", k, ns, err)
			}
		}
		return nil
	})
}

// Exists reports whether a named namespace exists.
func Exists(ns string) bool {
	_, err := os.Stat(filepath.Join(Dir, ns))
	return err == nil
}

// PIDs lists the processes whose network namespace is the named one (as
// `ip netns pids`), except this process.
func PIDs(ns string) ([]int, error) {
	var want unix.Stat_t
	if err := unix.Stat(filepath.Join(Dir, ns), &want); err != nil {
		return nil, fmt.Errorf("stat netns %s: %w", ns, err)
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	self := os.Getpid()
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(filepath.Join("/proc", e.Name(), "ns/net"), &st) != nil {
			continue // gone, or a zombie
		}
		if st.Dev == want.Dev && st.Ino == want.Ino {
			out = append(out, pid)
		}
	}
	return out, nil
}

// KillProcesses ends every process inside the namespaces: SIGTERM, then
// SIGKILL for those still there after grace. It fails if some survive.
func KillProcesses(ctx context.Context, namespaces []string, grace time.Duration) error {
	list := func() map[int]bool {
		pids := map[int]bool{}
		for _, ns := range namespaces {
			if !Exists(ns) {
				continue
			}
			l, _ := PIDs(ns)
			for _, p := range l {
				pids[p] = true
			}
		}
		return pids
	}
	pids := list()
	if len(pids) == 0 {
		return nil
	}
	for p := range pids {
		syscall.Kill(p, syscall.SIGTERM)
	}
	deadline := time.Now().Add(grace)
	for len(pids) > 0 && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(100 * time.Millisecond)
		pids = list()
	}
	for p := range pids {
		syscall.Kill(p, syscall.SIGKILL)
	}
	for range 20 {
		if pids = list(); len(pids) == 0 {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	left := make([]int, 0, len(pids))
	for p := range pids {
		left = append(left, p)
	}
	slices.Sort(left)
	return fmt.Errorf("processes still running in namespaces %v: %v", namespaces, left)
}
