package flow

import "strconv"

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

// ReservedName is the entity name of a reserved identity ("host",
// "world", …), or "" for any other identity.
func ReservedName(id Identity) string {
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
	if n := ReservedName(id); n != "" {
		return "reserved:" + n
	}
	return strconv.FormatUint(uint64(id), 10)
}

// IsReserved reports whether id is one of the reserved identities.
func (id Identity) IsReserved() bool { return id > 0 && id < FirstClusterIdentity }

// IsCIDR reports whether id is a node-local CIDR identity.
func (id Identity) IsCIDR() bool { return id >= FirstCIDRIdentity }
