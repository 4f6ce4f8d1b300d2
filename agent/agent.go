package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/envoy/bootstrap"
	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/redirect"
	"github.com/l7gate/l7gate/source"
	"github.com/l7gate/l7gate/xds/envoytranslate"
	"github.com/l7gate/l7gate/xds/server"
	"github.com/l7gate/l7gate/xds/translate"
)

// Config configures the agent. Zero values take the defaults.
type Config struct {
	Node     string
	Source   source.Source
	BPFFS    string // default /sys/fs/bpf/l7gate
	RunDir   string // sockets; default /run/l7gate
	StateDir string // persisted state; default /var/lib/l7gate
	// PortMin/PortMax: the proxy port range (default 10000-20000).
	PortMin, PortMax uint16
	// SetupNode applies the sysctls and policy routing redirects need.
	SetupNode bool
	// Proxy: how the agent gets a Go proxy (see ProxyConfig).
	Proxy ProxyConfig
	// HTTPProxy: "go" (default) or "envoy" (stock Envoy serves HTTP and
	// gRPC rule sets; the Go proxy still serves Kafka).
	HTTPProxy string
	Envoy     EnvoyConfig
	// Reporter, when set, learns which source update each implemented
	// revision carried (the Kubernetes source writes policy status).
	Reporter source.PolicyReporter
	// ACKTimeout bounds waiting for the proxies (default 30s).
	ACKTimeout time.Duration
	Logger     *slog.Logger
}

func (c *Config) defaults() {
	if c.BPFFS == "" {
		c.BPFFS = bpf.DefaultBPFFSPath
	}
	if c.RunDir == "" {
		c.RunDir = "/run/l7gate"
	}
	if c.StateDir == "" {
		c.StateDir = "/var/lib/l7gate"
	}
	if c.Node == "" {
		c.Node, _ = os.Hostname()
	}
	if c.ACKTimeout == 0 {
		c.ACKTimeout = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.HTTPProxy == "" {
		c.HTTPProxy = HTTPProxyGo
	}
}

// XDSSocket is the xDS server's socket under a run dir.
func XDSSocket(runDir string) string { return filepath.Join(runDir, "xds.sock") }

// StatusSocket is the agent's status API socket under a run dir.
func StatusSocket(runDir string) string { return filepath.Join(runDir, "agent.sock") }

// ProxyAdminSocket is the Go proxy's admin socket under a run dir.
func ProxyAdminSocket(runDir string) string { return filepath.Join(runDir, "proxy-admin.sock") }

// Agent is a running agent.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	dp    *bpf.Datapath
	ports *redirect.PortAllocator
	xds   *server.Server[xdsState]
	ids   *policy.IdentityAllocator

	mu         sync.Mutex
	status     Status
	attached   map[int]LocalEndpoint // by ifindex
	lastUpdate *source.Update
	// Envoy listeners already in the socket map
	envoyListeners map[envoyListenerKey]bool
	flows          flowRing
}

var errNoEnvoy = errors.New("no envoy process found (is Envoy running in this PID namespace?)")

// Run runs the agent until ctx ends. The datapath stays pinned and the
// proxy keeps running when it returns, so a restart drops nothing.
func Run(ctx context.Context, cfg Config) error {
	cfg.defaults()
	if cfg.Source == nil {
		return errors.New("agent: no source")
	}
	if cfg.HTTPProxy != HTTPProxyGo && cfg.HTTPProxy != HTTPProxyEnvoy {
		return fmt.Errorf("agent: http proxy %q: want go or envoy", cfg.HTTPProxy)
	}
	a := &Agent{cfg: cfg, log: cfg.Logger, ids: policy.NewIdentityAllocator(), attached: map[int]LocalEndpoint{},
		envoyListeners: map[envoyListenerKey]bool{}}
	a.status = Status{Node: cfg.Node, StartedAt: time.Now().UTC()}
	for _, d := range []string{cfg.RunDir, cfg.StateDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	if cfg.SetupNode {
		if err := setupNode(ctx); err != nil {
			return fmt.Errorf("node setup: %w", err)
		}
	}
	var err error
	a.ports, err = redirect.NewPortAllocator(redirect.PortAllocatorConfig{Min: cfg.PortMin, Max: cfg.PortMax,
		StatePath: filepath.Join(cfg.StateDir, "proxy-ports.json")})
	if err != nil {
		return err
	}
	a.dp, err = bpf.Open(ctx, bpf.Config{BPFFSPath: cfg.BPFFS, Logger: cfg.Logger})
	if err != nil {
		return fmt.Errorf("open datapath: %w", err)
	}
	defer a.dp.Close() // pins and links stay
	if err := a.dp.AttachSocketLookup("/proc/self/ns/net"); err != nil {
		return fmt.Errorf("attach socket lookup: %w", err)
	}
	a.xds, err = server.New(server.Config[xdsState]{
		SocketPath: XDSSocket(cfg.RunDir),
		Producers:  map[string]server.Producer[xdsState]{"l7proxy~": goProxyResources, "envoy~": envoyResources},
		ACKTimeout: cfg.ACKTimeout,
		Logger:     cfg.Logger,
	})
	if err != nil {
		return fmt.Errorf("xds server: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	errc := make(chan error, 4)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := a.xds.ListenAndServe(ctx); err != nil && ctx.Err() == nil {
			errc <- fmt.Errorf("xds server: %w", err)
		}
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := a.serveStatus(ctx); err != nil && ctx.Err() == nil {
			errc <- fmt.Errorf("status api: %w", err)
		}
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.superviseProxy(ctx)
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.watchFlows(ctx)
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := a.serveAccessLogs(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("envoy access-log service", "error", err)
		}
	}()
	updates := make(chan source.Update)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := cfg.Source.Run(ctx, updates); err != nil && ctx.Err() == nil {
			errc <- fmt.Errorf("source: %w", err)
		}
	}()
	// Give the proxy a moment to subscribe, so the first revision waits
	// for its ACK instead of racing it.
	a.waitForConsumer(ctx, 15*time.Second)

	var pending *source.Update
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	resync := time.NewTicker(10 * time.Second)
	defer resync.Stop()
	for {
		select {
		case <-ctx.Done():
			a.log.Info("agent stopping; datapath and proxy keep running")
			return nil
		case err := <-errc:
			return err
		case u := <-updates:
			a.mu.Lock()
			a.status.Revision++
			a.status.SourceDigest = u.Digest
			a.mu.Unlock()
			pending = &u
		case <-retry.C:
		case <-resync.C:
			// Pods may come and go without a source change (veths appear
			// later than the Pod object): re-implement the current view.
			if pending == nil && a.lastUpdate != nil {
				if changed, _ := a.endpointsChanged(ctx); changed {
					pending = a.lastUpdate
				}
			}
		}
		if pending == nil {
			continue
		}
		if err := a.implement(ctx, pending); err != nil {
			a.log.Error("policy not implemented; retrying", "error", err)
			retry.Reset(2 * time.Second)
			continue
		}
		pending = nil
	}
}

// waitForConsumer waits (bounded) until a Go proxy subscribed.
func (a *Agent) waitForConsumer(ctx context.Context, limit time.Duration) {
	deadline := time.After(limit)
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		for _, c := range a.xds.Consumers() {
			if c.Streams > 0 && len(c.Types) > 0 {
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-deadline:
			a.log.Warn("no proxy subscribed yet; implementing policy without waiting for it")
			return
		case <-t.C:
		}
	}
}

// endpointsChanged reports whether the set of local endpoints differs from
// what is attached.
func (a *Agent) endpointsChanged(ctx context.Context) (bool, error) {
	// The endpoints of the implemented snapshot: no need to recompute
	// policy to see whether veths came or went.
	a.mu.Lock()
	snap := a.status.snapshot
	a.mu.Unlock()
	if snap == nil {
		return false, nil
	}
	local, err := findLocalEndpoints(ctx, snap.Endpoints)
	if err != nil {
		return false, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(local) != len(a.attached) {
		return true, nil
	}
	for _, ep := range local {
		if cur, ok := a.attached[ep.Ifindex]; !ok || cur.Name != ep.Name || cur.Namespace != ep.Namespace {
			return true, nil
		}
	}
	return false, nil
}

// implement runs the chain for one source revision: compute → endpoints →
// proxy ports → xDS push and ACK → datapath sync. Only then is the
// revision implemented.
func (a *Agent) implement(ctx context.Context, u *source.Update) error {
	a.mu.Lock()
	rev := a.status.Revision
	a.lastUpdate = u
	a.mu.Unlock()
	start := time.Now()
	fail := func(step string, err error) error {
		err = fmt.Errorf("revision %d: %s: %w", rev, step, err)
		a.mu.Lock()
		a.status.LastError = err.Error()
		a.mu.Unlock()
		return err
	}
	snap, err := policy.Compute(u.Objects, a.ids)
	if err != nil {
		return fail("compute policy", err)
	}
	local, err := findLocalEndpoints(ctx, snap.Endpoints)
	if err != nil {
		return fail("find local endpoints", err)
	}
	// Proxy ports: one per (direction, parser) in use; release the rest.
	need := map[redirect.PortKey]bool{}
	ports := map[redirect.PortKey]uint16{}
	var listeners []translate.ListenerSpec // the Go proxy's
	var envoyPorts []envoytranslate.ProxyPort
	var envoyListenPorts []uint16
	localEPs := make([]policy.Endpoint, len(local))
	for i, ep := range local {
		localEPs[i] = ep.Endpoint
	}
	for _, l := range translate.RequiredListeners(snap, localEPs) {
		if !proxyParser(l.Parser) {
			continue
		}
		k := portKey(l.Direction, l.Parser)
		p, err := a.ports.Allocate(k)
		if err != nil {
			return fail("allocate proxy port", err)
		}
		need[k] = true
		ports[k] = p
		l.ProxyPort = p
		if a.cfg.HTTPProxy == HTTPProxyEnvoy && l.Parser == policy.ParserHTTP {
			envoyPorts = append(envoyPorts, envoytranslate.ProxyPort{Direction: l.Direction, Parser: l.Parser, Port: p})
			envoyListenPorts = append(envoyListenPorts, p)
			continue
		}
		listeners = append(listeners, l)
	}
	goInput := translate.Input{Node: a.cfg.Node, Snapshot: snap, LocalEndpoints: localEPs, Listeners: listeners}
	if len(envoyPorts) > 0 {
		// The Go proxy gets no HTTP listener, and no endpoint whose rule
		// sets it would have no listener for.
		goInput.LocalEndpoints = withoutHTTPRules(snap, localEPs)
	}
	comp := a.xds.Update(ctx, xdsState{GoProxy: goInput, Snapshot: snap, envoyOn: a.cfg.HTTPProxy == HTTPProxyEnvoy,
		Envoy: envoytranslate.Config{Node: a.cfg.Node, ProxyPorts: envoyPorts, AccessLogCluster: bootstrap.AccessLogCluster}})
	wctx, cancel := context.WithTimeout(ctx, a.cfg.ACKTimeout)
	err = comp.Wait(wctx)
	cancel()
	if err != nil {
		return fail("push to proxies", err)
	}
	if len(envoyListenPorts) > 0 {
		if err := a.registerEnvoyListeners(envoyListenPorts); err != nil {
			return fail("register envoy listeners", err)
		}
	}
	// Only now that every proxy has the listeners: the datapath.
	if err := a.syncEndpoints(local); err != nil {
		return fail("attach endpoints", err)
	}
	podIPs := map[netip.Addr]bool{}
	for _, ep := range snap.Endpoints {
		for _, ip := range ep.IPs {
			podIPs[ip] = true
		}
	}
	hosts, err := hostAddresses(podIPs)
	if err != nil {
		return fail("list node addresses", err)
	}
	ipst, err := a.dp.SyncIPCache(datapathIPCache(snap, hosts))
	if err != nil {
		return fail("sync ipcache", err)
	}
	bpol, rules, warnings := datapathPolicy(snap, local, ports)
	pst, err := a.dp.SyncPolicy(bpol)
	if err != nil {
		return fail("sync datapath policy", err)
	}
	for k := range a.ports.Allocations() {
		if !need[k] {
			if err := a.ports.Release(k); err != nil {
				a.log.Warn("release proxy port", "listener", k.String(), "error", err)
			}
		}
	}
	a.mu.Lock()
	a.status.ImplementedRevision = rev
	a.status.Ready = true
	a.status.LastError = ""
	a.status.Errors = errorStrings(u.Errors)
	a.status.Warnings = append(warningStrings(u.Objects), append(snap.Warnings, warnings...)...)
	a.status.snapshot = snap
	a.status.local = local
	a.status.ports = ports
	a.status.rules = rules
	a.status.policies = policyStatuses(u.Objects, rev)
	a.mu.Unlock()
	if a.cfg.Reporter != nil {
		a.cfg.Reporter.Implemented(ctx, rev, *u, nil)
	}
	a.log.Info("policy implemented", "revision", rev, "endpoints", len(local), "identities", len(snap.Identities),
		"policies", len(u.Objects.Policies), "ipcache", ipst, "policy", pst, "took", time.Since(start).Round(time.Millisecond))
	for _, p := range u.Objects.Policies {
		a.log.Info("policy implemented", "policy", p.Name(), "kind", p.Kind, "revision", rev)
	}
	for _, e := range u.Errors {
		a.log.Warn("invalid object not applied", "error", e)
	}
	return nil
}

// syncEndpoints attaches the datapath to new local endpoints and detaches
// it from gone ones.
func (a *Agent) syncEndpoints(local []LocalEndpoint) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	want := map[int]LocalEndpoint{}
	for _, ep := range local {
		want[ep.Ifindex] = ep
	}
	for idx, ep := range want {
		if cur, ok := a.attached[idx]; ok && cur.Name == ep.Name && cur.Namespace == ep.Namespace {
			continue
		}
		if err := setEndpointSysctls(ep.Device); err != nil {
			return err
		}
		var ip4 netip.Addr
		for _, ip := range ep.IPs {
			if ip.Is4() {
				ip4 = ip
				break
			}
		}
		if err := a.dp.AttachEndpoint(bpf.Endpoint{ID: uint32(idx), Ifindex: idx, IPv4: ip4}); err != nil {
			return fmt.Errorf("endpoint %s/%s on %s: %w", ep.Namespace, ep.Name, ep.Device, err)
		}
		a.log.Info("endpoint attached", "endpoint", ep.Namespace+"/"+ep.Name, "device", ep.Device, "identity", ep.Identity)
		a.attached[idx] = ep
	}
	for idx, ep := range a.attached {
		if _, ok := want[idx]; ok {
			continue
		}
		if err := a.dp.DetachEndpoint(idx); err != nil && !errors.Is(err, net.ErrClosed) {
			a.log.Warn("detach endpoint", "endpoint", ep.Namespace+"/"+ep.Name, "error", err)
		}
		delete(a.attached, idx)
	}
	return nil
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

func policyStatuses(o *policy.Objects, rev uint64) []PolicyStatus {
	out := []PolicyStatus{}
	for _, p := range o.Policies {
		out = append(out, PolicyStatus{Name: p.Name(), Kind: string(p.Kind), File: p.Ref.File, ImplementedRevision: rev})
	}
	slices.SortFunc(out, func(a, b PolicyStatus) int {
		if a.Kind != b.Kind {
			if a.Kind < b.Kind {
				return -1
			}
			return 1
		}
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	return out
}

// withoutHTTPRules keeps the endpoints that have no HTTP rule set: in Envoy
// mode those are Envoy's.
func withoutHTTPRules(snap *policy.Snapshot, eps []policy.Endpoint) []policy.Endpoint {
	var out []policy.Endpoint
	for _, ep := range eps {
		pol := snap.Policy(ep.Identity)
		http := false
		if pol != nil {
			for _, d := range []policy.Direction{policy.Ingress, policy.Egress} {
				for _, rs := range pol.Direction(d).L7 {
					http = http || rs.Parser == policy.ParserHTTP
				}
			}
		}
		if !http {
			out = append(out, ep)
		}
	}
	return out
}
