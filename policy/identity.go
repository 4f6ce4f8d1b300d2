package policy

import (
	"fmt"
	"strconv"
	"sync"
)

// Identity is a numeric security identity. 0 is never allocated; in policy
// entries it stands for "any peer".
type Identity uint32

// Reserved identities (Cilium's numbers).
const (
	IdentityAny           Identity = 0
	IdentityHost          Identity = 1
	IdentityWorld         Identity = 2
	IdentityUnmanaged     Identity = 3
	IdentityHealth        Identity = 4
	IdentityInit          Identity = 5
	IdentityRemoteNode    Identity = 6
	IdentityKubeAPIServer Identity = 7
	IdentityIngress       Identity = 8

	// FirstClusterIdentity is the first identity for pod label sets.
	FirstClusterIdentity Identity = 256
	// FirstCIDRIdentity is the first node-local CIDR identity (Cilium's
	// local-scope bit).
	FirstCIDRIdentity Identity = 1 << 24
)

// reservedNames maps reserved identities to their entity names.
func reservedName(id Identity) string {
	switch id {
	case IdentityHost:
		return "host"
	case IdentityWorld:
		return "world"
	case IdentityUnmanaged:
		return "unmanaged"
	case IdentityHealth:
		return "health"
	case IdentityInit:
		return "init"
	case IdentityRemoteNode:
		return "remote-node"
	case IdentityKubeAPIServer:
		return "kube-apiserver"
	case IdentityIngress:
		return "ingress"
	}
	return ""
}

// ReservedIdentities lists every reserved identity.
func ReservedIdentities() []Identity {
	return []Identity{IdentityHost, IdentityWorld, IdentityUnmanaged, IdentityHealth, IdentityInit,
		IdentityRemoteNode, IdentityKubeAPIServer, IdentityIngress}
}

func (id Identity) String() string {
	if id == IdentityAny {
		return "any"
	}
	if n := reservedName(id); n != "" {
		return "reserved:" + n
	}
	return strconv.FormatUint(uint64(id), 10)
}

// IsReserved reports whether id is one of the reserved identities.
func (id Identity) IsReserved() bool { return id > 0 && id < FirstClusterIdentity }

// IsCIDR reports whether id is a node-local CIDR identity.
func (id Identity) IsCIDR() bool { return id >= FirstCIDRIdentity }

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
