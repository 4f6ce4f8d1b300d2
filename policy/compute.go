package policy

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Snapshot is the result of Compute: every identity, the endpoints, the
// ipcache and the policy of every endpoint identity. The ipcache holds
// one entry per prefix, in the order ipcacheorder.go describes (FQDN
// identities' entries last, by identity).
type Snapshot struct {
	Identities []IdentityInfo    `json:"identities"`
	Endpoints  []Endpoint        `json:"endpoints"`
	IPCache    []IPCacheEntry    `json:"ipcache"`
	Policies   []*EndpointPolicy `json:"policies"`
	Warnings   []string          `json:"warnings,omitempty"`
	byID       map[Identity]*EndpointPolicy
	labels     map[Identity]Labels
	// shadows: which allows lifted which L7 rules (ShadowWarnings)
	shadows map[shadowRecord]bool
	// labelsAdded: identities added by UpdateFQDN since the last full
	// compute (nil labels: removed), over labels (shared, read-only).
	labelsAdded []labelsAdded
	// inc: what UpdateFQDN needs to update this snapshot without a full
	// compute (incremental.go); nil once a newer snapshot took it over.
	inc *fqdnInc
}

// Policy returns the policy of an endpoint identity, or nil.
func (s *Snapshot) Policy(id Identity) *EndpointPolicy { return s.byID[id] }

// Labels returns the labels of an identity.
func (s *Snapshot) Labels(id Identity) Labels {
	if ls, ok := findLabelsAdded(s.labelsAdded, id); ok {
		return ls
	}
	return s.labels[id]
}

// IdentityOf returns the identity of an address by longest-prefix match in
// the ipcache; world when nothing matches.
func (s *Snapshot) IdentityOf(a netip.Addr) Identity {
	best, bits := IdentityWorld, -1
	for _, e := range s.IPCache {
		if e.Prefix.Contains(a) && e.Prefix.Bits() > bits {
			best, bits = e.Identity, e.Prefix.Bits()
		}
	}
	return best
}

// SecurityLabels derives an endpoint's identity labels as Cilium does: pod
// labels (minus per-replica ones), namespace, service account, cluster and
// namespace labels.
func SecurityLabels(namespace string, podLabels, nsLabels map[string]string, serviceAccount string) Labels {
	ls := make([]Label, 0, len(podLabels)+len(nsLabels)+4)
	for k, v := range podLabels {
		if identityExcludedLabel(k) {
			continue
		}
		_, key := parseLabelKey(k)
		ls = append(ls, Label{Source: SourceK8s, Key: key, Value: v})
	}
	ls = append(ls,
		Label{Source: SourceK8s, Key: LabelPodNamespace, Value: namespace},
		Label{Source: SourceK8s, Key: LabelCluster, Value: defaultClusterName},
		Label{Source: SourceK8s, Key: LabelNamespacePrefix + LabelNamespaceNameK8s, Value: namespace},
	)
	if serviceAccount != "" {
		ls = append(ls, Label{Source: SourceK8s, Key: LabelServiceAccount, Value: serviceAccount})
	}
	for k, v := range nsLabels {
		ls = append(ls, Label{Source: SourceK8s, Key: LabelNamespacePrefix + k, Value: v})
	}
	return NewLabels(ls...)
}

type sectionKey struct {
	policy, rule, section int
	dir                   Direction
	deny                  bool
}

type peerSet struct {
	any bool
	ids []Identity
}

type computer struct {
	opts     Options
	combined []Identity // kube-apiserver and remote-node at once (entityAddresses)
	objs     *Objects
	alloc    *IdentityAllocator
	snap     *Snapshot
	podIDs   []Identity // sorted, distinct
	allIDs   []Identity // sorted: reserved, pods, CIDR
	cidrIDs  map[netip.Prefix]Identity
	cidrList []netip.Prefix        // cidrIDs' prefixes, sorted by address then length
	fqdnIDs  map[string][]Identity // toFQDNs selector key → FQDN identities
	// For UpdateFQDN (incremental.go): the policies' own CIDR prefixes,
	// the toFQDNs selectors, the names they matched and each FQDN
	// prefix's selector keys.
	policyCIDRs []netip.Prefix
	fqdnSels    map[string]*DNSSelector
	fqdnNames   map[string][]netip.Addr
	fqdnLabels  map[netip.Prefix][]string
	selCache    map[string][]Identity
	// byLabel indexes identities by "key=value" of each label (any
	// source), so selectors with an In requirement scan few candidates.
	byLabel map[string][]Identity
	peers   map[sectionKey]peerSet
	// named ports by identity
	ports    map[Identity][]NamedPort
	allPorts []NamedPort
	warned   map[string]bool
	auditNS  map[string]bool // namespaces annotated l7gate.io/audit
	// podAddrs: every pod address in the ipcache.
	podAddrs podAddrSet
}

// podAddrSet is a set of addresses held in an array of them (the
// endpoints' addresses): their positions in it, sorted by address. 4 B
// per address; the map that was kept instead was ~58 B of the agent's
// heap per pod (BenchmarkPodHeap).
type podAddrSet struct {
	addrs []netip.Addr
	order []int32
}

func newPodAddrSet(addrs []netip.Addr) podAddrSet {
	order := make([]int32, len(addrs))
	for i := range order {
		order[i] = int32(i)
	}
	slices.SortFunc(order, func(a, b int32) int { return addrs[a].Compare(addrs[b]) })
	return podAddrSet{addrs: addrs, order: order}
}

func (s podAddrSet) has(a netip.Addr) bool {
	_, ok := slices.BinarySearchFunc(s.order, a, func(i int32, a netip.Addr) int { return s.addrs[i].Compare(a) })
	return ok
}

// Compute derives identities, endpoints, the ipcache and every endpoint
// identity's policy from objs with the default Options. alloc keeps
// identities stable across calls.
func Compute(objs *Objects, alloc *IdentityAllocator) (*Snapshot, error) {
	return ComputeWith(objs, alloc, Options{})
}

// ComputeWith is Compute with options.
func ComputeWith(objs *Objects, alloc *IdentityAllocator, opts Options) (*Snapshot, error) {
	if opts.MaxEntries <= 0 {
		opts.MaxEntries = DefaultMaxEntries
	}
	c := &computer{
		objs: objs, alloc: alloc, opts: opts,
		snap:     &Snapshot{byID: map[Identity]*EndpointPolicy{}, labels: map[Identity]Labels{}, shadows: map[shadowRecord]bool{}},
		cidrIDs:  map[netip.Prefix]Identity{},
		fqdnIDs:  map[string][]Identity{},
		selCache: map[string][]Identity{},
		byLabel:  map[string][]Identity{},
		peers:    map[sectionKey]peerSet{},
		ports:    map[Identity][]NamedPort{},
		warned:   map[string]bool{},
		auditNS:  map[string]bool{},
	}
	for _, ns := range objs.Namespaces {
		if ns.Audit {
			c.auditNS[ns.Name] = true
		}
	}
	for _, id := range ReservedIdentities() {
		c.snap.labels[id] = Labels{{Source: SourceReserved, Key: reservedName(id)}}
	}
	c.objs = c.resolveToServices(objs)
	objs = c.objs
	if err := c.endpoints(); err != nil {
		return nil, err
	}
	if err := c.cidrIdentities(); err != nil {
		return nil, err
	}
	if err := c.entityAddresses(); err != nil {
		return nil, err
	}
	c.allIDs = append(append(ReservedIdentities(), c.podIDs...), sortedIDs(c.cidrIDs)...)
	c.allIDs = append(c.allIDs, c.combined...)
	prevStrs := c.alloc.identityStrings()
	strs := make(map[Identity]identityStrings, len(c.allIDs))
	for _, id := range c.allIDs {
		ls := c.snap.labels[id]
		s, ok := prevStrs[id]
		if !ok || !slices.Equal(s.labels, ls) {
			s = identityStrings{labels: ls, strings: ls.Strings(), keys: make([]string, len(ls))}
			for i, l := range ls {
				s.keys[i] = l.Key + "=" + l.Value
			}
		}
		strs[id] = s
		c.snap.Identities = append(c.snap.Identities, IdentityInfo{ID: id, Labels: s.strings})
		for _, k := range s.keys {
			c.byLabel[k] = append(c.byLabel[k], id)
		}
	}
	c.alloc.setIdentityStrings(strs)
	// subjects: which rules select each endpoint identity
	subjects := map[Identity][]ruleRef{}
	for pi := range objs.Policies {
		if p := &objs.Policies[pi]; p.Invalid != "" {
			var dirs []string
			for _, d := range p.stubDirections() {
				dirs = append(dirs, d.String())
			}
			c.warnf("%s %s is invalid: the endpoints it selects are held in default-deny (%s) until it is fixed", p.Kind, p.Name(), strings.Join(dirs, ", "))
		}
		for ri := range objs.Policies[pi].Rules {
			for _, id := range c.selectPods(objs.Policies[pi].Rules[ri].Subject) {
				subjects[id] = append(subjects[id], ruleRef{pi, ri})
			}
		}
	}
	// Identities selected by the same rules get the same policy (on
	// ingress also the same named ports): computed once, shared read-only.
	type built struct {
		pol      DirectionPolicy
		overflow bool
		slack    int
	}
	slack := map[Identity]*[2]int{}
	cache := map[string]built{}
	var key []byte
	for _, id := range c.podIDs {
		ep := &EndpointPolicy{Identity: id}
		for _, dir := range []Direction{Ingress, Egress} {
			key = directionKey(key[:0], dir, subjects[id], c.ports[id])
			got, ok := cache[string(key)]
			if !ok {
				b := newDirBuilder(dir, c.opts.MaxEntries)
				for _, rr := range subjects[id] {
					if b.overflow {
						break
					}
					c.applyRule(b, id, rr.policy, rr.rule)
				}
				if dir == Ingress && b.pol.Enforced && c.opts.AllowLocalhost != LocalhostPolicy {
					// The node itself (kubelet probes) reaches every
					// endpoint; deny rules still win, L7 rules still apply.
					b.add(entryKey{peer: IdentityHost, verdict: VerdictAllow}, AllowLocalhostOrigin())
				}
				b.slack = min(b.slack, b.max-b.size-1)
				if b.overflow {
					b.slack = -1
				}
				got = built{b.finish(), b.overflow, b.slack}
				for _, sh := range b.shadows {
					c.snap.shadows[sh] = true
				}
				cache[string(key)] = got
			}
			*ep.Direction(dir) = got.pol
			if slack[id] == nil {
				slack[id] = &[2]int{}
			}
			slack[id][dir] = got.slack
			if got.overflow {
				c.warnf("identity %d %s: its policy needs more than %d entries; it is held in default-deny in this direction (split the policy or use broader CIDRs)", id, dir, c.opts.MaxEntries)
			}
		}
		c.snap.Policies = append(c.snap.Policies, ep)
		c.snap.byID[id] = ep
	}
	head := c.sortIPCache() // ipcacheorder.go
	c.keepIncremental(subjects, slack, head)
	return c.snap, nil
}

// directionKey appends what an identity's direction policy is built from
// to b: the direction, the rules that select the identity and, on
// ingress, its named ports (identities with equal keys share one built
// direction). Every part is length- or width-delimited, so distinct
// inputs give distinct keys.
func directionKey(b []byte, dir Direction, subjects []ruleRef, ports []NamedPort) []byte {
	b = strconv.AppendInt(b, int64(dir), 10)
	b = append(b, '|')
	for _, rr := range subjects {
		b = strconv.AppendInt(b, int64(rr.policy), 10)
		b = append(b, '.')
		b = strconv.AppendInt(b, int64(rr.rule), 10)
		b = append(b, ',')
	}
	if dir != Ingress {
		return b
	}
	b = append(b, '|')
	for _, np := range ports {
		b = strconv.AppendInt(b, int64(len(np.Name)), 10)
		b = append(b, ':')
		b = append(b, np.Name...)
		b = strconv.AppendInt(b, int64(np.Protocol), 10)
		b = append(b, '/')
		b = strconv.AppendInt(b, int64(np.Port), 10)
		b = append(b, ',')
	}
	return b
}

func sortedIDs[K comparable](m map[K]Identity) []Identity {
	out := make([]Identity, 0, len(m))
	for _, id := range m {
		out = append(out, id)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func (c *computer) warnf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if !c.warned[msg] {
		c.warned[msg] = true
		c.snap.Warnings = append(c.snap.Warnings, msg)
	}
}

func (c *computer) endpoints() error {
	nsLabels := map[string]map[string]string{}
	for _, ns := range c.objs.Namespaces {
		nsLabels[ns.Name] = ns.Labels
	}
	if m := c.alloc.endpointsMemoFor(c.objs.Pods, nsLabels); m != nil {
		c.useEndpointsMemo(m)
		return nil
	}
	warned := len(c.snap.Warnings)
	ipOwner := make(map[netip.Addr]int, len(c.objs.Pods)) // → index in Pods
	seen := map[Identity]bool{}
	kept, gen := c.alloc.podMemoFor()
	memo := &podMemoReader{m: kept}
	next := &podMemos{list: make([]podMemoEntry, 0, len(c.objs.Pods))}
	c.snap.Endpoints = slices.Grow(c.snap.Endpoints, len(c.objs.Pods))
	c.snap.IPCache = slices.Grow(c.snap.IPCache, len(c.objs.Pods))
	// The endpoints' addresses share one array (one allocation, not one
	// per pod); each endpoint's slice is capped, so an append copies.
	nIPs := 0
	for i := range c.objs.Pods {
		nIPs += len(c.objs.Pods[i].IPs)
	}
	ips := make([]netip.Addr, 0, nIPs)
	var dropped map[int][]netip.Addr // endpoint → its pod's addresses, when some were dropped
	for i := range c.objs.Pods {
		p := &c.objs.Pods[i]
		if p.HostNetwork {
			continue // host-network pods are the host identity
		}
		if p.Phase == "Succeeded" || p.Phase == "Failed" {
			continue
		}
		ls, id, err := c.alloc.podIdentity(memo, next, len(next.list), p, nsLabels[p.Namespace])
		if err != nil {
			return fmt.Errorf("pod %s/%s: %w", p.Namespace, p.Name, err)
		}
		if !seen[id] {
			// (an identity is its labels: the same identity, the same ls)
			c.snap.labels[id] = ls
			seen[id] = true
			c.podIDs = append(c.podIDs, id)
		} else {
			// The memo keeps one Labels per identity, not one per pod
			// (~280 B of heap per pod at 11k pods, BenchmarkPodHeap).
			next.list[len(next.list)-1].ls = c.snap.labels[id]
		}
		ep := Endpoint{Namespace: p.Namespace, Name: p.Name, Identity: id, NamedPorts: p.NamedPorts, Node: p.NodeName}
		first := len(ips)
		for _, ip := range p.IPs {
			if owner, dup := ipOwner[ip]; dup {
				o := &c.objs.Pods[owner]
				c.warnf("pod %s/%s: IP %s already belongs to pod %s/%s; ignored", p.Namespace, p.Name, ip, o.Namespace, o.Name)
				continue
			}
			ipOwner[ip] = i
			ips = append(ips, ip)
			c.snap.IPCache = append(c.snap.IPCache, IPCacheEntry{Prefix: netip.PrefixFrom(ip, ip.BitLen()), Identity: id})
		}
		if len(ips) > first {
			ep.IPs = ips[first:len(ips):len(ips)]
		}
		if len(ips)-first != len(p.IPs) {
			// an address dropped: the memo compares the pod's own
			if dropped == nil {
				dropped = map[int][]netip.Addr{}
			}
			dropped[len(c.snap.Endpoints)] = slices.Clone(p.IPs)
		}
		if len(p.NamedPorts) > 0 {
			c.ports[id] = mergePorts(c.ports[id], p.NamedPorts)
			c.allPorts = mergePorts(c.allPorts, p.NamedPorts)
		}
		c.snap.Endpoints = append(c.snap.Endpoints, ep)
	}
	c.podAddrs = newPodAddrSet(ips) // ipOwner is garbage once the pass is done
	slices.Sort(c.podIDs)
	c.alloc.setPodMemo(next, gen)
	c.alloc.setEndpointsMemo(c.newEndpointsMemo(next, dropped, gen, warned))
	return nil
}

// endpointsMemo is what the last compute's pod pass (endpoints) gave: a
// compute whose pods have the same inputs (a CNP change), with no
// identity forgotten since, takes it instead of passing over every pod
// again (at 11k pods 17 % of the agent's CPU per CNP change, and most of
// what it allocated: an 11k-entry address map, the pod memo, the
// endpoints). samePods compares every input of the pass, field by field,
// without allocating. Immutable once kept: computes copy what they change.
type endpointsMemo struct {
	n   int // pods, skipped ones included
	gen uint64
	// pods: each endpoint's pod's memo (labels, namespace labels,
	// service account), as endpoints.
	pods *podMemos
	// dropped: the pod's addresses of each endpoint that has not all of
	// them (another pod had one).
	dropped map[int][]netip.Addr
	// What endpoints() gave.
	// endpoints; the pods' ipcache entries are theirs, in order (one
	// per address of an endpoint; a copy of them was 40 B of the agent's
	// heap per pod).
	endpoints []Endpoint
	nIPs      int // the endpoints' addresses
	podIDs    []Identity
	labels    map[Identity]Labels // of podIDs
	ports     map[Identity][]NamedPort
	allPorts  []NamedPort
	podAddrs  podAddrSet
	warnings  []string
}

// samePods reports whether the pass over pods with the namespace labels
// nsLabels gives what m holds: the same pods in the same order, skipped
// alike, with equal names, node, addresses, named ports, labels,
// namespace labels and service account.
func (m *endpointsMemo) samePods(pods []Pod, nsLabels map[string]map[string]string) bool {
	if len(pods) != m.n || len(m.pods.list) != len(m.endpoints) {
		return false
	}
	j := 0
	for i := range pods {
		p := &pods[i]
		if p.HostNetwork || p.Phase == "Succeeded" || p.Phase == "Failed" {
			continue
		}
		if j == len(m.endpoints) {
			return false
		}
		ep, pm := &m.endpoints[j], &m.pods.list[j]
		ips, drop := m.dropped[j]
		if !drop {
			ips = ep.IPs
		}
		j++
		if ep.Namespace != p.Namespace || ep.Name != p.Name || ep.Node != p.NodeName ||
			pm.serviceAccount != p.ServiceAccount || !slices.Equal(ips, p.IPs) ||
			!slices.Equal(ep.NamedPorts, p.NamedPorts) || !sameLabelMap(pm.labels, p.Labels) ||
			!sameLabelMap(pm.nsLabels, nsLabels[p.Namespace]) {
			return false
		}
	}
	return j == len(m.endpoints)
}

func (c *computer) newEndpointsMemo(pods *podMemos, dropped map[int][]netip.Addr, gen uint64, warned int) *endpointsMemo {
	m := &endpointsMemo{
		n: len(c.objs.Pods), gen: gen, pods: pods, dropped: dropped, nIPs: len(c.snap.IPCache),
		endpoints: slices.Clip(c.snap.Endpoints),
		podIDs:    slices.Clone(c.podIDs),
		labels:    make(map[Identity]Labels, len(c.podIDs)),
		ports:     make(map[Identity][]NamedPort, len(c.ports)),
		allPorts:  slices.Clip(c.allPorts),
		podAddrs:  c.podAddrs,
		warnings:  slices.Clone(c.snap.Warnings[warned:]),
	}
	for _, id := range c.podIDs {
		m.labels[id] = c.snap.labels[id]
	}
	for id, ps := range c.ports {
		m.ports[id] = slices.Clip(ps)
	}
	return m
}

// useEndpointsMemo does what endpoints() did for m's pods: the
// snapshot's endpoints (shared: read-only) and their ipcache entries, made
// again from them as endpoints() made them (the compute sorts its ipcache
// in place).
func (c *computer) useEndpointsMemo(m *endpointsMemo) {
	c.snap.Endpoints = m.endpoints
	c.snap.IPCache = slices.Grow(c.snap.IPCache[:0:0], m.nIPs+len(c.snap.IPCache))
	for i := range m.endpoints {
		ep := &m.endpoints[i]
		for _, ip := range ep.IPs {
			c.snap.IPCache = append(c.snap.IPCache, IPCacheEntry{Prefix: netip.PrefixFrom(ip, ip.BitLen()), Identity: ep.Identity})
		}
	}
	c.podIDs = slices.Clone(m.podIDs)
	for _, id := range m.podIDs {
		c.snap.labels[id] = m.labels[id]
	}
	for id, ps := range m.ports {
		c.ports[id] = ps
	}
	c.allPorts = m.allPorts
	c.podAddrs = m.podAddrs
	for _, w := range m.warnings {
		if !c.warned[w] {
			c.warned[w] = true
			c.snap.Warnings = append(c.snap.Warnings, w)
		}
	}
}

func mergePorts(a, b []NamedPort) []NamedPort {
	out := append(slices.Clip(a), b...)
	slices.SortFunc(out, func(x, y NamedPort) int {
		if c := strings.Compare(x.Name, y.Name); c != 0 {
			return c
		}
		if x.Protocol != y.Protocol {
			return int(x.Protocol) - int(y.Protocol)
		}
		return int(x.Port) - int(y.Port)
	})
	return slices.Compact(out)
}

func (c *computer) cidrIdentities() error {
	var prefixes []netip.Prefix
	add := func(p netip.Prefix) {
		if p.Bits() > 0 {
			prefixes = append(prefixes, p)
		}
	}
	for _, pol := range c.objs.Policies {
		for _, r := range pol.Rules {
			for _, list := range [][]Section{r.Allow[Ingress], r.Allow[Egress], r.Deny[Ingress], r.Deny[Egress]} {
				for _, s := range list {
					for _, cs := range s.Peers.CIDRs {
						add(cs.Prefix)
						for _, e := range cs.Except {
							add(e)
						}
					}
				}
			}
		}
	}
	c.policyCIDRs = slices.Clone(prefixes)
	fqdnLabels := c.fqdnPrefixes()
	c.fqdnLabels = fqdnLabels
	for p := range fqdnLabels {
		prefixes = append(prefixes, p)
	}
	slices.SortFunc(prefixes, comparePrefix)
	prefixes = slices.Compact(prefixes)
	// A pod's own address always resolves to the pod: a CIDR identity
	// whose prefix is exactly a pod's address gets no ipcache entry (it
	// still exists, so the rule naming it stays valid, and selects no
	// address: CIDR rules never select pods). The ipcache holds one entry
	// per prefix by construction; the agent's datapath ipcache relies on
	// it.
	for _, p := range prefixes {
		ls := Labels{{Source: SourceCIDR, Key: p.String()}, {Source: SourceReserved, Key: "world"}}
		for _, k := range fqdnLabels[p] {
			ls = append(ls, Label{Source: SourceFQDN, Key: k})
		}
		ls = NewLabels(ls...)
		id, err := c.alloc.allocate(ls, true)
		if err != nil {
			return err
		}
		for _, k := range fqdnLabels[p] {
			c.fqdnIDs[k] = append(c.fqdnIDs[k], id)
		}
		c.cidrIDs[p] = id
		c.cidrList = append(c.cidrList, p)
		c.snap.labels[id] = ls
		if p.IsSingleIP() && c.podAddrs.has(p.Addr()) {
			continue
		}
		c.snap.IPCache = append(c.snap.IPCache, IPCacheEntry{Prefix: p, Identity: id})
	}
	return nil
}

// fqdnPrefixes resolves every toFQDNs selector of an allow rule through
// Options.FQDNCache: each address of a cached name a selector matches
// becomes a host prefix labelled with the keys of every selector that
// matches one of its names (Cilium's fqdn:<selector> labels). Sorted
// keys per prefix.
func (c *computer) fqdnPrefixes() map[netip.Prefix][]string {
	sels := map[string]*DNSSelector{}
	for _, pol := range c.objs.Policies {
		for _, r := range pol.Rules {
			for _, s := range r.Allow[Egress] {
				for i := range s.Peers.FQDNs {
					sel := &s.Peers.FQDNs[i]
					sels[sel.Key()] = sel
				}
			}
		}
	}
	c.fqdnSels = sels
	c.fqdnNames = map[string][]netip.Addr{}
	if len(sels) == 0 || c.opts.FQDNCache == nil {
		return nil
	}
	keys := make([]string, 0, len(sels))
	for k := range sels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	out := map[netip.Prefix][]string{}
	for _, n := range c.opts.FQDNCache.FQDNNames() {
		name, err := NormalizeDNSName(n.Name)
		if err != nil {
			continue
		}
		for _, k := range keys {
			if !sels[k].Matches(name) {
				continue
			}
			for _, ip := range n.IPs {
				if ip = ip.Unmap(); ip.IsValid() && !slices.Contains(c.fqdnNames[name], ip) {
					c.fqdnNames[name] = append(c.fqdnNames[name], ip)
				}
			}
			for _, ip := range n.IPs {
				ip = ip.Unmap()
				if !ip.IsValid() {
					continue
				}
				p := netip.PrefixFrom(ip, ip.BitLen())
				if !slices.Contains(out[p], k) {
					out[p] = append(out[p], k)
				}
			}
		}
	}
	for p := range out {
		slices.Sort(out[p])
	}
	return out
}

// selectPods returns the pod identities a subject selector selects.
func (c *computer) selectPods(s Selector) []Identity {
	all := c.selectAll(s)
	out := make([]Identity, 0, len(all))
	for _, id := range all {
		if !id.IsReserved() && !id.IsCIDR() {
			out = append(out, id)
		}
	}
	return out
}

// selectAll returns every identity a peer selector selects. The empty
// selector selects every pod identity (not reserved or CIDR identities).
func (c *computer) selectAll(s Selector) []Identity {
	key := s.String()
	if ids, ok := c.selCache[key]; ok {
		return ids
	}
	var ids []Identity
	if len(s.Requirements) == 0 {
		ids = c.podIDs
	} else {
		// Candidates: the smallest index list of an In requirement, or
		// every identity. allIDs and the index lists are ascending.
		candidates := c.allIDs
		for _, r := range s.Requirements {
			if r.Operator != OpIn {
				continue
			}
			var union []Identity
			for _, v := range r.Values {
				union = append(union, c.byLabel[r.Key+"="+v]...)
			}
			if len(r.Values) > 1 {
				slices.Sort(union)
				union = slices.Compact(union)
			}
			if len(union) < len(candidates) {
				candidates = union
			}
		}
		for _, id := range candidates {
			if s.Matches(c.snap.labels[id]) {
				ids = append(ids, id)
			}
		}
	}
	c.selCache[key] = ids
	return ids
}

// cidrPeers returns the CIDR identities selected by a CIDR selector (and
// world for 0.0.0.0/0 or ::/0).
func (c *computer) cidrPeers(cs CIDRSelector) []Identity {
	var out []Identity
	if cs.Prefix.Bits() == 0 {
		out = append(out, IdentityWorld)
	}
	// The prefixes inside cs.Prefix are one run of the sorted list.
	start, _ := slices.BinarySearchFunc(c.cidrList, cs.Prefix.Masked().Addr(), func(p netip.Prefix, a netip.Addr) int { return p.Addr().Compare(a) })
outer:
	for _, p := range c.cidrList[start:] {
		if !cs.Prefix.Contains(p.Addr()) {
			break
		}
		if p.Bits() < cs.Prefix.Bits() {
			continue
		}
		id := c.cidrIDs[p]
		for _, e := range cs.Except {
			if p.Bits() >= e.Bits() && e.Contains(p.Addr()) {
				continue outer
			}
		}
		out = append(out, id)
	}
	return out
}

func (c *computer) entityPeers(name string) []Identity {
	switch name {
	case "cluster":
		out := slices.Clone(c.podIDs)
		out = append(out, c.combined...)
		return append(out, IdentityHost, IdentityRemoteNode, IdentityKubeAPIServer, IdentityHealth, IdentityInit, IdentityUnmanaged, IdentityIngress)
	case "remote-node", "kube-apiserver":
		// and the identity of addresses that are both
		id, _ := entityIdentity(name)
		return append([]Identity{id}, c.combined...)
	case "world":
		out := []Identity{IdentityWorld}
		for _, id := range c.cidrIDs {
			out = append(out, id)
		}
		return out
	}
	id, _ := entityIdentity(name)
	return []Identity{id}
}

func (c *computer) resolvePeers(k sectionKey, s *Section) peerSet {
	if ps, ok := c.peers[k]; ok {
		return ps
	}
	ps := peerSet{any: s.Peers.Any}
	if !ps.any {
		for _, sel := range s.Peers.Selectors {
			ps.ids = append(ps.ids, c.selectAll(sel)...)
		}
		for _, cs := range s.Peers.CIDRs {
			ps.ids = append(ps.ids, c.cidrPeers(cs)...)
		}
		for _, e := range s.Peers.Entities {
			ps.ids = append(ps.ids, c.entityPeers(e)...)
		}
		for i := range s.Peers.FQDNs {
			ps.ids = append(ps.ids, c.fqdnIDs[s.Peers.FQDNs[i].Key()]...)
		}
		slices.Sort(ps.ids)
		ps.ids = slices.Compact(ps.ids)
	}
	c.peers[k] = ps
	return ps
}

// dirBuilder accumulates one direction's entries and L7 rule sets.
type dirBuilder struct {
	dir     Direction
	pol     DirectionPolicy
	entries map[entryKey]*Entry
	l7      map[l7Port]*L7RuleSet
	l7idx   map[l7Port]map[l7Key]int // see addRule
	// max bounds the entries; past it, overflow holds the endpoint in
	// default-deny in this direction (finish).
	max      int
	size     int // entries plus L7 rule × peer pairs
	overflow bool
	// slack: how much more the size could grow without an overflow
	// (incremental.go: UpdateFQDN adds peers only within it).
	slack int
	// shadows: allows without L7 rules that lift L7 rules (see finish)
	shadows []shadowRecord
}

type entryKey struct {
	peer    Identity
	proto   Protocol
	port    uint16
	endPort uint16
	verdict Verdict
	parser  string
}

func newDirBuilder(d Direction, max int) *dirBuilder {
	return &dirBuilder{dir: d, entries: map[entryKey]*Entry{}, l7: map[l7Port]*L7RuleSet{}, l7idx: map[l7Port]map[l7Key]int{}, max: max, slack: max}
}

func (b *dirBuilder) add(k entryKey, origin Provenance) {
	e, ok := b.entries[k]
	if !ok {
		if b.size >= b.max {
			b.overflow = true
			return
		}
		b.size++
		e = &Entry{Peer: k.peer, Protocol: k.proto, Port: k.port, EndPort: k.endPort, Verdict: k.verdict, Parser: k.parser}
		b.entries[k] = e
	}
	if !slices.ContainsFunc(e.Origins, func(p Provenance) bool { return compareProvenance(p, origin) == 0 }) {
		e.Origins = append(e.Origins, origin)
	}
}

// addFQDNSelectors records a section's toFQDNs selectors (distinct by
// Key).
func (b *dirBuilder) addFQDNSelectors(sels []DNSSelector) {
	for _, s := range sels {
		if !slices.ContainsFunc(b.pol.FQDNSelectors, func(x DNSSelector) bool { return x.Key() == s.Key() }) {
			b.pol.FQDNSelectors = append(b.pol.FQDNSelectors, s)
		}
	}
}

func (b *dirBuilder) finish() DirectionPolicy {
	slices.SortFunc(b.pol.FQDNSelectors, func(x, y DNSSelector) int { return strings.Compare(x.Key(), y.Key()) })
	out := b.pol
	if b.overflow {
		// More entries than the datapath takes for one endpoint: hold it
		// in default-deny rather than enforce part of its policy.
		out.Enforced = true
		out.DefaultDeny = append(slices.Clone(out.DefaultDeny), Provenance{Policy: "entry-budget", PolicyKind: KindBuiltin,
			Direction: b.dir, Kind: KindDefaultDeny, Path: fmt.Sprintf("more than %d entries", b.max)})
		return out
	}
	for _, e := range b.entries {
		slices.SortFunc(e.Origins, compareProvenance)
		out.Entries = append(out.Entries, *e)
	}
	sortEntries(out.Entries)
	// redirected peers by port (IdentityAny: every peer)
	redir := map[l7Port]map[Identity]bool{}
	for i := range out.Entries {
		if e := &out.Entries[i]; e.Verdict == VerdictRedirect {
			k := l7Port{e.Protocol, e.Port}
			if redir[k] == nil {
				redir[k] = map[Identity]bool{}
			}
			redir[k][e.Peer] = true
		}
	}
	redirected := func(peer Identity, port l7Port) bool {
		m := redir[port]
		return m != nil && (m[IdentityAny] || m[peer] || (peer == IdentityAny && len(m) > 0))
	}
	// An allow without L7 rules that covers a redirected port for a peer
	// — an L4 allow naming the port or an L3-only allow (every port) —
	// lets that peer send any request there: add an allow-all L7 rule for
	// it (Cilium's rule). The connection stays redirected, so it is seen.
	ports := make([]l7Port, 0, len(b.l7))
	for p := range b.l7 {
		ports = append(ports, p)
	}
	slices.SortFunc(ports, func(a, b l7Port) int {
		return cmp.Or(cmp.Compare(a.port, b.port), cmp.Compare(a.proto, b.proto))
	})
	for _, key := range ports {
		rs, port := b.l7[key], key.port
		rs.sortPeers()
		explicit := len(rs.Rules) // the L7 rules proper, before allow-alls
		lifting := map[Provenance]map[Identity]bool{}
		var order []Provenance
		for _, e := range out.Entries {
			if e.Verdict != VerdictAllow || (e.Port != 0 && (port < e.Port || port > e.EndPort)) ||
				(e.Protocol != ProtoAny && e.Protocol != key.proto) || !redirected(e.Peer, key) {
				continue
			}
			for _, o := range e.Origins {
				if o.PolicyKind == KindBuiltin {
					continue // allow-localhost does not lift L7 rules
				}
				r := L7Rule{AnyPeer: e.Peer == IdentityAny, Origin: o}
				if e.Peer != IdentityAny {
					r.Peers = []Identity{e.Peer}
				}
				b.addRule(rs, r)
				if lifting[o] == nil {
					lifting[o] = map[Identity]bool{}
					order = append(order, o)
				}
				lifting[o][e.Peer] = true
			}
		}
		// Which L7 rules each lifting allow shadows (ShadowWarnings).
		for _, o := range order {
			peers := lifting[o]
			for i := range explicit {
				x := &rs.Rules[i]
				applies := peers[IdentityAny] || x.AnyPeer
				for _, p := range x.Peers {
					if applies {
						break
					}
					applies = peers[p]
				}
				if applies {
					l7 := x.Origin
					l7.L7 = ""
					b.shadows = append(b.shadows, shadowRecord{allow: o, l7: l7, proto: rs.Protocol, port: port})
				}
			}
		}
		rs.sortPeers()
		out.L7 = append(out.L7, *rs)
	}
	return out
}

// audited reports whether pol is in audit mode for the endpoints of
// identity subject: its annotation, the subject's namespace's, or the
// node-wide option. An invalid policy never is (fail closed).
func (c *computer) audited(pol *Policy, subject Identity) bool {
	if pol.Invalid != "" {
		return false
	}
	if pol.Audit || c.opts.AuditMode {
		return true
	}
	if len(c.auditNS) == 0 {
		return false
	}
	for _, l := range c.snap.labels[subject] {
		if l.Source == SourceK8s && l.Key == LabelPodNamespace {
			return c.auditNS[l.Value]
		}
	}
	return false
}

func (c *computer) applyRule(b *dirBuilder, subject Identity, pi, ri int) {
	pol := &c.objs.Policies[pi]
	r := &pol.Rules[ri]
	dir := b.dir
	audit := c.audited(pol, subject)
	origin := func(s *Section, kind RuleKind) Provenance {
		return Provenance{Policy: pol.Name(), PolicyKind: pol.Kind, Direction: dir, Rule: s.Index, Kind: kind, Path: s.Path, Audit: audit}
	}
	enforce := len(r.Allow[dir])+len(r.Deny[dir]) > 0
	if r.DefaultDeny[dir] != nil {
		enforce = *r.DefaultDeny[dir]
	}
	if enforce {
		b.pol.Enforced = true
		p := Provenance{Policy: pol.Name(), PolicyKind: pol.Kind, Direction: dir, Rule: 0, Kind: KindDefaultDeny, Path: r.Path + "." + dir.String(), Audit: audit}
		if pol.Invalid != "" {
			p.Path += " (invalid policy: fail-closed)"
		}
		if !slices.ContainsFunc(b.pol.DefaultDeny, func(x Provenance) bool { return compareProvenance(x, p) == 0 }) {
			b.pol.DefaultDeny = append(b.pol.DefaultDeny, p)
			slices.SortFunc(b.pol.DefaultDeny, compareProvenance)
		}
	}
	for _, deny := range []bool{true, false} {
		list := r.Allow[dir]
		kind := KindAllow
		if deny {
			list = r.Deny[dir]
			kind = KindDeny
		}
		for si := range list {
			s := &list[si]
			if s.Dropped != "" {
				continue
			}
			if !deny {
				b.addFQDNSelectors(s.Peers.FQDNs)
			}
			ps := c.resolvePeers(sectionKey{pi, ri, si, dir, deny}, s)
			if !ps.any && len(ps.ids) == 0 {
				continue
			}
			c.applySection(b, subject, s, ps, origin(s, kind), deny)
		}
	}
}

func (c *computer) applySection(b *dirBuilder, subject Identity, s *Section, ps peerSet, origin Provenance, deny bool) {
	verdict := VerdictAllow
	if deny {
		verdict = VerdictDeny
	}
	peers := ps.ids
	if ps.any {
		peers = []Identity{IdentityAny}
	}
	// What this section can add at most (entries, and L7 rule × peer
	// pairs): a policy past the budget holds the endpoint in default-deny
	// without building the part that does not fit.
	est := len(peers)
	if s.Ports != nil {
		est = 0
		for pri := range s.Ports {
			pr := &s.Ports[pri]
			if pr.Dropped != "" {
				continue
			}
			rules := 0
			if pr.L7 != nil {
				rules = pr.L7.count()
			}
			for _, spec := range pr.Ports {
				n := len(peers)
				if spec.Name != "" && b.dir == Egress && ps.any && !deny {
					n = len(c.podIDs) // a named port to any peer: each pod identity
				}
				est += n * (1 + rules)
			}
		}
	}
	b.slack = min(b.slack, b.max-(b.size+est))
	if b.size+est > b.max {
		b.overflow = true
		return
	}
	if s.Ports == nil {
		for _, p := range peers {
			b.add(entryKey{peer: p, verdict: verdict}, origin)
		}
		return
	}
	for pri := range s.Ports {
		pr := &s.Ports[pri]
		if pr.Dropped != "" {
			continue
		}
		// L7 rules: the peers of each port, added to its rule set at once
		// (a rule set holds each rule once with all its peers).
		var l7Ports []l7Port
		l7Peers := map[l7Port][]Identity{}
		for _, spec := range pr.Ports {
			for _, p := range peers {
				if b.overflow {
					return
				}
				for _, pp := range c.resolvePort(b.dir, subject, p, spec, origin, deny) {
					np := pp.spec
					if pr.L7 == nil {
						b.add(entryKey{peer: pp.peer, proto: np.Protocol, port: np.Port, endPort: np.EndPort, verdict: verdict}, origin)
						continue
					}
					k := l7Port{np.Protocol, np.Port}
					if _, seen := l7Peers[k]; !seen {
						l7Ports = append(l7Ports, k)
					}
					l7Peers[k] = append(l7Peers[k], pp.peer)
				}
			}
		}
		for _, port := range l7Ports {
			ids := l7Peers[port]
			slices.Sort(ids)
			ids = slices.Compact(ids)
			if !c.addL7(b, ids, port, pr, origin) {
				continue
			}
			for _, id := range ids {
				b.add(entryKey{peer: id, proto: port.proto, port: port.port, endPort: port.port, verdict: VerdictRedirect, parser: pr.L7.Parser}, origin)
			}
		}
	}
}

// peerPort is a numeric port spec and the peer it applies to.
type peerPort struct {
	peer Identity
	spec PortSpec
}

// resolvePort turns a port spec into numeric specs for peer. Named ports
// resolve against the endpoint's own pods on ingress and against the
// peer's pods on egress. A named port is a port on a pod: an egress allow
// for every peer becomes an allow towards each pod identity that has the
// name (never towards world or a CIDR, which have no named ports). An
// egress deny for every peer keeps applying to every peer, on every number
// the name has on some pod (wider, never narrower).
func (c *computer) resolvePort(dir Direction, subject, peer Identity, spec PortSpec, origin Provenance, deny bool) []peerPort {
	if spec.Name == "" {
		return []peerPort{{peer, spec}}
	}
	match := func(candidates []NamedPort, to Identity, out []peerPort) []peerPort {
		for _, np := range candidates {
			if np.Name == spec.Name && (spec.Protocol == ProtoAny || spec.Protocol == np.Protocol) {
				out = append(out, peerPort{to, PortSpec{Protocol: np.Protocol, Port: np.Port, EndPort: np.Port}})
			}
		}
		return out
	}
	var out []peerPort
	switch {
	case dir == Ingress:
		out = match(c.ports[subject], peer, nil)
	case peer != IdentityAny:
		out = match(c.ports[peer], peer, nil)
	case deny:
		out = match(c.allPorts, IdentityAny, nil)
	default:
		for _, id := range c.podIDs {
			out = match(c.ports[id], id, out)
		}
	}
	if len(out) == 0 && (dir == Ingress || peer == IdentityAny) {
		c.warnf("%s %s: named port %q not found on identity %d; it allows nothing", origin.Policy, origin.Path, spec.Name, subject)
	}
	return out
}

// addL7 adds a port rule's L7 rules to the port's rule set; it reports false
// (and warns) when another parser already owns the port.
func (c *computer) addL7(b *dirBuilder, peers []Identity, port l7Port, pr *PortRule, origin Provenance) bool {
	rs, ok := b.l7[port]
	if !ok {
		rs = &L7RuleSet{Protocol: port.proto, Port: port.port, Parser: pr.L7.Parser}
		b.l7[port] = rs
	} else if rs.Parser != pr.L7.Parser {
		c.warnf("%s %s: port %d already uses L7 parser %q; this %q rule is ignored", origin.Policy, origin.Path, port.port, rs.Parser, pr.L7.Parser)
		return false
	}
	base := L7Rule{AnyPeer: slices.Contains(peers, IdentityAny)}
	if !base.AnyPeer {
		base.Peers = slices.Clip(peers) // shared by this call's rules; sorted, distinct
	}
	b.size += max(1, len(base.Peers)) * pr.L7.count()
	add := func(r L7Rule, l7 string) {
		o := origin
		o.L7 = l7
		r.Origin = o
		b.addRule(rs, r)
	}
	for i := range pr.L7.HTTP {
		r := base
		r.HTTP = &pr.L7.HTTP[i]
		add(r, "http["+strconv.Itoa(i)+"]")
	}
	for i := range pr.L7.Kafka {
		r := base
		r.Kafka = &pr.L7.Kafka[i]
		add(r, "kafka["+strconv.Itoa(i)+"]")
	}
	for i := range pr.L7.DNS {
		r := base
		r.DNS = &pr.L7.DNS[i]
		add(r, "dns["+strconv.Itoa(i)+"]")
	}
	for i := range pr.L7.Generic {
		r := base
		r.Generic = pr.L7.Generic[i]
		add(r, "l7["+strconv.Itoa(i)+"]")
	}
	return true
}

// l7Port keys a direction's L7 rule sets: protocol and port (DNS rule
// sets exist for UDP and TCP on the same port).
type l7Port struct {
	proto Protocol
	port  uint16
}

// l7Key identifies a rule of a rule set: the same rule text reached
// through another peer merges into it.
type l7Key struct {
	origin Provenance
	all    bool
}

// addRule appends r to rs, merging it into an earlier rule from the same
// origin (in constant time: policies with thousands of rules or peers
// must not compute in quadratic time). Peers are sorted by sortPeers.
func (b *dirBuilder) addRule(rs *L7RuleSet, r L7Rule) {
	key := l7Port{rs.Protocol, rs.Port}
	idx := b.l7idx[key]
	if idx == nil {
		idx = map[l7Key]int{}
		b.l7idx[key] = idx
	}
	k := l7Key{r.Origin, r.AllowsAll()}
	i, ok := idx[k]
	if !ok {
		// Peers may be shared with other rules (never written in place:
		// appends go to a clipped slice, sortPeers copies).
		idx[k] = len(rs.Rules)
		r.Peers = slices.Clip(r.Peers)
		rs.Rules = append(rs.Rules, r)
		return
	}
	x := &rs.Rules[i]
	switch {
	case x.AnyPeer:
	case r.AnyPeer:
		x.AnyPeer, x.Peers = true, nil
	default:
		x.Peers = append(slices.Clip(x.Peers), r.Peers...)
	}
}

// sortPeers sorts and de-duplicates every rule's peers (on a copy: peer
// slices may be shared).
func (rs *L7RuleSet) sortPeers() {
	for i := range rs.Rules {
		ps := rs.Rules[i].Peers
		distinct := true
		for j := 1; j < len(ps) && distinct; j++ {
			distinct = ps[j-1] < ps[j]
		}
		if !distinct {
			ps = slices.Clone(ps)
			slices.Sort(ps)
			rs.Rules[i].Peers = slices.Compact(ps)
		}
	}
}

// entityAddresses adds the ipcache entries of the kube-apiserver entity
// (Options.KubeAPIServer and the default/kubernetes EndpointSlice) and of
// Node objects (remote-node), with one entry per prefix:
//   - a pod's address stays the pod's (warning);
//   - a kube-apiserver address that is also a Node's gets one node-local
//     identity with both labels, selected by both entities;
//   - a kube-apiserver address that a policy names as a /32 CIDR is the
//     kube-apiserver's (CIDR rules never select it; warning);
//   - a Node address that a policy names as a /32 CIDR keeps the CIDR
//     identity (warning).
func (c *computer) entityAddresses() error {
	nodeOf := map[netip.Addr]string{}
	for _, n := range c.objs.Nodes {
		for _, ip := range n.IPs {
			if _, dup := nodeOf[ip]; !dup {
				nodeOf[ip] = n.Name
			}
		}
	}
	api := slices.Clone(c.opts.KubeAPIServer)
	for _, s := range c.objs.APIServers {
		api = append(api, s.IPs...)
	}
	for i := range api {
		api[i] = api[i].Unmap()
	}
	slices.SortFunc(api, func(a, b netip.Addr) int { return a.Compare(b) })
	api = slices.Compact(api)
	// Only the kube-apiserver's and the nodes' addresses are looked up:
	// the ipcache index (owner) and the pods' addresses (pods) hold those
	// alone, not one map entry per pod (10k pods: 3.5 MB per compute).
	wanted := make(map[netip.Prefix]bool, len(api)+len(nodeOf))
	for _, ip := range api {
		if ip.IsValid() {
			wanted[netip.PrefixFrom(ip, ip.BitLen())] = true
		}
	}
	for _, n := range c.objs.Nodes {
		for _, ip := range n.IPs {
			wanted[netip.PrefixFrom(ip, ip.BitLen())] = true
		}
	}
	owner := map[netip.Prefix]int{} // index in the ipcache
	if len(wanted) > 0 {
		for i, e := range c.snap.IPCache {
			if wanted[e.Prefix] {
				owner[e.Prefix] = i
			}
		}
	}
	pods := map[netip.Prefix]bool{}
	if len(api) > 0 {
		for _, ep := range c.snap.Endpoints {
			for _, ip := range ep.IPs {
				if p := netip.PrefixFrom(ip, ip.BitLen()); wanted[p] {
					pods[p] = true
				}
			}
		}
	}
	isAPI := map[netip.Addr]bool{}
	var both Identity
	for _, ip := range api {
		if !ip.IsValid() {
			continue
		}
		p := netip.PrefixFrom(ip, ip.BitLen())
		if pods[p] {
			c.warnf("kube-apiserver address %s is a pod's; it keeps the pod's identity", ip)
			continue
		}
		isAPI[ip] = true
		id := IdentityKubeAPIServer
		if _, ok := nodeOf[ip]; ok {
			if both == 0 {
				ls := Labels{{Source: SourceReserved, Key: reservedName(IdentityKubeAPIServer)}, {Source: SourceReserved, Key: reservedName(IdentityRemoteNode)}}
				var err error
				if both, err = c.alloc.allocate(ls, true); err != nil {
					return err
				}
				c.snap.labels[both] = ls
				c.combined = append(c.combined, both)
			}
			id = both
		}
		if i, ok := owner[p]; ok {
			c.warnf("kube-apiserver address %s is also a policy CIDR: CIDR rules do not select the kube-apiserver, use the kube-apiserver entity", ip)
			c.snap.IPCache[i].Identity = id
			continue
		}
		owner[p] = len(c.snap.IPCache)
		c.snap.IPCache = append(c.snap.IPCache, IPCacheEntry{Prefix: p, Identity: id})
	}
	for _, n := range c.objs.Nodes {
		for _, ip := range n.IPs {
			p := netip.PrefixFrom(ip, ip.BitLen())
			if isAPI[ip] {
				continue
			}
			if _, taken := owner[p]; taken {
				c.warnf("node %s: address %s is also a pod's or a policy CIDR's; it keeps that identity", n.Name, ip)
				continue
			}
			owner[p] = len(c.snap.IPCache)
			c.snap.IPCache = append(c.snap.IPCache, IPCacheEntry{Prefix: p, Identity: IdentityRemoteNode})
		}
	}
	return nil
}
