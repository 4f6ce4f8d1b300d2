package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
)

// Incremental toFQDNs updates. A DNS answer with a new address for a
// toFQDNs selector adds one FQDN identity: one ipcache entry and, in the
// policy of every endpoint identity whose rules select it, the entries
// it gets as a peer. UpdateFQDN computes exactly what ComputeWith would
// give with the changed cache, without recomputing the rest, when it can
// prove the result equal:
//
//   - the address's prefix is new (no pod, policy CIDR, node or
//     kube-apiserver address, no FQDN identity yet) on an add, and an
//     FQDN-only prefix on a removal;
//   - another FQDN identity (the sibling) is selected by exactly the same
//     rule sections (its signature): the new identity then gets, in every
//     direction policy, a copy of the sibling's entries and joins the L7
//     rules the sibling is a peer of — the computation treats peers of the
//     same sections alike;
//   - no direction policy the sections apply to could overflow its entry
//     budget (the slack ComputeWith recorded covers the growth).
//
// Anything else (a first address of a selector, an address whose
// selectors change, a budget too tight) returns an error wrapping
// ErrFullCompute: the caller computes from scratch.

// ErrFullCompute: an FQDN change UpdateFQDN cannot apply incrementally.
var ErrFullCompute = errors.New("full compute needed")

// FQDNDelta is what an UpdateFQDN changed.
type FQDNDelta struct {
	// Added and Removed ipcache entries.
	Added, Removed []IPCacheEntry
	// Changed: the endpoint identities whose policy changed, sorted.
	Changed []Identity
	// L7: an L7 rule set's peers or a redirect entry changed, so the
	// proxies' resources change too (not only the datapath's entries).
	L7 bool
}

// Empty reports whether nothing changed.
func (d *FQDNDelta) Empty() bool {
	return len(d.Added) == 0 && len(d.Removed) == 0 && len(d.Changed) == 0
}

type ruleRef struct{ policy, rule int }

// incSection is one rule section a peer can be selected by.
type incSection struct {
	s *Section
	// delta: how much one more peer can add to a direction builder's
	// size through this section (entries and L7 rule × peer pairs).
	delta int
}

// fqdnInc is what a snapshot keeps for UpdateFQDN. Only the newest
// snapshot of a chain holds it (UpdateFQDN moves it on).
type fqdnInc struct {
	alloc    *IdentityAllocator
	sels     map[string]*DNSSelector
	selKeys  []string
	sections []incSection
	// sectionsOf: per endpoint identity and direction, the indexes of
	// the sections of the rules selecting it.
	sectionsOf map[Identity]*[2][]int
	slack      map[Identity]*[2]int
	// names: cached names some selector matches → addresses (as in the
	// snapshot); addrNames the reverse; addrKeys the selector keys of
	// each FQDN address.
	names     map[string][]netip.Addr
	addrNames map[netip.Addr][]string
	addrKeys  map[netip.Addr][]string
	// taken: prefixes with an identity other than an FQDN-only one
	// (pods, policy CIDRs, nodes, kube-apiserver) or a prefix whose FQDN
	// identity has no ipcache entry; fqdnID: FQDN-only addresses.
	taken  map[netip.Prefix]bool
	fqdnID map[netip.Addr]Identity
	// bySig: FQDN identities by section signature (built on first use).
	bySig map[string][]Identity
	sigOf map[Identity]string
	// combined: identities listed after the CIDR ones in Identities.
	combined int
	// ipcacheHead: where the FQDN identities' entries start in the
	// ipcache (ipcacheorder.go); updates change only what follows.
	ipcacheHead int
	// Backing arrays with room to grow (appendOrMerge), by their first
	// element: a snapshot publishes them clipped to their length, so the
	// elements past it are invisible to its readers and the next update
	// can append there without copying. Elements below a published
	// length never change.
	entryTails    map[*Entry][]Entry
	ipcacheTails  map[*IPCacheEntry][]IPCacheEntry
	identityTails map[*IdentityInfo][]IdentityInfo
	labelTails    map[*labelsAdded][]labelsAdded
}

// keepIncremental records what UpdateFQDN needs (only when some policy
// has toFQDNs selectors).
func (c *computer) keepIncremental(subjects map[Identity][]ruleRef, slack map[Identity]*[2]int, ipcacheHead int) {
	if len(c.fqdnSels) == 0 {
		return
	}
	inc := &fqdnInc{
		alloc: c.alloc, sels: c.fqdnSels, sectionsOf: map[Identity]*[2][]int{}, slack: slack,
		names: c.fqdnNames, addrNames: map[netip.Addr][]string{}, addrKeys: map[netip.Addr][]string{},
		taken: map[netip.Prefix]bool{}, fqdnID: map[netip.Addr]Identity{}, combined: len(c.combined), ipcacheHead: ipcacheHead,
		entryTails: map[*Entry][]Entry{}, ipcacheTails: map[*IPCacheEntry][]IPCacheEntry{}, identityTails: map[*IdentityInfo][]IdentityInfo{},
		labelTails: map[*labelsAdded][]labelsAdded{},
	}
	for k := range c.fqdnSels {
		inc.selKeys = append(inc.selKeys, k)
	}
	slices.Sort(inc.selKeys)
	index := map[ruleRef][2][]int{}
	for pi := range c.objs.Policies {
		for ri := range c.objs.Policies[pi].Rules {
			r := &c.objs.Policies[pi].Rules[ri]
			var idx [2][]int
			for _, dir := range []Direction{Ingress, Egress} {
				for _, list := range [][]Section{r.Deny[dir], r.Allow[dir]} {
					for si := range list {
						s := &list[si]
						if s.Dropped != "" || s.Peers.Any {
							continue
						}
						idx[dir] = append(idx[dir], len(inc.sections))
						inc.sections = append(inc.sections, incSection{s: s, delta: sectionDelta(s)})
					}
				}
			}
			index[ruleRef{pi, ri}] = idx
		}
	}
	for id, refs := range subjects {
		var idx [2][]int
		for _, rr := range refs {
			for dir, l := range index[rr] {
				idx[dir] = append(idx[dir], l...)
			}
		}
		inc.sectionsOf[id] = &idx
	}
	for name, ips := range c.fqdnNames {
		for _, ip := range ips {
			inc.addrNames[ip] = append(inc.addrNames[ip], name)
		}
	}
	for _, p := range c.policyCIDRs {
		inc.taken[p] = true
	}
	ipc := make(map[netip.Prefix]Identity, len(c.snap.IPCache))
	for _, e := range c.snap.IPCache {
		ipc[e.Prefix] = e.Identity
	}
	for p, keys := range c.fqdnLabels {
		inc.addrKeys[p.Addr()] = keys
		if id, ok := ipc[p]; ok && id == c.cidrIDs[p] && !inc.taken[p] {
			inc.fqdnID[p.Addr()] = id
		}
	}
	for p := range ipc {
		if _, ok := inc.fqdnID[p.Addr()]; !ok || p.Bits() != p.Addr().BitLen() {
			inc.taken[p] = true
		}
	}
	for p := range c.cidrIDs {
		if _, ok := inc.fqdnID[p.Addr()]; !ok || p.Bits() != p.Addr().BitLen() {
			inc.taken[p] = true
		}
	}
	c.snap.inc = inc
}

// sectionDelta: the builder's size growth one more peer of s can cause
// (applySection's estimate per peer).
func sectionDelta(s *Section) int {
	if s.Ports == nil {
		return 1
	}
	d := 0
	for pri := range s.Ports {
		pr := &s.Ports[pri]
		if pr.Dropped != "" {
			continue
		}
		rules := 0
		if pr.L7 != nil {
			rules = pr.L7.count()
		}
		d += len(pr.Ports) * (1 + rules)
	}
	return d
}

// selects reports whether s selects the FQDN identity with labels ls
// (prefix p, selector keys) — resolvePeers for one CIDR identity.
func (s *Section) selectsFQDN(ls Labels, p netip.Prefix, keys []string) bool {
	for _, sel := range s.Peers.Selectors {
		if len(sel.Requirements) > 0 && sel.Matches(ls) {
			return true
		}
	}
	for _, cs := range s.Peers.CIDRs {
		if cs.Prefix.Contains(p.Addr()) && p.Bits() >= cs.Prefix.Bits() && !slices.ContainsFunc(cs.Except, func(e netip.Prefix) bool {
			return p.Bits() >= e.Bits() && e.Contains(p.Addr())
		}) {
			return true
		}
	}
	if slices.Contains(s.Peers.Entities, "world") {
		return true
	}
	for i := range s.Peers.FQDNs {
		if slices.Contains(keys, s.Peers.FQDNs[i].Key()) {
			return true
		}
	}
	return false
}

func fqdnLabels(p netip.Prefix, keys []string) Labels {
	ls := Labels{{Source: SourceCIDR, Key: p.String()}, {Source: SourceReserved, Key: "world"}}
	for _, k := range keys {
		ls = append(ls, Label{Source: SourceFQDN, Key: k})
	}
	return NewLabels(ls...)
}

// signature: which sections select an FQDN identity, as a string key.
func (inc *fqdnInc) signature(ls Labels, p netip.Prefix, keys []string) string {
	b := make([]byte, (len(inc.sections)+7)/8)
	for i := range inc.sections {
		if inc.sections[i].s.selectsFQDN(ls, p, keys) {
			b[i/8] |= 1 << (i % 8)
		}
	}
	return string(b)
}

func sigHas(sig string, i int) bool { return sig[i/8]&(1<<(i%8)) != 0 }

func (inc *fqdnInc) buildSignatures() {
	if inc.bySig != nil {
		return
	}
	inc.bySig, inc.sigOf = map[string][]Identity{}, map[Identity]string{}
	for a, id := range inc.fqdnID {
		p := netip.PrefixFrom(a, a.BitLen())
		keys := inc.addrKeys[a]
		sig := inc.signature(fqdnLabels(p, keys), p, keys)
		inc.bySig[sig] = append(inc.bySig[sig], id)
		inc.sigOf[id] = sig
	}
}

// keysOf: the sorted keys of the selectors matching a normalised name.
func (inc *fqdnInc) keysOf(name string) []string {
	var out []string
	for _, k := range inc.selKeys {
		if inc.sels[k].Matches(name) {
			out = append(out, k)
		}
	}
	return out
}

type fqdnPlan struct {
	addr    netip.Addr
	prefix  netip.Prefix
	id      Identity // removal: the identity going; add: set once allocated
	sibling Identity
	labels  Labels
	keys    []string
	sig     string
	remove  bool
}

// UpdateFQDN returns the snapshot ComputeWith would give if the FQDN
// cache it was computed with had, for each name in changes, exactly the
// given addresses (none: the name is gone), and what changed. It fails
// with ErrFullCompute when it cannot apply the change incrementally (see
// above); s is left as it was then. On success s must not be updated
// again: the returned snapshot carries the incremental state on.
func (s *Snapshot) UpdateFQDN(changes []FQDNName) (*Snapshot, *FQDNDelta, error) {
	inc := s.inc
	if inc == nil {
		return nil, nil, fmt.Errorf("%w: no incremental state (no toFQDNs selectors, or not the newest snapshot)", ErrFullCompute)
	}
	// The addresses each change touches and their names afterwards.
	newNames := map[string][]netip.Addr{}
	var order []string
	for _, ch := range changes {
		name, err := NormalizeDNSName(ch.Name)
		if err != nil {
			continue // never cached by a compute either
		}
		var ips []netip.Addr
		if len(inc.keysOf(name)) > 0 {
			for _, ip := range ch.IPs {
				if ip = ip.Unmap(); ip.IsValid() && !slices.Contains(ips, ip) {
					ips = append(ips, ip)
				}
			}
		}
		if _, dup := newNames[name]; !dup {
			order = append(order, name)
		}
		newNames[name] = ips
	}
	addrNames := map[netip.Addr][]string{} // affected addresses → names after
	for _, name := range order {
		for _, ip := range append(slices.Clone(inc.names[name]), newNames[name]...) {
			if _, ok := addrNames[ip]; !ok {
				addrNames[ip] = nil
			}
		}
	}
	for ip := range addrNames {
		var after []string
		for _, n := range inc.addrNames[ip] {
			if _, changed := newNames[n]; !changed {
				after = append(after, n)
			}
		}
		for _, n := range order {
			if slices.Contains(newNames[n], ip) {
				after = append(after, n)
			}
		}
		addrNames[ip] = after
	}
	// Plan each address's change.
	inc.buildSignatures()
	var plans []fqdnPlan
	removing := map[Identity]bool{}
	addrs := make([]netip.Addr, 0, len(addrNames))
	for ip := range addrNames {
		addrs = append(addrs, ip)
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	for _, ip := range addrs {
		var keys []string
		for _, n := range addrNames[ip] {
			for _, k := range inc.keysOf(n) {
				if !slices.Contains(keys, k) {
					keys = append(keys, k)
				}
			}
		}
		slices.Sort(keys)
		old := inc.addrKeys[ip]
		p := netip.PrefixFrom(ip, ip.BitLen())
		switch {
		case slices.Equal(keys, old):
			continue
		case len(old) == 0:
			if inc.taken[p] {
				return nil, nil, fmt.Errorf("%w: %s already has an identity", ErrFullCompute, ip)
			}
			ls := fqdnLabels(p, keys)
			sig := inc.signature(ls, p, keys)
			sib := inc.bySig[sig]
			if len(sib) == 0 {
				return nil, nil, fmt.Errorf("%w: %s: no FQDN identity selected by the same rules yet", ErrFullCompute, ip)
			}
			plans = append(plans, fqdnPlan{addr: ip, prefix: p, sibling: sib[0], labels: ls, keys: keys, sig: sig})
		case len(keys) == 0:
			id, ok := inc.fqdnID[ip]
			if !ok {
				return nil, nil, fmt.Errorf("%w: %s is not an FQDN-only address", ErrFullCompute, ip)
			}
			removing[id] = true
			plans = append(plans, fqdnPlan{addr: ip, prefix: p, id: id, sig: inc.sigOf[id], remove: true})
		default:
			return nil, nil, fmt.Errorf("%w: the selectors of %s change", ErrFullCompute, ip)
		}
	}
	for i := range plans {
		if !plans[i].remove {
			continue
		}
		sib := slices.IndexFunc(inc.bySig[plans[i].sig], func(id Identity) bool { return !removing[id] })
		if sib < 0 {
			return nil, nil, fmt.Errorf("%w: %s is the last FQDN identity its rules select", ErrFullCompute, plans[i].addr)
		}
		plans[i].sibling = inc.bySig[plans[i].sig][sib]
	}
	// The entry budget: growth per endpoint identity and direction.
	growth := map[Identity]*[2]int{}
	for id, idx := range inc.sectionsOf {
		for dir := range idx {
			for _, si := range idx[dir] {
				for i := range plans {
					if !sigHas(plans[i].sig, si) {
						continue
					}
					sl := inc.slack[id][dir]
					if plans[i].remove {
						if sl < 0 {
							return nil, nil, fmt.Errorf("%w: identity %d's policy overflowed its budget", ErrFullCompute, id)
						}
						continue
					}
					if growth[id] == nil {
						growth[id] = &[2]int{}
					}
					growth[id][dir] += inc.sections[si].delta
					if growth[id][dir] > sl {
						return nil, nil, fmt.Errorf("%w: identity %d's policy near its entry budget", ErrFullCompute, id)
					}
				}
			}
		}
	}
	// Allocate the new identities.
	for i := range plans {
		if plans[i].remove {
			continue
		}
		id, err := inc.alloc.allocate(plans[i].labels, true)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %w", ErrFullCompute, err)
		}
		plans[i].id = id
	}
	ns, delta := s.applyFQDNPlans(plans)
	// Move the incremental state on.
	for id, g := range growth {
		inc.slack[id][Ingress] -= g[Ingress]
		inc.slack[id][Egress] -= g[Egress]
	}
	for _, name := range order {
		for _, ip := range inc.names[name] {
			inc.addrNames[ip] = slices.DeleteFunc(slices.Clone(inc.addrNames[ip]), func(n string) bool { return n == name })
		}
		if ips := newNames[name]; len(ips) > 0 {
			inc.names[name] = ips
			for _, ip := range ips {
				inc.addrNames[ip] = append(inc.addrNames[ip], name)
			}
		} else {
			delete(inc.names, name)
		}
	}
	for ip := range addrNames {
		if len(inc.addrNames[ip]) == 0 {
			delete(inc.addrNames, ip)
		}
	}
	for _, pl := range plans {
		if pl.remove {
			delete(inc.addrKeys, pl.addr)
			delete(inc.fqdnID, pl.addr)
			delete(inc.sigOf, pl.id)
			inc.bySig[pl.sig] = slices.DeleteFunc(inc.bySig[pl.sig], func(id Identity) bool { return id == pl.id })
			continue
		}
		inc.addrKeys[pl.addr] = pl.keys
		inc.fqdnID[pl.addr] = pl.id
		inc.sigOf[pl.id] = pl.sig
		inc.bySig[pl.sig] = append(inc.bySig[pl.sig], pl.id)
	}
	s.inc, ns.inc = nil, inc
	return ns, delta, nil
}

// applyFQDNPlans builds the new snapshot (s stays as it was: other
// goroutines may read it).
func (s *Snapshot) applyFQDNPlans(plans []fqdnPlan) (*Snapshot, *FQDNDelta) {
	ns := *s
	delta := &FQDNDelta{}
	if len(plans) == 0 {
		return &ns, delta
	}
	// ipcache, identities, labels
	gone := map[Identity]bool{}
	var added []IPCacheEntry
	var infos []IdentityInfo
	labels := make([]labelsAdded, 0, len(plans))
	for _, pl := range plans {
		if pl.remove {
			gone[pl.id] = true
			delta.Removed = append(delta.Removed, IPCacheEntry{Prefix: pl.prefix, Identity: pl.id})
			labels = append(labels, labelsAdded{id: pl.id})
			continue
		}
		added = append(added, IPCacheEntry{Prefix: pl.prefix, Identity: pl.id})
		infos = append(infos, IdentityInfo{ID: pl.id, Labels: pl.labels.Strings()})
		labels = append(labels, labelsAdded{id: pl.id, labels: pl.labels})
	}
	ns.labelsAdded = s.inc.addLabels(s.labelsAdded, labels)
	if len(ns.labelsAdded) > len(s.labels)+256 {
		// fold into one map now and then (amortised: after as many
		// updated identities as the map holds)
		m := make(map[Identity]Labels, len(s.labels)+len(ns.labelsAdded))
		for id, ls := range s.labels {
			m[id] = ls
		}
		for _, a := range ns.labelsAdded {
			if a.labels == nil {
				delete(m, a.id)
			} else {
				m[a.id] = a.labels
			}
		}
		ns.labels, ns.labelsAdded = m, nil
	}
	delta.Added = added
	// Added and removed entries are FQDN identities', all after the
	// ipcache's head (ipcacheorder.go), which stays as it is: new
	// identities are numbered after every other, so their entries
	// usually append.
	slices.SortFunc(added, compareFQDNEntry)
	head := s.inc.ipcacheHead
	afterLast := compareFQDNEntry
	if head == len(s.IPCache) {
		afterLast = func(IPCacheEntry, IPCacheEntry) int { return 1 } // no FQDN entry yet
	}
	ns.IPCache = appendOrMerge(s.inc.ipcacheTails, s.IPCache, added, len(gone) > 0, afterLast, func() []IPCacheEntry {
		out := make([]IPCacheEntry, 0, growRoom(len(s.IPCache)+len(added)))
		return mergeInto(append(out, s.IPCache[:head]...), s.IPCache[head:], added,
			dropIf(len(gone) > 0, func(e IPCacheEntry) bool { return gone[e.Identity] }), compareFQDNEntry)
	})
	slices.SortFunc(infos, func(a, b IdentityInfo) int { return cmpU(uint64(a.ID), uint64(b.ID)) })
	lo := slices.IndexFunc(s.Identities, func(i IdentityInfo) bool { return i.ID.IsCIDR() })
	if lo < 0 {
		lo = len(s.Identities)
	}
	hi := max(lo, len(s.Identities)-s.inc.combined)
	cmpInfo := func(a, b IdentityInfo) int { return cmpU(uint64(a.ID), uint64(b.ID)) }
	merge := func() []IdentityInfo {
		mid := mergeSorted(s.Identities[lo:hi], infos, dropIf(len(gone) > 0, func(i IdentityInfo) bool { return gone[i.ID] }), cmpInfo, true)
		return append(append(append(make([]IdentityInfo, 0, lo+len(mid)+len(s.Identities)-hi+len(mid)/4+16), s.Identities[:lo]...), mid...), s.Identities[hi:]...)
	}
	if hi == len(s.Identities) {
		// no combined identities after the CIDR ones: new FQDN identities
		// (numbered after the other CIDR ones) usually append
		ns.Identities = appendOrMerge(s.inc.identityTails, s.Identities, infos, len(gone) > 0, cmpInfo, merge)
	} else {
		ns.Identities = merge()
	}
	// policies: one rewrite per distinct direction policy
	type dirKey struct {
		first *Entry
		n     int
		l7    *L7RuleSet
	}
	type rewritten struct {
		entries []Entry
		l7      []L7RuleSet
	}
	memo := map[dirKey]rewritten{}
	changed := map[Identity]bool{}
	policies := make([]*EndpointPolicy, len(s.Policies))
	for i, p := range s.Policies {
		policies[i] = p
		var np *EndpointPolicy
		for _, dir := range []Direction{Ingress, Egress} {
			dp := p.Direction(dir)
			k := dirKey{n: len(dp.Entries)}
			if len(dp.Entries) > 0 {
				k.first = &dp.Entries[0]
			}
			if len(dp.L7) > 0 {
				k.l7 = &dp.L7[0]
			}
			rw, ok := memo[k]
			if !ok {
				out, l7 := rewriteDirection(*dp, plans, gone, s.inc.entryTails)
				if l7 {
					delta.L7 = true
				}
				rw = rewritten{out.Entries, out.L7}
				memo[k] = rw
			}
			out := *dp
			out.Entries, out.L7 = rw.entries, rw.l7
			if len(out.Entries) == len(dp.Entries) && (len(out.Entries) == 0 || &out.Entries[0] == &dp.Entries[0]) &&
				(len(out.L7) == 0 || &out.L7[0] == &dp.L7[0]) {
				continue // unchanged
			}
			if np == nil {
				c := *p
				np = &c
			}
			*np.Direction(dir) = out
		}
		if np != nil {
			policies[i] = np
			changed[p.Identity] = true
		}
	}
	if len(changed) > 0 {
		ns.Policies = policies
		ns.byID = make(map[Identity]*EndpointPolicy, len(policies))
		for _, p := range policies {
			ns.byID[p.Identity] = p
		}
		for id := range changed {
			delta.Changed = append(delta.Changed, id)
		}
		slices.Sort(delta.Changed)
	}
	return &ns, delta
}

// rewriteDirection gives each added identity a copy of its sibling's
// entries and L7 peerships, and takes removed identities out. It returns
// dp itself (same slices) when nothing changes, and whether L7 rules or
// redirect entries changed.
func rewriteDirection(dp DirectionPolicy, plans []fqdnPlan, gone map[Identity]bool, tails map[*Entry][]Entry) (DirectionPolicy, bool) {
	peerRange := func(id Identity) (int, int) {
		lo, _ := slices.BinarySearchFunc(dp.Entries, id, func(e Entry, id Identity) int { return cmpU(uint64(e.Peer), uint64(id)) })
		hi := lo
		for hi < len(dp.Entries) && dp.Entries[hi].Peer == id {
			hi++
		}
		return lo, hi
	}
	var add []Entry
	removes := false
	l7 := false
	for _, pl := range plans {
		if pl.remove {
			if lo, hi := peerRange(pl.id); hi > lo {
				removes = true
				l7 = l7 || slices.ContainsFunc(dp.Entries[lo:hi], func(e Entry) bool { return e.Verdict == VerdictRedirect })
			}
			continue
		}
		lo, hi := peerRange(pl.sibling)
		for _, e := range dp.Entries[lo:hi] {
			e.Peer = pl.id
			add = append(add, e)
			l7 = l7 || e.Verdict == VerdictRedirect
		}
	}
	out := dp
	if len(add) > 0 || removes {
		slices.SortStableFunc(add, func(a, b Entry) int { return cmpU(uint64(a.Peer), uint64(b.Peer)) })
		cmpEntry := func(a, b Entry) int { return cmpU(uint64(a.Peer), uint64(b.Peer)) }
		out.Entries = appendOrMerge(tails, dp.Entries, add, removes, cmpEntry, func() []Entry {
			return mergeSorted(dp.Entries, add, dropIf(removes, func(e Entry) bool { return gone[e.Peer] }), cmpEntry, true)
		})
	}
	// L7 rules: peers lists are sorted.
	var rsOut []L7RuleSet
	for ri := range dp.L7 {
		rs := &dp.L7[ri]
		var rules []L7Rule
		for ui := range rs.Rules {
			r := &rs.Rules[ui]
			if r.AnyPeer || len(r.Peers) == 0 {
				continue
			}
			var peers []Identity
			changedPeers := false
			for _, pl := range plans {
				_, has := slices.BinarySearch(r.Peers, pl.sibling)
				_, hasSelf := slices.BinarySearch(r.Peers, pl.id)
				if (pl.remove && hasSelf) || (!pl.remove && has && !hasSelf) {
					changedPeers = true
				}
			}
			if !changedPeers {
				continue
			}
			peers = slices.DeleteFunc(slices.Clone(r.Peers), func(id Identity) bool { return gone[id] })
			for _, pl := range plans {
				if _, has := slices.BinarySearch(r.Peers, pl.sibling); !pl.remove && has {
					peers = append(peers, pl.id)
				}
			}
			slices.Sort(peers)
			peers = slices.Compact(peers)
			if rules == nil {
				rules = slices.Clone(rs.Rules)
			}
			rules[ui].Peers = peers
		}
		if rules != nil {
			l7 = true
			if rsOut == nil {
				rsOut = slices.Clone(dp.L7)
			}
			rsOut[ri].Rules = rules
		}
	}
	if rsOut != nil {
		out.L7 = rsOut
	}
	return out, l7
}

// mergeSorted merges sorted add into sorted base (a new slice, with room
// for a quarter more if room), leaving out the elements of base drop
// says (nil: none); equal elements keep base first.
func mergeSorted[T any](base, add []T, drop func(T) bool, cmp func(a, b T) int, room bool) []T {
	n := len(base) + len(add)
	if room {
		n = growRoom(n)
	}
	return mergeInto(make([]T, 0, n), base, add, drop, cmp)
}

// growRoom: the capacity for n elements with room for a quarter more.
func growRoom(n int) int { return n + n/4 + 16 }

// mergeInto is mergeSorted appending to out.
func mergeInto[T any](out, base, add []T, drop func(T) bool, cmp func(a, b T) int) []T {
	if drop == nil {
		// runs of base between the insertion points, copied whole
		pos := 0
		for _, a := range add {
			i, _ := slices.BinarySearchFunc(base[pos:], a, func(b, a T) int {
				if cmp(a, b) < 0 {
					return 1
				}
				return -1
			})
			out = append(append(out, base[pos:pos+i]...), a)
			pos += i
		}
		return append(out, base[pos:]...)
	}
	i := 0
	for _, b := range base {
		for i < len(add) && cmp(add[i], b) < 0 {
			out = append(out, add[i])
			i++
		}
		if !drop(b) {
			out = append(out, b)
		}
	}
	return append(out, add[i:]...)
}

// appendOrMerge returns merge() (a new sorted slice: base with add
// merged in, some elements maybe dropped) without copying base when it
// can: when nothing is dropped (drops false) and add sorts after base,
// add is appended in the spare room of base's backing array, if tails
// holds that array at base's length (nothing else appended there).
// Readers of base never see the change: base's elements are not
// written, and every result is clipped to its length (an append by
// anyone else copies). A merged copy gets room to grow and is kept in
// tails.
func appendOrMerge[T any](tails map[*T][]T, base, add []T, drops bool, cmp func(a, b T) int, merge func() []T) []T {
	if len(add) == 0 && !drops {
		return base
	}
	var key *T
	if len(base) > 0 {
		key = &base[0]
	}
	if !drops && len(base) > 0 && cmp(add[0], base[len(base)-1]) > 0 {
		if full, ok := tails[key]; ok && len(full) == len(base) && cap(full)-len(full) >= len(add) {
			full = append(full, add...)
			tails[key] = full
			return full[:len(full):len(full)]
		}
	}
	merged := merge()
	if len(merged) == 0 {
		return merged
	}
	if old, ok := tails[key]; ok && len(old) == len(base) {
		delete(tails, key) // base is replaced (a longer user keeps its own)
	}
	tails[&merged[0]] = merged
	return merged[:len(merged):len(merged)]
}

// dropIf is drop when some element may be dropped, else nil.
func dropIf[T any](some bool, drop func(T) bool) func(T) bool {
	if !some {
		return nil
	}
	return drop
}

// labelsAdded is one identity UpdateFQDN added (nil labels: removed)
// since the last full compute. A snapshot lists them sorted by identity,
// one element per identity, over its labels map (shared, read-only): a
// new identity (numbered after every other) appends in the spare room
// of the previous snapshot's array, where copying a map of them cost
// O(identities updated) per answer.
type labelsAdded struct {
	id     Identity
	labels Labels
}

// findLabelsAdded looks id up in a sorted list.
func findLabelsAdded(list []labelsAdded, id Identity) (Labels, bool) {
	i, ok := slices.BinarySearchFunc(list, id, func(a labelsAdded, id Identity) int { return cmpU(uint64(a.id), uint64(id)) })
	if !ok {
		return nil, false
	}
	return list[i].labels, true
}

// addLabels returns base with upd (any order, later elements win)
// applied: an identity of upd replaces base's element for it.
func (inc *fqdnInc) addLabels(base, upd []labelsAdded) []labelsAdded {
	cmpID := func(a, b labelsAdded) int { return cmpU(uint64(a.id), uint64(b.id)) }
	slices.SortStableFunc(upd, cmpID)
	// keep the last of equal identities
	out := upd[:0]
	for i, u := range upd {
		if i+1 < len(upd) && upd[i+1].id == u.id {
			continue
		}
		out = append(out, u)
	}
	upd = out
	return appendOrMerge(inc.labelTails, base, upd, false, cmpID, func() []labelsAdded {
		merged := make([]labelsAdded, 0, growRoom(len(base)+len(upd)))
		i := 0
		for _, b := range base {
			for i < len(upd) && upd[i].id < b.id {
				merged = append(merged, upd[i])
				i++
			}
			if i < len(upd) && upd[i].id == b.id {
				continue // replaced
			}
			merged = append(merged, b)
		}
		return append(merged, upd[i:]...)
	})
}
