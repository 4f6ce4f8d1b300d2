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
	if m := c.alloc.ipcacheOrderMemo(); m != nil && slices.Equal(m.fqdn, fqdnIDs) && m.sorts(ipc) {
		copy(ipc, m.out)
		// The memo follows this snapshot's array (the same entries): the
		// last one's is freed with it.
		c.alloc.setIPCacheOrderMemo(&ipcacheOrder{out: slices.Clip(ipc), perm: m.perm, fqdn: m.fqdn, head: m.head})
		c.alloc.mu.Lock()
		c.alloc.orderReused++
		c.alloc.mu.Unlock()
		return m.head
	}
	perm, head := sortIPCacheEntries(ipc, fqdn)
	c.alloc.setIPCacheOrderMemo(&ipcacheOrder{out: slices.Clip(ipc), perm: perm, fqdn: fqdnIDs, head: head})
	return head
}

// ipcacheOrder: the last compute's ipcache as sorted (out: the snapshot's
// own array, which no one modifies once computed: FQDN updates append
// past it) and as computed, as the place of each entry in out (perm: the
// computed ipcache's i-th entry is out[perm[i]]), and its FQDN
// identities, sorted (all read-only). A copy of the ipcache as computed
// and another as sorted were 80 B of the agent's heap per pod.
type ipcacheOrder struct {
	out  []IPCacheEntry
	perm []int32
	fqdn []Identity
	head int
}

// sorts: ipc (as computed) is the ipcache the memo sorted, entry by
// entry.
func (m *ipcacheOrder) sorts(ipc []IPCacheEntry) bool {
	if len(ipc) != len(m.perm) || len(m.out) != len(m.perm) {
		return false
	}
	for i, e := range ipc {
		if e != m.out[m.perm[i]] {
			return false
		}
	}
	return true
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
// identities in fqdn last; it returns where each entry went (the i-th
// entry of ipc as given is ipc[perm[i]] once sorted) and where the FQDN
// entries start.
func sortIPCacheEntries(ipc []IPCacheEntry, fqdn map[Identity]bool) (perm []int32, head int) {
	order := make([]int32, len(ipc)) // order[k]: the entry that goes to k
	tail := len(ipc)
	for i, e := range ipc {
		if fqdn[e.Identity] {
			tail--
			order[tail] = int32(i)
		} else {
			order[head] = int32(i)
			head++
		}
	}
	slices.SortFunc(order[:head], func(a, b int32) int { return comparePrefix(ipc[a].Prefix, ipc[b].Prefix) })
	slices.SortFunc(order[head:], func(a, b int32) int { return compareFQDNEntry(ipc[a], ipc[b]) })
	sorted := make([]IPCacheEntry, len(ipc))
	perm = make([]int32, len(ipc))
	for k, i := range order {
		sorted[k] = ipc[i]
		perm[i] = int32(k)
	}
	copy(ipc, sorted)
	return perm, head
}

// compareFQDNEntry orders the FQDN part of the ipcache: by identity,
// then prefix.
func compareFQDNEntry(a, b IPCacheEntry) int {
	return cmp.Or(cmp.Compare(a.Identity, b.Identity), comparePrefix(a.Prefix, b.Prefix))
}
