// Package server is l7gate's xDS server: one go-control-plane ADS server
// (state-of-the-world and delta) on a Unix socket, serving each consumer
// the resources its producer renders, and tracking ACKs and NACKs so that
// an Update returns a Completion that says when the update is in force.
//
// Consumers are told apart by node-id prefix ("l7proxy~", "envoy~"); each
// prefix has a Producer that renders that kind of consumer's resources
// from the server's state S. A consumer whose node id matches no producer
// is refused.
//
// After a NACK the consumer keeps its previous configuration, and so does
// the server: it serves that consumer the last version it ACKed for the
// rejected type (or an empty set if it never ACKed one) until an update
// changes the content. An update whose content equals the rejected one is
// not pushed again; its completion fails with the original NACK.
//
// Lock order: Server.mu, then the snapshot cache's own lock (SetSnapshot
// is called with mu held; the cache never calls back into the server
// while holding its lock).
package server

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/l7gate/l7gate/xds"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
)

// DefaultSocketPath is where the agent serves xDS.
const DefaultSocketPath = xds.DefaultSocketPath

// DefaultACKTimeout bounds how long a Completion waits for ACKs.
const DefaultACKTimeout = 30 * time.Second

// Producer renders the resources of the consumer nodeID from state, keyed
// by type URL. A type present with an empty list tells the consumer the
// set is empty; a type absent is not served. It must be a pure function
// of its arguments: equal input, equal resources. It may return a message
// it returned before (a cache of unchanged resources): the server then
// reuses that message's encoding hash, so a message, once returned, must
// never be modified.
type Producer[S any] func(nodeID string, state S) (map[string][]proto.Message, error)

// Config configures a Server.
type Config[S any] struct {
	// SocketPath for ListenAndServe; DefaultSocketPath when empty.
	SocketPath string
	// Producers by node-id prefix, e.g. {"l7proxy~": translate.L7ProxyResources}.
	Producers map[string]Producer[S]
	// ACKTimeout bounds every Completion; DefaultACKTimeout when zero.
	ACKTimeout time.Duration
	Logger     *slog.Logger
	// TakeOver: ListenAndServe replaces a socket another server listens on
	// (a rolling update's new agent, while the old one still runs: the old
	// one stands by), and closing leaves the socket file, which a successor
	// may own by then.
	TakeOver bool
}

// Stats counts what the server did, for metrics and tests.
type Stats struct {
	SnapshotsSet uint64 // snapshots handed to the cache (pushes)
	ACKs         uint64
	NACKs        uint64
}

// Server is the xDS server. Create it with New, serve with Serve or
// ListenAndServe, and publish state with Update.
type Server[S any] struct {
	cfg   Config[S]
	log   *slog.Logger
	cache cache.SnapshotCache

	mu        sync.Mutex
	state     S
	hasState  bool
	gen       uint64
	consumers map[string]*consumer[S]
	streams   map[streamKey]*stream
	pending   map[*Completion]struct{}
	stats     Stats
}

// consumer is one node id.
type consumer[S any] struct {
	id       string
	producer Producer[S]
	gen      uint64 // state generation last rendered
	types    map[string]*typeState
	streams  map[streamKey]*stream
	served   *snapshot // what the cache serves this consumer
}

type typeState struct {
	desired  *resourceSet // rendered from the latest state
	good     *resourceSet // last version the consumer ACKed
	rejected *NACKError   // set while desired is the version it NACKed
}

// serving is the set the cache should serve: the desired one unless the
// consumer rejected it.
func (ts *typeState) serving() *resourceSet {
	if ts.rejected != nil && ts.desired != nil && ts.rejected.Version == ts.desired.version {
		if ts.good != nil {
			return ts.good
		}
		empty, _ := newResourceSet(ts.desired.typeURL, nil, nil)
		return empty
	}
	return ts.desired
}

// New creates a server; nothing listens until Serve.
func New[S any](cfg Config[S]) (*Server[S], error) {
	if len(cfg.Producers) == 0 {
		return nil, errors.New("xds server: no producers")
	}
	for p := range cfg.Producers {
		if !strings.HasSuffix(p, "~") {
			return nil, fmt.Errorf("xds server: producer prefix %q must end with ~", p)
		}
	}
	if cfg.SocketPath == "" {
		cfg.SocketPath = DefaultSocketPath
	}
	if cfg.ACKTimeout <= 0 {
		cfg.ACKTimeout = DefaultACKTimeout
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server[S]{
		cfg:       cfg,
		log:       cfg.Logger,
		consumers: map[string]*consumer[S]{},
		streams:   map[streamKey]*stream{},
		pending:   map[*Completion]struct{}{},
	}
	s.cache = cache.NewSnapshotCache(true, cache.IDHash{}, slogAdapter{cfg.Logger})
	return s, nil
}

// Listen opens the Unix socket at path: it creates the parent directory,
// removes a stale socket file (one nobody accepts on), and makes the
// socket mode 0660.
func Listen(path string) (net.Listener, error) { return listen(path, false) }

// listen is Listen; with takeOver a socket another server listens on is
// replaced too.
func listen(path string, takeOver bool) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("xds socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("xds socket %s: exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
			c.Close()
			if !takeOver {
				return nil, fmt.Errorf("xds socket %s: another server is listening", path)
			}
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale xds socket: %w", err)
		}
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on xds socket: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("xds socket mode: %w", err)
	}
	return ln, nil
}

// ListenAndServe listens on Config.SocketPath and serves until ctx ends.
func (s *Server[S]) ListenAndServe(ctx context.Context) error {
	ln, err := listen(s.cfg.SocketPath, s.cfg.TakeOver)
	if err != nil {
		return err
	}
	if s.cfg.TakeOver {
		ln.(*net.UnixListener).SetUnlinkOnClose(false)
	}
	return s.Serve(ctx, ln)
}

// Serve serves ADS (SotW and delta) on ln until ctx ends, then stops
// and closes ln (removing the socket file).
func (s *Server[S]) Serve(ctx context.Context, ln net.Listener) error {
	gs := grpc.NewServer()
	xs := serverv3.NewServer(ctx, s.cache, callbacks[S]{s})
	discovery.RegisterAggregatedDiscoveryServiceServer(gs, xs)
	errc := make(chan error, 1)
	go func() { errc <- gs.Serve(ln) }()
	s.log.InfoContext(ctx, "xds server listening", "addr", ln.Addr().String())
	select {
	case err := <-errc:
		return fmt.Errorf("serve xds: %w", err)
	case <-ctx.Done():
	}
	// Streams end with ctx (the xDS server watches it); give them a moment.
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(2 * time.Second):
		gs.Stop()
		<-stopped
	}
	<-errc
	return nil
}

// Stats returns the counters.
func (s *Server[S]) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// Update publishes state: every known consumer's resources are rendered
// and served; consumers whose resources did not change get no push. The
// completion waits until every consumer has ACKed, on every stream, the
// latest version of each type it subscribes to (consumers already in sync,
// and types nobody subscribes to, are not waited for), up to
// Config.ACKTimeout or until ctx ends, whichever is first. A consumer that
// rejected exactly this content fails the completion at once. Update
// itself never waits for consumers.
func (s *Server[S]) Update(ctx context.Context, state S) *Completion {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gen++
	s.state, s.hasState = state, true
	comp := &Completion{gen: s.gen, done: make(chan struct{}), pending: map[waitKey]struct{}{}}
	var errs []error
	for _, id := range slices.Sorted(maps.Keys(s.consumers)) {
		c := s.consumers[id]
		if err := s.render(c); err != nil {
			errs = append(errs, err)
			continue
		}
		for _, t := range slices.Sorted(maps.Keys(c.types)) {
			if !s.subscribed(c, t) {
				continue
			}
			ts := c.types[t]
			if ts.serving() != ts.desired {
				errs = append(errs, ts.rejected)
				continue
			}
			if !s.inSync(c, t) {
				comp.pending[waitKey{c.id, t}] = struct{}{}
			}
		}
	}
	switch {
	case len(errs) > 0:
		s.resolve(comp, errors.Join(errs...))
	case len(comp.pending) == 0:
		s.resolve(comp, nil)
	default:
		s.pending[comp] = struct{}{}
		start := time.Now()
		comp.stops = append(comp.stops,
			time.AfterFunc(s.cfg.ACKTimeout, func() { s.expire(comp, start, ErrACKTimeout) }).Stop,
			context.AfterFunc(ctx, func() { s.expire(comp, start, ctx.Err()) }),
		)
	}
	s.log.DebugContext(ctx, "xds update", "generation", s.gen, "waiting", len(comp.pending), "err", comp.Err())
	return comp
}

// render produces c's resources from the current state and serves them.
func (s *Server[S]) render(c *consumer[S]) error {
	if !s.hasState {
		return nil
	}
	byType, err := c.producer(c.id, s.state)
	if err != nil {
		return fmt.Errorf("xds: render resources for %q: %w", c.id, err)
	}
	prev := map[string]*resourceSet{}
	for t, ts := range c.types {
		prev[t] = ts.desired
	}
	snap, err := newSnapshot(byType, prev)
	if err == nil {
		err = snap.Consistent()
	}
	if err != nil {
		return fmt.Errorf("xds: resources for %q: %w", c.id, err)
	}
	for t := range c.types {
		if snap.sets[t] == nil {
			c.types[t].desired = nil
		}
	}
	for t, rs := range snap.sets {
		ts := c.types[t]
		if ts == nil {
			ts = &typeState{}
			c.types[t] = ts
		}
		ts.desired = rs
		if ts.rejected != nil && ts.rejected.Version != rs.version {
			ts.rejected = nil // new content: try it
		}
	}
	c.gen = s.gen
	return s.serve(c)
}

// serve hands the cache what c should be served, if that changed.
func (s *Server[S]) serve(c *consumer[S]) error {
	next := &snapshot{sets: map[string]*resourceSet{}}
	for t, ts := range c.types {
		if rs := ts.serving(); rs != nil {
			next.sets[t] = rs
		}
	}
	if c.served != nil && maps.Equal(c.served.versions(), next.versions()) {
		return nil
	}
	if err := next.Consistent(); err != nil {
		// Only possible when a rejected type was rolled back; the
		// consumer is better off with the consistent rest.
		s.log.Warn("xds: serving rolled-back resources that are not consistent", "consumer", c.id, "err", err)
	}
	// The cache sends on buffered per-stream channels; a cancellable
	// context could make it drop a response, so none is passed.
	if err := s.cache.SetSnapshot(context.Background(), c.id, next); err != nil {
		return fmt.Errorf("xds: set snapshot for %q: %w", c.id, err)
	}
	c.served = next
	s.stats.SnapshotsSet++
	return nil
}

// subscribed: some open stream of c has asked for type t.
func (s *Server[S]) subscribed(c *consumer[S], t string) bool {
	for _, st := range c.streams {
		if st.types[t] != nil {
			return true
		}
	}
	return false
}

// inSync: c has at least one stream subscribed to t and every such
// stream has ACKed the desired resources of t.
func (s *Server[S]) inSync(c *consumer[S], t string) bool {
	ts := c.types[t]
	if ts == nil || ts.desired == nil {
		return true
	}
	want := ts.desired
	any := false
	for _, st := range c.streams {
		sub := st.types[t]
		if sub == nil {
			continue
		}
		any = true
		if !st.key.delta {
			if sub.ackedVersion != want.version {
				return false
			}
			continue
		}
		for name, v := range want.versions {
			if sub.wants(name) && sub.acked[name] != v {
				return false
			}
		}
		for name := range sub.acked {
			if _, ok := want.versions[name]; !ok && sub.wants(name) {
				return false
			}
		}
	}
	return any
}

// settle resolves completions that c's progress satisfies.
func (s *Server[S]) settle(c *consumer[S]) {
	for comp := range s.pending {
		for k := range comp.pending {
			if k.consumer == c.id && s.inSync(c, k.typeURL) {
				delete(comp.pending, k)
			}
		}
		if len(comp.pending) == 0 {
			s.resolve(comp, nil)
		}
	}
}

// fail resolves every completion waiting on (consumer, type) with err.
func (s *Server[S]) fail(k waitKey, err error) {
	for comp := range s.pending {
		if _, ok := comp.pending[k]; ok {
			s.resolve(comp, err)
		}
	}
}

func (s *Server[S]) resolve(comp *Completion, err error) {
	select {
	case <-comp.done:
		return
	default:
	}
	for _, stop := range comp.stops {
		stop()
	}
	comp.err = err
	delete(s.pending, comp)
	close(comp.done)
	for k := range comp.pending {
		if c := s.consumers[k.consumer]; c != nil {
			s.prune(c)
		}
	}
}

// prune forgets a consumer that has no stream left and that no pending
// update waits for (it could come back within the wait), so consumers
// that went away do not accumulate. One that returns later is a new
// consumer: rendered afresh on its first request.
func (s *Server[S]) prune(c *consumer[S]) {
	if len(c.streams) > 0 || s.consumers[c.id] != c {
		return
	}
	for comp := range s.pending {
		for k := range comp.pending {
			if k.consumer == c.id {
				return
			}
		}
	}
	delete(s.consumers, c.id)
	s.cache.ClearSnapshot(c.id)
	s.log.Info("xds consumer gone; forgotten", "consumer", c.id)
}

func (s *Server[S]) expire(comp *Completion, start time.Time, cause error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.pending[comp]; !ok {
		return
	}
	e := &PendingError{After: time.Since(start), Cause: cause}
	for _, k := range slices.SortedFunc(maps.Keys(comp.pending), func(a, b waitKey) int {
		return strings.Compare(a.consumer+" "+a.typeURL, b.consumer+" "+b.typeURL)
	}) {
		p := Pending{Consumer: k.consumer, TypeURL: k.typeURL}
		if c := s.consumers[k.consumer]; c != nil {
			p.Connected = len(c.streams) > 0
			if ts := c.types[k.typeURL]; ts != nil && ts.desired != nil {
				p.Version, p.Resources = ts.desired.version, ts.desired.names
			}
		}
		e.Pending = append(e.Pending, p)
	}
	s.log.Warn("xds: update not ACKed", "err", e)
	s.resolve(comp, e)
}

// attach binds a stream to its consumer, creating the consumer (and
// rendering its resources) on first sight.
func (s *Server[S]) attach(st *stream, node *core.Node) (*consumer[S], error) {
	if st.node != "" {
		return s.consumers[st.node], nil
	}
	id := node.GetId()
	if id == "" {
		return nil, errors.New("xds: first request carries no node id")
	}
	c := s.consumers[id]
	if c == nil {
		prod := s.producerFor(id)
		if prod == nil {
			return nil, fmt.Errorf("xds: unknown consumer %q: node id must start with one of %v", id, slices.Sorted(maps.Keys(s.cfg.Producers)))
		}
		c = &consumer[S]{id: id, producer: prod, types: map[string]*typeState{}, streams: map[streamKey]*stream{}}
		s.consumers[id] = c
		if err := s.render(c); err != nil {
			s.log.Error("xds: cannot render resources for new consumer", "consumer", id, "err", err)
		}
	}
	st.node = id
	c.streams[st.key] = st
	s.log.Info("xds consumer connected", "consumer", id, "delta", st.key.delta, "stream", st.key.id)
	return c, nil
}

func (s *Server[S]) producerFor(id string) Producer[S] {
	best := ""
	for p := range s.cfg.Producers {
		if strings.HasPrefix(id, p) && len(p) > len(best) {
			best = p
		}
	}
	if best == "" {
		return nil
	}
	return s.cfg.Producers[best]
}

// onACK records that c accepted version of type t.
func (s *Server[S]) onACK(c *consumer[S], t, version string) {
	s.stats.ACKs++
	ts := c.types[t]
	if ts == nil {
		return
	}
	if ts.desired != nil && ts.desired.version == version {
		ts.good = ts.desired
	}
	s.settle(c)
}

// onNACK records that c rejected version of type t: completions waiting
// for it fail, and c is served its last good version again.
func (s *Server[S]) onNACK(c *consumer[S], t string, sent *sentResponse, detail string, code int32) {
	s.stats.NACKs++
	ts := c.types[t]
	e := &NACKError{Consumer: c.id, TypeURL: t, Version: sent.version, Resources: sent.names, Detail: detail, Code: code}
	if ts == nil || ts.desired == nil || ts.desired.version != sent.version {
		s.log.Info("xds: NACK of a superseded version", "err", e)
		return
	}
	if len(e.Resources) == 0 {
		e.Resources = ts.desired.names
	}
	s.log.Warn("xds: consumer rejected resources; keeping its previous version", "err", e)
	ts.rejected = e
	s.fail(waitKey{c.id, t}, e)
	if err := s.serve(c); err != nil {
		s.log.Error("xds: cannot roll back rejected resources", "consumer", c.id, "err", err)
	}
}

// ConsumerStatus describes one consumer, for admin endpoints and tests.
type ConsumerStatus struct {
	ID      string
	Streams int
	// Types maps each subscribed type to whether every stream ACKed the
	// latest resources.
	Types map[string]bool
}

// Consumers lists the consumers seen, sorted by node id.
func (s *Server[S]) Consumers() []ConsumerStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []ConsumerStatus
	for _, id := range slices.Sorted(maps.Keys(s.consumers)) {
		c := s.consumers[id]
		st := ConsumerStatus{ID: id, Streams: len(c.streams), Types: map[string]bool{}}
		for _, str := range c.streams {
			for t := range str.types {
				st.Types[t] = s.inSync(c, t)
			}
		}
		out = append(out, st)
	}
	return out
}
