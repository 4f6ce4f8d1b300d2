package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/l7gate/l7gate/internal/acceptretry"
	httpparser "github.com/l7gate/l7gate/parsers/http"
	"github.com/l7gate/l7gate/parsers/kafka"
	"github.com/l7gate/l7gate/policy"
	dnsproxy "github.com/l7gate/l7gate/proxy/dns"
	"github.com/l7gate/l7gate/redirect"
)

// Options configure a Proxy. Zero values take the defaults.
type Options struct {
	Logger *slog.Logger
	// AccessLog receives one record per request, response or denial
	// (nil: none; flow.JSONLines and flow.BufferedJSONLines write JSON
	// lines). The record is AccessLog's only until it returns: the proxy
	// reuses it for a later request, so a sink copies what it keeps.
	AccessLog func(*AccessRecord)
	// ListenHost is the address listeners bind (default 127.0.0.1: the
	// datapath's sk_lookup program hands redirected connections to a
	// listener whatever address it is bound to, and a loopback bind keeps
	// the proxy ports unreachable from other hosts).
	ListenHost string
	// Transparent sets IP_TRANSPARENT on listeners (needed for redirected
	// connections). Default true; tests on loopback turn it off.
	Transparent *bool
	// Mark returns the SO_MARK for an upstream connection carrying traffic
	// from srcIdentity (0: none). The encoding belongs to the datapath.
	Mark func(srcIdentity policy.Identity, dir policy.Direction) uint32
	// KeepSource binds upstream connections to the client's address (with
	// IP_TRANSPARENT, a fresh port that is not the source port of a client
	// connection the proxy holds from that address), so the server sees the
	// client, and a same-node chain's ingress proxy sees the pod behind the
	// egress proxy. The datapath steers the replies back to the proxy (see
	// package bpf). The proxy command turns it on (--keep-source).
	KeepSource bool
	// OriginalDestination overrides how the original destination of an
	// accepted connection is found (default: its local address).
	OriginalDestination func(net.Conn) (netip.AddrPort, error)
	// OnListener is told about every listener opened, e.g. to put its
	// socket in the datapath's SOCKMAP; an error fails Apply.
	OnListener func(port uint16, ln *net.TCPListener) error
	// HTTP configures the HTTP parser (limits, timeouts).
	HTTP httpparser.Config
	// KafkaMaxFrameSize bounds Kafka frames (default 100 MiB).
	KafkaMaxFrameSize int32
	// KafkaTopicIDs turns Kafka topic-ID mode on (see
	// kafka.Config.AllowTopicIDs): requests may address topics by ID,
	// resolved through one table per upstream cluster and trust scope.
	// Off by default: clients are offered name versions only.
	KafkaTopicIDs bool
	// KafkaMemoryBudget bounds the memory all Kafka connections together
	// hold in frame buffers (kafka.MemoryBudget; default 256 MiB).
	KafkaMemoryBudget int64
	// KafkaIdleTimeout closes Kafka client connections idle this long
	// (default 10 min, Kafka's connections.max.idle.ms; < 0 never);
	// KafkaFrameTimeout bounds the time from a request frame's first byte
	// to its last (default 30 s; < 0 never).
	KafkaIdleTimeout, KafkaFrameTimeout time.Duration
	// KafkaOnResponse is the Kafka filter's OnResponse hook (tests: fault
	// injection on the goroutine that forwards broker responses).
	KafkaOnResponse func(apiKey, apiVersion int16)
	// MaxConnections bounds concurrent client connections (default 65536);
	// beyond it new connections are closed at once (the client sees a
	// reset before any byte; HTTP clients retry, nothing is answered).
	MaxConnections int
	// MaxConnectionsPerSource bounds the concurrent client connections of
	// one source identity (for world and CIDR sources: of one source
	// address); default 8192.
	MaxConnectionsPerSource int
	// Inherited are sockets by proxy port received from another process
	// (a hand-over, see ReceiveHandOver, or the agent): Apply serves a
	// port with its inherited listener instead of binding a new one (so
	// the datapath's socket-map entry, which holds that socket, stays
	// valid), a dns listener its inherited UDP socket (the socket map
	// holds it too, under the port's UDP key), and the IPv6 ones likewise
	// (ListenHost6); those the first applied config does not use are
	// closed.
	Inherited Sockets
	// ListenHost6 is the IPv6 address ("::1") of a second listener per TCP
	// proxy port, the port's IPv6 socket in the datapath (an IPv6
	// redirect finds no IPv4 socket): empty opens none, and IPv6
	// redirects to the proxy drop no-listener. A port whose IPv6 socket
	// cannot be opened (IPv6 off on the node, or the address still held)
	// serves IPv4 alone, logged, and is retried on the next Apply. A dns
	// listener gets an IPv6 UDP socket there too.
	ListenHost6 string
	// DrainTimeout bounds a drain started on the admin socket (POST
	// /drain) or by a hand-over (default 30s).
	DrainTimeout time.Duration
	// DNS configures listeners with parser dns (see DNSOptions).
	DNS DNSOptions
	// Version is the binary's version stamp, answered on the admin
	// socket (GET /version): an agent that adopts a running proxy
	// replaces one of another version.
	Version string
}

// Proxy serves the listeners of the applied Config.
type Proxy struct {
	opts Options
	log  *slog.Logger
	cur  atomic.Pointer[compiled]
	// matchers: compiled HTTP rule expressions, kept between configs
	// (ConfigFromXDS and Apply compile through it; Apply rotates it).
	matchers policy.HTTPMatcherCache
	// members: the last config's identity memberships (ConfigFromXDS).
	memberMu sync.Mutex
	members  memberMemo

	mu        sync.Mutex
	listeners map[uint16]*listenerState
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	conns     atomic.Int64
	topicIDs  *kafka.TopicIDRegistry
	kafkaMem  *kafka.MemoryBudget
	http      *httpparser.Server
	dns       *dnsproxy.Proxy
	// poller parks idle HTTP/1 connections (nil: they keep their
	// goroutine); closed by Close once every connection ended.
	poller *httpparser.Poller

	// perSource counts open connections by source (see sourceKey);
	// clients counts open client connections by address and port (the
	// ports an upstream bound to the client's address must not reuse).
	srcMu     sync.Mutex
	perSource map[sourceKey]int
	clients   map[netip.AddrPort]int
	// ports is the set of ports the proxy listens on (for the self-dial
	// checks), replaced on every Apply.
	ports atomic.Pointer[map[uint16]bool]
	local localAddrs

	stats stats
	// records holds HTTP access records for reuse (AccessLog keeps none).
	records sync.Pool
	// work hands an accepted connection to a goroutine waiting for one
	// (see run), which waits workerIdle (tests: longer).
	work       chan func()
	workerIdle time.Duration
	// keepAlive turns TCP keep-alive on for upstream connections that
	// outlive keepAliveEvery (see keepAliveArmer; tests: shorter), for
	// at most keepAliveMax dialed per round.
	keepAlive      keepAliveArmer
	keepAliveEvery time.Duration
	keepAliveMax   int // keepAliveQueueMax

	// Drain state (see Drain): drainCtx ends when a drain begins (the
	// parsers watch it); inherited are the listeners not yet used.
	drainCtx    context.Context
	drainCancel context.CancelFunc
	drainOnce   sync.Once
	draining    bool // guarded by mu
	drained     chan struct{}
	drainStats  DrainStats
	inherited   Sockets // guarded by mu
}

// sourceKey identifies a source for the per-source connection limit: its
// identity, or for world and CIDR sources (one identity for many hosts)
// its address.
type sourceKey struct {
	id   policy.Identity
	addr netip.Addr
}

type listenerState struct {
	spec Listener
	ln   *net.TCPListener
	ln6  *net.TCPListener // the port's IPv6 socket (Options.ListenHost6), or nil
	udp  *net.UDPConn     // parser dns: the UDP socket of the port
	udp6 *net.UDPConn     // parser dns: the port's IPv6 UDP socket, or nil
}

// New returns a Proxy with no config: it listens nowhere until Apply.
func New(opts Options) *Proxy {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.AccessLog == nil {
		opts.AccessLog = func(*AccessRecord) {}
	}
	if opts.ListenHost == "" {
		opts.ListenHost = "127.0.0.1"
	}
	if opts.Transparent == nil {
		t := true
		opts.Transparent = &t
	}
	if opts.OriginalDestination == nil {
		opts.OriginalDestination = redirect.OriginalDestination
	}
	if opts.MaxConnections <= 0 {
		opts.MaxConnections = 65536
	}
	if opts.MaxConnectionsPerSource <= 0 {
		opts.MaxConnectionsPerSource = 8192
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = 30 * time.Second
	}
	opts.HTTP.Logger = opts.Logger
	drainCtx, drainCancel := context.WithCancel(context.Background())
	opts.HTTP.Drain = drainCtx
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{opts: opts, log: opts.Logger, listeners: map[uint16]*listenerState{}, ctx: ctx, cancel: cancel,
		topicIDs: kafka.NewTopicIDRegistry(kafka.TopicIDLimits{}), kafkaMem: kafka.NewMemoryBudget(opts.KafkaMemoryBudget),
		perSource: map[sourceKey]int{}, clients: map[netip.AddrPort]int{},
		drainCtx: drainCtx, drainCancel: drainCancel, drained: make(chan struct{}), inherited: opts.Inherited.clone(),
		work: make(chan func()), workerIdle: workerIdle, keepAliveEvery: keepAliveDelay, keepAliveMax: keepAliveQueueMax}
	// Idle HTTP/1 connections park in one poller (no goroutine each) and
	// resume on the worker pool.
	if poller, err := httpparser.NewPoller(p.run); err != nil {
		p.log.Warn("idle connections keep their goroutines: no poller", "error", err)
	} else {
		p.poller = poller
		opts.HTTP.Poller = poller
	}
	// httpAccess copies the parser's record into its own: the parser may
	// reuse it.
	opts.HTTP.ReuseRecords = true
	p.http = httpparser.NewServer(opts.HTTP)
	p.ports.Store(&map[uint16]bool{})
	p.dns = newDNS(opts)
	return p
}

// Ready reports whether a config has been applied.
func (p *Proxy) Ready() bool { return p.cur.Load() != nil }

// Config returns the applied config (nil before the first Apply).
func (p *Proxy) Config() *Config {
	if c := p.cur.Load(); c != nil {
		return c.cfg
	}
	return nil
}

// Apply validates cfg, opens listeners it adds, closes listeners it
// removes (their established connections continue), and switches every
// connection to the new policy for its next request. On error nothing
// changes.
func (p *Proxy) Apply(cfg *Config) error {
	// The expressions unused by this config and the one before are
	// forgotten.
	defer p.matchers.Rotate()
	c, err := compile(cfg, &p.matchers)
	if err != nil {
		p.stats.nacks.Add(1)
		return err
	}
	dnsPol, err := dnsPolicy(cfg, c)
	if err != nil {
		p.stats.nacks.Add(1)
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	want := map[uint16]Listener{}
	for _, l := range cfg.Listeners {
		want[l.Port] = l
	}
	// Open new listeners first; roll back on failure.
	var opened []uint16
	fromInherited := map[uint16]bool{}
	for port, spec := range want {
		if cur, ok := p.listeners[port]; ok && cur.spec == spec {
			p.open6(cur)
			continue
		}
		if cur, ok := p.listeners[port]; ok && (cur.spec.Parser == policy.ParserDNS) == (spec.Parser == policy.ParserDNS) {
			// same port, different spec: reuse the socket with the new spec
			cur.spec = spec
			p.open6(cur)
			continue
		} else if ok {
			// to or from dns: other sockets serve it
			cur.close()
			delete(p.listeners, port)
		}
		if p.draining {
			continue // a draining proxy opens no listener
		}
		var ln *net.TCPListener
		var err error
		if in, ok := p.inherited.TCP[port]; ok {
			ln = in
			delete(p.inherited.TCP, port)
			fromInherited[port] = true
		} else {
			ln, err = redirect.ListenTransparent(p.ctx, net.JoinHostPort(p.opts.ListenHost, strconv.Itoa(int(port))), *p.opts.Transparent)
		}
		if err == nil && p.opts.OnListener != nil {
			if herr := p.opts.OnListener(port, ln); herr != nil {
				if fromInherited[port] {
					p.inherited.TCP[port] = ln
				} else {
					ln.Close()
				}
				err = fmt.Errorf("register listener on port %d: %w", port, herr)
			}
		}
		st := &listenerState{spec: spec, ln: ln}
		if err == nil && spec.Parser == policy.ParserDNS {
			if err = p.serveDNS(st); err != nil {
				if fromInherited[port] {
					p.inherited.TCP[port] = ln
				} else {
					ln.Close()
				}
			}
		}
		if err != nil {
			for _, o := range opened {
				// (a handed-over socket closed here stays open in the
				// process that handed it over, which keeps serving)
				p.listeners[o].close()
				delete(p.listeners, o)
			}
			p.stats.nacks.Add(1)
			return fmt.Errorf("listener %q: %w", spec.Name, err)
		}
		p.listeners[port] = st
		opened = append(opened, port)
		if spec.Parser != policy.ParserDNS {
			p.wg.Add(1)
			go p.accept(st, st.ln)
		}
		p.open6(st)
	}
	p.cur.Store(c)
	p.dns.SetPolicy(dnsPol)
	p.dns.SetFQDNSelectors(dnsPol.FQDNSelectors())
	// Handed over but not in the config: the previous process served a
	// listener this config removed.
	p.inherited.Close()
	for port, st := range p.listeners {
		if _, keep := want[port]; !keep {
			st.close()
			delete(p.listeners, port)
		}
	}
	ports := map[uint16]bool{}
	for port := range p.listeners {
		ports[port] = true
	}
	p.ports.Store(&ports)
	p.stats.acks.Add(1)
	p.log.Info("config applied", "version", cfg.Version, "listeners", len(cfg.Listeners), "endpoints", len(cfg.Endpoints))
	return nil
}

// ListenerAddr returns the address of the listener on a proxy port.
func (p *Proxy) ListenerAddr(port uint16) net.Addr {
	p.mu.Lock()
	defer p.mu.Unlock()
	if st, ok := p.listeners[port]; ok {
		return st.ln.Addr()
	}
	return nil
}

// Close stops every listener and connection.
func (p *Proxy) Close() error {
	p.mu.Lock()
	for port, st := range p.listeners {
		st.close()
		delete(p.listeners, port)
	}
	p.inherited.Close() // those no listener took
	p.mu.Unlock()
	p.drainCancel()
	p.cancel()
	p.wg.Wait()
	if p.poller != nil {
		p.poller.Close() // (no connection is left to park)
	}
	return nil
}

// open6 opens the IPv6 listener of a proxy port that has none
// (Options.ListenHost6; p.mu held): the handed-over one, or a new one; a
// dns port gets its IPv6 UDP socket too (open6DNS). Failing is not fatal:
// the port serves IPv4, IPv6 redirects to it drop no-listener (fail
// closed), and the next Apply tries again.
func (p *Proxy) open6(st *listenerState) {
	if p.opts.ListenHost6 == "" || p.draining {
		return
	}
	if st.spec.Parser == policy.ParserDNS {
		p.open6DNS(st)
		return
	}
	if st.ln6 != nil {
		return
	}
	port := st.spec.Port
	ln, ok := p.inherited.TCP6[port]
	delete(p.inherited.TCP6, port)
	var err error
	if !ok {
		ln, err = redirect.ListenTransparent(p.ctx, net.JoinHostPort(p.opts.ListenHost6, strconv.Itoa(int(port))), *p.opts.Transparent)
	}
	if err == nil && p.opts.OnListener != nil {
		if err = p.opts.OnListener(port, ln); err != nil {
			ln.Close()
		}
	}
	if err != nil {
		p.log.Warn("no IPv6 listener: IPv6 redirects to the port drop until one opens", "port", port, "error", err)
		return
	}
	st.ln6 = ln
	p.wg.Add(1)
	go p.accept(st, ln)
}

func (p *Proxy) accept(st *listenerState, ln *net.TCPListener) {
	defer p.wg.Done()
	var backoff acceptretry.Backoff
	log := p.log.With("port", st.spec.Port)
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// The listener is still fine (see acceptretry).
			if !backoff.Wait(p.ctx.Done(), log, "accept failed; retrying", err) {
				return
			}
			continue
		}
		backoff.Reset()
		p.mu.Lock()
		spec := st.spec
		p.mu.Unlock()
		src := addrPort(c.RemoteAddr())
		dst, err := p.opts.OriginalDestination(c)
		if err == nil {
			err = p.steered(spec.Direction, src, dst)
		}
		if err != nil {
			p.reject(c, &p.stats.rejectedNotSteered, "connection not steered by the datapath", "src", src, "port", spec.Port, "error", err)
			continue
		}
		if p.conns.Add(1) > int64(p.opts.MaxConnections) {
			p.conns.Add(-1)
			p.reject(c, &p.stats.rejectedConns, "connection limit reached", "src", src, "limit", p.opts.MaxConnections)
			continue
		}
		key := p.sourceKey(src)
		if !p.acquireSource(key, src) {
			p.conns.Add(-1)
			p.reject(c, &p.stats.rejectedPerSource, "per-source connection limit reached", "src", src, "identity", key.id, "limit", p.opts.MaxConnectionsPerSource)
			continue
		}
		p.stats.connections.Add(1)
		ci := connInfo{dir: spec.Direction, src: src, dst: dst, parser: spec.Parser}
		// The connection counts in wg until it ends (a parked one holds
		// no goroutine that would): Drain and Close wait for it.
		p.wg.Add(1)
		p.run(func() {
			p.serve(ci, c, func() {
				p.conns.Add(-1)
				p.releaseSource(key, src)
				p.wg.Done()
			})
		})
	}
}

// workerIdle is how long a goroutine that served a connection waits for
// the next one before it ends.
const workerIdle = time.Second

// run serves a connection on a goroutine that served one before and waits
// for the next (or on a new one when none waits): a new goroutine's stack
// grows to what serving takes (runtime.morestack, 4 % of the proxy's CPU
// with a new connection per request, make bench's newconn phase), a
// reused one has grown already. Waiting goroutines end after workerIdle,
// and at once when a drain or Close begins.
func (p *Proxy) run(job func()) {
	select {
	case p.work <- job:
		return
	default:
	}
	p.wg.Add(1)
	go p.worker(job)
}

func (p *Proxy) worker(job func()) {
	defer p.wg.Done()
	t := time.NewTimer(p.workerIdle)
	defer t.Stop()
	for {
		job()
		job = nil // (the connection's state is not kept while waiting)
		t.Reset(p.workerIdle)
		select {
		case job = <-p.work:
		case <-t.C:
			return
		case <-p.drainCtx.Done():
			return
		}
	}
}

// reject closes a connection the proxy refuses, with a reset (no bytes
// were read, none are answered), and counts it.
func (p *Proxy) reject(c *net.TCPConn, counter *atomic.Int64, msg string, args ...any) {
	counter.Add(1)
	c.SetLinger(0)
	c.Close()
	p.log.Debug(msg, args...)
}

// steered checks that a connection came through the datapath's redirect.
// The listeners live in the node's network namespace, so a process there
// (or a peer allowed to reach the node) can also connect to a proxy port
// directly; the "original destination" of such a connection is the proxy
// itself, and dialing it would loop until the connection limit. A
// redirected connection keeps its real destination: a local endpoint's
// address on ingress, and a local endpoint as its source on egress.
func (p *Proxy) steered(dir policy.Direction, src, dst netip.AddrPort) error {
	if p.isOwnListener(dst) {
		return fmt.Errorf("original destination %s is a proxy listener", dst)
	}
	c := p.cur.Load()
	if c == nil {
		return errors.New("no config")
	}
	local := dst.Addr()
	if dir == policy.Egress {
		local = src.Addr()
	}
	if _, ok := c.endpoints[local]; !ok {
		return fmt.Errorf("%s is not a local endpoint", local)
	}
	return nil
}

// isOwnListener reports whether a is an address and port a proxy listener
// accepts on: a listener port on a loopback, unspecified or local address.
func (p *Proxy) isOwnListener(a netip.AddrPort) bool {
	if !(*p.ports.Load())[a.Port()] {
		return false
	}
	ip := a.Addr().Unmap()
	return ip.IsLoopback() || ip.IsUnspecified() || p.local.contains(ip)
}

func (p *Proxy) sourceKey(src netip.AddrPort) sourceKey {
	id := policy.IdentityWorld
	if c := p.cur.Load(); c != nil {
		id = c.identityOf(src.Addr())
	}
	if id == policy.IdentityWorld || id >= policy.FirstCIDRIdentity {
		return sourceKey{id: id, addr: src.Addr()}
	}
	return sourceKey{id: id}
}

func (p *Proxy) acquireSource(k sourceKey, src netip.AddrPort) bool {
	p.srcMu.Lock()
	defer p.srcMu.Unlock()
	if p.perSource[k] >= p.opts.MaxConnectionsPerSource {
		return false
	}
	p.perSource[k]++
	p.clients[src]++
	return true
}

func (p *Proxy) releaseSource(k sourceKey, src netip.AddrPort) {
	p.srcMu.Lock()
	defer p.srcMu.Unlock()
	if p.perSource[k]--; p.perSource[k] <= 0 {
		delete(p.perSource, k)
	}
	if p.clients[src]--; p.clients[src] <= 0 {
		delete(p.clients, src)
	}
}

// clientPortInUse reports whether a client connection from addr:port is
// open: an upstream bound to the client's address must not take its port
// (the same 4-tuple as the client's own flow towards the same server, in
// the datapath's conntrack and the node's, and on the server).
func (p *Proxy) clientPortInUse(addr netip.Addr) func(uint16) bool {
	return func(port uint16) bool {
		p.srcMu.Lock()
		defer p.srcMu.Unlock()
		return p.clients[netip.AddrPortFrom(addr, port)] > 0
	}
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	return netip.AddrPort{}
}

// conn is what the proxy knows about one client connection.
type connInfo struct {
	dir      policy.Direction
	src, dst netip.AddrPort
	parser   string
}

// serve serves a client connection and calls end, once, when it ended: an
// HTTP/1 connection may park (Server.Serve) and end later, on another
// goroutine.
func (p *Proxy) serve(ci connInfo, c *net.TCPConn, end func()) {
	handed := false // end is the HTTP server's to call
	defer func() {
		// One bad input must not end the node's L7 traffic: a panic ends
		// this connection only.
		if v := recover(); v != nil {
			p.countPanic(ci, &httpparser.PanicError{Value: v, Stack: debug.Stack()})
		}
		if !handed {
			c.Close()
			end()
		}
	}()
	dial := func(ctx context.Context) (net.Conn, error) {
		return p.dialUpstream(ctx, ci)
	}
	if benchRelayBuild { // false unless built with -tags l7gate_benchrelay (make bench only): benchrelay.go
		p.serveBenchRelay(ci, c, dial)
		return
	}
	switch ci.parser {
	case policy.ParserHTTP:
		handed = true
		// (Serve turns a panic into a PanicError for done)
		p.http.Serve(p.ctx, c, dial, p.httpDecider(ci), p.httpAccess(ci), func(err error) {
			p.connEnded(ci, err)
			c.Close()
			end()
		})
	case policy.ParserKafka:
		p.connEnded(ci, p.serveKafka(ci, c, dial))
	}
}

// connEnded counts a panic that ended a connection, or logs its error.
func (p *Proxy) connEnded(ci connInfo, err error) {
	var pe *httpparser.PanicError
	if errors.As(err, &pe) {
		p.countPanic(ci, pe)
		return
	}
	// The Kafka filter's goroutines recover their own panics.
	var kpe *kafka.PanicError
	if errors.As(err, &kpe) {
		p.countPanic(ci, &httpparser.PanicError{Value: kpe.Value, Stack: kpe.Stack})
		return
	}
	if err != nil {
		p.log.Debug("connection ended", "src", ci.src, "dst", ci.dst, "error", err)
	}
}

func (p *Proxy) countPanic(ci connInfo, pe *httpparser.PanicError) {
	p.stats.panics.Add(1)
	p.log.Error("panic while serving a connection; closed it", "src", ci.src, "dst", ci.dst, "parser", ci.parser,
		"panic", fmt.Sprint(pe.Value), "stack", string(pe.Stack))
}

func (p *Proxy) dialUpstream(ctx context.Context, ci connInfo) (net.Conn, error) {
	var mark uint32
	if p.opts.Mark != nil {
		c := p.cur.Load()
		src := policy.IdentityWorld
		if c != nil {
			src = c.identityOf(ci.src.Addr())
		}
		mark = p.opts.Mark(src, ci.dir)
	}
	var source netip.Addr
	if p.opts.KeepSource {
		source = ci.src.Addr()
	}
	if p.isOwnListener(ci.dst) {
		return nil, fmt.Errorf("refusing to dial %s: it is a proxy listener", ci.dst)
	}
	var avoid func(uint16) bool
	if source.IsValid() {
		avoid = p.clientPortInUse(source)
	}
	// A port the kernel hands out that a client holds is refused before
	// any packet leaves; the next socket gets another one.
	for attempt := 1; ; attempt++ {
		// (Not Dialer.DialTCP: with no local address it binds ":0" after
		// the Control function bound the source, and fails EINVAL.)
		d := redirect.UpstreamDialer(mark, source, avoid)
		// Keep-alive is turned on a second later, for the connections
		// still open then (armKeepAlive), not with four system calls in
		// every dial.
		d.KeepAlive = -1
		conn, err := d.DialContext(ctx, "tcp", ci.dst.String())
		if errors.Is(err, redirect.ErrSourcePortTaken) && attempt < maxSourcePortAttempts {
			continue
		}
		if err != nil {
			return nil, err // not a nil *net.TCPConn in a non-nil net.Conn
		}
		p.stats.upstreamConns.Add(1)
		p.armKeepAlive(conn)
		return conn, nil
	}
}

// maxSourcePortAttempts bounds the dials an upstream connection takes when
// the kernel keeps handing out ports of the client's open connections.
const maxSourcePortAttempts = 8

// noPolicy is the provenance of a denial because no policy covers the
// connection (fail closed).
func noPolicy(dir policy.Direction, reason string) []policy.Provenance {
	return []policy.Provenance{{Policy: "l7gate/no-policy", Direction: dir, Kind: policy.KindDefaultDeny, Path: reason}}
}

func (p *Proxy) httpDecider(ci connInfo) httpparser.Decider {
	return func(req *policy.HTTPRequest) httpparser.Decision {
		c := p.cur.Load()
		if c == nil {
			return httpparser.Decision{DecidedBy: noPolicy(ci.dir, "no config")}
		}
		set, peer, _, err := c.lookup(ci.dir, ci.src, ci.dst)
		if err != nil || set.http == nil {
			reason := "no HTTP rules"
			if err != nil {
				reason = err.Error()
			}
			return httpparser.Decision{DecidedBy: noPolicy(ci.dir, reason)}
		}
		var i int
		var actions []policy.HeaderMatch
		if set.headerActions {
			i, actions = set.http.MatchWithActions(peer, req)
		} else {
			i = set.http.Match(peer, req)
		}
		if i < 0 {
			r := set.rs.DefaultDenyOrigins(peer)
			// audit mode: the rules that would deny are all in audit:
			// forward, and the access record says audit
			return httpparser.Decision{Allowed: auditDenial(r), DecidedBy: r}
		}
		return httpparser.Decision{Allowed: true, DecidedBy: set.origins[i : i+1 : i+1], MismatchActions: actions}
	}
}
