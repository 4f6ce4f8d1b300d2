package bpf

import (
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// ConntrackAddrs returns the addresses (both ends) of the flows the
// datapath tracks that saw a packet within maxIdle. The agent keeps an
// FQDN address allowed while a connection uses it (toFQDNs expiry is
// conntrack-aware).
func (d *Datapath) ConntrackAddrs(maxIdle time.Duration) (map[netip.Addr]bool, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return nil, fmt.Errorf("clock: %w", err)
	}
	now := uint64(ts.Nano()) // bpf_ktime_get_ns's clock
	d.mu.Lock()
	entries, err := dumpMap[datapathCtKey, datapathCtValue](d.objs.Conntrack)
	d.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("conntrack: %w", err)
	}
	out := map[netip.Addr]bool{}
	for k, v := range entries {
		if now-v.LastSeen > uint64(maxIdle) || (k.Family != unix.AF_INET && k.Family != unix.AF_INET6) {
			continue
		}
		out[ctAddr(k.Family, k.Saddr)] = true
		out[ctAddr(k.Family, k.Daddr)] = true
	}
	return out, nil
}
