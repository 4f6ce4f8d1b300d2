package agent

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/l7gate/l7gate/agentapi"
	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/bpftranslate"
	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/internal/acceptretry"
	"github.com/l7gate/l7gate/observe"
	"github.com/l7gate/l7gate/observe/hubble"
	"github.com/l7gate/l7gate/observe/metrics"
	"github.com/l7gate/l7gate/observe/servicemap"
	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/source"
	"github.com/l7gate/l7gate/xds/server"
)

// FlowsConfig configures the flow pipeline: every datapath event, Go
// proxy access record and Envoy access-log entry becomes one enriched flow
// record, kept in a ring for the Observer API (RUN_DIR/hubble.sock) and
// handed to the sinks.
type FlowsConfig struct {
	// Capacity is how many flows the ring keeps (default 16384); Queue
	// bounds the flows waiting for enrichment (default 8192). Beyond it
	// flows are dropped and counted.
	Capacity, Queue int
	// HubbleListen, when set, also serves the Observer API on this TCP
	// address (for hubble-relay); HubbleTLS is required unless the address
	// is a loopback one.
	HubbleListen string
	HubbleTLS    *tls.Config
	// Sinks get every flow (metrics, the JSON-lines export, OTLP);
	// Runners are run for as long as the agent runs (the sinks' senders);
	// Losses name the sinks' counters for the metrics.
	Sinks   []observe.Sink
	Runners []func(context.Context) error
	Losses  []metrics.SinkLosses
	// Version is reported in flows and by ServerStatus.
	Version string
	// ServiceMap, when set, serves the live service map page
	// (observe/servicemap) on this listener, fed by the pipeline.
	ServiceMap net.Listener
}

// flowIndex is what flows are attributed with: the cluster's pods and
// identities, the datapath's rule ids and the local endpoints, as of the
// last implemented revision. It is immutable; a revision swaps it.
type flowIndex struct {
	node string
	snap *policy.Snapshot
	*flowPeers
	rules map[uint32]policy.Provenance
	local map[int]bpftranslate.LocalEndpoint
}

// flowPeers is the part of the index built from the snapshot's
// identities, endpoints and ipcache: a revision that changes none of them
// (a policy change) shares the last revision's (nextFlowIndex).
type flowPeers struct {
	// byIP: pods of the cluster by address; byIdentity: the labels of
	// every identity (for peers that are not pods).
	byIP       map[netip.Addr]*flow.Endpoint
	byIdentity map[flow.Identity]*flow.Endpoint
	// hostIDs maps /32 (and /128) ipcache entries; prefixes holds the
	// rest, longest first.
	hostIDs  map[netip.Addr]flow.Identity
	prefixes []policy.IPCacheEntry
	// What it was built from, to tell whether the next revision can
	// share it: copies (snapshots are not ours to keep unchanged), but
	// the endpoints and the ipcache, which no one changes (policy's pod
	// memo shares the endpoints between snapshots; an FQDN update
	// appends past a snapshot's ipcache, never into it, and the datapath
	// memo keeps it too: ipcacheMemo). Copies of them were ~190 B of heap
	// per pod at 11k pods.
	identities []policy.IdentityInfo
	endpoints  []policy.Endpoint
	ipcache    []policy.IPCacheEntry
	epLabels   map[flow.Identity]policy.Labels
}

func newFlowIndex(node string, snap *policy.Snapshot, local []bpftranslate.LocalEndpoint, rules map[uint32]policy.Provenance) *flowIndex {
	return nextFlowIndex(nil, node, snap, local, rules)
}

// nextFlowIndex is newFlowIndex(node, snap, local, rules), sharing prev's
// peers when snap's identities, endpoints (and their labels) and ipcache
// equal those prev was built from.
func nextFlowIndex(prev *flowIndex, node string, snap *policy.Snapshot, local []bpftranslate.LocalEndpoint, rules map[uint32]policy.Provenance) *flowIndex {
	x := &flowIndex{node: node, snap: snap, rules: rules, local: make(map[int]bpftranslate.LocalEndpoint, len(local))}
	for _, l := range local {
		x.local[l.Ifindex] = l
	}
	if snap == nil {
		x.flowPeers = &flowPeers{byIP: map[netip.Addr]*flow.Endpoint{}, byIdentity: map[flow.Identity]*flow.Endpoint{}, hostIDs: map[netip.Addr]flow.Identity{}}
		return x
	}
	epLabels := make(map[flow.Identity]policy.Labels)
	for _, ep := range snap.Endpoints {
		if _, ok := epLabels[ep.Identity]; !ok {
			epLabels[ep.Identity] = snap.Labels(ep.Identity)
		}
	}
	if prev != nil && prev.flowPeers != nil && prev.snap != nil && samePeers(prev.flowPeers, snap, epLabels) {
		x.flowPeers = prev.flowPeers
		return x
	}
	x.flowPeers = buildFlowPeers(snap, epLabels)
	return x
}

func buildFlowPeers(snap *policy.Snapshot, epLabels map[flow.Identity]policy.Labels) *flowPeers {
	x := &flowPeers{byIP: make(map[netip.Addr]*flow.Endpoint, len(snap.Endpoints)), byIdentity: make(map[flow.Identity]*flow.Endpoint, len(snap.Identities)),
		hostIDs: make(map[netip.Addr]flow.Identity, len(snap.IPCache)), epLabels: epLabels,
		identities: slices.Clone(snap.Identities), endpoints: snap.Endpoints, ipcache: snap.IPCache}
	for _, id := range snap.Identities {
		x.byIdentity[id.ID] = &flow.Endpoint{Labels: slices.Clone(id.Labels)}
	}
	// One label list per identity, shared by its endpoints (read-only,
	// as the endpoints are: every record of a peer shares one): a copy
	// per pod was ~140 B of the agent's heap per pod at 11k pods.
	strs := make(map[flow.Identity][]string, len(epLabels))
	for id, ls := range epLabels {
		strs[id] = slices.Clip(ls.Strings())
	}
	for _, ep := range snap.Endpoints {
		e := &flow.Endpoint{Namespace: ep.Namespace, Pod: ep.Name, Labels: strs[ep.Identity]}
		for _, ip := range ep.IPs {
			x.byIP[ip] = e
		}
	}
	for _, e := range snap.IPCache {
		if e.Prefix.IsSingleIP() {
			x.hostIDs[e.Prefix.Addr()] = e.Identity
		} else {
			x.prefixes = append(x.prefixes, e)
		}
	}
	slices.SortStableFunc(x.prefixes, func(a, b policy.IPCacheEntry) int { return cmp.Compare(b.Prefix.Bits(), a.Prefix.Bits()) })
	return x
}

// samePeers reports whether p was built from what snap holds.
func samePeers(p *flowPeers, snap *policy.Snapshot, epLabels map[flow.Identity]policy.Labels) bool {
	if !slices.Equal(p.ipcache, snap.IPCache) {
		return false
	}
	if !slices.EqualFunc(p.identities, snap.Identities, func(a, b policy.IdentityInfo) bool {
		return a.ID == b.ID && slices.Equal(a.Labels, b.Labels)
	}) {
		return false
	}
	if !slices.EqualFunc(p.endpoints, snap.Endpoints, func(a, b policy.Endpoint) bool {
		return a.Namespace == b.Namespace && a.Name == b.Name && a.Identity == b.Identity && slices.Equal(a.IPs, b.IPs)
	}) {
		return false
	}
	if len(p.epLabels) != len(epLabels) {
		return false
	}
	for id, ls := range epLabels {
		if old, ok := p.epLabels[id]; !ok || !slices.Equal(old, ls) {
			return false
		}
	}
	return true
}

// identityOf is the ipcache's identity of an address (world when none).
func (x *flowIndex) identityOf(a netip.Addr) flow.Identity {
	if id, ok := x.hostIDs[a]; ok {
		return id
	}
	for _, e := range x.prefixes {
		if e.Prefix.Contains(a) {
			return e.Identity
		}
	}
	return flow.IdentityWorld
}

// endpointOf describes a peer: the pod at the address, else the identity's
// labels.
func (x *flowIndex) endpointOf(a netip.Addr, id flow.Identity) *flow.Endpoint {
	if e, ok := x.byIP[a]; ok {
		return e
	}
	if e, ok := x.byIdentity[id]; ok {
		return e
	}
	if n := flow.ReservedName(id); n != "" {
		return &flow.Endpoint{Labels: []string{"reserved:" + n}}
	}
	return nil
}

// enrich completes a record on the pipeline's goroutine: node, missing
// identities (Envoy reports addresses only), the peers' pods and labels,
// the local endpoint whose policy applied, and the policies behind an L7
// default-deny that its reporter could not name.
func (a *Agent) enrich(r *flow.Record) {
	x := a.flowIdx.Load()
	if x == nil {
		x = &flowIndex{node: a.cfg.Node}
	}
	r.Node = x.node
	if x.snap == nil {
		return
	}
	if r.SrcIdentity == 0 && r.Source.IsValid() {
		r.SrcIdentity = x.identityOf(r.Source.Addr())
	}
	if r.DstIdentity == 0 && r.Destination.IsValid() {
		r.DstIdentity = x.identityOf(r.Destination.Addr())
	}
	if r.SrcEndpoint == nil {
		r.SrcEndpoint = x.endpointOf(r.Source.Addr(), r.SrcIdentity)
	}
	if r.DstEndpoint == nil {
		r.DstEndpoint = x.endpointOf(r.Destination.Addr(), r.DstIdentity)
	}
	// the endpoint whose policy applied
	self, selfID := r.DstEndpoint, r.DstIdentity
	if r.Direction == flow.Egress {
		self, selfID = r.SrcEndpoint, r.SrcIdentity
	}
	if r.Endpoint == "" && self != nil && self.Pod != "" {
		r.Endpoint = self.Namespace + "/" + self.Pod
	}
	if r.Observer != flow.ObserverDatapath && (r.Verdict == flow.VerdictDenied || r.Verdict == flow.VerdictAudit) && unattributedDefaultDeny(r.DecidedBy) {
		if pol := x.snap.Policy(selfID); pol != nil {
			if dd := pol.Direction(r.Direction).DefaultDeny; len(dd) > 0 {
				r.DecidedBy = dd
			}
		}
	}
}

// unattributedDefaultDeny: no provenance, or default-deny naming no policy
// (Envoy's RBAC denial matched no rule).
func unattributedDefaultDeny(ps []flow.Provenance) bool {
	if len(ps) == 0 {
		return true
	}
	return len(ps) == 1 && ps[0].Kind == flow.KindDefaultDeny && ps[0].Policy == ""
}

// implemented is the hook apply calls after a revision's state is in
// force: flows are attributed with it from now on, and the metrics record
// it.
func (a *Agent) implemented(rev uint64, took time.Duration, snap *policy.Snapshot, local []bpftranslate.LocalEndpoint, stats syncStats,
	failures []source.EndpointFailure) {
	a.flowIdx.Store(nextFlowIndex(a.flowIdx.Load(), a.cfg.Node, snap, local, stats.rules))
	failing, syncErrors := map[string]bool{}, 0
	for _, f := range failures {
		failing[f.Endpoint] = true
		if f.Step == StepDatapathPolicy {
			syncErrors += len(f.Directions)
		}
	}
	entries := func(s bpf.SyncStats) int { return s.Added + s.Updated + s.Unchanged }
	a.cfg.Metrics.Implemented(rev, took, len(local)-len(failing), len(failing),
		map[string]int{"ipcache": entries(stats.ipcache), "policy": entries(stats.policy)}, syncErrors)
}

// recordPush counts an xDS push per subscribed consumer and its outcome:
// nack for the consumer that rejected it, timeout for those that did not
// answer, ack for the rest.
func (a *Agent) recordPush(err error) {
	if a.cfg.Metrics == nil {
		return
	}
	var nack *server.NACKError
	var pending *server.PendingError
	errors.As(err, &nack)
	errors.As(err, &pending)
	for _, c := range a.xds.Consumers() {
		if c.Streams == 0 {
			continue
		}
		result := "ack"
		switch {
		case nack != nil && nack.Consumer == c.ID:
			result = "nack"
		case pending != nil && slices.ContainsFunc(pending.Pending, func(p server.Pending) bool { return p.Consumer == c.ID }):
			result = "timeout"
		case err != nil && nack == nil && pending == nil:
			result = "error"
		}
		a.cfg.Metrics.Pushed(c.ID, result)
	}
}

// startFlows builds the pipeline and starts its parts: the pipeline, the
// sinks' runners, the Observer API, the exporter and the intakes (the
// datapath's events, the Go proxy's records on RUN_DIR/flows.sock, Envoy's
// access logs).
func (a *Agent) startFlows(goRun func(name string, fatal bool, f func(context.Context) error)) error {
	fc := a.cfg.Flows
	a.pipe = observe.New(observe.Config{Capacity: fc.Capacity, Queue: fc.Queue, Enrich: a.enrich, Sinks: fc.Sinks})
	a.cfg.Metrics.WatchPipeline(a.pipe.Stats, fc.Losses...)
	goRun("flow pipeline", true, a.pipe.Run)
	for i, run := range fc.Runners {
		goRun(fmt.Sprintf("flow sink %d", i), false, run)
	}
	srv := hubble.NewServer(hubble.ServerConfig{Pipeline: a.pipe, Node: a.cfg.Node, Options: a.hubbleOptions(), StartedAt: a.st.startedAt,
		Address: "unix://" + agentapi.HubbleSocket(a.cfg.RunDir), Logger: a.log})
	ln, err := listenUnix(agentapi.HubbleSocket(a.cfg.RunDir))
	if err != nil {
		return fmt.Errorf("observer api: %w", err)
	}
	goRun("observer api", true, func(ctx context.Context) error { return hubble.Serve(ctx, ln, srv) })
	if fc.HubbleListen != "" {
		tln, opts, err := hubbleTCP(fc.HubbleListen, fc.HubbleTLS)
		if err != nil {
			ln.Close()
			return err
		}
		tsrv := hubble.NewServer(hubble.ServerConfig{Pipeline: a.pipe, Node: a.cfg.Node, Options: a.hubbleOptions(), StartedAt: a.st.startedAt,
			Address: tln.Addr().String(), TLS: fc.HubbleTLS != nil, Logger: a.log})
		goRun("observer api (tcp)", true, func(ctx context.Context) error { return hubble.Serve(ctx, tln, tsrv, opts...) })
	}
	if fc.ServiceMap != nil {
		sm := servicemap.New(servicemap.Config{Source: a.pipe, Node: a.cfg.Node, Logger: a.log})
		goRun("service map", false, func(ctx context.Context) error { return servicemap.Serve(ctx, fc.ServiceMap, sm.Handler()) })
	}
	fln, err := listenUnix(agentapi.FlowSocket(a.cfg.RunDir))
	if err != nil {
		return fmt.Errorf("flow intake: %w", err)
	}
	goRun("flow intake", false, func(ctx context.Context) error { return a.serveFlowIntake(ctx, fln) })
	goRun("datapath events", false, a.watchFlows)
	goRun("envoy access-log service", false, a.serveAccessLogs)
	return nil
}

func (a *Agent) hubbleOptions() hubble.Options {
	version := a.cfg.Flows.Version
	if version == "" {
		version = "dev"
	}
	return hubble.Options{Emitter: "l7gate", Version: version, Instance: a.instance}
}

// hubbleTCP listens for the Observer API on TCP: with TLS, or on a
// loopback address only (flows name every pod and policy of the node).
func hubbleTCP(addr string, cfg *tls.Config) (net.Listener, []grpc.ServerOption, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("observer api address %q: %w", addr, err)
	}
	if ip, err := netip.ParseAddr(host); cfg == nil && (err != nil || !ip.IsLoopback()) {
		return nil, nil, fmt.Errorf("observer api on %s: TLS is required beyond loopback", addr)
	}
	ln, err := agentapi.ListenTCP(context.Background(), addr)
	if err != nil {
		return nil, nil, fmt.Errorf("observer api: %w", err)
	}
	var opts []grpc.ServerOption
	if cfg != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg)))
	}
	return ln, opts, nil
}

// listenUnix listens on a Unix socket (mode 0660, a stale socket file
// replaced).
func listenUnix(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode().Type() == fs.ModeSocket {
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	// Closing leaves the file: a successor agent may own the path by then
	// (a rolling update); the next start replaces a stale one.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// maxIntakeConns bounds the Go proxies connected to the flow intake (one
// per proxy process; a few during restarts).
const maxIntakeConns = 16

// serveFlowIntake takes the Go proxy's access records (JSON lines) into
// the pipeline.
func (a *Agent) serveFlowIntake(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	var conns atomic.Int32
	var backoff acceptretry.Backoff
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			// The listener is still fine (see acceptretry): returning
			// here ended the intake for good, and every proxy's access
			// records were lost from then on.
			if !backoff.Wait(ctx.Done(), a.log, "flow intake: accept failed; retrying", err) {
				return nil
			}
			continue
		}
		backoff.Reset()
		if conns.Add(1) > maxIntakeConns {
			conns.Add(-1)
			a.log.Warn("flow intake: too many connections; refusing one")
			c.Close()
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conns.Add(-1)
			cstop := context.AfterFunc(ctx, func() { c.Close() })
			defer cstop()
			defer c.Close()
			bad, err := flow.DecodeJSONLines(c, 0, func(r *flow.Record) {
				if r.Observer == "" || r.Observer == flow.ObserverDatapath {
					// only the Go proxy writes here; it does not speak for the datapath
					r.Observer = flow.ObserverProxy
				}
				r.Node, r.SrcEndpoint, r.DstEndpoint = "", nil, nil // the agent's to fill
				a.pipe.Ingest(r)
			})
			if bad > 0 || (err != nil && ctx.Err() == nil) {
				a.log.Warn("flow intake: records not understood", "bad", bad, "error", err)
			}
		}()
	}
}

// watchFlows turns datapath events into flows: logged (drops at info,
// verdicts at debug) and sent through the pipeline.
func (a *Agent) watchFlows(ctx context.Context) error {
	events, err := a.dp.Events(ctx)
	if err != nil {
		return err
	}
	for ev := range events {
		f := a.flowOf(ev)
		attrs := []any{"direction", f.Direction, "src", f.Source, "dst", f.Destination, "srcIdentity", f.SrcIdentity,
			"dstIdentity", f.DstIdentity, "proto", f.IPProtocol, "verdict", f.Verdict, "reason", f.Reason, "endpoint", f.Endpoint}
		for _, p := range f.DecidedBy {
			attrs = append(attrs, "decidedBy", p.String())
		}
		switch {
		case f.Dropped() && (ev.Reason == bpf.ReasonUnsupported || ev.Reason == bpf.ReasonMLD):
			// every pod's kernel sends MLD reports (dropped by design:
			// the node routes no multicast); not worth a line per pod
			a.log.Debug("flow dropped", attrs...)
		case f.Dropped():
			a.log.Info("flow dropped", attrs...)
		default:
			a.log.Debug("flow", attrs...)
		}
		a.pipe.Ingest(f)
	}
	return nil
}

// flowOf turns a datapath event into a flow record: a drop is denied
// (Reason says why), a redirect redirected, anything else allowed. The
// rule id names the rule; a default-deny drop names the policies that made
// the endpoint default-deny in that direction.
func (a *Agent) flowOf(ev bpf.Event) *flow.Record {
	f := &flow.Record{Time: time.Now().UTC(), Observer: flow.ObserverDatapath, Source: ev.Src, Destination: ev.Dst,
		SrcIdentity: flow.Identity(ev.SrcIdentity), DstIdentity: flow.Identity(ev.DstIdentity),
		Protocol: strings.ToLower(policy.Protocol(ev.Protocol).String()), IPProtocol: ev.Protocol,
		Reason: ev.Reason.String(), ProxyPort: ev.ProxyPort, FromProxy: ev.FromProxy, Verdict: flow.VerdictAllowed}
	if ev.Direction == bpf.Egress {
		f.Direction = flow.Egress
	}
	if frameLevel(ev.Reason) {
		// refused before an IPv4 header was read: no addresses, so no
		// identities either (0.0.0.0 would resolve to world)
		f.Source, f.Destination, f.SrcIdentity, f.DstIdentity = netip.AddrPort{}, netip.AddrPort{}, 0, 0
	}
	switch {
	case ev.Dropped:
		f.Verdict = flow.VerdictDenied
	case ev.Audited:
		// forwarded (or redirected: ProxyPort says so) although a policy
		// in audit mode would drop it
		f.Verdict = flow.VerdictAudit
	case ev.Verdict == bpf.VerdictRedirect:
		f.Verdict = flow.VerdictRedirected
	}
	x := a.flowIdx.Load()
	var rules map[uint32]policy.Provenance
	var snap *policy.Snapshot
	ep, ok := bpftranslate.LocalEndpoint{}, false
	if x != nil {
		rules, snap = x.rules, x.snap
		ep, ok = x.local[int(ev.Endpoint)]
	}
	if !ok { // attached after the last revision was in force
		a.mu.Lock()
		ep, ok = a.attached[int(ev.Endpoint)]
		if x == nil {
			rules, snap = a.st.rules, a.st.snap
		}
		a.mu.Unlock()
	}
	if p, found := rules[ev.RuleID]; found && ev.RuleID != 0 {
		f.DecidedBy = []policy.Provenance{p}
	}
	if ok {
		f.Endpoint = ep.Key()
		if frameLevel(ev.Reason) { // the pod's side of the frame is known
			if f.Direction == flow.Egress {
				f.SrcIdentity = flow.Identity(ep.Identity)
			} else {
				f.DstIdentity = flow.Identity(ep.Identity)
			}
		}
		if len(f.DecidedBy) == 0 && ev.Reason == bpf.ReasonDefault && (ev.Dropped || ev.Audited) && snap != nil {
			if pol := snap.Policy(ep.Identity); pol != nil {
				f.DecidedBy = pol.Direction(f.Direction).DefaultDeny
			}
		}
	}
	return f
}

// frameLevel: the datapath dropped the frame for its Ethernet framing
// (IPv6, another ethertype, a VLAN tag), before reading an IPv4 header.
func frameLevel(r bpf.Reason) bool {
	switch r {
	case bpf.ReasonUnsupported, bpf.ReasonUnsupportedEtherType, bpf.ReasonVLAN, bpf.ReasonEtherTypeMismatch:
		return true
	}
	return false
}

// Flows implements agentapi.Backend: the records after sequence number
// `after`, and the newest one's.
func (a *Agent) Flows(after uint64) ([]flow.Record, uint64) {
	evs, last := a.pipe.After(after)
	out := make([]flow.Record, len(evs))
	for i, ev := range evs {
		out[i] = *ev.Record
	}
	return out, last
}

func newInstance() uint64 { return rand.Uint64() }
