package bpf

import (
	"errors"
	"fmt"
	"maps"
	"math/bits"
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
	return d.syncPolicy(desired, false)
}

// UpdatePolicy is SyncPolicy for the endpoints in subset only: their
// policies become exactly subset's, every other endpoint's stays as it is
// (the agent's incremental FQDN path). It works from the mirror of what
// was written and recompiles only the peers whose entries changed, so its
// cost is that of the change (given entries sorted by peer, as
// bpftranslate makes them; else it compiles the endpoint's whole policy).
func (d *Datapath) UpdatePolicy(subset []EndpointPolicy) (SyncStats, error) {
	return d.syncPolicy(subset, true)
}

// syncPolicy syncs desired; partial: only the endpoints desired names. A
// whole sync reads the maps (and reloads the mirror from them); a partial
// one works from the mirror alone.
func (d *Datapath) syncPolicy(desired []EndpointPolicy, partial bool) (SyncStats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var st SyncStats
	s := &policySync{d: d}
	if !partial || d.pm == nil || d.otherWriter() {
		deleted, err := d.loadPolicyMirror()
		if err != nil {
			return st, err
		}
		s.deleted = deleted
	}
	d.epoch++
	plans := make(map[epPolicyKey]*dirPlan, 2*len(desired))
	count := make(map[uint32]int, len(desired))
	for _, ep := range desired {
		count[ep.Endpoint]++
	}
	for _, ep := range desired {
		for _, dd := range []struct {
			dir Direction
			pol DirectionPolicy
		}{{Ingress, ep.Ingress}, {Egress, ep.Egress}} {
			g := epPolicyKey{Endpoint: ep.Endpoint, Dir: uint8(dd.dir)}
			var p *dirPlan
			var err error
			switch {
			case ep.Endpoint == 0:
				err = fmt.Errorf("%w: endpoint id 0", ErrInvalidEntry)
			case count[ep.Endpoint] > 1:
				err = fmt.Errorf("%w: endpoint %d listed twice", ErrInvalidEntry, ep.Endpoint)
			default:
				p, err = d.plan(g, dd.pol)
			}
			if err != nil {
				p = &dirPlan{failed: fmt.Errorf("endpoint %d %s: %w", ep.Endpoint, dd.dir, err)}
			}
			plans[g] = p
		}
	}
	if !partial {
		for g, cd := range d.pm {
			if _, ok := plans[g]; !ok && cd.present {
				plans[g] = &dirPlan{} // no policy any more
			}
		}
	}
	// Shrinking directions first: they free room for growing ones.
	order := slices.Collect(maps.Keys(plans))
	sort.Slice(order, func(i, j int) bool {
		di := plans[order[i]].nkeys - len(d.pm.get(order[i]).keys)
		dj := plans[order[j]].nkeys - len(d.pm.get(order[j]).keys)
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
		p := plans[g]
		if p.failed != nil {
			failed = append(failed, s.failClosed(g, p.failed))
			changed = true
			continue
		}
		ch, err := s.syncGroup(g, p, &st)
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
type policyMirror map[epPolicyKey]*mirrorDir

// get is the mirror of g (zero: no ep_policy value).
func (pm policyMirror) get(g epPolicyKey) mirrorDir {
	if cd := pm[g]; cd != nil {
		return *cd
	}
	return mirrorDir{}
}

type mirrorDir struct {
	present bool // an ep_policy value exists
	meta    epPolicyValue
	// keys in force (of meta.Gen), Gen zeroed; none when failed closed.
	keys map[policyKey]policyValue
	// src: the policy the keys were compiled from, peer by peer; nil
	// when not known (loaded from the maps, failed closed).
	src *dirSource
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
		pm[g] = &mirrorDir{present: true, meta: m, keys: map[policyKey]policyValue{}}
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

// dirPlan is what a sync will write for one endpoint direction.
type dirPlan struct {
	failed error // not compiled: fail closed
	wanted bool  // has a policy (else its ep_policy value and keys go)
	meta   epPolicyValue
	// set: keys to add or change, with their new values; del: keys to
	// delete (Gen zeroed).
	set       map[policyKey]policyValue
	del       []policyKey
	unchanged int
	nkeys     int // keys after
	// src: the whole new source (a full compile), or changes: the peers
	// recompiled (nil: gone) and flags, applied to the mirror's source.
	src     *dirSource
	changes map[Identity]*peerSource
	flags   uint32
}

// plan compiles one endpoint direction's policy against the mirror:
// only the peers whose entries changed when the mirror knows the policy
// it has and the entries come sorted by peer.
func (d *Datapath) plan(g epPolicyKey, dp DirectionPolicy) (*dirPlan, error) {
	if !dp.Enforced && len(dp.Entries) == 0 {
		return &dirPlan{}, nil
	}
	cd := d.pm[g]
	if cd == nil || cd.src == nil || !slices.IsSortedFunc(dp.Entries, func(a, b PolicyEntry) int { return cmpU(uint32(a.Peer), uint32(b.Peer)) }) {
		src, err := compileSource(g.Endpoint, Direction(g.Dir), dp)
		if err != nil {
			return nil, err
		}
		return fullPlan(cd, src), nil
	}
	src := cd.src
	p := &dirPlan{wanted: true, flags: directionFlags(dp), changes: map[Identity]*peerSource{}, set: map[policyKey]policyValue{}}
	seen := 0
	for i := 0; i < len(dp.Entries); {
		j := i + 1
		for j < len(dp.Entries) && dp.Entries[j].Peer == dp.Entries[i].Peer {
			j++
		}
		peer, run := dp.Entries[i].Peer, dp.Entries[i:j]
		i = j
		old := src.peers[peer]
		if old != nil {
			old.mark = d.epoch
			seen++
			if slices.Equal(old.entries, run) {
				continue
			}
		}
		for _, e := range run {
			if err := validateEntry(e); err != nil {
				return nil, err
			}
		}
		p.changes[peer] = compilePeer(g.Endpoint, Direction(g.Dir), peer, slices.Clone(run))
	}
	if seen < len(src.peers) {
		for peer, ps := range src.peers {
			if ps.mark != d.epoch {
				p.changes[peer] = nil
			}
		}
	}
	p.finish(cd)
	return p, nil
}

// finish fills in what the plan's peer changes (p.changes, p.flags)
// make of the mirror's direction cd (cd.src known): the diff of keys, the
// ep_policy value after, the key counts.
func (p *dirPlan) finish(cd *mirrorDir) {
	src := cd.src
	counts := src.counts
	levelsAny := [4]uint32{}
	if a := src.peers[IdentityAny]; a != nil {
		levelsAny = a.levels
	}
	oldKeys := 0
	for peer, ps := range p.changes {
		old := src.peers[peer]
		if peer == IdentityAny {
			levelsAny = [4]uint32{}
			if ps != nil {
				levelsAny = ps.levels
			}
		} else {
			if old != nil {
				addCounts(&counts, old.levels, -1)
			}
			if ps != nil {
				addCounts(&counts, ps.levels, 1)
			}
		}
		if old != nil {
			oldKeys += len(old.keys)
		}
		p.diffPeer(cd.keys, old, ps)
	}
	p.meta = levelsFrom(p.flags, &counts, levelsAny)
	p.unchanged += len(cd.keys) - oldKeys
	adds := 0
	for k := range p.set {
		if _, ok := cd.keys[k]; !ok {
			adds++
		}
	}
	p.nkeys = len(cd.keys) + adds - len(p.del)
}

// diffPeer adds a peer's change (old or ps nil: none) to the plan.
func (p *dirPlan) diffPeer(cur map[policyKey]policyValue, old, ps *peerSource) {
	if ps != nil {
		for i, k := range ps.keys {
			if v, ok := cur[k]; ok && v == ps.vals[i] {
				p.unchanged++
			} else {
				p.set[k] = ps.vals[i]
			}
		}
	}
	if old != nil {
		for _, k := range old.keys {
			if ps == nil || !slices.Contains(ps.keys, k) {
				p.del = append(p.del, k)
			}
		}
	}
}

// fullPlan diffs a whole compiled direction against the keys in force.
func fullPlan(cd *mirrorDir, src *dirSource) *dirPlan {
	p := &dirPlan{wanted: true, src: src, meta: src.meta(), set: map[policyKey]policyValue{}}
	var cur map[policyKey]policyValue
	if cd != nil {
		cur = cd.keys
	}
	kept := 0
	for _, ps := range src.peers {
		for i, k := range ps.keys {
			p.nkeys++
			v, ok := cur[k]
			if ok {
				kept++
			}
			if ok && v == ps.vals[i] {
				p.unchanged++
			} else {
				p.set[k] = ps.vals[i]
			}
		}
	}
	if kept < len(cur) {
		for k := range cur {
			if ps := src.peers[Identity(k.Identity)]; ps == nil || !slices.Contains(ps.keys, k) {
				p.del = append(p.del, k)
			}
		}
	}
	return p
}

func addCounts(c *[4][levelAnyProto + 1]int32, levels [4]uint32, d int32) {
	for pc, l := range levels {
		for l != 0 {
			b := bits.TrailingZeros32(l)
			c[pc][b] += d
			l &^= 1 << b
		}
	}
}

func levelsFrom(flags uint32, counts *[4][levelAnyProto + 1]int32, levelsAny [4]uint32) epPolicyValue {
	m := epPolicyValue{Flags: flags, LevelsAny: levelsAny}
	for pc := range counts {
		for b, n := range counts[pc] {
			if n > 0 {
				m.LevelsPeer[pc] |= 1 << b
			}
		}
	}
	return m
}

// apply records a written plan in the mirror's source.
func (p *dirPlan) apply(cd *mirrorDir) {
	if p.src != nil {
		cd.src = p.src
		return
	}
	if cd.src == nil {
		return
	}
	for peer, ps := range p.changes {
		cd.src.remove(peer)
		if ps != nil {
			cd.src.add(peer, ps)
		}
	}
	cd.src.flags = p.flags
}

type policySync struct {
	d       *Datapath
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

// syncGroup brings one endpoint direction to its planned state; it
// reports whether it wrote anything. On error nothing of the new state is
// left.
func (s *policySync) syncGroup(g epPolicyKey, p *dirPlan, st *SyncStats) (bool, error) {
	m := s.d.objs
	cd := s.d.pm[g]
	if cd == nil {
		cd = &mirrorDir{}
	}
	curMeta, present, cur := cd.meta, cd.present, cd.keys
	if !p.wanted {
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
	var adds, updates []policyKey
	for k := range p.set {
		if _, ok := cur[k]; ok {
			updates = append(updates, k)
		} else {
			adds = append(adds, k)
		}
	}
	meta := p.meta
	failedBefore := present && curMeta.Flags&epPolicyFailClosed != 0
	sameMeta := present && !failedBefore && curMeta.Flags == meta.Flags &&
		curMeta.LevelsPeer == meta.LevelsPeer && curMeta.LevelsAny == meta.LevelsAny
	if sameMeta && len(p.set)+len(p.del) == 0 {
		st.Unchanged += p.unchanged
		p.apply(cd)
		return false, nil
	}
	count := func() {
		st.Added += len(adds)
		st.Updated += len(updates)
		st.Deleted += len(p.del)
		st.Unchanged += p.unchanged
	}
	if sameMeta && inPlaceSafe(adds, updates, p.del) {
		if err := s.writeInPlace(g, cd, p.set, adds, updates, p.del); err != nil {
			cd.src = nil
			return true, err
		}
		p.apply(cd)
		count()
		return true, nil
	}
	gen := uint32(0)
	if present {
		gen = 1 - curMeta.Gen&1
	}
	// The whole new key set, under the other generation.
	want := make(map[policyKey]policyValue, p.nkeys)
	if !failedBefore {
		for k, v := range cur {
			want[k] = v
		}
	}
	for _, k := range p.del {
		delete(want, k)
	}
	maps.Copy(want, p.set)
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
	nd := &mirrorDir{present: true, meta: meta, keys: want, src: cd.src}
	s.d.pm[g] = nd
	for k := range cur {
		k.Gen = uint8(curMeta.Gen)
		if err := m.Policy.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			s.d.log.Warn("delete old policy key", "endpoint", k.Endpoint, "error", err)
			s.unsure = true
		}
		s.written()
	}
	p.apply(nd)
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
// above, and updates the mirror's keys as it goes (so a failure leaves
// them naming every key present, for failClosed).
func (s *policySync) writeInPlace(g epPolicyKey, cd *mirrorDir, set map[policyKey]policyValue, adds, updates, dels []policyKey) error {
	m := s.d.objs
	gen := uint8(cd.meta.Gen)
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
	if cd.keys == nil {
		cd.keys = make(map[policyKey]policyValue, len(adds))
	}
	keys := cd.keys
	for i, k := range adds {
		wk := k
		wk.Gen = gen
		if err := m.Policy.Update(wk, set[k], ebpf.UpdateAny); err != nil {
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
		keys[k] = set[k]
	}
	for _, k := range updates {
		wk := k
		wk.Gen = gen
		if err := m.Policy.Update(wk, set[k], ebpf.UpdateAny); err != nil {
			// The keys in force are a mix now: failClosed deletes them
			// all (the mirror has every key present).
			return mapWriteError("policy", err)
		}
		keys[k] = set[k]
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
	if cd == nil {
		cd = &mirrorDir{}
	}
	meta := epPolicyValue{Flags: epPolicyEnforced | epPolicyFailClosed, Gen: cd.meta.Gen}
	if err := s.d.objs.EpPolicy.Update(g, meta, ebpf.UpdateAny); err != nil {
		// The old policy (if any) stays in force; without one the
		// direction is not enforced. Say so.
		f.Err = fmt.Errorf("%w (and could not fail closed, present=%v: %w)", cause, cd.present, mapWriteError("ep_policy", err))
		cd.src = nil
		return f
	}
	s.written()
	s.d.pm[g] = &mirrorDir{present: true, meta: meta}
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
