package policy

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"
	"unsafe"

	"github.com/l7gate/l7gate/flow"
)

// Identity is a numeric security identity (package flow owns the type and
// the reserved numbers; they are re-exported here).
type Identity = flow.Identity

// Reserved identities (Cilium's numbers).
const (
	IdentityAny           = flow.IdentityAny
	IdentityHost          = flow.IdentityHost
	IdentityWorld         = flow.IdentityWorld
	IdentityUnmanaged     = flow.IdentityUnmanaged
	IdentityHealth        = flow.IdentityHealth
	IdentityInit          = flow.IdentityInit
	IdentityRemoteNode    = flow.IdentityRemoteNode
	IdentityKubeAPIServer = flow.IdentityKubeAPIServer
	IdentityIngress       = flow.IdentityIngress

	// FirstClusterIdentity is the first identity for pod label sets.
	FirstClusterIdentity = flow.FirstClusterIdentity
	// FirstCIDRIdentity is the first node-local CIDR identity.
	FirstCIDRIdentity = flow.FirstCIDRIdentity
)

// ReservedIdentities lists every reserved identity.
func ReservedIdentities() []Identity { return flow.ReservedIdentities() }

func reservedName(id Identity) string { return flow.ReservedName(id) }

// entityIdentities: the entity names policies may use. "all" and "cluster"
// are resolved by the caller because they depend on the identity universe.
func entityIdentity(name string) (Identity, bool) {
	switch name {
	case "host":
		return IdentityHost, true
	case "world":
		return IdentityWorld, true
	case "unmanaged":
		return IdentityUnmanaged, true
	case "health":
		return IdentityHealth, true
	case "init":
		return IdentityInit, true
	case "remote-node":
		return IdentityRemoteNode, true
	case "kube-apiserver":
		return IdentityKubeAPIServer, true
	case "ingress":
		return IdentityIngress, true
	}
	return 0, false
}

// validEntity reports whether name is an entity policies may use.
func validEntity(name string) bool {
	if name == "all" || name == "cluster" {
		return true
	}
	_, ok := entityIdentity(name)
	return ok
}

// IdentityAllocator hands out numeric identities for label sets. It keeps
// assignments for as long as it lives, so identities are stable while label
// sets come and go (an identity no longer in use is kept until Sweep, or
// Release, forgets it; its number is never handed out again). State and
// RestoreIdentityAllocator carry the assignments across restarts. Safe for
// concurrent use.
type IdentityAllocator struct {
	mu       sync.Mutex
	byKey    map[string]Identity
	lastUsed map[Identity]time.Time
	nextPod  Identity
	nextCIDR Identity
	// pods: the last compute's pods' security labels and identities
	// (podMemo); nil after an identity is forgotten.
	pods *podMemos
	// eps: the last compute's pod pass (endpointsMemo); nil after an
	// identity is forgotten.
	eps *endpointsMemo
	// forgotten counts Release and Sweep removals: a memo built across
	// one is not kept.
	forgotten uint64
	// order: the last compute's ipcache order (sortIPCache), a pure
	// function of its inputs, which it keeps and compares.
	order       *ipcacheOrder
	orderReused uint64 // computes that reused it (tests)
	epsReused   uint64 // computes that reused eps (tests)
	// strs: the last compute's identities' labels as strings (its
	// Identities, shared: read-only) and as "key=value" (its label
	// index), built once per identity, not per compute (at 11k pods and
	// 500 identities their concatenations were 15 % of a compute).
	strs map[Identity]identityStrings
}

// NewIdentityAllocator returns an empty allocator.
func NewIdentityAllocator() *IdentityAllocator {
	return &IdentityAllocator{byKey: map[string]Identity{}, lastUsed: map[Identity]time.Time{},
		nextPod: FirstClusterIdentity, nextCIDR: FirstCIDRIdentity}
}

// allocate returns the identity for labels, allocating a new one when the
// set is new. cidr selects the CIDR range.
func (a *IdentityAllocator) allocate(ls Labels, cidr bool) (Identity, error) {
	key := ls.Key()
	a.mu.Lock()
	defer a.mu.Unlock()
	if id, ok := a.byKey[key]; ok {
		return id, nil
	}
	var id Identity
	if cidr {
		if a.nextCIDR == 0 {
			return 0, fmt.Errorf("allocate identity for %s: CIDR identities exhausted", key)
		}
		id = a.nextCIDR
		a.nextCIDR++
	} else {
		if a.nextPod >= FirstCIDRIdentity {
			return 0, fmt.Errorf("allocate identity for %s: cluster identities exhausted", key)
		}
		id = a.nextPod
		a.nextPod++
	}
	a.byKey[key] = id
	return id, nil
}

// Release forgets the identity of a label set (its number is not reused).
func (a *IdentityAllocator) Release(ls Labels) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if id, ok := a.byKey[ls.Key()]; ok {
		delete(a.lastUsed, id)
	}
	delete(a.byKey, ls.Key())
	a.pods, a.eps = nil, nil
	a.forgotten++
}

// IdentityState is an allocator's assignments, for persisting them across
// restarts (JSON).
type IdentityState struct {
	// NextCluster and NextCIDR are the next numbers to hand out; numbers
	// below them are never handed out again, released or not.
	NextCluster Identity            `json:"nextCluster"`
	NextCIDR    Identity            `json:"nextCIDR"`
	Identities  []AllocatedIdentity `json:"identities"`
}

// AllocatedIdentity is one assignment.
type AllocatedIdentity struct {
	ID Identity `json:"id"`
	// Key is the label set (Labels.Key).
	Key string `json:"key"`
	// LastUsed is when Sweep last saw it in use (zero: not since it was
	// allocated or restored).
	LastUsed time.Time `json:"lastUsed,omitzero"`
}

// State returns the assignments, sorted by identity.
func (a *IdentityAllocator) State() IdentityState {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := IdentityState{NextCluster: a.nextPod, NextCIDR: a.nextCIDR, Identities: make([]AllocatedIdentity, 0, len(a.byKey))}
	for k, id := range a.byKey {
		st.Identities = append(st.Identities, AllocatedIdentity{ID: id, Key: k, LastUsed: a.lastUsed[id]})
	}
	slices.SortFunc(st.Identities, func(x, y AllocatedIdentity) int { return cmp.Compare(x.ID, y.ID) })
	return st
}

// RestoreIdentityAllocator returns an allocator holding st's assignments,
// so every label set keeps its number whatever order it is seen in. A
// state that could hand one number to two label sets is an error.
func RestoreIdentityAllocator(st IdentityState) (*IdentityAllocator, error) {
	a := NewIdentityAllocator()
	if st.NextCluster != 0 {
		a.nextPod = st.NextCluster
	}
	if st.NextCIDR != 0 {
		a.nextCIDR = st.NextCIDR
	}
	if a.nextPod < FirstClusterIdentity || a.nextPod > FirstCIDRIdentity || (a.nextCIDR != 0 && a.nextCIDR < FirstCIDRIdentity) {
		return nil, fmt.Errorf("identity state: next identities %d/%d out of range", a.nextPod, a.nextCIDR)
	}
	seen := map[Identity]string{}
	for _, e := range st.Identities {
		if e.Key == "" {
			return nil, fmt.Errorf("identity state: identity %d without labels", e.ID)
		}
		inCluster := e.ID >= FirstClusterIdentity && e.ID < a.nextPod
		inCIDR := e.ID >= FirstCIDRIdentity && (a.nextCIDR == 0 || e.ID < a.nextCIDR)
		if !inCluster && !inCIDR {
			return nil, fmt.Errorf("identity state: identity %d (%s) outside the allocated ranges", e.ID, e.Key)
		}
		if other, dup := seen[e.ID]; dup {
			return nil, fmt.Errorf("identity state: identity %d held by %s and %s", e.ID, other, e.Key)
		}
		if _, dup := a.byKey[e.Key]; dup {
			return nil, fmt.Errorf("identity state: labels %s hold two identities", e.Key)
		}
		seen[e.ID] = e.Key
		a.byKey[e.Key] = e.ID
		if !e.LastUsed.IsZero() {
			a.lastUsed[e.ID] = e.LastUsed
		}
	}
	return a, nil
}

// Sweep records that the identities inUse are in use at now, and forgets
// every other assignment not in use for longer than grace (an assignment
// never seen in use counts from its first Sweep). It returns the forgotten
// identities, sorted. The outcome depends only on its arguments and the
// allocator's state.
func (a *IdentityAllocator) Sweep(inUse []Identity, now time.Time, grace time.Duration) []Identity {
	a.mu.Lock()
	defer a.mu.Unlock()
	used := make(map[Identity]bool, len(inUse))
	for _, id := range inUse {
		used[id] = true
	}
	var out []Identity
	for k, id := range a.byKey {
		last, seen := a.lastUsed[id]
		switch {
		case used[id] || !seen:
			a.lastUsed[id] = now
		case now.Sub(last) > grace:
			delete(a.byKey, k)
			delete(a.lastUsed, id)
			out = append(out, id)
			a.pods, a.eps = nil, nil
			a.forgotten++
		}
	}
	slices.Sort(out)
	return out
}

// podKey names a pod in the memo of its security labels.
type podKey struct{ namespace, name string }

// podMemo is what SecurityLabels and allocate gave for one pod's inputs
// in the last compute: a CNP change (or any change that leaves a pod's
// labels, its namespace's labels and its service account alone) reuses
// them instead of building, sorting and keying the labels of every pod
// again (~half of a compute at 11k pods, BenchmarkRecomputeScale).
type podMemo struct {
	labels, nsLabels map[string]string
	serviceAccount   string
	ls               Labels
	id               Identity
}

// podMemos is one compute's pod memo, in the order of its pods (sorted,
// so the next compute finds most pods at the same index). Immutable once
// kept: computes may share it.
type podMemos struct {
	list []podMemoEntry
}

type podMemoEntry struct {
	key podKey
	podMemo
}

// podMemoReader looks pods up in one compute's memo; byKey is built only
// when a pod is not where the list says (pods added or removed).
type podMemoReader struct {
	m     *podMemos
	byKey map[podKey]int
}

func (r *podMemoReader) lookup(i int, k podKey) (podMemo, bool) {
	if r.m == nil {
		return podMemo{}, false
	}
	if i < len(r.m.list) && r.m.list[i].key == k {
		return r.m.list[i].podMemo, true
	}
	if r.byKey == nil {
		r.byKey = make(map[podKey]int, len(r.m.list))
		for j, e := range r.m.list {
			r.byKey[e.key] = j
		}
	}
	if j, ok := r.byKey[k]; ok {
		return r.m.list[j].podMemo, true
	}
	return podMemo{}, false
}

// podIdentity returns the security labels and identity of the i-th pod,
// from memo when its inputs are unchanged, and records it in next.
func (a *IdentityAllocator) podIdentity(memo *podMemoReader, next *podMemos, i int, p *Pod, nsLabels map[string]string) (Labels, Identity, error) {
	k := podKey{p.Namespace, p.Name}
	if m, ok := memo.lookup(i, k); ok && m.serviceAccount == p.ServiceAccount && sameLabelMap(m.labels, p.Labels) && sameLabelMap(m.nsLabels, nsLabels) {
		next.list = append(next.list, podMemoEntry{k, m})
		return m.ls, m.id, nil
	}
	ls := SecurityLabels(p.Namespace, p.Labels, nsLabels, p.ServiceAccount)
	id, err := a.allocate(ls, false)
	if err != nil {
		return nil, 0, err
	}
	next.list = append(next.list, podMemoEntry{k, podMemo{labels: p.Labels, nsLabels: nsLabels, serviceAccount: p.ServiceAccount, ls: ls, id: id}})
	return ls, id, nil
}

// podMemoFor returns the memo of the last compute (nil when an identity
// was forgotten since: a memoized identity may be gone) and the count of
// forgotten identities setPodMemo checks.
func (a *IdentityAllocator) podMemoFor() (*podMemos, uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.pods, a.forgotten
}

// setPodMemo keeps next for the next compute, unless an identity was
// forgotten during this one (gen tells).
func (a *IdentityAllocator) setPodMemo(next *podMemos, gen uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.forgotten == gen {
		a.pods = next
	}
}

// identityStrings: an identity's labels (what the strings were made
// of), as Labels.Strings and as "key=value" keys.
type identityStrings struct {
	labels        Labels
	strings, keys []string
}

// identityStrings returns the last compute's (read-only).
func (a *IdentityAllocator) identityStrings() map[Identity]identityStrings {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.strs
}

func (a *IdentityAllocator) setIdentityStrings(m map[Identity]identityStrings) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.strs = m
}

// endpointsMemoFor returns the last pod pass if it was built from pods
// and namespace labels like pods and nsLabels, and no identity was forgotten
// since (a memoized identity may be gone); nil otherwise.
func (a *IdentityAllocator) endpointsMemoFor(pods []Pod, nsLabels map[string]map[string]string) *endpointsMemo {
	a.mu.Lock()
	m := a.eps
	gen := a.forgotten
	a.mu.Unlock()
	if m == nil || m.gen != gen || !m.samePods(pods, nsLabels) {
		return nil
	}
	a.mu.Lock()
	a.epsReused++
	a.mu.Unlock()
	return m
}

// setEndpointsMemo keeps m for the next compute, unless an identity was
// forgotten during this one.
func (a *IdentityAllocator) setEndpointsMemo(m *endpointsMemo) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.forgotten == m.gen {
		a.eps = m
	} else {
		a.eps = nil
	}
}

// sameLabelMap is maps.Equal, at once for the very same map: the folder
// source keeps the objects of files that did not change, so a policy
// change hands compute the same label maps as the last one (the memo
// holds the map it compared, so a map changed in place would not be
// caught by maps.Equal either: objects are read-only once decoded).
func sameLabelMap(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	if len(a) == 0 || *(*unsafe.Pointer)(unsafe.Pointer(&a)) == *(*unsafe.Pointer)(unsafe.Pointer(&b)) {
		return true
	}
	return maps.Equal(a, b)
}
