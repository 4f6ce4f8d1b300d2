package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/l7gate/l7gate/policy"
)

// IdentitiesFile holds the identity assignments under a state dir, so a
// restarted agent gives every label set the number it had (the datapath's
// keys stay as they are).
func IdentitiesFile(stateDir string) string { return filepath.Join(stateDir, "identities.json") }

type identitiesSaved struct {
	ids map[policy.Identity]string // what was written
	at  time.Time
}

// loadIdentities restores the allocator from the state dir; without a
// usable state it starts empty (a one-time renumbering, logged).
func (a *Agent) loadIdentities() *policy.IdentityAllocator {
	path := IdentitiesFile(a.cfg.StateDir)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return policy.NewIdentityAllocator()
	}
	var st policy.IdentityState
	if err == nil {
		err = json.Unmarshal(data, &st)
	}
	var alloc *policy.IdentityAllocator
	if err == nil {
		alloc, err = policy.RestoreIdentityAllocator(st)
	}
	if err != nil {
		a.log.Warn("identity state unusable; identities will be renumbered", "file", path, "error", err)
		return policy.NewIdentityAllocator()
	}
	a.idsSaved = identitiesSaved{ids: idMap(st), at: a.cfg.now()}
	a.log.Info("identities restored", "file", path, "identities", len(st.Identities))
	return alloc
}

func idMap(st policy.IdentityState) map[policy.Identity]string {
	m := make(map[policy.Identity]string, len(st.Identities))
	for _, e := range st.Identities {
		m[e.ID] = e.Key
	}
	return m
}

// sweepIdentities forgets identities no pod used for IdentityGrace and
// persists the assignments when they changed (and at most every minute
// for the last-use times alone).
func (a *Agent) sweepIdentities(snap *policy.Snapshot) {
	var inUse []policy.Identity
	for _, info := range snap.Identities {
		if !info.ID.IsReserved() {
			inUse = append(inUse, info.ID)
		}
	}
	now := a.cfg.now()
	if gone := a.ids.Sweep(inUse, now, a.cfg.IdentityGrace); len(gone) > 0 {
		a.log.Info("identities no longer used forgotten", "identities", gone)
	}
	st := a.ids.State()
	m := idMap(st)
	if mapsEqual(m, a.idsSaved.ids) && now.Sub(a.idsSaved.at) < time.Minute {
		return
	}
	if err := writeFileAtomic(IdentitiesFile(a.cfg.StateDir), st); err != nil {
		a.log.Warn("persist identities", "error", err)
		return
	}
	a.idsSaved = identitiesSaved{ids: m, at: now}
}

func mapsEqual(x, y map[policy.Identity]string) bool {
	if len(x) != len(y) {
		return false
	}
	for k, v := range x {
		if w, ok := y[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func writeFileAtomic(path string, v any) error {
	data, err := json.MarshalIndent(v, "", " ")
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s: %w", tmp, err)
	}
	return nil
}
