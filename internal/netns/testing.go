package netns

import (
	"context"
	"net/netip"
)

// TB is the part of testing.TB the test helpers use (this package does
// not import testing: `l7gate demo` links it).
type TB interface {
	Helper()
	Cleanup(func())
	Context() context.Context
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
}

// NewT is New for a test: it fails the test on error and registers, with
// t.Cleanup, Close and the leak check (the test fails if a namespace with
// the prefix is left). Cleanups registered after NewT run before it, so a
// test stops its processes in the namespaces before they are deleted.
func NewT(t TB, cfg Config) *Topology {
	t.Helper()
	tp, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("topology: %v", err)
	}
	t.Cleanup(func() {
		if err := tp.Close(context.Background()); err != nil {
			t.Errorf("topology %s: %v", tp.Prefix, err)
		}
		if leaks := tp.Leaks(); len(leaks) > 0 {
			t.Errorf("topology %s: namespaces left after cleanup: %v", tp.Prefix, leaks)
		}
	})
	return tp
}

// MustAddHost is AddHost failing the test on error.
func (tp *Topology) MustAddHost(t TB, name, hostDev, ip string) *Host {
	t.Helper()
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		t.Fatalf("host %s: %v", name, err)
	}
	h, err := tp.AddHost(context.Background(), name, hostDev, addr)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return h
}

// MustAddDualHost is AddDualHost failing the test on error.
func (tp *Topology) MustAddDualHost(t TB, name, hostDev, ip, ip6 string) *Host {
	t.Helper()
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		t.Fatalf("host %s: %v", name, err)
	}
	addr6, err := netip.ParseAddr(ip6)
	if err != nil {
		t.Fatalf("host %s: %v", name, err)
	}
	h, err := tp.AddDualHost(context.Background(), name, hostDev, addr, addr6)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return h
}

// MustAddNS is AddNS failing the test on error.
func (tp *Topology) MustAddNS(t TB, ns string) {
	t.Helper()
	if err := tp.AddNS(context.Background(), ns); err != nil {
		t.Fatalf("%v", err)
	}
}

// MustIn is In failing the test on error.
func MustIn(t TB, ns string, f func() error) {
	t.Helper()
	if err := In(ns, f); err != nil {
		t.Fatalf("in %s: %v", ns, err)
	}
}

// MustIP is IP failing the test on error.
func MustIP(t TB, args ...string) {
	t.Helper()
	if err := IP(context.Background(), args...); err != nil {
		t.Fatalf("%v", err)
	}
}
