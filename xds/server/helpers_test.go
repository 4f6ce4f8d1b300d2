package server_test

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	l7gatev1 "github.com/l7gate/l7gate/proto/l7gatev1"
	"github.com/l7gate/l7gate/xds"
	"github.com/l7gate/l7gate/xds/server"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
)

// state is the test servers' state: resources by type URL, the same for
// every consumer unless perNode has an entry for the node id.
type state struct {
	all     map[string][]proto.Message
	perNode map[string]map[string][]proto.Message
}

func produce(nodeID string, st state) (map[string][]proto.Message, error) {
	if r, ok := st.perNode[nodeID]; ok {
		return r, nil
	}
	return st.all, nil
}

func listener(port uint32) *l7gatev1.Listener {
	return &l7gatev1.Listener{Name: "ingress/http", ProxyPort: port, Direction: l7gatev1.Direction_DIRECTION_INGRESS, Parser: "http"}
}

func membership(id uint32, prefixes ...string) *l7gatev1.IdentityMembership {
	return &l7gatev1.IdentityMembership{Name: itoa(id), Identity: id, Prefixes: prefixes}
}

func itoa(n uint32) string {
	b := []byte{}
	for {
		b = append([]byte{byte('0' + n%10)}, b...)
		n /= 10
		if n == 0 {
			return string(b)
		}
	}
}

// resources builds a full l7proxy state.
func resources(port uint32, members ...*l7gatev1.IdentityMembership) state {
	r := map[string][]proto.Message{
		xds.TypeListener:           {listener(port)},
		xds.TypeNetworkPolicy:      {},
		xds.TypeIdentityMembership: {},
	}
	for _, m := range members {
		r[xds.TypeIdentityMembership] = append(r[xds.TypeIdentityMembership], m)
	}
	return state{all: r}
}

type testServer struct {
	*server.Server[state]
	socket string
	stop   func()
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("XDS_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// startServer serves on socket (a fresh one in t.TempDir() when "").
func startServer(t testing.TB, socket string, ackTimeout time.Duration) *testServer {
	t.Helper()
	if socket == "" {
		socket = filepath.Join(t.TempDir(), "run", "xds.sock")
	}
	srv, err := server.New(server.Config[state]{
		SocketPath: socket,
		Producers:  map[string]server.Producer[state]{xds.L7ProxyPrefix: produce},
		ACKTimeout: ackTimeout,
		Logger:     testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := server.Listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	ts := &testServer{Server: srv, socket: socket}
	stopped := false
	ts.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("server did not stop")
		}
	}
	t.Cleanup(ts.stop)
	return ts
}

func dial(t *testing.T, socket string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// sotwClient drives a state-of-the-world ADS stream by hand.
type sotwClient struct {
	t      *testing.T
	node   *core.Node
	stream discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	resps  chan *discovery.DiscoveryResponse
	err    error // why the stream ended; read after resps is closed
	close  func()
}

func newSotW(t *testing.T, socket, nodeID string) *sotwClient {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(dial(t, socket)).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &sotwClient{t: t, node: &core.Node{Id: nodeID}, stream: stream, resps: make(chan *discovery.DiscoveryResponse, 16)}
	done := make(chan struct{})
	c.close = func() { cancel(); <-done }
	go func() {
		defer close(done)
		defer close(c.resps)
		for {
			r, err := stream.Recv()
			if err != nil {
				c.err = err
				return
			}
			c.resps <- r
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

func (c *sotwClient) send(req *discovery.DiscoveryRequest) {
	c.t.Helper()
	req.Node = c.node
	if err := c.stream.Send(req); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

func (c *sotwClient) recv() *discovery.DiscoveryResponse {
	c.t.Helper()
	select {
	case r, ok := <-c.resps:
		if !ok {
			c.t.Fatal("stream ended")
		}
		return r
	case <-time.After(5 * time.Second):
		c.t.Fatal("no response within 5s")
	}
	return nil
}

// quiet checks that nothing arrives for a while.
func (c *sotwClient) quiet(d time.Duration) {
	c.t.Helper()
	select {
	case r, ok := <-c.resps:
		if ok {
			c.t.Fatalf("unexpected response: %s version %s", r.GetTypeUrl(), r.GetVersionInfo())
		}
	case <-time.After(d):
	}
}

// deltaClient drives an incremental ADS stream by hand.
type deltaClient struct {
	t      *testing.T
	node   *core.Node
	stream discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	resps  chan *discovery.DeltaDiscoveryResponse
}

func newDelta(t *testing.T, socket, nodeID string) *deltaClient {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(dial(t, socket)).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	c := &deltaClient{t: t, node: &core.Node{Id: nodeID}, stream: stream, resps: make(chan *discovery.DeltaDiscoveryResponse, 16)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(c.resps)
		for {
			r, err := stream.Recv()
			if err != nil {
				return
			}
			c.resps <- r
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

func (c *deltaClient) send(req *discovery.DeltaDiscoveryRequest) {
	c.t.Helper()
	req.Node = c.node
	if err := c.stream.Send(req); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

func (c *deltaClient) recv() *discovery.DeltaDiscoveryResponse {
	c.t.Helper()
	select {
	case r, ok := <-c.resps:
		if !ok {
			c.t.Fatal("stream ended")
		}
		return r
	case <-time.After(5 * time.Second):
		c.t.Fatal("no response within 5s")
	}
	return nil
}

func (c *deltaClient) quiet(d time.Duration) {
	c.t.Helper()
	select {
	case r, ok := <-c.resps:
		if ok {
			c.t.Fatalf("unexpected response: %s %d resources", r.GetTypeUrl(), len(r.GetResources()))
		}
	case <-time.After(d):
	}
}

// wait waits for a completion with a test deadline.
func wait(t *testing.T, c *server.Completion) error {
	t.Helper()
	select {
	case <-c.Done():
		return c.Err()
	case <-time.After(10 * time.Second):
		t.Fatal("completion did not resolve within 10s")
	}
	return nil
}

// waitFor polls cond (bounded).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for range 500 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}

// subscribed reports whether consumer id has subscribed to typeURL.
func subscribed(s *testServer, id, typeURL string) func() bool {
	return func() bool {
		for _, c := range s.Consumers() {
			if c.ID == id {
				_, ok := c.Types[typeURL]
				return ok
			}
		}
		return false
	}
}
