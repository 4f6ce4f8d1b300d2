package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/l7gate/l7gate/agent/endpoints"
	"github.com/l7gate/l7gate/agent/node"
	"github.com/l7gate/l7gate/agent/supervisor"
	"github.com/l7gate/l7gate/agentapi"
	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/bpftranslate"
	"github.com/l7gate/l7gate/observe"
	"github.com/l7gate/l7gate/observe/metrics"
	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/redirect"
	"github.com/l7gate/l7gate/source"
	"github.com/l7gate/l7gate/xds"
	"github.com/l7gate/l7gate/xds/server"
	"github.com/l7gate/l7gate/xds/translate"
)

// Datapath is what the agent needs of the eBPF datapath (*bpf.Datapath).
type Datapath interface {
	AttachEndpoint(bpf.Endpoint) error
	DetachEndpoint(ifindex int) error
	// CheckPolicy reports whether SyncPolicy would accept one endpoint's
	// entries, without writing anything.
	CheckPolicy(bpf.EndpointPolicy) error
	SyncPolicy([]bpf.EndpointPolicy) (bpf.SyncStats, error)
	SyncIPCache([]bpf.IPCacheEntry) (bpf.SyncStats, error)
	RegisterProxyListener(port uint16, conn syscall.Conn) error
	// SetTrustedProxyCgroups makes ids the exact set of cgroups whose
	// sockets may carry from-proxy marks (bpf/cgroup.go).
	SetTrustedProxyCgroups(ids []uint64) error
	Events(ctx context.Context) (<-chan bpf.Event, error)
}

// XDS is the xDS server the agent publishes its state to; ServerXDS adapts
// the real one (NewXDSServer).
type XDS interface {
	// Update publishes st; the completion resolves when every consumer
	// ACKed it, or fails with a *server.NACKError, a *server.PendingError
	// (timeout) or a rendering error (possibly several, joined).
	Update(ctx context.Context, st XDSState) Completion
	Consumers() []server.ConsumerStatus
	// ResourceVersions: per resource, the version a consumer should have
	// and the one it last ACKed.
	ResourceVersions(consumerID, typeURL string) (desired, acked map[string]string)
}

// Completion is the outcome of one XDS.Update.
type Completion interface {
	Done() <-chan struct{}
	Err() error
}

// ProxyPorts allocates proxy ports (*redirect.PortAllocator).
type ProxyPorts interface {
	Allocate(redirect.PortKey) (uint16, error)
	Release(redirect.PortKey) error
	Allocations() map[redirect.PortKey]uint16
}

// Host is the agent's view of the node's network namespace. The default
// (a nil Config.Host) reads this process's namespace over netlink.
type Host interface {
	// LocalEndpoints returns the endpoints of eps whose address routes to
	// a veth here.
	LocalEndpoints(eps []policy.Endpoint) ([]bpftranslate.LocalEndpoint, error)
	// PrepareEndpoint readies a pod's host veth before it is attached.
	PrepareEndpoint(device string) error
	// Addresses lists the node's own addresses (the host identity),
	// leaving out pod addresses (isPod).
	Addresses(isPod func(netip.Addr) bool) ([]netip.Addr, error)
	// Watch signals when links or routes change (coalesced).
	Watch(ctx context.Context) (<-chan struct{}, error)
}

// HTTP proxy choices.
const (
	HTTPProxyGo    = "go"    // the Go proxy serves HTTP, gRPC and Kafka
	HTTPProxyEnvoy = "envoy" // stock Envoy serves HTTP and gRPC; the Go proxy Kafka
)

// Config configures the agent. Datapath, XDS, Ports and Source are
// required; zero values of the rest take the defaults.
type Config struct {
	Node   string
	Source source.Source
	// Reporter, when set, learns which source update each implemented
	// revision carried and which endpoints failed closed.
	Reporter source.PolicyReporter

	Datapath Datapath
	XDS      XDS
	Ports    ProxyPorts
	Host     Host // default: this network namespace
	// ServiceLB, when set, load-balances Services at the socket level
	// (services.go); SocketLB names where, for the status ("cgroup …").
	ServiceLB ServiceLB
	SocketLB  string
	// Processes finds the proxies and takes their listeners (default:
	// /proc and pidfd_getfd).
	Processes ProxyProcesses

	RunDir   string // sockets; default /run/l7gate
	StateDir string // persisted state (identities); default /var/lib/l7gate
	// Proxy, when set, keeps a Go proxy running (RunDir, Node and Logger
	// default to the agent's).
	Proxy *supervisor.Config
	// HTTPProxy: "go" (default) or "envoy" (stock Envoy serves HTTP and
	// gRPC rule sets; the Go proxy still serves Kafka).
	HTTPProxy string
	Envoy     EnvoyConfig
	// Flows: the flow pipeline, the Observer API and where flows go.
	Flows FlowsConfig
	// Metrics, when set, records the control plane's metrics (compute and
	// implement latency, xDS push results, map fill, endpoints by state).
	Metrics *metrics.Agent
	// Policy: computation options (allow-localhost, kube-apiserver
	// addresses for sources without the default/kubernetes EndpointSlice).
	Policy policy.Options
	// FQDN is the FQDN cache toFQDNs resolve through (nil: none, so
	// toFQDNs select nothing — fail closed). The Go proxy's DNS proxy
	// feeds it over the status API (POST /fqdn, LearnFQDN).
	FQDN FQDNStore
	// ACKTimeout bounds one wait for the proxies (default 30s); the xDS
	// server has its own, equal one.
	ACKTimeout time.Duration
	// WaitForProxy bounds the wait for a first Go proxy subscription
	// before the first revision (default 15s; negative: no wait).
	WaitForProxy time.Duration
	// StandBy, when set, is called when the agent starts standing by
	// (another agent took the run dir over: true) and when it resumes
	// (false). The command stops its xDS server meanwhile, so proxies
	// subscribed to it reconnect to the serving agent's (the socket path
	// is the new agent's): else a rolling update's new proxy, subscribed
	// to the old agent, never reaches the new one, which fails its
	// endpoints closed ("not connected to the xDS server").
	StandBy func(standing bool)
	// RetryInterval: how soon a revision with a node-wide error, or with
	// endpoints waiting for a proxy or an attach, is tried again (default
	// 2s).
	RetryInterval time.Duration
	// ResyncInterval: the safety net that looks for veths netlink did not
	// report (default 1m).
	ResyncInterval time.Duration
	// IdentityGrace: how long an identity no pod uses keeps its number
	// (default 15m).
	IdentityGrace time.Duration
	Logger        *slog.Logger
	// now is the clock (tests).
	now func() time.Time
	// readHeap and collectGarbage stand in for the runtime's (tests;
	// gcidle.go).
	readHeap       func() heapStats
	collectGarbage func()
}

func (c *Config) defaults() {
	if c.RunDir == "" {
		c.RunDir = agentapi.DefaultRunDir
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
	if c.WaitForProxy == 0 {
		c.WaitForProxy = 15 * time.Second
	}
	if c.RetryInterval == 0 {
		c.RetryInterval = 2 * time.Second
	}
	if c.ResyncInterval == 0 {
		c.ResyncInterval = time.Minute
	}
	if c.IdentityGrace == 0 {
		c.IdentityGrace = 15 * time.Minute
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.ServiceLB == nil && c.SocketLB == "" {
		c.SocketLB = "off"
	}
	if c.HTTPProxy == "" {
		c.HTTPProxy = HTTPProxyGo
	}
	if c.Host == nil {
		c.Host = netHost{}
	}
	if c.Processes == nil {
		c.Processes = procProxies{runDir: c.RunDir, envoyName: c.Envoy.ProcessName}
	}
	if c.now == nil {
		c.now = time.Now
	}
}

func (c *Config) validate() error {
	switch {
	case c.Source == nil:
		return errors.New("agent: no source")
	case c.Datapath == nil:
		return errors.New("agent: no datapath")
	case c.XDS == nil:
		return errors.New("agent: no xds server")
	case c.Ports == nil:
		return errors.New("agent: no proxy port allocator")
	case c.HTTPProxy != HTTPProxyGo && c.HTTPProxy != HTTPProxyEnvoy:
		return fmt.Errorf("agent: http proxy %q: want go or envoy", c.HTTPProxy)
	case c.Envoy.AccessLog != "" && c.Envoy.AccessLog != EnvoyAccessLogGRPC && c.Envoy.AccessLog != EnvoyAccessLogOTel:
		return fmt.Errorf("agent: envoy access log %q: want grpc or otel", c.Envoy.AccessLog)
	}
	return nil
}

// netHost is Host for this process's network namespace.
type netHost struct{}

func (netHost) LocalEndpoints(eps []policy.Endpoint) ([]bpftranslate.LocalEndpoint, error) {
	return endpoints.Find(eps)
}
func (netHost) PrepareEndpoint(dev string) error { return node.PrepareEndpoint(dev) }
func (netHost) Addresses(isPod func(netip.Addr) bool) ([]netip.Addr, error) {
	return endpoints.HostAddresses(isPod)
}
func (netHost) Watch(ctx context.Context) (<-chan struct{}, error) { return endpoints.Watch(ctx) }

// Agent is a running agent.
type Agent struct {
	cfg Config
	log *slog.Logger
	dp  Datapath
	xds XDS
	ids *policy.IdentityAllocator
	// idsSaved is what was last written to the state dir.
	idsSaved identitiesSaved

	// The pipeline's own state, used by Run's goroutine only.
	// timing: where the last revision's time went (logged with it).
	timing revisionTiming
	// gc starts a GC cycle after a change when the next would start one.
	gc *idleGC
	// ready is what the proxies have ACKed (readiness.go).
	ready      readiness
	readySaved string
	// goCache keeps the Go proxy's rendered resources between pushes.
	goCache translate.Cache
	// registered: proxy listeners already in the socket map.
	registered map[listenerKey]bool
	// held: duplicates of the Go proxy's listeners (crash path).
	held heldListeners
	// trusted: the cgroup of each proxy whose from-proxy marks the
	// datapath believes (set before its listeners are registered).
	trusted map[consumerKind]uint64
	// prevCgroups: cgroups of replaced proxies, trusted until then
	// (draining; trustProxy).
	prevCgroups map[uint64]time.Time

	// stoodBy: the last standingBy answer (logged when it changes).
	stoodBy bool

	// links signals link and route changes (nil: none).
	links <-chan struct{}
	// proxyAdmin signals a process taking the Go proxy's admin socket
	// (nil: not watched; the poll remains).
	proxyAdmin <-chan struct{}
	// statusSocket signals a process binding the status socket (a rolling
	// update's new agent; nil: not watched).
	statusSocket <-chan struct{}

	mu sync.Mutex // guards st and attached
	st state
	// attached are the endpoints the datapath is attached to, by ifindex.
	attached map[int]bpftranslate.LocalEndpoint
	// halfAttached are endpoints whose attach failed after their programs
	// were attached (they drop everything until it succeeds): detached
	// when they go away, like attached ones.
	halfAttached map[int]bpftranslate.LocalEndpoint

	// The flow pipeline (flows.go) and what it attributes flows with.
	pipe     *observe.Pipeline
	flowIdx  atomic.Pointer[flowIndex]
	instance uint64
	// services: the frontends last given to cfg.ServiceLB (services.go).
	services servicesState
	// fq: learned DNS answers and which of them are implemented (fqdn.go).
	fq *fqdnState
	// For the incremental FQDN path (fqdn.go), Run's goroutine only: the
	// endpoint policies and node addresses last written to the datapath
	// (nil after a failed sync), whether the flow index lags behind the
	// snapshot, and whether an FQDN apply wants a retry.
	lastPolicies map[uint32]bpf.EndpointPolicy
	// The ipcache in force (implement.go): the list a sync last wrote
	// (lastIPCacheAs; lastIPCache nil, made from it when needed), or
	// after an FQDN write the map (lastIPCacheAs nil); both nil: unknown.
	// A map kept next to the list was ~70 B of heap per pod.
	lastIPCache   map[netip.Prefix]bpf.Identity
	lastIPCacheAs []bpf.IPCacheEntry
	lastFullSync  time.Time
	lastHosts     []netip.Addr
	ipcMemo       ipcacheMemo // syncDatapath's, per snapshot
	// portsRefreshed: when allocatePorts last allocated each port.
	portsRefreshed map[redirect.PortKey]time.Time
	flowStale      bool
	flowRefreshed  time.Time
	fqRetry        bool
}

// state is what the status API shows, and what flows are attributed with.
type state struct {
	startedAt           time.Time
	revision            uint64
	implementedRevision uint64
	digest              string
	lastError           string
	errors, warnings    []string
	policies            []agentapi.PolicyStatus
	snap                *policy.Snapshot
	local               []bpftranslate.LocalEndpoint
	ports               map[redirect.PortKey]uint16
	rules               map[uint32]policy.Provenance
	failures            []source.EndpointFailure
}

// Run runs the agent until ctx ends. The datapath stays pinned and the
// proxy keeps running when it returns, so a restart drops nothing.
func Run(ctx context.Context, cfg Config) error {
	cfg.defaults()
	if err := cfg.validate(); err != nil {
		return err
	}
	for _, d := range []string{cfg.RunDir, cfg.StateDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	a, err := newAgent(cfg)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	errc := make(chan error, 8)
	goRun := func(name string, fatal bool, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil && ctx.Err() == nil {
				if fatal {
					errc <- fmt.Errorf("%s: %w", name, err)
					return
				}
				a.log.Warn(name, "error", err)
			}
		}()
	}
	// Before serving the status socket: a rolling update's new proxy that
	// already took the admin socket waits for this pod's agent to serve
	// there before it serves connections, and must be trusted by then.
	// The admin socket is watched first: a proxy that takes it over
	// while the visible one is registered is then seen too (watched
	// after, such a take-over was found by the poll only).
	var werr error
	if a.proxyAdmin, werr = watchSocket(ctx, agentapi.ProxyAdminSocket(cfg.RunDir)); werr != nil {
		a.log.Warn("cannot watch the proxy's admin socket; a new proxy is found by the poll only", "error", werr)
	}
	a.registerVisibleProxy()
	goRun("status api", true, func(ctx context.Context) error {
		return agentapi.Serve(ctx, agentapi.StatusSocket(cfg.RunDir), a)
	})
	if cfg.Proxy != nil {
		pc := *cfg.Proxy
		if pc.RunDir == "" {
			pc.RunDir = cfg.RunDir
		}
		if pc.Node == "" {
			pc.Node = cfg.Node
		}
		if pc.Logger == nil {
			pc.Logger = cfg.Logger
		}
		if pc.Listeners == nil {
			pc.Listeners = a.held.files
		}
		goRun("proxy supervisor", false, func(ctx context.Context) error { supervisor.Run(ctx, pc); return nil })
	}
	if err := a.startFlows(goRun); err != nil {
		return err
	}
	updates := make(chan source.Update)
	goRun("source", true, func(ctx context.Context) error { return cfg.Source.Run(ctx, updates) })
	links, err := cfg.Host.Watch(ctx)
	if err != nil {
		// The resync still finds new veths, only later.
		a.log.Warn("cannot watch links; new pods are found by the resync only", "error", err)
	}
	a.links = links
	if a.statusSocket, err = watchSocket(ctx, agentapi.StatusSocket(cfg.RunDir)); err != nil {
		a.log.Warn("cannot watch the status socket; a new agent is found by the poll only", "error", err)
	}
	a.waitForConsumer(ctx)
	return a.loop(ctx, updates, errc)
}

func newAgent(cfg Config) (*Agent, error) {
	a := &Agent{cfg: cfg, log: cfg.Logger, dp: cfg.Datapath, xds: cfg.XDS,
		attached: map[int]bpftranslate.LocalEndpoint{}, registered: map[listenerKey]bool{}, halfAttached: map[int]bpftranslate.LocalEndpoint{}, trusted: map[consumerKind]uint64{},
		instance: newInstance(), fq: newFQDNState(), gc: newIdleGC(cfg.readHeap, cfg.collectGarbage)}
	a.st.startedAt = cfg.now().UTC()
	a.ids = a.loadIdentities()
	a.ready = a.loadReadiness()
	return a, nil
}

// loop implements every source update, and re-implements the current one
// when links change, on retries and on the resync.
func (a *Agent) loop(ctx context.Context, updates <-chan source.Update, errc <-chan error) error {
	var pending *source.Update // a source update not yet implemented
	var current *source.Update // the last one computed
	var snap *policy.Snapshot
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	resync := time.NewTicker(a.cfg.ResyncInterval)
	defer resync.Stop()
	// A restarted proxy has new listener sockets: look every RetryInterval.
	proxies := time.NewTicker(a.cfg.RetryInterval)
	defer proxies.Stop()
	for {
		reapply := false
		select {
		case <-ctx.Done():
			a.log.Info("agent stopping; datapath and proxy keep running")
			return nil
		case err := <-errc:
			return err
		case u := <-updates:
			a.mu.Lock()
			a.st.revision++
			a.st.digest = u.Digest
			a.cfg.Metrics.Received(a.st.revision)
			a.mu.Unlock()
			pending = &u
			a.timing = revisionTiming{received: a.cfg.now()}
		case _, ok := <-a.links:
			if !ok {
				a.links = nil // the resync remains
				continue
			}
			reapply = snap != nil && a.endpointsChanged(snap)
		case <-retry.C:
			reapply = snap != nil
		case <-resync.C:
			reapply = snap != nil && a.endpointsChanged(snap)
			if a.cfg.FQDN != nil {
				a.keepFQDNInUse()
			}
			if current != nil && pending == nil && a.fqdnChanged() {
				// names expired: take them out, incrementally if possible
				if s, ok := a.fqdnStep(ctx, snap, current, a.expireFast); ok {
					snap = s
				} else {
					pending = current
				}
			}
		case <-a.fq.kick:
			// DNS answers added addresses: implement them, incrementally
			// if possible, else recompute (their LearnFQDN calls wait).
			if current != nil && pending == nil {
				if s, ok := a.fqdnStep(ctx, snap, current, a.learnQueued); ok {
					snap = s
				} else {
					pending = current
				}
			}
		case _, ok := <-a.statusSocket:
			if !ok {
				a.statusSocket = nil
				continue
			}
			a.standingBy() // a new agent took over: stand by now (Config.StandBy)
			continue
		case <-proxies.C:
			if !a.standingBy() && len(a.prevCgroups) > 0 {
				a.expirePreviousCgroups()
			}
			reapply = snap != nil && a.listenersStale()
		case _, ok := <-a.proxyAdmin:
			if !ok {
				a.proxyAdmin = nil // the poll remains
				continue
			}
			// A proxy took the admin socket (a hand-over's successor,
			// before its first config): trust its cgroup and take its
			// listeners now, not at the next poll and not only after a
			// first policy (a rolling update's new agent has none until
			// its source synced, and its proxy serves once configured).
			if a.listenersStale() && !a.standingBy() {
				a.registerListeners(goProxy)
			}
			reapply = snap != nil && a.listenersStale()
			if a.flowStale && a.cfg.now().Sub(a.flowRefreshed) >= flowRefreshEvery {
				a.refreshFlowIndex()
			}
		}
		if a.fqRetry {
			a.fqRetry = false
			retry.Reset(a.cfg.RetryInterval)
		}
		var again bool
		switch {
		case (pending != nil || reapply) && a.standingBy():
			again = true // look again after RetryInterval
		case pending != nil:
			s, err := a.compute(pending)
			if err != nil {
				a.fail(fmt.Errorf("revision %d: compute policy: %w", a.revision(), err))
				again = true
				break
			}
			snap, current, pending = s, pending, nil
			again = a.apply(ctx, snap, current)
			a.fqdnImplemented()
			a.gc.changeDone() // a GC cycle due soon runs now, between changes
		case reapply:
			again = a.apply(ctx, snap, current)
		default:
			continue
		}
		if again {
			retry.Reset(a.cfg.RetryInterval)
		}
	}
}

// fqdnStep runs an incremental FQDN step (fqdn.go) unless another agent
// serves the run dir.
func (a *Agent) fqdnStep(ctx context.Context, snap *policy.Snapshot, current *source.Update,
	step func(context.Context, *policy.Snapshot, *source.Update) (*policy.Snapshot, bool)) (*policy.Snapshot, bool) {
	if a.standingBy() {
		return nil, false
	}
	return step(ctx, snap, current)
}

// flowRefreshEvery: how often incremental FQDN updates rebuild the flow
// index at most (a build costs ~100 ms of CPU at 10k identities; until
// then flows to the new addresses show their identity without labels).
const flowRefreshEvery = 10 * time.Second

// refreshFlowIndex rebuilds the flow index from the current state (after
// incremental FQDN updates).
func (a *Agent) refreshFlowIndex() {
	a.flowRefreshed = a.cfg.now()
	a.mu.Lock()
	snap, local, rules := a.st.snap, a.st.local, a.st.rules
	a.mu.Unlock()
	a.flowStale = false
	// Built aside (tens of ms at 10k identities): the loop goes on; a
	// revision implemented meanwhile stored a newer index, which stays.
	old := a.flowIdx.Load()
	go func() { a.flowIdx.CompareAndSwap(old, newFlowIndex(a.cfg.Node, snap, local, rules)) }()
}

// standingBy reports whether another agent serves this agent's status
// socket: during a rolling update (maxSurge) the new pod's agent shares the
// run dir and binds it anew while this one still runs, and the new pod's
// proxy takes the listeners over. The datapath and the proxies are then
// the new agent's: this one writes nothing more (what it would write is
// what it sees, e.g. no Go proxy, as the new one runs in a PID namespace it
// cannot see, so every redirect would become a drop over the new agent's
// entries) until it is stopped, or resumes should the socket stop
// answering.
func (a *Agent) standingBy() bool {
	pid, err := redirect.PeerPID(agentapi.StatusSocket(a.cfg.RunDir))
	stand := err == nil && pid != os.Getpid()
	if stand != a.stoodBy {
		a.stoodBy = stand
		// The other agent wrote the maps meanwhile: what is in force is
		// unknown, the next sync is a whole one.
		a.lastPolicies, a.lastIPCache, a.lastIPCacheAs = nil, nil, nil
		if a.cfg.StandBy != nil {
			a.cfg.StandBy(stand)
		}
		if stand {
			a.log.Warn("another agent serves the run dir (a rolling update's new pod): standing by, the datapath and the proxies are its", "peer_pid", pid)
		} else {
			a.log.Info("no other agent serves the run dir: resuming")
		}
	}
	return stand
}

func (a *Agent) revision() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.st.revision
}

// fail records a node-wide failure: nothing of the attempt is in force
// beyond what it already wrote; the previous state stays.
func (a *Agent) fail(err error) {
	a.log.Error("policy not implemented; retrying", "error", err)
	a.cfg.Metrics.Failed()
	a.mu.Lock()
	a.st.lastError = err.Error()
	a.mu.Unlock()
}

// compute computes the policy of a source update and keeps the identities
// it uses (persisted).
func (a *Agent) compute(u *source.Update) (*policy.Snapshot, error) {
	start := a.cfg.now()
	snap, err := policy.ComputeWith(u.Objects, a.ids, a.fqdnOptions())
	a.cfg.Metrics.Computed(a.cfg.now().Sub(start), err)
	if err != nil {
		return nil, err
	}
	a.sweepIdentities(snap)
	a.timing.compute = a.cfg.now().Sub(start)
	return snap, nil
}

// waitForConsumer waits (bounded) until a Go proxy subscribed, so the
// first revision does not install drops where the proxy is about to be.
func (a *Agent) waitForConsumer(ctx context.Context) {
	if a.cfg.WaitForProxy < 0 {
		return
	}
	deadline := time.After(a.cfg.WaitForProxy)
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		for _, c := range a.xds.Consumers() {
			if c.Streams > 0 && len(c.Types) > 0 && subscribedAll(c) {
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

// subscribedAll reports whether a Go proxy consumer subscribed to every
// type it uses (other consumers: to any). A push to a proxy that has
// subscribed to some types only completes without its ACK of the others,
// and the readiness after it turned every redirect into a drop: a rolling
// update's new agent, whose proxy had just reconnected to it, dropped
// requests until its retry (RetryInterval) found the ACKs.
func subscribedAll(c server.ConsumerStatus) bool {
	if !strings.HasPrefix(c.ID, xds.L7ProxyPrefix) {
		return true
	}
	for _, t := range xds.L7ProxyTypes() {
		if _, ok := c.Types[t]; !ok {
			return false
		}
	}
	return true
}

// endpointsChanged reports whether the local endpoints of snap differ
// from what is attached.
func (a *Agent) endpointsChanged(snap *policy.Snapshot) bool {
	local, err := a.cfg.Host.LocalEndpoints(snap.Endpoints)
	if err != nil {
		a.log.Warn("find local endpoints", "error", err)
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(local) != len(a.attached) {
		return true
	}
	for _, ep := range local {
		if cur, ok := a.attached[ep.Ifindex]; !ok || cur.Name != ep.Name || cur.Namespace != ep.Namespace {
			return true
		}
	}
	return false
}
