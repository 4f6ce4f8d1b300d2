package bpf

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/cilium/ebpf"
)

// Policy map synchronisation
//
// The policy of one endpoint direction is a set of pre-combined keys whose
// meaning depends on which other keys are present (the most specific
// present key answers) and on the level masks in ep_policy. Changing keys
// one by one in place passes through states neither policy allows: a
// deleted redirect uncovers a broader allow, a key written before its level
// is in the mask is skipped, and a sync that stops half-way (map full)
// leaves a mix, revoked allows included. So every key carries a generation
// bit, and an endpoint direction changes atomically:
//
//  1. write all of its new keys under the generation not in force;
//  2. replace its ep_policy value (flags, level masks and generation in one
//     hash-map update, which packets see whole);
//  3. delete the old generation's keys.
//
// A packet therefore sees either the old or the new policy of an endpoint
// direction, never a mix. Unchanged endpoint directions are not touched,
// so an unchanged policy writes nothing. The transient space is the new
// key set of the endpoint direction being written, so directions that
// shrink (or go away) are synced first.
//
// If an endpoint direction cannot be written (the map is full, an entry is
// invalid), its partial new keys are deleted and it fails closed: its
// ep_policy is replaced by a fail-closed value (every new flow dropped,
// established flows dropped at their next packet, reason fail-closed) and
// its old keys deleted. A revoked allow is therefore never left in force,
// and nothing is half-written. The other endpoint directions are synced,
// and SyncPolicy returns a *SyncError naming the failed ones; the next sync
// that fits restores them. Only if even the fail-closed value cannot be
// written (the ep_policy map is full: size it at least twice the
// endpoints, Config.MapSizes) does a direction new to the map stay without
// policy, i.e. not enforced; SyncError names it too.

// SyncError lists the endpoint directions a SyncPolicy could not write.
// Each of them failed closed (drops everything) unless its Err says
// otherwise. errors.Is sees the causes (ErrMapFull, ErrInvalidEntry).
type SyncError struct {
	Failed []FailedDirection
}

// FailedDirection is one endpoint direction whose policy was not written.
type FailedDirection struct {
	Endpoint  uint32
	Direction Direction
	Err       error
}

func (e *SyncError) Error() string {
	parts := make([]string, len(e.Failed))
	for i, f := range e.Failed {
		parts[i] = f.Err.Error()
	}
	return fmt.Sprintf("policy of %d endpoint direction(s) not synced, failed closed: %s", len(e.Failed), strings.Join(parts, "; "))
}

// Unwrap exposes the causes to errors.Is and errors.As.
func (e *SyncError) Unwrap() []error {
	out := make([]error, len(e.Failed))
	for i, f := range e.Failed {
		out[i] = f.Err
	}
	return out
}

const epPolicyFailClosed = 2

// SyncPolicy makes the policy maps hold exactly desired (every endpoint's
// whole policy), writing only the endpoint directions that changed, each
// atomically (see above). Endpoint directions that cannot be written fail
// closed and are listed in the returned *SyncError; the others are synced
// regardless. Established flows are re-checked against the new policy on
// their next packet.
func (d *Datapath) SyncPolicy(desired []EndpointPolicy) (SyncStats, error) {
	return d.syncPolicy(desired, nil)
}

// UpdatePolicy is SyncPolicy for the endpoints in subset only: their
// policies become exactly subset's, every other endpoint's stays as it is
// (the agent's incremental FQDN path).
func (d *Datapath) UpdatePolicy(subset []EndpointPolicy) (SyncStats, error) {
	only := make(map[uint32]bool, len(subset))
	for _, p := range subset {
		only[p.Endpoint] = true
	}
	return d.syncPolicy(subset, only)
}

// syncPolicy syncs desired; with only set, just those endpoints.
func (d *Datapath) syncPolicy(desired []EndpointPolicy, only map[uint32]bool) (SyncStats, error) {
	c, _ := compilePolicy(desired) // c.failed holds the errors
	d.mu.Lock()
	defer d.mu.Unlock()
	var st SyncStats
	curMeta, err := dumpMap[epPolicyKey, epPolicyValue](d.objs.EpPolicy)
	if err != nil {
		return st, err
	}
	curKeys, err := dumpMap[policyKey, policyValue](d.objs.Policy)
	if err != nil {
		return st, err
	}
	s := &policySync{d: d, curMeta: curMeta, cur: map[epPolicyKey]map[policyKey]policyValue{}, want: map[epPolicyKey]map[policyKey]policyValue{}}
	for k, v := range curKeys {
		if only != nil && !only[k.Endpoint] {
			continue
		}
		g := epPolicyKey{Endpoint: k.Endpoint, Dir: k.Dir}
		if m, ok := curMeta[g]; !ok || uint32(k.Gen) != m.Gen || m.Flags&epPolicyFailClosed != 0 {
			// Left by an interrupted sync: unreachable, only takes room.
			s.deleteKey(k)
			continue
		}
		k.Gen = 0
		s.group(s.cur, g)[k] = v
	}
	for k, v := range c.policy {
		s.group(s.want, epPolicyKey{Endpoint: k.Endpoint, Dir: k.Dir})[k] = v
	}
	groups := make(map[epPolicyKey]bool)
	for _, m := range []map[epPolicyKey]epPolicyValue{curMeta, c.epPolicy} {
		for g := range m {
			if only == nil || only[g.Endpoint] {
				groups[g] = true
			}
		}
	}
	for g := range c.failed {
		groups[g] = true
	}
	// Shrinking directions first: they free room for growing ones.
	order := slices.Collect(maps.Keys(groups))
	sort.Slice(order, func(i, j int) bool {
		di := len(s.want[order[i]]) - len(s.cur[order[i]])
		dj := len(s.want[order[j]]) - len(s.cur[order[j]])
		if di != dj {
			return di < dj
		}
		if order[i].Endpoint != order[j].Endpoint {
			return order[i].Endpoint < order[j].Endpoint
		}
		return order[i].Dir < order[j].Dir
	})
	var failed []FailedDirection
	changed := false
	for _, g := range order {
		if err, bad := c.failed[g]; bad {
			failed = append(failed, s.failClosed(g, err))
			changed = true
			continue
		}
		meta, wanted := c.epPolicy[g]
		ch, err := s.syncGroup(g, meta, wanted, &st)
		changed = changed || ch
		if err != nil {
			failed = append(failed, s.failClosed(g, fmt.Errorf("endpoint %d %s: %w", g.Endpoint, Direction(g.Dir), err)))
		}
	}
	if changed || len(failed) > 0 || s.deleted > 0 {
		if err := d.bumpRevision(); err != nil {
			return st, err
		}
	}
	if len(failed) > 0 {
		sort.Slice(failed, func(i, j int) bool {
			if failed[i].Endpoint != failed[j].Endpoint {
				return failed[i].Endpoint < failed[j].Endpoint
			}
			return failed[i].Direction < failed[j].Direction
		})
		err := &SyncError{Failed: failed}
		d.log.Warn("policy sync incomplete; endpoint directions failed closed", "error", err)
		return st, err
	}
	d.log.Debug("policy synced", "stats", st.String())
	return st, nil
}

type policySync struct {
	d       *Datapath
	curMeta map[epPolicyKey]epPolicyValue
	// Keys (Gen zeroed) per endpoint direction: in force, and wanted.
	cur, want map[epPolicyKey]map[policyKey]policyValue
	deleted   int // keys deleted outside syncGroup's stats
}

func (s *policySync) group(m map[epPolicyKey]map[policyKey]policyValue, g epPolicyKey) map[policyKey]policyValue {
	if m[g] == nil {
		m[g] = make(map[policyKey]policyValue)
	}
	return m[g]
}

func (s *policySync) deleteKey(k policyKey) {
	if err := s.d.objs.Policy.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		s.d.log.Warn("delete stale policy key", "endpoint", k.Endpoint, "error", err)
	}
	s.deleted++
}

// syncGroup brings one endpoint direction to its wanted state; it reports
// whether it wrote anything. On error nothing of the new state is left.
func (s *policySync) syncGroup(g epPolicyKey, meta epPolicyValue, wanted bool, st *SyncStats) (bool, error) {
	m := s.d.objs
	curMeta, present := s.curMeta[g]
	cur, want := s.cur[g], s.want[g]
	if !wanted {
		// No policy any more (not selected): remove ep_policy first, which
		// makes the keys unreachable, then the keys.
		if err := m.EpPolicy.Delete(g); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return false, fmt.Errorf("delete ep_policy: %w", err)
		}
		for k := range cur {
			k.Gen = uint8(curMeta.Gen)
			s.deleteKey(k)
		}
		st.Deleted += len(cur)
		return true, nil
	}
	var diff SyncStats
	for k, v := range want {
		switch old, ok := cur[k]; {
		case !ok:
			diff.Added++
		case old != v:
			diff.Updated++
		default:
			diff.Unchanged++
		}
	}
	for k := range cur {
		if _, ok := want[k]; !ok {
			diff.Deleted++
		}
	}
	failedBefore := present && curMeta.Flags&epPolicyFailClosed != 0
	if present && !failedBefore && diff.Added+diff.Updated+diff.Deleted == 0 &&
		curMeta.Flags == meta.Flags && curMeta.LevelsPeer == meta.LevelsPeer && curMeta.LevelsAny == meta.LevelsAny {
		st.Unchanged += diff.Unchanged
		return false, nil
	}
	gen := uint32(0)
	if present {
		gen = 1 - curMeta.Gen&1
	}
	var written []policyKey
	undo := func() {
		for _, k := range written {
			if err := m.Policy.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				s.d.log.Warn("delete partial policy key", "endpoint", k.Endpoint, "error", err)
			}
		}
	}
	for _, k := range slices.SortedFunc(maps.Keys(want), comparePolicyKeys) {
		v := want[k]
		k.Gen = uint8(gen)
		if err := m.Policy.Update(k, v, ebpf.UpdateAny); err != nil {
			undo()
			return true, mapWriteError("policy", err)
		}
		written = append(written, k)
	}
	meta.Gen = gen
	if err := m.EpPolicy.Update(g, meta, ebpf.UpdateAny); err != nil {
		undo()
		return true, mapWriteError("ep_policy", err)
	}
	for k := range cur {
		k.Gen = uint8(curMeta.Gen)
		if err := m.Policy.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			s.d.log.Warn("delete old policy key", "endpoint", k.Endpoint, "error", err)
		}
	}
	st.Added += diff.Added
	st.Updated += diff.Updated
	st.Deleted += diff.Deleted
	st.Unchanged += diff.Unchanged
	return true, nil
}

// failClosed puts an endpoint direction into the fail-closed state: its
// ep_policy value drops everything, then its keys are deleted.
func (s *policySync) failClosed(g epPolicyKey, cause error) FailedDirection {
	f := FailedDirection{Endpoint: g.Endpoint, Direction: Direction(g.Dir), Err: cause}
	if g.Endpoint == 0 {
		return f // no packet has endpoint 0; nothing to close
	}
	curMeta, present := s.curMeta[g]
	meta := epPolicyValue{Flags: epPolicyEnforced | epPolicyFailClosed, Gen: curMeta.Gen}
	if err := s.d.objs.EpPolicy.Update(g, meta, ebpf.UpdateAny); err != nil {
		// The old policy (if any) stays in force; without one the
		// direction is not enforced. Say so.
		f.Err = fmt.Errorf("%w (and could not fail closed, present=%v: %w)", cause, present, mapWriteError("ep_policy", err))
		return f
	}
	for k := range s.cur[g] {
		k.Gen = uint8(curMeta.Gen)
		s.deleteKey(k)
	}
	return f
}

func mapWriteError(name string, err error) error {
	if errors.Is(err, errE2BIG) || errors.Is(err, errENOMEM) {
		return fmt.Errorf("%s: %w: %w", name, ErrMapFull, err)
	}
	return fmt.Errorf("%s: %w", name, err)
}

func comparePolicyKeys(a, b policyKey) int {
	switch {
	case a.Identity != b.Identity:
		return cmpU(a.Identity, b.Identity)
	case a.Proto != b.Proto:
		return cmpU(uint32(a.Proto), uint32(b.Proto))
	case a.PortPlen != b.PortPlen:
		return cmpU(uint32(a.PortPlen), uint32(b.PortPlen))
	}
	return cmpU(uint32(a.Port), uint32(b.Port))
}

func cmpU(a, b uint32) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
