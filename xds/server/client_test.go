package server_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/xds"
	"github.com/l7gate/l7gate/xds/client"
	"github.com/l7gate/l7gate/xds/server"
	"github.com/l7gate/l7gate/xds/translate"
	"google.golang.org/protobuf/proto"
)

// recorder is a Handler that records updates and can be told to reject.
type recorder struct {
	mu      sync.Mutex
	updates []client.Update
	reject  func(client.Update) error
}

func (r *recorder) handle(_ context.Context, u client.Update) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.reject != nil {
		if err := r.reject(u); err != nil {
			return err
		}
	}
	r.updates = append(r.updates, u)
	return nil
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.updates)
}

func (r *recorder) setReject(f func(client.Update) error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reject = f
}

func runClient(t testing.TB, socket, node string, h client.Handler) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{SocketPath: socket, Node: node, Handler: h, MinBackoff: 20 * time.Millisecond, MaxBackoff: 200 * time.Millisecond, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("client run: %v", err)
		}
	})
	return c
}

func connected(srv *testServer, id string, types int) func() bool {
	return func() bool {
		for _, c := range srv.Consumers() {
			if c.ID == id && c.Streams > 0 && len(c.Types) == types {
				return true
			}
		}
		return false
	}
}

// TestClientACKNACK: the Go proxy's client ACKs what its handler accepts
// and NACKs what it rejects, keeping the previous resources.
func TestClientACKNACK(t *testing.T) {
	srv := startServer(t, "", 5*time.Second)
	rec := &recorder{}
	c := runClient(t, srv.socket, "n1", rec.handle)
	waitFor(t, "client subscriptions", connected(srv, "l7proxy~n1", 3))

	if err := wait(t, srv.Update(t.Context(), resources(10001, membership(256, "198.18.0.1/32")))); err != nil {
		t.Fatal(err)
	}
	cur := c.Current()
	if !cur.Complete() || cur.Listeners["ingress/http"].GetProxyPort() != 10001 || len(cur.Identities["256"].GetPrefixes()) != 1 {
		t.Fatalf("current after update: %+v", cur)
	}

	rec.setReject(func(u client.Update) error {
		if l := u.Resources.Listeners["ingress/http"]; l != nil && l.GetProxyPort() < 1024 {
			return fmt.Errorf("listener %s: %s", l.GetName(), "cannot bind proxy port 1: permission denied")
		}
		return nil
	})
	err := wait(t, srv.Update(t.Context(), resources(1, membership(256, "198.18.0.1/32"))))
	checkNACK(t, err, "l7proxy~n1")
	if c.Current() != cur {
		t.Fatal("rejected update changed the current resources")
	}
	// The server rolls the client back to what it has: that is not a
	// change, so the handler is not asked again.
	n := rec.count()
	if err := wait(t, srv.Update(t.Context(), resources(10002, membership(256, "198.18.0.1/32")))); err != nil {
		t.Fatal(err)
	}
	if got := c.Current().Listeners["ingress/http"].GetProxyPort(); got != 10002 {
		t.Fatalf("port %d after a good update", got)
	}
	if rec.count() != n+1 {
		t.Errorf("handler called %d times for one change", rec.count()-n)
	}
}

// TestClientReconnect: the client keeps its resources while the server is
// gone, reconnects, and gets only what changed. Event-driven: the stream
// is ordered, so "nothing re-delivered" is checked by the next change
// arriving as the only handler call.
func TestClientReconnect(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "xds.sock")
	srv := startServer(t, socket, 5*time.Second)
	rec := &recorder{}
	c := runClient(t, socket, "n1", rec.handle)
	waitFor(t, "client subscriptions", connected(srv, "l7proxy~n1", 3))
	st := resources(10001, membership(256, "198.18.0.1/32"), membership(257, "198.18.0.2/32"))
	if err := wait(t, srv.Update(t.Context(), st)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "client has every type and both identities", func() bool {
		cur := c.Current()
		return cur.Complete() && len(cur.Identities) == 2
	})
	before := c.Current()
	n := rec.count()
	srv.stop()
	if _, err := os.Stat(socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind after stop: %v", err)
	}

	srv2 := startServer(t, socket, 5*time.Second)
	waitFor(t, "reconnect", connected(srv2, "l7proxy~n1", 3))
	if c.Current() != before || rec.count() != n {
		t.Fatalf("resources changed across the disconnect and the reconnect to a server without state (%d handler calls)", rec.count()-n)
	}
	if err := wait(t, srv2.Update(t.Context(), st)); err != nil {
		t.Fatal(err)
	}
	st2 := resources(10001, membership(256, "198.18.0.1/32"), membership(257, "198.18.0.9/32"))
	if err := wait(t, srv2.Update(t.Context(), st2)); err != nil {
		t.Fatal(err)
	}
	if got := rec.count() - n; got != 1 {
		t.Fatalf("%d handler calls for the same state re-sent after restart and one peer change, want 1 (the change)", got)
	}
	last := rec.updates[len(rec.updates)-1]
	if last.TypeURL != xds.TypeIdentityMembership || strings.Join(last.Changed, ",") != "257" {
		t.Fatalf("after peer churn got %s changed %v", last.TypeURL, last.Changed)
	}
}

// TestL7ProxyEndToEnd: policy YAML → translate → server → client → the
// proxy's IR decides a request like the agent's.
func TestL7ProxyEndToEnd(t *testing.T) {
	objs, _ := policy.Load("../../policy/testdata/in/l7.yaml")
	snap, err := policy.Compute(objs, policy.NewIdentityAllocator())
	if err != nil {
		t.Fatal(err)
	}
	in := translate.Input{Node: "n1", Snapshot: snap, LocalEndpoints: snap.Endpoints}
	for i, l := range translate.RequiredListeners(snap, snap.Endpoints) {
		l.ProxyPort = uint16(15000 + i)
		in.Listeners = append(in.Listeners, l)
	}
	socket := filepath.Join(t.TempDir(), "xds.sock")
	srv, err := server.New(server.Config[translate.Input]{
		Producers: map[string]server.Producer[translate.Input]{xds.L7ProxyPrefix: translate.L7ProxyResources},
		Logger:    testLogger(t),
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
	t.Cleanup(func() { cancel(); <-done })

	// The handler converts as the proxy will; a conversion error NACKs.
	h := func(_ context.Context, u client.Update) error {
		for _, name := range u.Changed {
			if u.TypeURL == xds.TypeNetworkPolicy {
				if _, _, err := xds.PolicyFromProto(u.Resources.Policies[name]); err != nil {
					return err
				}
			}
		}
		return nil
	}
	c := runClient(t, socket, "n1", h)
	waitFor(t, "client", func() bool { return len(srv.Consumers()) == 1 && len(srv.Consumers()[0].Types) == 3 })
	if err := wait(t, srv.Update(t.Context(), in)); err != nil {
		t.Fatal(err)
	}
	api := snap.Endpoints[0]
	np := c.Current().Policies[api.IPs[0].String()]
	if np == nil {
		t.Fatalf("no policy for %s", api.IPs[0])
	}
	_, pol, err := xds.PolicyFromProto(np)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(np, mustPolicy(t, in, api.IPs[0])) {
		t.Fatal("received policy differs from the translated one")
	}
	rs := pol.Ingress.L7Set(policy.ProtoTCP, 8080)
	if rs == nil {
		t.Fatal("no rule set on 8080")
	}
	res, err := rs.EvaluateHTTP(257, &policy.HTTPRequest{Method: "GET", Path: "/api/v1/items/3"})
	if err != nil || res.Decision != policy.DecisionAllowed {
		t.Fatalf("GET from frontend: %+v %v", res, err)
	}
	res, _ = rs.EvaluateHTTP(258, &policy.HTTPRequest{Method: "GET", Path: "/api/v1/items/3"})
	if res.Decision != policy.DecisionDenied {
		t.Fatalf("GET from kafka: %+v", res)
	}
}

func mustPolicy(t *testing.T, in translate.Input, ip netip.Addr) proto.Message {
	t.Helper()
	r, err := translate.L7Proxy(in)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range r.Policies {
		if p.GetName() == ip.String() {
			return p
		}
	}
	t.Fatalf("no policy %s", ip)
	return nil
}

// TestListen: parent directory created, mode 0660, stale socket removed,
// a live server or a non-socket file is not clobbered.
func TestListen(t *testing.T) {
	dir := t.TempDir()
	socket := filepath.Join(dir, "a", "b", "xds.sock")
	ln, err := server.Listen(socket)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(socket)
	if err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode %v (%v)", fi.Mode(), err)
	}
	if _, err := server.Listen(socket); err == nil || !strings.Contains(err.Error(), "another server") {
		t.Fatalf("second listen on a live socket: %v", err)
	}
	// Leave a stale socket file behind: close without unlinking.
	type unlinker interface{ SetUnlinkOnClose(bool) }
	ln.(unlinker).SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Stat(socket); err != nil {
		t.Fatalf("stale socket not left: %v", err)
	}
	ln, err = server.Listen(socket)
	if err != nil {
		t.Fatalf("listen over a stale socket: %v", err)
	}
	ln.Close()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := server.Listen(file); err == nil {
		t.Fatal("listen replaced a regular file")
	}
}
