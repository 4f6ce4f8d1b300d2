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
// direction, never a mix. A change that keeps the ep_policy value and the
// wildcard's keys is written in place instead (see "In-place updates"
// below), with the same guarantee per flow. Unchanged endpoint directions are not touched,
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

// syncPolicy syncs desired; with only set, just those endpoints. A whole
// sync reads the maps (and reloads the mirror from them); a partial one
// works from the mirror alone, so its cost is that of the endpoints it
// names, not of the maps.
func (d *Datapath) syncPolicy(desired []EndpointPolicy, only map[uint32]bool) (SyncStats, error) {
	c, _ := compilePolicy(desired) // c.failed holds the errors
	d.mu.Lock()
	defer d.mu.Unlock()
	var st SyncStats
	s := &policySync{d: d, want: map[epPolicyKey]map[policyKey]policyValue{}}
	if only == nil || d.pm == nil || d.otherWriter() {
		deleted, err := d.loadPolicyMirror()
		if err != nil {
			return st, err
		}
		s.deleted = deleted
	}
	for k, v := range c.policy {
		g := epPolicyKey{Endpoint: k.Endpoint, Dir: k.Dir}
		w := s.want[g]
		if w == nil {
			w = make(map[policyKey]policyValue)
			s.want[g] = w
		}
		w[k] = v
	}
	groups := make(map[epPolicyKey]bool)
	if only == nil {
		for g := range d.pm {
			groups[g] = true
		}
	} else {
		for ep := range only {
			for _, dir := range []Direction{Ingress, Egress} {
				if g := (epPolicyKey{Endpoint: ep, Dir: uint8(dir)}); d.pm[g].present {
					groups[g] = true
				}
			}
		}
	}
	for g := range c.epPolicy {
		groups[g] = true
	}
	for g := range c.failed {
		groups[g] = true
	}
	// Shrinking directions first: they free room for growing ones.
	order := slices.Collect(maps.Keys(groups))
	sort.Slice(order, func(i, j int) bool {
		di := len(s.want[order[i]]) - len(d.pm[order[i]].keys)
		dj := len(s.want[order[j]]) - len(d.pm[order[j]].keys)
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
	if s.unsure {
		// A write failed in a way that leaves the map's content unknown:
		// the next sync reads the maps again.
		d.pm = nil
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

// policyMirror is what the policy and ep_policy maps hold, per endpoint
// direction, as this Datapath wrote them: loaded from the maps by a whole
// sync (or the first partial one after Open, so adopted pins are read),
// then kept up to date by every write. Partial syncs diff against it
// instead of dumping the maps. A write whose effect is unknown (a failed
// delete) drops it, and the next sync reads the maps again.
type policyMirror map[epPolicyKey]mirrorDir

type mirrorDir struct {
	present bool // an ep_policy value exists
	meta    epPolicyValue
	// keys in force (of meta.Gen), Gen zeroed; none when failed closed.
	keys map[policyKey]policyValue
}

// loadPolicyMirror reads both maps into d.pm and deletes the keys that
// no packet can reach (left by an interrupted sync, or of a direction
// that failed closed); it returns how many it deleted.
func (d *Datapath) loadPolicyMirror() (int, error) {
	d.pm = nil
	curMeta, err := dumpMap[epPolicyKey, epPolicyValue](d.objs.EpPolicy)
	if err != nil {
		return 0, err
	}
	curKeys, err := dumpMap[policyKey, policyValue](d.objs.Policy)
	if err != nil {
		return 0, err
	}
	pm := make(policyMirror, len(curMeta))
	for g, m := range curMeta {
		pm[g] = mirrorDir{present: true, meta: m, keys: map[policyKey]policyValue{}}
	}
	deleted := 0
	for k, v := range curKeys {
		g := epPolicyKey{Endpoint: k.Endpoint, Dir: k.Dir}
		if m, ok := curMeta[g]; !ok || uint32(k.Gen) != m.Gen || m.Flags&epPolicyFailClosed != 0 {
			// Unreachable, only takes room.
			if err := d.objs.Policy.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				d.log.Warn("delete stale policy key", "endpoint", k.Endpoint, "error", err)
			}
			deleted++
			continue
		}
		k.Gen = 0
		pm[g].keys[k] = v
	}
	d.pm = pm
	return deleted, nil
}

// otherWriter reports whether the maps may have changed behind the
// mirror: every policy write bumps the revision, so a pinned revision
// other than ours means another Datapath on the same pins wrote.
func (d *Datapath) otherWriter() bool {
	var cur datapathConfig
	if err := d.objs.Settings.Lookup(uint32(0), &cur); err != nil {
		return true
	}
	return cur.Revision != d.settings.Revision
}

type policySync struct {
	d *Datapath
	// Keys (Gen zeroed) wanted per endpoint direction; d.pm has those in
	// force.
	want    map[epPolicyKey]map[policyKey]policyValue
	deleted int  // keys deleted outside syncGroup's stats
	unsure  bool // a write failed so that d.pm may differ from the maps
}

// written tells the test hook that a policy map write happened.
func (s *policySync) written() {
	if s.d.policyWritten != nil {
		s.d.policyWritten()
	}
}

// deleteKey deletes a key no packet reaches any more.
func (s *policySync) deleteKey(k policyKey) {
	if err := s.d.objs.Policy.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		s.d.log.Warn("delete policy key", "endpoint", k.Endpoint, "error", err)
		s.unsure = true
	}
	s.deleted++
	s.written()
}

// syncGroup brings one endpoint direction to its wanted state; it reports
// whether it wrote anything. On error nothing of the new state is left.
func (s *policySync) syncGroup(g epPolicyKey, meta epPolicyValue, wanted bool, st *SyncStats) (bool, error) {
	m := s.d.objs
	cd := s.d.pm[g]
	curMeta, present := cd.meta, cd.present
	cur, want := cd.keys, s.want[g]
	if !wanted {
		if !present {
			return false, nil
		}
		// No policy any more (not selected): remove ep_policy first, which
		// makes the keys unreachable, then the keys.
		if err := m.EpPolicy.Delete(g); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			s.unsure = true
			return false, fmt.Errorf("delete ep_policy: %w", err)
		}
		s.written()
		delete(s.d.pm, g)
		for k := range cur {
			k.Gen = uint8(curMeta.Gen)
			s.deleteKey(k)
		}
		st.Deleted += len(cur)
		return true, nil
	}
	var diff SyncStats
	var adds, updates, dels []policyKey
	for k, v := range want {
		switch old, ok := cur[k]; {
		case !ok:
			diff.Added++
			adds = append(adds, k)
		case old != v:
			diff.Updated++
			updates = append(updates, k)
		default:
			diff.Unchanged++
		}
	}
	for k := range cur {
		if _, ok := want[k]; !ok {
			diff.Deleted++
			dels = append(dels, k)
		}
	}
	failedBefore := present && curMeta.Flags&epPolicyFailClosed != 0
	sameMeta := present && !failedBefore && curMeta.Flags == meta.Flags &&
		curMeta.LevelsPeer == meta.LevelsPeer && curMeta.LevelsAny == meta.LevelsAny
	if sameMeta && diff.Added+diff.Updated+diff.Deleted == 0 {
		st.Unchanged += diff.Unchanged
		return false, nil
	}
	count := func() {
		st.Added += diff.Added
		st.Updated += diff.Updated
		st.Deleted += diff.Deleted
		st.Unchanged += diff.Unchanged
	}
	if sameMeta && inPlaceSafe(adds, updates, dels) {
		if err := s.writeInPlace(g, curMeta, want, adds, updates, dels); err != nil {
			return true, err
		}
		count()
		return true, nil
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
				s.unsure = true
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
		s.written()
	}
	meta.Gen = gen
	if err := m.EpPolicy.Update(g, meta, ebpf.UpdateAny); err != nil {
		undo()
		return true, mapWriteError("ep_policy", err)
	}
	s.written()
	s.d.pm[g] = mirrorDir{present: true, meta: meta, keys: want}
	for k := range cur {
		k.Gen = uint8(curMeta.Gen)
		if err := m.Policy.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			s.d.log.Warn("delete old policy key", "endpoint", k.Endpoint, "error", err)
			s.unsure = true
		}
		s.written()
	}
	count()
	return true, nil
}

// In-place updates
//
// When an endpoint direction keeps its ep_policy value (flags and level
// masks; the generation stays), its keys can change in place, without
// rewriting the whole set under the other generation. A packet's verdict
// for its peer kind (the specific peer, or the wildcard) is the value of
// the most specific present key that covers it (every present level is
// probed), and the values are pre-combined, so each map state between the
// old and the new key set gives every flow its old or its new verdict if
// the writes go in this order:
//
//  1. keys only the new set has, most specific first: a flow whose new
//     most specific key is added gets its new verdict from then on, and
//     before it no less specific new key covering it was added;
//  2. keys in both sets whose value changes (one atomic write each);
//  3. keys only the old set has, least specific first: a flow whose old
//     most specific key is still present keeps its old verdict, and when
//     that key goes, every key between it and the flow's new one has gone.
//
// A packet combines its peer's answer with the wildcard's, so a change of
// both in one step could show one old and one new: the wildcard keys must
// not change in place (inPlaceSafe). An incremental FQDN update (a peer's
// keys added or removed) takes this route: the ipcache entry that makes a
// new peer reachable is written after its keys, and deleted before them.
// If a write fails, the keys added are deleted again and the direction
// fails closed, as with a generation swap.

// inPlaceSafe reports whether a change may be written in place: the
// wildcard peer's keys stay as they are.
func inPlaceSafe(adds, updates, dels []policyKey) bool {
	for _, ks := range [][]policyKey{adds, updates, dels} {
		for _, k := range ks {
			if Identity(k.Identity) == IdentityAny {
				return false
			}
		}
	}
	return true
}

// specificity orders keys covering one flow: exact port 16 … all ports 0,
// then any protocol (-1).
func specificity(k policyKey) int {
	if k.Proto == ProtoAny {
		return -1
	}
	return int(k.PortPlen)
}

// writeInPlace writes the change in the current generation, in the order
// above, and updates the mirror.
func (s *policySync) writeInPlace(g epPolicyKey, curMeta epPolicyValue, want map[policyKey]policyValue, adds, updates, dels []policyKey) error {
	m := s.d.objs
	gen := uint8(curMeta.Gen)
	slices.SortFunc(adds, func(a, b policyKey) int {
		if sa, sb := specificity(a), specificity(b); sa != sb {
			return sb - sa
		}
		return comparePolicyKeys(a, b)
	})
	slices.SortFunc(updates, comparePolicyKeys)
	slices.SortFunc(dels, func(a, b policyKey) int {
		if sa, sb := specificity(a), specificity(b); sa != sb {
			return sa - sb
		}
		return comparePolicyKeys(a, b)
	})
	cd := s.d.pm[g]
	if cd.keys == nil {
		cd.keys = make(map[policyKey]policyValue, len(adds))
		s.d.pm[g] = cd
	}
	keys := cd.keys
	for i, k := range adds {
		wk := k
		wk.Gen = gen
		if err := m.Policy.Update(wk, want[k], ebpf.UpdateAny); err != nil {
			// Undo in reverse: least specific first, as a removal.
			for j := i - 1; j >= 0; j-- {
				uk := adds[j]
				uk.Gen = gen
				if err := m.Policy.Delete(uk); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
					s.d.log.Warn("delete partial policy key", "endpoint", uk.Endpoint, "error", err)
					s.unsure = true
				}
				s.written()
			}
			return mapWriteError("policy", err)
		}
		s.written()
	}
	for _, k := range adds {
		keys[k] = want[k]
	}
	for _, k := range updates {
		wk := k
		wk.Gen = gen
		if err := m.Policy.Update(wk, want[k], ebpf.UpdateAny); err != nil {
			// The keys in force are a mix now: failClosed deletes them
			// all (the mirror has every key present).
			return mapWriteError("policy", err)
		}
		keys[k] = want[k]
		s.written()
	}
	for _, k := range dels {
		wk := k
		wk.Gen = gen
		if err := m.Policy.Delete(wk); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			s.unsure = true
			return fmt.Errorf("policy: delete: %w", err)
		}
		delete(keys, k)
		s.written()
	}
	return nil
}

// failClosed puts an endpoint direction into the fail-closed state: its
// ep_policy value drops everything, then its keys are deleted.
func (s *policySync) failClosed(g epPolicyKey, cause error) FailedDirection {
	f := FailedDirection{Endpoint: g.Endpoint, Direction: Direction(g.Dir), Err: cause}
	if g.Endpoint == 0 {
		return f // no packet has endpoint 0; nothing to close
	}
	cd := s.d.pm[g]
	meta := epPolicyValue{Flags: epPolicyEnforced | epPolicyFailClosed, Gen: cd.meta.Gen}
	if err := s.d.objs.EpPolicy.Update(g, meta, ebpf.UpdateAny); err != nil {
		// The old policy (if any) stays in force; without one the
		// direction is not enforced. Say so.
		f.Err = fmt.Errorf("%w (and could not fail closed, present=%v: %w)", cause, cd.present, mapWriteError("ep_policy", err))
		return f
	}
	s.written()
	s.d.pm[g] = mirrorDir{present: true, meta: meta}
	for k := range cd.keys {
		k.Gen = uint8(cd.meta.Gen)
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
