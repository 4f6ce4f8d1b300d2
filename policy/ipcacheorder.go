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
// the FQDN entries start.
func (c *computer) sortIPCache() int {
	fqdn := make(map[Identity]bool, len(c.fqdnLabels))
	for _, ids := range c.fqdnIDs {
		for _, id := range ids {
			fqdn[id] = true
		}
	}
	ipc := c.snap.IPCache
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
