package translate

import (
	"crypto/sha256"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"unsafe"

	"github.com/l7gate/l7gate/policy"
	l7gatev1 "github.com/l7gate/l7gate/proto/l7gatev1"
	"google.golang.org/protobuf/proto"
)

// Cache keeps the Go proxy's rendered resources between renders (see
// Input.Cache), keyed by their content: an endpoint's NetworkPolicy by its
// name, identity, pod, addresses and a hash of the encoding of each
// direction; an IdentityMembership by its labels and prefixes. A render
// keeps what it used and drops the rest, so the cache holds at most two
// renders' resources. The messages it hands out are shared: nobody may
// modify them. Safe for concurrent use; the zero value is ready.
type Cache struct {
	mu          sync.Mutex
	policies    map[policyKey]*l7gatev1.NetworkPolicy
	memberships map[policy.Identity]cachedMembership
	// The last render's identity memberships and what they were made
	// of (the snapshot's identities and ipcache, read-only): a revision
	// whose identities and ipcache did not change (a CNP change) reuses
	// the list without building it again (11k ipcache entries: maps,
	// sorts and allocations on every push).
	lastIdentities []policy.IdentityInfo
	lastIPCache    []policy.IPCacheEntry
	lastMembers    []*l7gatev1.IdentityMembership
	stats          CacheStats
}

// CacheStats counts what renders reused and what they built.
type CacheStats struct {
	PoliciesReused, PoliciesRendered       int
	MembershipsReused, MembershipsRendered int
	// MembershipListsReused: renders whose whole membership list was
	// the previous one (identities and ipcache unchanged).
	MembershipListsReused int
}

// Stats returns the counts so far.
func (c *Cache) Stats() CacheStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

// policyKey is everything an endpoint's NetworkPolicy is made of.
type policyKey struct {
	ns, name string
	id       policy.Identity
	nIPs     int
	ips      [2]netip.Addr
	more     string // addresses after the first two
	in, eg   string // hashes of the directions' encodings
}

type cachedMembership struct {
	in  membershipInput
	msg *l7gatev1.IdentityMembership
}

// render is one L7Proxy call's view of the cache (nil cache: renders
// everything). Directions shared by several endpoints (policy.Compute
// shares them between identities with the same rules) are rendered and
// encoded once per render.
type rendering struct {
	c           *Cache
	dirs        map[dirKey]renderedDir
	policies    map[policyKey]*l7gatev1.NetworkPolicy
	memberships map[policy.Identity]cachedMembership
	stats       CacheStats
}

// dirKey is a DirectionPolicy's identity within one render: the same
// backing arrays and lengths are the same (immutable) content.
type dirKey struct {
	enforced                    bool
	entries, deny, fqdn, l7     unsafe.Pointer
	nEntries, nDeny, nFQDN, nL7 int
}

func keyOf(d *policy.DirectionPolicy) dirKey {
	return dirKey{
		enforced: d.Enforced,
		entries:  unsafe.Pointer(unsafe.SliceData(d.Entries)), nEntries: len(d.Entries),
		deny: unsafe.Pointer(unsafe.SliceData(d.DefaultDeny)), nDeny: len(d.DefaultDeny),
		fqdn: unsafe.Pointer(unsafe.SliceData(d.FQDNSelectors)), nFQDN: len(d.FQDNSelectors),
		l7: unsafe.Pointer(unsafe.SliceData(d.L7)), nL7: len(d.L7),
	}
}

type renderedDir struct {
	msg  *l7gatev1.DirectionPolicy
	hash string // of the deterministic encoding
	err  error
}

func (c *Cache) begin() *rendering {
	r := &rendering{dirs: map[dirKey]renderedDir{}}
	if c != nil {
		c.mu.Lock()
		r.c = c
		r.policies = map[policyKey]*l7gatev1.NetworkPolicy{}
		r.memberships = map[policy.Identity]cachedMembership{}
	}
	return r
}

// end keeps what this render used.
func (r *rendering) end() {
	if r.c == nil {
		return
	}
	r.c.policies, r.c.memberships = r.policies, r.memberships
	r.c.stats.PoliciesReused += r.stats.PoliciesReused
	r.c.stats.PoliciesRendered += r.stats.PoliciesRendered
	r.c.stats.MembershipsReused += r.stats.MembershipsReused
	r.c.stats.MembershipsRendered += r.stats.MembershipsRendered
	r.c.stats.MembershipListsReused += r.stats.MembershipListsReused
	r.c.mu.Unlock()
}

func (r *rendering) direction(d *policy.DirectionPolicy) renderedDir {
	k := keyOf(d)
	if got, ok := r.dirs[k]; ok {
		return got
	}
	var rd renderedDir
	rd.msg, rd.err = directionPolicy(d)
	if rd.err == nil && r.c != nil {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(rd.msg)
		if err != nil {
			rd.err = fmt.Errorf("encode: %w", err)
		} else {
			h := sha256.Sum256(b)
			rd.hash = string(h[:16])
		}
	}
	r.dirs[k] = rd
	return rd
}

func (r *rendering) networkPolicy(ep policy.Endpoint, pol *policy.EndpointPolicy) (*l7gatev1.NetworkPolicy, error) {
	in := r.direction(&pol.Ingress)
	if in.err != nil {
		return nil, fmt.Errorf("ingress: %w", in.err)
	}
	eg := r.direction(&pol.Egress)
	if eg.err != nil {
		return nil, fmt.Errorf("egress: %w", eg.err)
	}
	var key policyKey
	if r.c != nil {
		key = policyKey{ns: ep.Namespace, name: ep.Name, id: ep.Identity, in: in.hash, eg: eg.hash, nIPs: len(ep.IPs)}
		for i, ip := range ep.IPs {
			if i < len(key.ips) {
				key.ips[i] = ip
				continue
			}
			key.more += ip.String() + ","
		}
		if np, ok := r.c.policies[key]; ok {
			r.policies[key] = np
			r.stats.PoliciesReused++
			return np, nil
		}
	}
	np := &l7gatev1.NetworkPolicy{
		Name:             PolicyName(ep),
		EndpointIdentity: uint32(ep.Identity),
		Namespace:        ep.Namespace,
		Pod:              ep.Name,
		Ingress:          in.msg,
		Egress:           eg.msg,
	}
	for _, ip := range ep.IPs {
		np.EndpointIps = append(np.EndpointIps, ip.String())
	}
	if r.c != nil {
		r.policies[key] = np
		r.stats.PoliciesRendered++
	}
	return np, nil
}

func (r *rendering) membership(id policy.Identity, in *membershipInput) *l7gatev1.IdentityMembership {
	if r.c == nil {
		return membership(id, in)
	}
	if got, ok := r.c.memberships[id]; ok && slices.Equal(got.in.labels, in.labels) && slices.Equal(got.in.prefixes, in.prefixes) {
		r.memberships[id] = got
		r.stats.MembershipsReused++
		return got.msg
	}
	m := membership(id, in)
	r.memberships[id] = cachedMembership{in: *in, msg: m}
	r.stats.MembershipsRendered++
	return m
}

// sameMembershipInput: snap's identities and ipcache are those the
// cache's last membership list was made of.
func (c *Cache) sameMembershipInput(snap *policy.Snapshot) bool {
	if c.lastMembers == nil || len(snap.Identities) != len(c.lastIdentities) || len(snap.IPCache) != len(c.lastIPCache) {
		return false
	}
	return slices.Equal(snap.IPCache, c.lastIPCache) && slices.EqualFunc(snap.Identities, c.lastIdentities, func(a, b policy.IdentityInfo) bool {
		return a.ID == b.ID && slices.Equal(a.Labels, b.Labels)
	})
}
