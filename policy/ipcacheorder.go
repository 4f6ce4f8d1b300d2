package policy

import (
	"cmp"
	"slices"
)

// The ipcache's order (Snapshot.IPCache). First every entry of an
// identity that is not an FQDN identity (pods, policy CIDRs, nodes,
// kube-apiserver), by prefix (address, then length); then the entries of
// FQDN identities (CIDR identities with fqdn: labels, policy CIDRs that
// are also FQDN addresses included), by identity, then prefix.
//
// Why: identities are never renumbered and a new one is numbered after
// every other, so the entry of a new FQDN identity (UpdateFQDN, one per
// new address in a DNS answer) sorts last and appends in the spare room
// of the previous snapshot's array instead of copying the whole ipcache
// (at 10k cached names, ≈400 KB per answer when sorted by prefix). The
// ipcache holds one entry per prefix, so no consumer depends on the
// order for a lookup: each builds its own index (map, longest prefix).

// sortIPCache puts the computed ipcache in that order and returns where
// the FQDN entries start. The order is a function of the entries as
// computed and of which identities are FQDN identities: when both equal
// the last compute's (a CNP change that adds no prefix), the last sorted
// ipcache is copied instead of sorted again (11k pods: 8 of the 18 ms of
// a compute, BenchmarkRecomputeScale).
func (c *computer) sortIPCache() int {
	fqdn := make(map[Identity]bool, len(c.fqdnLabels))
	for _, ids := range c.fqdnIDs {
		for _, id := range ids {
			fqdn[id] = true
		}
	}
	fqdnIDs := sortedIdentitySet(fqdn)
	ipc := c.snap.IPCache
	if m := c.alloc.ipcacheOrderMemo(); m != nil && slices.Equal(m.fqdn, fqdnIDs) && slices.Equal(m.in, ipc) {
		copy(ipc, m.out)
		c.alloc.mu.Lock()
		c.alloc.orderReused++
		c.alloc.mu.Unlock()
		return m.head
	}
	in := slices.Clone(ipc)
	head := sortIPCacheEntries(ipc, fqdn)
	c.alloc.setIPCacheOrderMemo(&ipcacheOrder{in: in, fqdn: fqdnIDs, out: slices.Clone(ipc), head: head})
	return head
}

// ipcacheOrder: the last compute's ipcache as computed (in) and sorted
// (out), and its FQDN identities, sorted (all read-only).
type ipcacheOrder struct {
	in, out []IPCacheEntry
	fqdn    []Identity
	head    int
}

func sortedIdentitySet(m map[Identity]bool) []Identity {
	out := make([]Identity, 0, len(m))
	for id := range m {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

func (a *IdentityAllocator) ipcacheOrderMemo() *ipcacheOrder {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.order
}

func (a *IdentityAllocator) setIPCacheOrderMemo(o *ipcacheOrder) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.order = o
}

// sortIPCacheEntries sorts ipc in the ipcache's order, the entries of the
// identities in fqdn last; it returns where they start.
func sortIPCacheEntries(ipc []IPCacheEntry, fqdn map[Identity]bool) int {
	head := 0
	for i, e := range ipc {
		if !fqdn[e.Identity] {
			ipc[head], ipc[i] = ipc[i], ipc[head]
			head++
		}
	}
	slices.SortFunc(ipc[:head], func(a, b IPCacheEntry) int { return comparePrefix(a.Prefix, b.Prefix) })
	slices.SortFunc(ipc[head:], compareFQDNEntry)
	return head
}

// compareFQDNEntry orders the FQDN part of the ipcache: by identity,
// then prefix.
func compareFQDNEntry(a, b IPCacheEntry) int {
	return cmp.Or(cmp.Compare(a.Identity, b.Identity), comparePrefix(a.Prefix, b.Prefix))
}
