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
		if now-v.LastSeen > uint64(maxIdle) || k.Family != unix.AF_INET {
			continue
		}
		out[netip.AddrFrom4([4]byte(k.Saddr[:4]))] = true
		out[netip.AddrFrom4([4]byte(k.Daddr[:4]))] = true
	}
	return out, nil
}
