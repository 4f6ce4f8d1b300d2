package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/l7gate/l7gate/agentapi"
	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/bpftranslate"
	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/source"
)

// FQDNStore is the FQDN cache toFQDNs resolve through: the DNS proxy's
// answers go in (LearnFQDN, from the Go proxy over POST /fqdn), policy
// computation reads it. cmd/l7gate gives a persisted dnsproxy.Cache.
type FQDNStore interface {
	policy.FQDNCache
	// Insert records an answer; false: the cache is full (not cached).
	Insert(name string, ips []netip.Addr, ttl time.Duration) bool
}

// maxAnswerIPs bounds the addresses of one learned answer.
const maxAnswerIPs = 256

// fqdnState tracks which learned names the datapath has: a LearnFQDN
// waits for the generation its answer started to be implemented.
type fqdnState struct {
	kick chan struct{} // buffered: a recompute is wanted

	mu     sync.Mutex
	wanted uint64        // generations asked for (one per new answer)
	done   uint64        // generation the last implemented compute covered
	cond   chan struct{} // closed (and replaced) when done changes
	// computing: the names and generation of the compute in flight;
	// have: those of the last implemented one.
	computing    map[string][]netip.Addr
	computingGen uint64
	have         map[string][]netip.Addr
	// queue: answers not implemented yet, for the incremental path
	// (fqdnFast); a full compute takes them all (it reads the cache).
	queue []policy.FQDNName

	// tails (run loop only): per endpoint direction, the entries array
	// the incremental path last put in lastPolicies (withPeers).
	tails map[fqdnTailKey][]bpf.PolicyEntry
}

func newFQDNState() *fqdnState {
	return &fqdnState{kick: make(chan struct{}, 1), cond: make(chan struct{}), have: map[string][]netip.Addr{}}
}

// LearnFQDN implements agentapi.FQDNLearner: the answer's addresses go
// into the FQDN cache and the call returns once a revision computed with
// them is implemented (ipcache and policy entries for the toFQDNs
// identities they belong to), so the proxy can release the answer.
func (a *Agent) LearnFQDN(ctx context.Context, ans agentapi.FQDNAnswer) error {
	if a.cfg.FQDN == nil {
		return errors.New("this agent resolves no toFQDNs (no FQDN cache)")
	}
	name, err := policy.NormalizeDNSName(ans.Name)
	if err != nil {
		return fmt.Errorf("fqdn answer: %w", err)
	}
	if len(ans.IPs) == 0 || len(ans.IPs) > maxAnswerIPs {
		return fmt.Errorf("fqdn answer for %s: %d addresses (want 1 to %d)", name, len(ans.IPs), maxAnswerIPs)
	}
	ips := make([]netip.Addr, 0, len(ans.IPs))
	for _, ip := range ans.IPs {
		if !ip.IsValid() {
			return fmt.Errorf("fqdn answer for %s: invalid address", name)
		}
		ips = append(ips, ip.Unmap())
	}
	if !a.cfg.FQDN.Insert(name, ips, time.Duration(ans.TTLSeconds)*time.Second) {
		return fmt.Errorf("fqdn cache full: %s not cached", name)
	}
	f := a.fq
	f.mu.Lock()
	have := f.have[name]
	if !slices.ContainsFunc(ips, func(ip netip.Addr) bool { return !slices.Contains(have, ip) }) {
		f.mu.Unlock()
		return nil // implemented already
	}
	f.wanted++
	gen := f.wanted
	f.queue = append(f.queue, policy.FQDNName{Name: name, IPs: ips})
	f.mu.Unlock()
	select {
	case f.kick <- struct{}{}:
	default:
	}
	for {
		f.mu.Lock()
		done, ch := f.done, f.cond
		f.mu.Unlock()
		if done >= gen {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("%s: datapath not updated in time: %w", name, ctx.Err())
		}
	}
}

// fqdnOptions returns the policy options for a compute: the FQDN cache's
// names as of now (remembered, to be published once implemented).
func (a *Agent) fqdnOptions() policy.Options {
	opts := a.cfg.Policy
	if a.cfg.FQDN == nil {
		return opts
	}
	f := a.fq
	f.mu.Lock()
	// Read under the lock: an answer LearnFQDN queued before is in the
	// cache (it inserts first), so its generation is covered.
	names := a.cfg.FQDN.FQDNNames()
	f.computingGen = f.wanted
	f.queue = nil
	f.computing = make(map[string][]netip.Addr, len(names))
	for _, n := range names {
		f.computing[n.Name] = n.IPs
	}
	f.mu.Unlock()
	opts.FQDNCache = policy.StaticFQDNCache(names)
	return opts
}

// fqdnImplemented publishes the names of the compute just implemented and
// wakes the answers waiting for them.
func (a *Agent) fqdnImplemented() {
	if a.cfg.FQDN == nil {
		return
	}
	f := a.fq
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.computing == nil {
		return
	}
	f.have, f.computing = f.computing, nil
	if f.computingGen > f.done {
		f.done = f.computingGen
		close(f.cond)
		f.cond = make(chan struct{})
	}
}

// conntrackIdle: a tracked flow seen within this long still uses its
// addresses (the datapath's established-TCP lifetime).
const conntrackIdle = 6 * time.Hour

// fqdnExtender is an FQDNStore that can keep addresses in use alive
// (dnsproxy.Cache); conntrackReader a Datapath that lists the addresses
// of tracked flows (bpf.Datapath).
type fqdnExtender interface {
	Extend(inUse func(netip.Addr) bool, within time.Duration) int
}

type conntrackReader interface {
	ConntrackAddrs(maxIdle time.Duration) (map[netip.Addr]bool, error)
}

// keepFQDNInUse pushes back the expiry of cached addresses a tracked
// connection still uses, by three resync intervals (the resync runs this
// before it looks for expired names): an address stays allowed while a
// connection uses it, and expires after its TTL otherwise.
func (a *Agent) keepFQDNInUse() {
	ext, ok := a.cfg.FQDN.(fqdnExtender)
	ct, ok2 := a.dp.(conntrackReader)
	if !ok || !ok2 {
		return
	}
	addrs, err := ct.ConntrackAddrs(conntrackIdle)
	if err != nil {
		a.log.Warn("fqdn: cannot read conntrack; cached addresses expire by TTL only", "error", err)
		return
	}
	if n := ext.Extend(func(ip netip.Addr) bool { return addrs[ip] }, 3*a.cfg.ResyncInterval); n > 0 {
		a.log.Debug("fqdn addresses kept: in use", "addresses", n)
	}
}

// fqdnChanged reports whether the cache's names differ from those last
// implemented (expiry: the resync recomputes then).
func (a *Agent) fqdnChanged() bool {
	if a.cfg.FQDN == nil {
		return false
	}
	names := a.cfg.FQDN.FQDNNames()
	f := a.fq
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(names) != len(f.have) {
		return true
	}
	for _, n := range names {
		if !slices.Equal(n.IPs, f.have[n.Name]) {
			return true
		}
	}
	return false
}

// maxFastChanges bounds the names one incremental FQDN update takes;
// more (a mass expiry) recompute in full.
const maxFastChanges = 256

// fqdnDatapath is a Datapath that can write part of its maps
// (bpf.Datapath): some ipcache entries, some endpoints' policies.
type fqdnDatapath interface {
	UpdateIPCache(upsert []bpf.IPCacheEntry, remove []netip.Prefix) (bpf.SyncStats, error)
	UpdatePolicy(subset []bpf.EndpointPolicy) (bpf.SyncStats, error)
}

// peerDatapath is a Datapath that can change some peers of an endpoint
// direction without looking at the others (bpf.Datapath).
type peerDatapath interface {
	UpdatePolicyPeers(endpoint uint32, dir bpf.Direction, peers []bpf.PeerPolicy) (bpf.SyncStats, error)
}

// errFQDNSlow: the incremental path does not apply; recompute in full.
var errFQDNSlow = errors.New("not incremental")

// learnQueued implements the answers LearnFQDN queued without a full
// compute when it can (fqdnFast); false: the caller recomputes.
func (a *Agent) learnQueued(ctx context.Context, snap *policy.Snapshot, current *source.Update) (*policy.Snapshot, bool) {
	f := a.fq
	f.mu.Lock()
	queue, gen := f.queue, f.wanted
	f.queue = nil
	byName := map[string]int{}
	var changes []policy.FQDNName
	for _, q := range queue {
		i, ok := byName[q.Name]
		if !ok {
			i = len(changes)
			byName[q.Name] = i
			changes = append(changes, policy.FQDNName{Name: q.Name, IPs: slices.Clone(f.have[q.Name])})
		}
		for _, ip := range q.IPs {
			if !slices.Contains(changes[i].IPs, ip) {
				changes[i].IPs = append(changes[i].IPs, ip)
			}
		}
	}
	f.mu.Unlock()
	return a.fqdnFast(ctx, snap, current, changes, gen)
}

// expireFast removes expired names (the cache's names differ from those
// implemented) without a full compute when it can; false: the caller
// recomputes.
func (a *Agent) expireFast(ctx context.Context, snap *policy.Snapshot, current *source.Update) (*policy.Snapshot, bool) {
	names := a.cfg.FQDN.FQDNNames()
	f := a.fq
	f.mu.Lock()
	var changes []policy.FQDNName
	seen := make(map[string]bool, len(names))
	for _, n := range names {
		seen[n.Name] = true
		if !slices.Equal(n.IPs, f.have[n.Name]) {
			changes = append(changes, n)
		}
	}
	for n := range f.have {
		if !seen[n] {
			changes = append(changes, policy.FQDNName{Name: n})
		}
	}
	gen := f.done
	f.mu.Unlock()
	return a.fqdnFast(ctx, snap, current, changes, gen)
}

// fqdnFast implements FQDN cache changes (each name's addresses now)
// incrementally: policy.Snapshot.UpdateFQDN, then only the ipcache entries
// and the endpoints' policies that changed are written. When the update
// touches the proxies' resources (L7 rules on toFQDNs) it implements the
// new snapshot with a whole apply, still without a compute. It marks the
// answers up to gen implemented; false: nothing was done, recompute.
func (a *Agent) fqdnFast(ctx context.Context, snap *policy.Snapshot, current *source.Update, changes []policy.FQDNName, gen uint64) (*policy.Snapshot, bool) {
	if snap == nil || current == nil || len(changes) > maxFastChanges {
		return nil, false
	}
	start := a.cfg.now()
	ns, delta, err := snap.UpdateFQDN(changes)
	if err != nil {
		a.log.Debug("fqdn: full compute", "names", len(changes), "reason", err)
		return nil, false
	}
	again := false
	how := "incremental"
	if err := a.implementFQDN(ns, delta); err != nil {
		a.log.Debug("fqdn: implementing the whole snapshot", "reason", err)
		how = "apply"
		again = a.apply(ctx, ns, current)
	}
	f := a.fq
	f.mu.Lock()
	for _, c := range changes {
		if len(c.IPs) == 0 {
			delete(f.have, c.Name)
		} else {
			f.have[c.Name] = c.IPs
		}
	}
	if gen > f.done {
		f.done = gen
		close(f.cond)
		f.cond = make(chan struct{})
	}
	f.mu.Unlock()
	a.log.Debug("fqdn implemented", "how", how, "names", len(changes), "ipcache_added", len(delta.Added),
		"ipcache_removed", len(delta.Removed), "identities", len(delta.Changed), "took", a.cfg.now().Sub(start))
	if again {
		a.fqRetry = true
	}
	return ns, true
}

// implementFQDN writes what an incremental FQDN update changed: the
// removed ipcache entries, the policies of the local endpoints whose
// identity changed, then the added ipcache entries (an address maps to its
// new identity only once the policies know it). errFQDNSlow when the
// change needs the whole implement path (L7 resources, an endpoint
// failing closed, a rejected entry), before anything was written.
func (a *Agent) implementFQDN(ns *policy.Snapshot, delta *policy.FQDNDelta) error {
	if delta.L7 {
		return fmt.Errorf("%w: L7 rules change", errFQDNSlow)
	}
	a.mu.Lock()
	local, failures, rules := a.st.local, a.st.failures, a.st.rules
	a.mu.Unlock()
	if a.lastPolicies == nil {
		return fmt.Errorf("%w: no datapath state yet", errFQDNSlow)
	}
	changed := map[policy.Identity]bool{}
	for _, id := range delta.Changed {
		changed[id] = true
	}
	var subset []bpftranslate.LocalEndpoint
	for _, ep := range local {
		if !changed[ep.Identity] {
			continue
		}
		if slices.ContainsFunc(failures, func(f source.EndpointFailure) bool { return f.Endpoint == ep.Key() }) {
			return fmt.Errorf("%w: endpoint %s fails closed", errFQDNSlow, ep.Key())
		}
		subset = append(subset, ep)
	}
	// Per changed endpoint direction, the peers whose entries change:
	// each added identity with its entries (allows and denies only:
	// redirects made delta.L7 true), each removed identity with none.
	// Both the policy and the entries in force are sorted by peer, so
	// no direction is scanned.
	added := uniqueIDs(delta.Added)
	removedIDs := uniqueIDs(delta.Removed)
	var writes []fqdnPolicyWrite
	for _, ep := range subset {
		old, ok := a.lastPolicies[uint32(ep.Ifindex)]
		pol := ns.Policy(ep.Identity)
		if !ok || pol == nil {
			return fmt.Errorf("%w: endpoint %s has no policy in force", errFQDNSlow, ep.Key())
		}
		w := fqdnPolicyWrite{policy: old}
		// The entries in force were accepted: check only those added
		// (CheckPolicy of the whole policy compiles every entry, ~10 ms
		// at 10k cached names).
		check := bpf.EndpointPolicy{Endpoint: old.Endpoint}
		for di, dir := range []policy.Direction{policy.Ingress, policy.Egress} {
			entries := pol.Direction(dir).Entries
			bd := &w.policy.Ingress
			if dir == policy.Egress {
				bd = &w.policy.Egress
			}
			var peers []bpf.PeerPolicy
			var add []bpf.PolicyEntry
			for _, id := range added {
				run := peerRun(entries, id, func(e policy.Entry) policy.Identity { return e.Peer })
				if len(run) == 0 {
					continue
				}
				bes := make([]bpf.PolicyEntry, 0, len(run))
				for _, e := range run {
					be, ok := bpftranslate.Entry(e)
					if !ok {
						return fmt.Errorf("%w: a redirect for identity %d", errFQDNSlow, e.Peer)
					}
					if len(e.Origins) > 0 {
						if _, known := rules[be.RuleID]; !known {
							return fmt.Errorf("%w: new rule ids", errFQDNSlow)
						}
					}
					bes = append(bes, be)
				}
				peers = append(peers, bpf.PeerPolicy{Peer: bpf.Identity(id), Entries: bes})
				add = append(add, bes...)
			}
			for _, id := range removedIDs {
				if len(peerRun(bd.Entries, bpf.Identity(id), func(e bpf.PolicyEntry) bpf.Identity { return e.Peer })) > 0 {
					peers = append(peers, bpf.PeerPolicy{Peer: bpf.Identity(id)})
				}
			}
			if len(peers) == 0 {
				continue
			}
			slices.SortFunc(peers, func(a, b bpf.PeerPolicy) int { return cmp.Compare(a.Peer, b.Peer) })
			if dir == policy.Egress {
				check.Egress.Entries = add
			} else {
				check.Ingress.Entries = add
			}
			w.peers[di] = peers
			bd.Entries = a.fq.withPeers(old.Endpoint, di, bd.Entries, peers)
		}
		if err := a.dp.CheckPolicy(check); err != nil {
			return fmt.Errorf("%w: endpoint %d: %v", errFQDNSlow, old.Endpoint, err)
		}
		writes = append(writes, w)
	}
	hosts := map[netip.Prefix]bool{}
	for _, e := range bpftranslate.IPCache(&policy.Snapshot{}, a.lastHosts) {
		hosts[e.Prefix] = true
	}
	notHost := func(es []policy.IPCacheEntry) []bpf.IPCacheEntry {
		return slices.DeleteFunc(bpftranslate.IPCache(&policy.Snapshot{IPCache: es}, nil), func(e bpf.IPCacheEntry) bool { return hosts[e.Prefix] })
	}
	addedIPC, removedIPC := notHost(delta.Added), notHost(delta.Removed)
	for _, w := range writes {
		a.lastPolicies[w.policy.Endpoint] = w.policy
	}
	if err := a.writeFQDN(addedIPC, removedIPC, writes, ns); err != nil {
		// Some of it may be written: the whole path rewrites it all.
		a.lastPolicies, a.lastIPCache, a.lastIPCacheAs = nil, nil, nil
		return fmt.Errorf("%w: %v", errFQDNSlow, err)
	}
	a.ipcacheWritten(addedIPC, removedIPC)
	a.mu.Lock()
	a.st.snap = ns
	a.mu.Unlock()
	a.flowStale = true
	return nil
}

// fqdnPolicyWrite is one endpoint's incremental FQDN change: its whole
// policy after (what lastPolicies records) and, per direction (ingress,
// egress), the peers whose entries change.
type fqdnPolicyWrite struct {
	policy bpf.EndpointPolicy
	peers  [2][]bpf.PeerPolicy
}

// uniqueIDs: the sorted distinct identities of es.
func uniqueIDs(es []policy.IPCacheEntry) []policy.Identity {
	ids := make([]policy.Identity, 0, len(es))
	for _, e := range es {
		ids = append(ids, e.Identity)
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

// peerRun: the entries of peer in es (sorted by peer).
func peerRun[E any, I cmp.Ordered](es []E, peer I, of func(E) I) []E {
	lo, _ := slices.BinarySearchFunc(es, peer, func(e E, id I) int { return cmp.Compare(of(e), id) })
	hi := lo
	for hi < len(es) && of(es[hi]) == peer {
		hi++
	}
	return es[lo:hi]
}

// withPeers returns entries (sorted by peer) with the entries of the
// given peers (sorted, distinct) replaced by theirs. New peers numbered
// after every other (a new FQDN identity, the common case) append in the
// spare room of an array the previous call made (amortised, no copy of
// the direction); anything else merges into a new array. Arrays handed
// out are never written below the length handed out. Called from the run
// loop only.
func (f *fqdnState) withPeers(endpoint uint32, dir int, entries []bpf.PolicyEntry, peers []bpf.PeerPolicy) []bpf.PolicyEntry {
	k := fqdnTailKey{endpoint, dir}
	own := f.tails[k]
	appendOnly := len(entries) > 0 && len(own) == len(entries) && &own[0] == &entries[0] &&
		peers[0].Peer > entries[len(entries)-1].Peer
	for _, pp := range peers {
		appendOnly = appendOnly && len(pp.Entries) > 0
	}
	var out []bpf.PolicyEntry
	if appendOnly {
		out = entries
		for _, pp := range peers {
			out = append(out, pp.Entries...)
		}
	} else {
		n := len(entries)
		for _, pp := range peers {
			n += len(pp.Entries)
		}
		out = make([]bpf.PolicyEntry, 0, n+n/4+16)
		i := 0
		for j := 0; j < len(entries); {
			peer := entries[j].Peer
			for i < len(peers) && peers[i].Peer < peer {
				out = append(out, peers[i].Entries...)
				i++
			}
			run := peerRun(entries[j:], peer, func(e bpf.PolicyEntry) bpf.Identity { return e.Peer })
			j += len(run)
			if i < len(peers) && peers[i].Peer == peer {
				out = append(out, peers[i].Entries...) // replaced (none: removed)
				i++
				continue
			}
			out = append(out, run...)
		}
		for ; i < len(peers); i++ {
			out = append(out, peers[i].Entries...)
		}
	}
	if f.tails == nil {
		f.tails = map[fqdnTailKey][]bpf.PolicyEntry{}
	}
	f.tails[k] = out
	return out
}

type fqdnTailKey struct {
	endpoint uint32
	dir      int
}

func (a *Agent) writeFQDN(added, removed []bpf.IPCacheEntry, writes []fqdnPolicyWrite, ns *policy.Snapshot) error {
	if dp, ok := a.dp.(fqdnDatapath); ok {
		var gone []netip.Prefix
		for _, e := range removed {
			gone = append(gone, e.Prefix)
		}
		if len(gone) > 0 {
			if _, err := dp.UpdateIPCache(nil, gone); err != nil {
				return fmt.Errorf("ipcache: %w", err)
			}
		}
		var whole []bpf.EndpointPolicy
		pdp, byPeers := a.dp.(peerDatapath)
		for _, w := range writes {
			if !byPeers {
				whole = append(whole, w.policy)
				continue
			}
			for di, dir := range []bpf.Direction{bpf.Ingress, bpf.Egress} {
				if len(w.peers[di]) == 0 {
					continue
				}
				_, err := pdp.UpdatePolicyPeers(w.policy.Endpoint, dir, w.peers[di])
				if errors.Is(err, bpf.ErrWholePolicyNeeded) {
					whole = append(whole, w.policy) // both directions
					break
				}
				if err != nil {
					return fmt.Errorf("policy: %w", err)
				}
			}
		}
		if len(whole) > 0 {
			if _, err := dp.UpdatePolicy(whole); err != nil {
				return fmt.Errorf("policy: %w", err)
			}
		}
		if len(added) > 0 {
			if _, err := dp.UpdateIPCache(added, nil); err != nil {
				return fmt.Errorf("ipcache: %w", err)
			}
		}
		return nil
	}
	// A datapath that only syncs whole maps: still no compute.
	all := make([]bpf.EndpointPolicy, 0, len(a.lastPolicies))
	for _, id := range slices.Sorted(maps.Keys(a.lastPolicies)) {
		all = append(all, a.lastPolicies[id])
	}
	if _, err := a.dp.SyncIPCache(bpftranslate.IPCache(ns, a.lastHosts)); err != nil {
		return fmt.Errorf("sync ipcache: %w", err)
	}
	if _, err := a.dp.SyncPolicy(all); err != nil {
		return fmt.Errorf("sync policy: %w", err)
	}
	return nil
}
