package envoytranslate

import (
	"net/netip"
	"slices"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"

	"github.com/l7gate/l7gate/policy"
)

// rangeSet is the part of the address space an ipcache entry decides under
// longest-prefix match: the prefix minus every more specific ipcache
// prefix inside it (those decide their own addresses, and when they carry
// the same identity their own entry adds them back).
type rangeSet struct {
	prefix netip.Prefix
	except []netip.Prefix // disjoint, sorted
}

// peerIndex maps identities to the address ranges that resolve to them.
type peerIndex struct {
	byID map[policy.Identity][]rangeSet
}

func newPeerIndex(ipcache []policy.IPCacheEntry) *peerIndex {
	entries := slices.Clone(ipcache)
	// An address nothing covers is world (policy.Snapshot.IdentityOf).
	for _, root := range []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")} {
		if !slices.ContainsFunc(entries, func(e policy.IPCacheEntry) bool { return e.Prefix == root }) {
			entries = append(entries, policy.IPCacheEntry{Prefix: root, Identity: policy.IdentityWorld})
		}
	}
	for i := range entries {
		entries[i].Prefix = entries[i].Prefix.Masked()
	}
	slices.SortFunc(entries, func(a, b policy.IPCacheEntry) int {
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		return a.Prefix.Bits() - b.Prefix.Bits()
	})
	x := &peerIndex{byID: map[policy.Identity][]rangeSet{}}
	for _, e := range entries {
		rs := rangeSet{prefix: e.Prefix}
		if e.Prefix.Bits() < e.Prefix.Addr().BitLen() {
			for _, f := range entries {
				if f.Prefix.Bits() <= e.Prefix.Bits() || !e.Prefix.Contains(f.Prefix.Addr()) {
					continue
				}
				// entries are sorted by address, so a prefix inside an
				// already excluded one comes right after it.
				if n := len(rs.except); n > 0 && rs.except[n-1].Contains(f.Prefix.Addr()) {
					continue
				}
				rs.except = append(rs.except, f.Prefix)
			}
		}
		x.byID[e.Identity] = append(x.byID[e.Identity], rs)
	}
	return x
}

func (x *peerIndex) ranges(id policy.Identity) []rangeSet { return x.byID[id] }

func sourcePrincipal(p netip.Prefix) *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_DirectRemoteIp{DirectRemoteIp: cidrRange(p)}}
}

func cidrRange(p netip.Prefix) *corev3.CidrRange { return cidr(p) }

// sourcePrincipals matches connections whose source lies in one of rs.
func sourcePrincipals(rs []rangeSet) []*rbacv3.Principal {
	var out []*rbacv3.Principal
	for _, r := range rs {
		in := sourcePrincipal(r.prefix)
		if len(r.except) == 0 {
			out = append(out, in)
			continue
		}
		var ex []*rbacv3.Principal
		for _, e := range r.except {
			ex = append(ex, sourcePrincipal(e))
		}
		not := ex[0]
		if len(ex) > 1 {
			not = &rbacv3.Principal{Identifier: &rbacv3.Principal_OrIds{OrIds: &rbacv3.Principal_Set{Ids: ex}}}
		}
		out = append(out, &rbacv3.Principal{Identifier: &rbacv3.Principal_AndIds{AndIds: &rbacv3.Principal_Set{Ids: []*rbacv3.Principal{
			in, {Identifier: &rbacv3.Principal_NotId{NotId: not}},
		}}}})
	}
	return out
}

func destinationPermission(p netip.Prefix) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_DestinationIp{DestinationIp: cidrRange(p)}}
}

// destinationPermissions matches connections whose original destination
// lies in one of rs.
func destinationPermissions(rs []rangeSet) []*rbacv3.Permission {
	var out []*rbacv3.Permission
	for _, r := range rs {
		in := destinationPermission(r.prefix)
		if len(r.except) == 0 {
			out = append(out, in)
			continue
		}
		var ex []*rbacv3.Permission
		for _, e := range r.except {
			ex = append(ex, destinationPermission(e))
		}
		out = append(out, &rbacv3.Permission{Rule: &rbacv3.Permission_AndRules{AndRules: &rbacv3.Permission_Set{Rules: []*rbacv3.Permission{
			in, {Rule: &rbacv3.Permission_NotRule{NotRule: orPermissions(ex)}},
		}}}})
	}
	return out
}

func orPermissions(ps []*rbacv3.Permission) *rbacv3.Permission {
	if len(ps) == 1 {
		return ps[0]
	}
	return &rbacv3.Permission{Rule: &rbacv3.Permission_OrRules{OrRules: &rbacv3.Permission_Set{Rules: ps}}}
}
