package proxy

import (
	"net"
	"net/netip"
	"sync"
	"time"
)

// localAddrs caches the addresses of the proxy's network namespace, for
// telling a direct connection to a proxy port from a redirected one.
type localAddrs struct {
	mu      sync.Mutex
	addrs   map[netip.Addr]bool
	fetched time.Time
}

// localAddrsTTL bounds how stale the cache may be; addresses rarely change
// and a miss only matters for a node address added seconds ago.
const localAddrsTTL = 5 * time.Second

func (l *localAddrs) contains(a netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.addrs == nil || time.Since(l.fetched) > localAddrsTTL {
		l.addrs = map[netip.Addr]bool{}
		l.fetched = time.Now()
		if ifas, err := net.InterfaceAddrs(); err == nil {
			for _, ifa := range ifas {
				if n, ok := ifa.(*net.IPNet); ok {
					if ip, ok := netip.AddrFromSlice(n.IP); ok {
						l.addrs[ip.Unmap()] = true
					}
				}
			}
		}
	}
	return l.addrs[a]
}
