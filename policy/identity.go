package policy

import (
	"fmt"
	"sync"

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
// sets come and go (an identity no longer in use is kept; the agent decides
// when to Release it). Safe for concurrent use.
type IdentityAllocator struct {
	mu       sync.Mutex
	byKey    map[string]Identity
	nextPod  Identity
	nextCIDR Identity
}

// NewIdentityAllocator returns an empty allocator.
func NewIdentityAllocator() *IdentityAllocator {
	return &IdentityAllocator{byKey: map[string]Identity{}, nextPod: FirstClusterIdentity, nextCIDR: FirstCIDRIdentity}
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
	delete(a.byKey, ls.Key())
}
