// Package client is the l7gate Go proxy's xDS client. It connects to the
// agent's xDS server over its Unix socket with delta ADS (incremental:
// when one identity's pods change, only that IdentityMembership travels),
// subscribes with a wildcard to the l7gate resource types as node
// "l7proxy~<node>", and hands every change, applied on top of the last
// accepted resources, to a Handler. A nil result ACKs and makes the change
// current; an error NACKs with the error as detail and keeps the previous
// resources. The client reconnects with exponential backoff and keeps the
// last accepted resources while disconnected; on reconnect it tells the
// server the versions it has, so only differences are sent.
package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"time"

	l7gatev1 "github.com/l7gate/l7gate/proto/l7gatev1"
	"github.com/l7gate/l7gate/xds"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
)

// maxMessage bounds one response from the server.
const maxMessage = 256 << 20

// Config configures a Client.
type Config struct {
	// SocketPath of the agent's xDS server; xds.DefaultSocketPath when empty.
	SocketPath string
	// Node is this node's name; the client's node id is "l7proxy~<Node>".
	Node string
	// Handler decides about every change. Required.
	Handler Handler
	// Backoff between reconnects: MinBackoff doubling up to MaxBackoff
	// (defaults 100ms and 10s), with jitter.
	MinBackoff, MaxBackoff time.Duration
	Logger                 *slog.Logger
}

// Update is one received change of one resource type. Resources is the
// complete candidate state (every type) with the change applied; it and
// the messages in it must not be modified.
type Update struct {
	TypeURL   string
	Resources *Resources
	Changed   []string // names added or updated, sorted
	Removed   []string // names removed, sorted
}

// Handler returns nil to accept an update (ACK) or an error to reject it
// (NACK with the error's text as detail; the previous resources stay).
type Handler func(ctx context.Context, u Update) error

// Resources is an immutable view of the l7gate resources.
type Resources struct {
	Policies   map[string]*l7gatev1.NetworkPolicy      // by name (endpoint IP)
	Identities map[string]*l7gatev1.IdentityMembership // by name (identity)
	Listeners  map[string]*l7gatev1.Listener           // by name ("ingress/http")
	versions   map[string]map[string]string            // type → name → version
	received   map[string]bool
}

func emptyResources() *Resources {
	r := &Resources{
		Policies: map[string]*l7gatev1.NetworkPolicy{}, Identities: map[string]*l7gatev1.IdentityMembership{},
		Listeners: map[string]*l7gatev1.Listener{}, versions: map[string]map[string]string{}, received: map[string]bool{},
	}
	for _, t := range xds.L7ProxyTypes() {
		r.versions[t] = map[string]string{}
	}
	return r
}

func (r *Resources) clone() *Resources {
	out := &Resources{
		Policies: maps.Clone(r.Policies), Identities: maps.Clone(r.Identities), Listeners: maps.Clone(r.Listeners),
		versions: map[string]map[string]string{}, received: maps.Clone(r.received),
	}
	for t, v := range r.versions {
		out.versions[t] = maps.Clone(v)
	}
	return out
}

// Received reports whether the server has sent typeURL at least once
// (an empty set counts): a proxy is ready when every type was received.
func (r *Resources) Received(typeURL string) bool { return r.received[typeURL] }

// Complete reports whether every l7gate type was received.
func (r *Resources) Complete() bool {
	for _, t := range xds.L7ProxyTypes() {
		if !r.received[t] {
			return false
		}
	}
	return true
}

// Client is the Go proxy's xDS client.
type Client struct {
	cfg    Config
	log    *slog.Logger
	nodeID string

	mu      sync.Mutex
	current *Resources
}

// New checks cfg and returns a client; Run connects.
func New(cfg Config) (*Client, error) {
	if cfg.Handler == nil {
		return nil, errors.New("xds client: no handler")
	}
	if cfg.Node == "" {
		return nil, errors.New("xds client: no node name")
	}
	if cfg.SocketPath == "" {
		cfg.SocketPath = xds.DefaultSocketPath
	}
	abs, err := filepath.Abs(cfg.SocketPath)
	if err != nil {
		return nil, fmt.Errorf("xds client: socket path: %w", err)
	}
	cfg.SocketPath = abs
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(10*time.Second, cfg.MinBackoff)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Client{cfg: cfg, log: cfg.Logger, nodeID: xds.L7ProxyNodeID(cfg.Node), current: emptyResources()}, nil
}

// NodeID is the node id the client presents.
func (c *Client) NodeID() string { return c.nodeID }

// Current returns the last accepted resources (kept across reconnects).
func (c *Client) Current() *Resources {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.current
}

// Run connects and follows the server until ctx ends, reconnecting with
// backoff. It returns nil when ctx ends.
func (c *Client) Run(ctx context.Context) error {
	backoff := c.cfg.MinBackoff
	for {
		progressed, err := c.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if progressed {
			backoff = c.cfg.MinBackoff
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		c.log.WarnContext(ctx, "xds stream ended; reconnecting", "socket", c.cfg.SocketPath, "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
		backoff = min(2*backoff, c.cfg.MaxBackoff)
	}
}

// session runs one ADS stream; progressed reports whether a response
// arrived (the connection worked).
func (c *Client) session(ctx context.Context) (progressed bool, err error) {
	conn, err := grpc.NewClient("unix://"+c.cfg.SocketPath,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// One delta response carries every changed resource of a type;
		// a large cluster's identities exceed gRPC's 4 MiB default.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessage)))
	if err != nil {
		return false, fmt.Errorf("xds client: %w", err)
	}
	defer conn.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := conn.NewStream(sctx, &grpc.StreamDesc{StreamName: "DeltaAggregatedResources", ServerStreams: true, ClientStreams: true},
		adsDeltaMethod, grpc.ForceCodec(wireCodec{}))
	if err != nil {
		return false, fmt.Errorf("xds client: open stream: %w", err)
	}
	have := c.Current()
	for _, t := range xds.L7ProxyTypes() {
		req := &deltaRequest{
			nodeID: c.nodeID, typeURL: t, subscribe: []string{"*"},
			initialVersions: maps.Clone(have.versions[t]),
		}
		if err := stream.SendMsg(req); err != nil {
			return false, fmt.Errorf("xds client: subscribe %s: %w", t, err)
		}
	}
	for {
		resp := &deltaResponse{}
		if err := stream.RecvMsg(resp); err != nil {
			return progressed, fmt.Errorf("xds client: receive: %w", err)
		}
		if !progressed {
			c.log.InfoContext(ctx, "xds connected", "socket", c.cfg.SocketPath, "node", c.nodeID)
		}
		progressed = true
		ack := &deltaRequest{typeURL: resp.typeURL, responseNonce: resp.nonce}
		if err := c.apply(ctx, resp); err != nil {
			c.log.WarnContext(ctx, "xds update rejected", "type", resp.typeURL, "err", err)
			ack.errorCode, ack.errorMessage = int32(codes.InvalidArgument), err.Error()
		}
		if err := stream.SendMsg(ack); err != nil {
			return progressed, fmt.Errorf("xds client: send ACK: %w", err)
		}
	}
}

// apply decodes a response onto a copy of the current resources and asks
// the handler; on success the copy becomes current.
func (c *Client) apply(ctx context.Context, resp *deltaResponse) error {
	t := resp.typeURL
	cur := c.Current()
	if _, ok := cur.versions[t]; !ok {
		return fmt.Errorf("unexpected resource type %s", t)
	}
	next := cur.clone()
	u := Update{TypeURL: t, Resources: next}
	for _, r := range resp.resources {
		if v, ok := cur.versions[t][r.name]; ok && v == r.version && v != "" {
			continue // what we have (e.g. the server rolling back after a NACK)
		}
		msg, err := decode(t, &r)
		if err != nil {
			return err
		}
		switch m := msg.(type) {
		case *l7gatev1.NetworkPolicy:
			next.Policies[r.name] = m
		case *l7gatev1.IdentityMembership:
			next.Identities[r.name] = m
		case *l7gatev1.Listener:
			next.Listeners[r.name] = m
		}
		next.versions[t][r.name] = r.version
		u.Changed = append(u.Changed, r.name)
	}
	for _, name := range resp.removedResources {
		if _, ok := next.versions[t][name]; !ok {
			continue
		}
		delete(next.versions[t], name)
		delete(next.Policies, name)
		delete(next.Identities, name)
		delete(next.Listeners, name)
		u.Removed = append(u.Removed, name)
	}
	first := !next.received[t]
	next.received[t] = true
	slices.Sort(u.Changed)
	slices.Sort(u.Removed)
	if len(u.Changed) == 0 && len(u.Removed) == 0 && !first {
		return nil // nothing new (e.g. a reconnect with everything current)
	}
	if err := c.cfg.Handler(ctx, u); err != nil {
		return err
	}
	c.mu.Lock()
	c.current = next
	c.mu.Unlock()
	return nil
}

func decode(typeURL string, r *resource) (proto.Message, error) {
	var m interface {
		proto.Message
		GetName() string
	}
	switch typeURL {
	case xds.TypeNetworkPolicy:
		m = &l7gatev1.NetworkPolicy{}
	case xds.TypeIdentityMembership:
		m = &l7gatev1.IdentityMembership{}
	case xds.TypeListener:
		m = &l7gatev1.Listener{}
	default:
		return nil, fmt.Errorf("unexpected resource type %s", typeURL)
	}
	if r.any.GetTypeUrl() != typeURL {
		return nil, fmt.Errorf("resource %q: carries %s in a %s response", r.name, r.any.GetTypeUrl(), typeURL)
	}
	if err := r.any.UnmarshalTo(m); err != nil {
		return nil, fmt.Errorf("resource %q: decode %s: %w", r.name, typeURL, err)
	}
	if m.GetName() != r.name {
		return nil, fmt.Errorf("resource %q: named %q inside", r.name, m.GetName())
	}
	return m, nil
}
