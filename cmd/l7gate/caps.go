package main

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// proxyCapabilities is all the Go proxy keeps: CAP_NET_ADMIN, for SO_MARK
// on upstream sockets and IP_TRANSPARENT (connecting from the client's
// address), and CAP_NET_BIND_SERVICE, for the DNS proxy's answers, sent
// from the server the client asked (its port 53) through a transparent
// socket bound to that address. It parses untrusted HTTP and Kafka; it never needs BPF,
// SYS_ADMIN, PTRACE or DAC_OVERRIDE (the agent takes its listeners).
func proxyCapabilities() []int { return []int{unix.CAP_NET_ADMIN, unix.CAP_NET_BIND_SERVICE} }

// capabilitySets reads a process's capability sets from /proc/PID/status.
func capabilitySets(pid string) (map[string]uint64, error) {
	f, err := os.Open("/proc/" + pid + "/status")
	if err != nil {
		return nil, fmt.Errorf("capabilities: %w", err)
	}
	defer f.Close()
	out := map[string]uint64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || !strings.HasPrefix(k, "Cap") {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		if err != nil {
			return nil, fmt.Errorf("capabilities: %s: %w", k, err)
		}
		out[k] = n
	}
	return out, sc.Err()
}

func capMask(caps []int) uint64 {
	var m uint64
	for _, c := range caps {
		m |= 1 << c
	}
	return m
}

// restrictCapabilities re-executes the running binary (argv, same PID)
// with a bounding set of keep only, no inheritable and no ambient
// capabilities: a root process's permitted and effective sets after exec
// are its bounding set. Capability sets are per thread in Linux, so the
// thread that lowers them is the one that execs. It returns nil without
// doing anything when the bounding set is already within keep (the
// re-executed process), and never returns on success.
func restrictCapabilities(keep []int, argv []string) error {
	sets, err := capabilitySets("self")
	if err != nil {
		return err
	}
	want := capMask(keep)
	if sets["CapBnd"]&^want == 0 && sets["CapAmb"] == 0 && sets["CapInh"] == 0 {
		return nil
	}
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return fmt.Errorf("capabilities: %w", err)
	}
	last, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return fmt.Errorf("capabilities: cap_last_cap: %w", err)
	}
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("capabilities: %w", err)
	}
	runtime.LockOSThread() // never unlocked: this thread execs or the command fails
	for c := 0; c <= last; c++ {
		if want&(1<<c) != 0 {
			continue
		}
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			return fmt.Errorf("capabilities: drop %d from the bounding set: %w", c, err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("capabilities: clear ambient: %w", err)
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capabilities: capget: %w", err)
	}
	data[0].Inheritable, data[1].Inheritable = 0, 0
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capabilities: capset: %w", err)
	}
	if err := unix.Exec(exe, argv, os.Environ()); err != nil {
		return fmt.Errorf("capabilities: re-exec %s: %w", exe, err)
	}
	return nil
}
