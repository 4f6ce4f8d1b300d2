package dns

import (
	"net/netip"
	"slices"
)

func slicesSortAddrs(ips []netip.Addr) { slices.SortFunc(ips, netip.Addr.Compare) }
