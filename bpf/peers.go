package bpf

import (
	"errors"
	"fmt"
	"slices"
)

// PeerPolicy is one peer's entries in an endpoint direction, for
// UpdatePolicyPeers: every entry names Peer; none means the peer has no
// entries any more.
type PeerPolicy struct {
	Peer    Identity
	Entries []PolicyEntry
}

// ErrWholePolicyNeeded: UpdatePolicyPeers cannot apply a change from the
// peers alone (the Go-side mirror does not know the direction's policy
// peer by peer: after Open, after a failed write, when the direction has
// no policy or failed closed, when another Datapath wrote the pins).
// Nothing was written; give the endpoint's whole policy to UpdatePolicy.
var ErrWholePolicyNeeded = errors.New("the whole policy of the endpoint direction is needed")

// UpdatePolicyPeers changes the policy of one endpoint direction for the
// given peers only: each listed peer's entries become exactly its
// Entries (none: removed), every other peer's, the direction's flags and
// every other endpoint direction stay as they are. The result is that of
// UpdatePolicy with the direction's whole new policy, at the cost of the
// change: no peer but the listed ones is looked at (the agent's
// incremental toFQDNs path, where a new address adds one peer to a
// direction of thousands).
//
// The keys are written in place under the current generation when the
// direction's level masks and the wildcard peer's keys stay (adds most
// specific first, removals least specific first; see "In-place
// updates"), else the direction's whole key set is written under the
// other generation and swapped in, as SyncPolicy does. A peer list the
// datapath rejects (an invalid entry, an entry naming another peer, a
// peer listed twice) or a failed write makes the direction fail closed,
// reported as a *SyncError. When the mirror cannot apply the change it
// returns an error wrapping ErrWholePolicyNeeded and writes nothing.
func (d *Datapath) UpdatePolicyPeers(endpoint uint32, dir Direction, peers []PeerPolicy) (SyncStats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var st SyncStats
	g := epPolicyKey{Endpoint: endpoint, Dir: uint8(dir)}
	switch {
	case endpoint == 0:
		return st, fmt.Errorf("%w: endpoint id 0", ErrInvalidEntry)
	case dir != Ingress && dir != Egress:
		return st, fmt.Errorf("%w: %s", ErrInvalidEntry, dir)
	case d.pm == nil || d.otherWriter():
		return st, fmt.Errorf("endpoint %d %s: %w: the maps are not known", endpoint, dir, ErrWholePolicyNeeded)
	}
	cd := d.pm[g]
	if cd == nil || !cd.present || cd.src == nil || cd.meta.Flags&epPolicyFailClosed != 0 {
		return st, fmt.Errorf("endpoint %d %s: %w: its policy is not known peer by peer", endpoint, dir, ErrWholePolicyNeeded)
	}
	s := &policySync{d: d}
	p, err := planPeers(g, cd, peers)
	var failed *FailedDirection
	changed := false
	if err != nil {
		f := s.failClosed(g, fmt.Errorf("endpoint %d %s: %w", endpoint, dir, err))
		failed, changed = &f, true
	} else {
		changed, err = s.syncGroup(g, p, &st)
		if err != nil {
			f := s.failClosed(g, fmt.Errorf("endpoint %d %s: %w", endpoint, dir, err))
			failed = &f
		}
	}
	if s.unsure {
		d.pm = nil // the next sync reads the maps again
	}
	if changed || failed != nil || s.deleted > 0 {
		if err := d.bumpRevision(); err != nil {
			return st, err
		}
	}
	if failed != nil {
		err := &SyncError{Failed: []FailedDirection{*failed}}
		d.log.Warn("policy update incomplete; endpoint direction failed closed", "error", err)
		return st, err
	}
	return st, nil
}

// planPeers plans the change of the listed peers of the direction cd
// (whose source is known).
func planPeers(g epPolicyKey, cd *mirrorDir, peers []PeerPolicy) (*dirPlan, error) {
	src := cd.src
	p := &dirPlan{wanted: true, flags: src.flags, changes: make(map[Identity]*peerSource, len(peers)), set: map[policyKey]policyValue{}}
	remaining := len(src.peers)
	listed := make(map[Identity]bool, len(peers))
	for _, pp := range peers {
		if listed[pp.Peer] {
			return nil, fmt.Errorf("%w: peer %d listed twice", ErrInvalidEntry, pp.Peer)
		}
		listed[pp.Peer] = true
		for _, e := range pp.Entries {
			if e.Peer != pp.Peer {
				return nil, fmt.Errorf("%w: an entry of peer %d in the entries of peer %d", ErrInvalidEntry, e.Peer, pp.Peer)
			}
			if err := validateEntry(e); err != nil {
				return nil, err
			}
		}
	}
	for _, pp := range peers {
		old := src.peers[pp.Peer]
		switch {
		case len(pp.Entries) == 0:
			if old != nil {
				p.changes[pp.Peer] = nil
				remaining--
			}
		case old != nil && slices.Equal(old.entries, pp.Entries):
		default:
			if old == nil {
				remaining++
			}
			p.changes[pp.Peer] = compilePeer(g.Endpoint, Direction(g.Dir), pp.Peer, append([]PolicyEntry(nil), pp.Entries...))
		}
	}
	if p.flags == 0 && remaining == 0 {
		return &dirPlan{}, nil // no policy left: as SyncPolicy, the direction goes
	}
	p.finish(cd)
	return p, nil
}
