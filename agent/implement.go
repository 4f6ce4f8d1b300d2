package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unsafe"

	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/bpftranslate"
	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/redirect"
	"github.com/l7gate/l7gate/source"
	"github.com/l7gate/l7gate/xds/translate"
)

// Failure steps (source.EndpointFailure.Step).
const (
	StepDatapathPolicy = "datapath policy" // entries rejected: the direction is default-deny
	StepAttach         = "attach"          // the veth could not be attached (retried)
	StepProxyPort      = "proxy port"      // no proxy port: redirects dropped
	StepProxyConfig    = "proxy config"    // resources could not be rendered: redirects dropped
	StepProxyRejected  = "proxy rejected"  // a proxy NACKed: redirects dropped
	StepProxyACK       = "proxy ACK"       // not ACKed (yet): redirects dropped (retried)
	StepProxyListener  = "proxy listener"  // a proxy's listener not in the socket map (retried)
)

// retried: failures that may clear without a new source revision.
func retried(step string) bool {
	return step == StepAttach || step == StepProxyACK || step == StepProxyListener
}

// apply implements snap (computed from u) on this node: endpoints and
// L3/L4 first, then the proxies, then redirects. It returns whether the
// agent should try again soon (a node-wide error, or endpoints waiting for
// a proxy or an attach). Errors confined to endpoints do not stop it.
func (a *Agent) apply(ctx context.Context, snap *policy.Snapshot, u *source.Update) bool {
	start := a.cfg.now()
	tm := &a.timing
	tm.find, tm.sync, tm.push, tm.inForce, tm.ports, tm.services, tm.status = 0, 0, 0, 0, 0, 0, 0
	lap := func(d *time.Duration) func() {
		t0 := a.cfg.now()
		return func() { *d += a.cfg.now().Sub(t0) }
	}
	rev := a.revision()
	done := lap(&tm.find)
	local, err := a.cfg.Host.LocalEndpoints(snap.Endpoints)
	done()
	if err != nil {
		a.fail(fmt.Errorf("revision %d: find local endpoints: %w", rev, err))
		return true
	}
	done = lap(&tm.ports)
	ports, portErrs := a.allocatePorts(snap, local)
	done()

	// 1. Endpoints: attached and L3/L4 synced, redirects only to what the
	// proxies already ACKed.
	done = lap(&tm.sync)
	_, err = a.syncDatapath(snap, local, ports, portErrs, nil)
	done()
	if err != nil {
		a.fail(fmt.Errorf("revision %d: %w", rev, err))
		return true
	}
	// Services once the ipcache knows their backends (services.go).
	done = lap(&tm.services)
	svcNotes := a.syncServices(u)
	done()
	// 2. The proxies.
	done = lap(&tm.push)
	a.push(ctx, snap, local, ports, portErrs)
	done()
	if ctx.Err() != nil {
		return false
	}
	// Pods may have come or gone while the proxies were busy.
	done = lap(&tm.find)
	local, err = a.cfg.Host.LocalEndpoints(snap.Endpoints)
	done()
	if err != nil {
		a.fail(fmt.Errorf("revision %d: find local endpoints: %w", rev, err))
		return true
	}
	// 3. Redirects to what they ACKed; the rest fails closed, named.
	fs := newFailures()
	done = lap(&tm.sync)
	stats, err := a.syncDatapath(snap, local, ports, portErrs, fs)
	done()
	if err != nil {
		a.fail(fmt.Errorf("revision %d: %w", rev, err))
		return true
	}
	// status: releasing ports, the status, metrics and the reporter.
	done = lap(&tm.status)
	for k := range a.cfg.Ports.Allocations() {
		if _, ok := ports[k]; !ok {
			if err := a.cfg.Ports.Release(k); err != nil {
				a.log.Warn("release proxy port", "listener", k.String(), "error", err)
			}
		}
	}
	failures := fs.list()
	a.mu.Lock()
	changedRev := a.st.implementedRevision != rev
	changedFailures := !slices.EqualFunc(a.st.failures, failures, func(x, y source.EndpointFailure) bool {
		return x.Endpoint == y.Endpoint && x.Step == y.Step && x.Error == y.Error && slices.Equal(x.Directions, y.Directions)
	})
	a.st.implementedRevision = rev
	a.st.lastError = ""
	a.st.errors = errorStrings(u.Errors)
	a.st.warnings = append(append(append(warningStrings(u.Objects), snap.Warnings...), fs.warnings...), svcNotes...)
	a.st.snap, a.st.local, a.st.ports, a.st.rules = snap, local, ports, stats.rules
	a.st.failures = failures
	a.st.policies = policyStatuses(u.Objects, rev)
	a.mu.Unlock()
	a.implemented(rev, a.cfg.now().Sub(start), snap, local, stats, failures)
	if a.cfg.Reporter != nil {
		a.cfg.Reporter.Implemented(ctx, rev, *u, failures)
	}
	done()
	if changedFailures {
		// logged when they change, not on every retry
		for _, f := range failures {
			a.log.Warn("endpoint fails closed", "endpoint", f.Endpoint, "step", f.Step, "directions", strings.Join(f.Directions, ","), "error", f.Error)
		}
	}
	if changedRev {
		// took: the agent's work on the revision, compute and this
		// apply (issue 19's "agent pick-up → implemented"; until w12 it
		// left the compute out). split says where it went.
		a.log.Info("policy implemented", "revision", rev, "endpoints", len(local), "identities", len(snap.Identities),
			"policies", len(u.Objects.Policies), "ipcache", stats.ipcache, "policy", stats.policy, "failures", len(failures),
			"took", (tm.compute + a.cfg.now().Sub(start)).Round(1e6), "split", tm.String(a.cfg.now()))
		for _, p := range u.Objects.Policies {
			a.log.Info("policy implemented", "policy", p.Name(), "kind", p.Kind, "revision", rev)
		}
		for _, e := range u.Errors {
			a.log.Warn("invalid object not applied", "error", e)
		}
	}
	return slices.ContainsFunc(failures, func(f source.EndpointFailure) bool { return retried(f.Step) })
}

// allocatePorts gives every (direction, parser) the local endpoints
// redirect to, and some proxy serves, a proxy port. A failed allocation
// is kept per listener: its redirects fail closed.
//
// A port this agent allocated (or refreshed) less than portRefreshEvery
// ago is taken as it is: Allocate refreshes the allocation's time in the
// persisted state, a file written and renamed per listener, which took
// 3-12 ms of every revision on a loaded node (the "ports" step).
func (a *Agent) allocatePorts(snap *policy.Snapshot, local []bpftranslate.LocalEndpoint) (map[redirect.PortKey]uint16, map[redirect.PortKey]error) {
	ports := map[redirect.PortKey]uint16{}
	errs := map[redirect.PortKey]error{}
	var held map[redirect.PortKey]uint16
	now := a.cfg.now()
	for _, l := range translate.RequiredListeners(snap, policyEndpoints(local)) {
		if !proxyParser(l.Parser) {
			continue
		}
		k := portKey(l.Direction, l.Parser)
		if at, ok := a.portsRefreshed[k]; ok && now.Sub(at) < portRefreshEvery && now.Sub(at) >= 0 {
			if held == nil {
				held = a.cfg.Ports.Allocations()
			}
			if p, ok := held[k]; ok {
				ports[k] = p
				continue
			}
		}
		p, err := a.cfg.Ports.Allocate(k)
		if err != nil {
			errs[k] = err
			continue
		}
		ports[k] = p
		if a.portsRefreshed == nil {
			a.portsRefreshed = map[redirect.PortKey]time.Time{}
		}
		a.portsRefreshed[k] = now
	}
	return ports, errs
}

// portRefreshEvery: how often allocatePorts refreshes a port's
// allocation in the persisted state (redirect.PortAllocatorConfig.Restore,
// 15 minutes by default, is how old an allocation a restarted agent still
// restores).
const portRefreshEvery = time.Minute

func portKey(dir policy.Direction, parser string) redirect.PortKey {
	return redirect.PortKey{Direction: dir.String(), Parser: parser}
}

// proxyParser reports whether some proxy serves parser.
func proxyParser(parser string) bool {
	return parser == policy.ParserHTTP || parser == policy.ParserKafka || parser == policy.ParserDNS
}

func policyEndpoints(local []bpftranslate.LocalEndpoint) []policy.Endpoint {
	out := make([]policy.Endpoint, len(local))
	for i, l := range local {
		out[i] = l.Endpoint
	}
	return out
}

type syncStats struct {
	ipcache, policy bpf.SyncStats
	rules           map[uint32]policy.Provenance
}

// syncDatapath makes the datapath enforce snap on local: it detaches gone
// endpoints, syncs the ipcache and every endpoint's entries (a direction
// whose entries the datapath rejects becomes default-deny), then attaches
// new endpoints, so a veth is attached only once its policy is in the
// maps. Redirects go to proxy ports the proxies ACKed (a.ready), or become
// drops. With fs set, what failed is recorded there; an error is
// node-wide (nothing new is in force).
func (a *Agent) syncDatapath(snap *policy.Snapshot, local []bpftranslate.LocalEndpoint, ports map[redirect.PortKey]uint16,
	portErrs map[redirect.PortKey]error, fs *failures) (syncStats, error) {
	if fs == nil {
		fs = newFailures() // provisional: the final sync records them
	}
	a.detachGone(local)
	res := bpftranslate.Policy(snap, local, func(ep bpftranslate.LocalEndpoint, dir policy.Direction, parser string) (uint16, bool) {
		port, ok := ports[portKey(dir, parser)]
		return port, ok && a.ready.redirects(a.consumerOf(parser), ep.Key(), dir, portKey(dir, parser), port)
	})
	byID := map[uint32]bpftranslate.LocalEndpoint{}
	for _, ep := range local {
		byID[uint32(ep.Ifindex)] = ep
	}
	prevPolicies, prevIPCache, prevList := a.lastPolicies, a.lastIPCache, a.lastIPCacheAs
	same := newDirCompare()
	for i := range res.Policies {
		p := &res.Policies[i]
		ep := byID[p.Endpoint]
		prev, hadPrev := prevPolicies[p.Endpoint]
		for _, dir := range []policy.Direction{policy.Ingress, policy.Egress} {
			one := bpf.EndpointPolicy{Endpoint: p.Endpoint}
			dp, was := &p.Ingress, prev.Ingress
			if dir == policy.Egress {
				dp, was = &p.Egress, prev.Egress
			}
			if hadPrev && same.equal(*dp, was) {
				continue // in force: the datapath accepted it
			}
			if dir == policy.Ingress {
				one.Ingress = *dp
			} else {
				one.Egress = *dp
			}
			if err := a.dp.CheckPolicy(one); err != nil {
				*dp = bpftranslate.DenyAll()
				fs.add(ep, StepDatapathPolicy, dir, err.Error(), policiesOf(snap, ep, dir, false))
			}
		}
	}
	for _, d := range res.Dropped {
		step, why := a.dropReason(d, ports, portErrs)
		if step == "" {
			fs.warnings = append(fs.warnings, "endpoint "+d.Endpoint.Key()+": "+why+"; that traffic is dropped")
			continue
		}
		fs.add(d.Endpoint, step, d.Direction, why, refsOf(d.Origins))
	}
	memo := &a.ipcMemo
	hosts, err := a.cfg.Host.Addresses(memo.podAddr(snap))
	if err != nil {
		return syncStats{}, fmt.Errorf("list node addresses: %w", err)
	}
	st := syncStats{rules: res.Rules}
	// What is in force, for the incremental FQDN path (fqdn.go) and the
	// next sync; unknown if a sync fails.
	a.lastPolicies, a.lastIPCache, a.lastIPCacheAs, a.lastHosts = nil, nil, nil, hosts
	ipc := memo.translated(snap, hosts)
	partial, canPartial := a.dp.(fqdnDatapath)
	var inc *datapathDelta
	if canPartial && prevPolicies != nil && (prevIPCache != nil || prevList != nil) && a.cfg.now().Sub(a.lastFullSync) < fullSyncEvery {
		inc = diffDatapath(prevPolicies, prevIPCache, prevList, res.Policies, ipc, same)
	}
	if inc != nil {
		// Only what changed: no endpoint went away, no prefix is
		// ambiguous (the whole sync reports that).
		if len(inc.upsert)+len(inc.remove) > 0 {
			if st.ipcache, err = partial.UpdateIPCache(inc.upsert, inc.remove); err != nil {
				return st, fmt.Errorf("update ipcache: %w", err)
			}
		}
		st.ipcache.Unchanged += len(ipc) - len(inc.upsert)
		a.lastIPCacheAs = ipc // in force: its entries (no map kept)
		if len(inc.changed) > 0 {
			st.policy, err = partial.UpdatePolicy(inc.changed)
		}
		st.policy.Unchanged += len(res.Policies) - len(inc.changed)
	} else {
		if st.ipcache, err = a.dp.SyncIPCache(ipc); err != nil {
			return st, fmt.Errorf("sync ipcache: %w", err)
		}
		a.lastIPCacheAs = ipc
		a.lastFullSync = a.cfg.now()
		st.policy, err = a.dp.SyncPolicy(res.Policies)
	}
	if se := (*bpf.SyncError)(nil); err == nil || errors.As(err, &se) {
		a.lastPolicies = make(map[uint32]bpf.EndpointPolicy, len(res.Policies))
		for _, p := range res.Policies {
			a.lastPolicies[p.Endpoint] = p
		}
		if se != nil {
			for _, f := range se.Failed {
				delete(a.lastPolicies, f.Endpoint) // written fail-closed: write again next time
			}
		}
	}
	if err != nil {
		// Directions the datapath could not write (e.g. the policy map
		// is full) failed closed there; the others are in force.
		var se *bpf.SyncError
		if !errors.As(err, &se) {
			return st, fmt.Errorf("sync datapath policy: %w", err)
		}
		for _, f := range se.Failed {
			ep, ok := byID[f.Endpoint]
			if !ok {
				continue
			}
			dir := policy.Ingress
			if f.Direction == bpf.Egress {
				dir = policy.Egress
			}
			fs.add(ep, StepDatapathPolicy, dir, f.Err.Error(), policiesOf(snap, ep, dir, false))
		}
	}
	a.attachNew(local, fs)
	return st, nil
}

// ipcacheMemo: the pod addresses of the last snapshot and its translated
// ipcache (read-only: the datapath and the diff only read them). A
// revision syncs twice (endpoints, then redirects), and a CNP change
// leaves both alone: at 11k pods rebuilding the 11k-address set and
// translating the 11k entries again cost ~5 % of the agent's CPU per
// change. Both are kept while their inputs are equal, compared entry by
// entry (TestIPCacheMemoEqualsTranslation).
type ipcacheMemo struct {
	// isPod: whether each address asked about is one of endpoints'. A
	// set of every endpoint's address for the few the node has was ~50 B
	// of heap per pod.
	endpoints []policy.Endpoint
	isPod     map[netip.Addr]bool
	// ipc: bpftranslate.IPCache of in and hosts.
	in    []policy.IPCacheEntry
	hosts []netip.Addr
	ipc   []bpf.IPCacheEntry
}

// podAddr returns whether an address is one of snap's endpoints'
// (remembered per address while the endpoints' addresses are the same).
func (m *ipcacheMemo) podAddr(snap *policy.Snapshot) func(netip.Addr) bool {
	if m.isPod == nil || !sameEndpointAddrs(m.endpoints, snap.Endpoints) {
		m.isPod = map[netip.Addr]bool{}
	}
	m.endpoints = snap.Endpoints
	eps, known := snap.Endpoints, m.isPod
	return func(a netip.Addr) bool {
		is, ok := known[a]
		if !ok {
			is = slices.ContainsFunc(eps, func(ep policy.Endpoint) bool { return slices.Contains(ep.IPs, a) })
			known[a] = is
		}
		return is
	}
}

// sameEndpointAddrs: a and b have the same addresses, endpoint by
// endpoint (snapshots are read-only: the same array holds the same).
func sameEndpointAddrs(a, b []policy.Endpoint) bool {
	if len(a) != len(b) {
		return false
	}
	if len(a) == 0 || &a[0] == &b[0] {
		return true
	}
	for i := range a {
		if !slices.Equal(a[i].IPs, b[i].IPs) {
			return false
		}
	}
	return true
}

// translated returns bpftranslate.IPCache(snap, hosts).
func (m *ipcacheMemo) translated(snap *policy.Snapshot, hosts []netip.Addr) []bpf.IPCacheEntry {
	if m.ipc != nil && slices.Equal(m.hosts, hosts) && slices.Equal(m.in, snap.IPCache) {
		m.in = snap.IPCache
		return m.ipc
	}
	m.in, m.hosts, m.ipc = snap.IPCache, slices.Clone(hosts), bpftranslate.IPCache(snap, hosts)
	return m.ipc
}

// fullSyncEvery: how often syncDatapath makes the whole maps exact even
// when it knows what is in force (a safety net: between full syncs it
// writes only the endpoints and prefixes whose translation changed).
const fullSyncEvery = 5 * time.Minute

// ipcacheWritten records ipcache entries written outside syncDatapath
// (the incremental FQDN path), so its next diff starts from them.
func (a *Agent) ipcacheWritten(upsert []bpf.IPCacheEntry, remove []bpf.IPCacheEntry) {
	if a.lastIPCache == nil {
		if a.lastIPCacheAs == nil {
			return // unknown
		}
		a.lastIPCache = ipcacheMap(a.lastIPCacheAs)
	}
	a.lastIPCacheAs = nil // no longer what is in force: the map is
	for _, e := range remove {
		delete(a.lastIPCache, e.Prefix)
	}
	for _, e := range upsert {
		a.lastIPCache[e.Prefix] = e.Identity
	}
}

// datapathDelta is what changed since the last sync.
type datapathDelta struct {
	changed []bpf.EndpointPolicy // endpoints whose policy changed (or new)
	upsert  []bpf.IPCacheEntry
	remove  []netip.Prefix
}

// diffDatapath compares what is in force with what is desired; nil when
// only a whole sync will do (an endpoint went away, or a prefix has two
// identities: SyncIPCache rejects that).
// The ipcache in force is prevList when set (an equal list means no
// prefix changed: no map built), else prevIPCache.
func diffDatapath(prevPolicies map[uint32]bpf.EndpointPolicy, prevIPCache map[netip.Prefix]bpf.Identity, prevList []bpf.IPCacheEntry,
	policies []bpf.EndpointPolicy, ipc []bpf.IPCacheEntry, same *dirCompare) *datapathDelta {
	d := &datapathDelta{}
	if prevList != nil {
		if slices.Equal(prevList, ipc) {
			prevIPCache = nil // nothing to diff
		} else {
			prevIPCache = ipcacheMap(prevList)
		}
	}
	if prevIPCache != nil && !d.diffIPCache(prevIPCache, ipc) {
		return nil
	}
	want := make(map[uint32]bool, len(policies))
	for _, p := range policies {
		want[p.Endpoint] = true
		old, ok := prevPolicies[p.Endpoint]
		if !ok || !same.equal(old.Ingress, p.Ingress) || !same.equal(old.Egress, p.Egress) {
			d.changed = append(d.changed, p)
		}
	}
	for id := range prevPolicies {
		if !want[id] {
			return nil
		}
	}
	return d
}

// diffIPCache fills the ipcache part of d; false when a prefix has two
// identities.
func (d *datapathDelta) diffIPCache(prevIPCache map[netip.Prefix]bpf.Identity, ipc []bpf.IPCacheEntry) bool {
	want := make(map[netip.Prefix]bpf.Identity, len(ipc))
	for _, e := range ipc {
		if id, dup := want[e.Prefix]; dup && id != e.Identity {
			return false
		}
		want[e.Prefix] = e.Identity
	}
	for p, id := range want {
		if old, ok := prevIPCache[p]; !ok || old != id {
			d.upsert = append(d.upsert, bpf.IPCacheEntry{Prefix: p, Identity: id})
		}
	}
	for p := range prevIPCache {
		if _, ok := want[p]; !ok {
			d.remove = append(d.remove, p)
		}
	}
	slices.SortFunc(d.upsert, func(x, y bpf.IPCacheEntry) int { return comparePrefix(x.Prefix, y.Prefix) })
	slices.SortFunc(d.remove, comparePrefix)
	return true
}

func comparePrefix(x, y netip.Prefix) int {
	return cmp.Or(x.Addr().Compare(y.Addr()), cmp.Compare(x.Bits(), y.Bits()))
}

func ipcacheMap(ipc []bpf.IPCacheEntry) map[netip.Prefix]bpf.Identity {
	m := make(map[netip.Prefix]bpf.Identity, len(ipc))
	for _, e := range ipc {
		m[e.Prefix] = e.Identity
	}
	return m
}

// dirCompare compares translated directions within one sync.
// bpftranslate shares one translation between the endpoints whose
// identities share a computed direction (no redirects), so a sync compares
// the same pair of arrays for many endpoints: each distinct pair (array
// and length on either side) is compared once and the answer reused. The
// arrays are not modified while a sync runs. With 1000 endpoints and a
// few hundred entries each, the entry-by-entry compare per endpoint was
// the largest item of a policy change's datapath sync.
type dirCompare struct {
	memo map[dirPair]bool
}

type dirPair struct {
	x, y unsafe.Pointer
	n    int
}

func newDirCompare() *dirCompare { return &dirCompare{memo: map[dirPair]bool{}} }

// equal: the same flags and equal entries.
func (c *dirCompare) equal(x, y bpf.DirectionPolicy) bool {
	if x.Enforced != y.Enforced || x.AuditDefault != y.AuditDefault || len(x.Entries) != len(y.Entries) {
		return false
	}
	if len(x.Entries) == 0 || unsafe.SliceData(x.Entries) == unsafe.SliceData(y.Entries) {
		return true
	}
	k := dirPair{unsafe.Pointer(unsafe.SliceData(x.Entries)), unsafe.Pointer(unsafe.SliceData(y.Entries)), len(x.Entries)}
	eq, ok := c.memo[k]
	if !ok {
		eq = slices.Equal(x.Entries, y.Entries)
		c.memo[k] = eq
	}
	return eq
}

// detachGone detaches the datapath from endpoints no longer local.
func (a *Agent) detachGone(local []bpftranslate.LocalEndpoint) {
	want := map[int]bool{}
	for _, ep := range local {
		want[ep.Ifindex] = true
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, m := range []map[int]bpftranslate.LocalEndpoint{a.attached, a.halfAttached} {
		for idx, ep := range m {
			if want[idx] {
				continue
			}
			if err := a.dp.DetachEndpoint(idx); err != nil && !errors.Is(err, net.ErrClosed) {
				a.log.Warn("detach endpoint", "endpoint", ep.Key(), "error", err)
			}
			delete(m, idx)
		}
	}
}

// attachNew attaches the datapath to endpoints not attached yet (their
// policy is already in the maps).
func (a *Agent) attachNew(local []bpftranslate.LocalEndpoint, fs *failures) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, ep := range local {
		if cur, ok := a.attached[ep.Ifindex]; ok && cur.Name == ep.Name && cur.Namespace == ep.Namespace {
			continue
		}
		if err := a.cfg.Host.PrepareEndpoint(ep.Device); err != nil {
			a.log.Warn("endpoint sysctls", "endpoint", ep.Key(), "device", ep.Device, "error", err)
		}
		var ip4, ip6 netip.Addr
		for _, ip := range ep.IPs {
			if ip.Is4() && !ip4.IsValid() {
				ip4 = ip
			}
			if ip.Is6() && !ip.Is4In6() && !ip.IsLinkLocalUnicast() && !ip6.IsValid() {
				ip6 = ip // the only IPv6 source the pod may use (bpf.Endpoint)
			}
		}
		if err := a.dp.AttachEndpoint(bpf.Endpoint{ID: uint32(ep.Ifindex), Ifindex: ep.Ifindex, IPv4: ip4, IPv6: ip6}); err != nil {
			fs.add(ep, StepAttach, policy.Ingress, fmt.Sprintf("%s: %v", ep.Device, err), nil)
			fs.add(ep, StepAttach, policy.Egress, fmt.Sprintf("%s: %v", ep.Device, err), nil)
			a.halfAttached[ep.Ifindex] = ep
			continue
		}
		delete(a.halfAttached, ep.Ifindex)
		a.log.Info("endpoint attached", "endpoint", ep.Key(), "device", ep.Device, "identity", ep.Identity)
		a.attached[ep.Ifindex] = ep
	}
}

// dropReason says why a redirect became a drop: a failure step and
// message, or no step for a parser no proxy serves (a warning, as the
// policy cannot be enforced here at all).
func (a *Agent) dropReason(d bpftranslate.DroppedRedirect, ports map[redirect.PortKey]uint16, portErrs map[redirect.PortKey]error) (string, string) {
	k := portKey(d.Direction, d.Parser)
	if !proxyParser(d.Parser) {
		return "", "no proxy serves L7 parser " + d.Parser
	}
	if err, ok := portErrs[k]; ok {
		return StepProxyPort, err.Error()
	}
	port := ports[k]
	return a.ready.why(a.consumerOf(d.Parser), d.Endpoint.Key(), d.Direction, k, port)
}

// failures collects what failed per endpoint, merged by step and error.
type failures struct {
	byKey    map[string]*source.EndpointFailure
	warnings []string
}

func newFailures() *failures { return &failures{byKey: map[string]*source.EndpointFailure{}} }

func (f *failures) add(ep bpftranslate.LocalEndpoint, step string, dir policy.Direction, msg string, refs []source.PolicyRef) {
	k := ep.Key() + "\x00" + step + "\x00" + msg
	e := f.byKey[k]
	if e == nil {
		e = &source.EndpointFailure{Endpoint: ep.Key(), Step: step, Error: msg}
		f.byKey[k] = e
	}
	if !slices.Contains(e.Directions, dir.String()) {
		e.Directions = append(e.Directions, dir.String())
		slices.Sort(e.Directions)
	}
	for _, r := range refs {
		if !slices.Contains(e.Policies, r) {
			e.Policies = append(e.Policies, r)
		}
	}
	slices.SortFunc(e.Policies, comparePolicyRef)
}

// list returns the failures sorted by endpoint, step and error.
func (f *failures) list() []source.EndpointFailure {
	out := make([]source.EndpointFailure, 0, len(f.byKey))
	for _, e := range f.byKey {
		out = append(out, *e)
	}
	slices.SortFunc(out, func(x, y source.EndpointFailure) int {
		return cmp.Or(cmp.Compare(x.Endpoint, y.Endpoint), cmp.Compare(x.Step, y.Step), cmp.Compare(x.Error, y.Error))
	})
	return out
}

func comparePolicyRef(x, y source.PolicyRef) int {
	return cmp.Or(cmp.Compare(x.Kind, y.Kind), cmp.Compare(x.Name, y.Name))
}

func refsOf(ps []policy.Provenance) []source.PolicyRef {
	var out []source.PolicyRef
	for _, p := range ps {
		r := source.PolicyRef{Kind: p.PolicyKind, Name: p.Policy}
		// Rules l7gate adds itself (allow-localhost) belong to no object.
		if r.Name != "" && r.Kind != policy.KindBuiltin && !slices.Contains(out, r) {
			out = append(out, r)
		}
	}
	slices.SortFunc(out, comparePolicyRef)
	return out
}

// policiesOf names the policies behind an endpoint's entries (or only its
// L7 rule sets) in dir.
func policiesOf(snap *policy.Snapshot, ep bpftranslate.LocalEndpoint, dir policy.Direction, l7only bool) []source.PolicyRef {
	pol := snap.Policy(ep.Identity)
	if pol == nil {
		return nil
	}
	dp := pol.Direction(dir)
	var ps []policy.Provenance
	for _, rs := range dp.L7 {
		for _, r := range rs.Rules {
			ps = append(ps, r.Origin)
		}
	}
	if !l7only {
		ps = append(ps, dp.DefaultDeny...)
		for _, e := range dp.Entries {
			ps = append(ps, e.Origins...)
		}
	}
	return refsOf(ps)
}

func errorStrings(errs []error) []string {
	out := []string{}
	for _, e := range errs {
		out = append(out, e.Error())
	}
	return out
}

func warningStrings(o *policy.Objects) []string {
	var out []string
	for _, w := range o.Warnings {
		out = append(out, w.String())
	}
	return out
}

// revisionTiming: where a revision's time went, from the source update's
// arrival: the compute, then apply's steps (finding local endpoints,
// datapath syncs, xDS push and ACKs); logged with "policy implemented"
// (make bench's control-plane phase reads it).
type revisionTiming struct {
	received                  time.Time
	compute, find, sync, push time.Duration
	// inForce: the part of push spent after the completion, waiting until
	// every proxy ACKed everything (awaitInForce).
	inForce time.Duration
	// ports: allocating proxy ports; services: the service maps
	// (syncServices); status: after the last sync, releasing ports and
	// recording the revision (status, flow index, metrics, reporter).
	ports, services, status time.Duration
}

// String: "received/compute/find/sync/push/inforce/ports/services/status"
// in ms, received being the time since the update arrived (zero for a
// re-implemented revision). The l7gate-bench controlplane phase reads
// it: add fields at the end.
func (t revisionTiming) String(now time.Time) string {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d.Microseconds())/1e3) }
	var since time.Duration
	if !t.received.IsZero() {
		since = now.Sub(t.received)
	}
	return ms(since) + "/" + ms(t.compute) + "/" + ms(t.find) + "/" + ms(t.sync) + "/" + ms(t.push) + "/" + ms(t.inForce) +
		"/" + ms(t.ports) + "/" + ms(t.services) + "/" + ms(t.status)
}
