package bpf

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
)

// UpdateIPCache writes some ipcache entries and deletes some prefixes,
// leaving every other entry as it is (the agent's incremental FQDN path;
// SyncIPCache makes the whole map exact). Removals go first.
func (d *Datapath) UpdateIPCache(upsert []IPCacheEntry, remove []netip.Prefix) (SyncStats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var st SyncStats
	bump := func() error {
		if st.Added+st.Deleted == 0 {
			return nil
		}
		// Some address resolves to another identity now: established
		// flows re-check policy.
		return d.bumpRevision()
	}
	for _, p := range remove {
		k, err := ipcacheKey(p)
		if err != nil {
			return st, errors.Join(err, bump())
		}
		if err := d.objs.Ipcache.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return st, errors.Join(fmt.Errorf("ipcache: delete %s: %w", p, err), bump())
		}
		st.Deleted++
	}
	for _, e := range upsert {
		k, err := ipcacheKey(e.Prefix)
		if err != nil {
			return st, errors.Join(err, bump())
		}
		if err := d.objs.Ipcache.Update(k, datapathIpcacheValue{Identity: uint32(e.Identity)}, ebpf.UpdateAny); err != nil {
			return st, errors.Join(mapWriteError("ipcache", err), bump())
		}
		st.Added++
	}
	return st, bump()
}
