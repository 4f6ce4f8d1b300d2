package server_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	l7gatev1 "github.com/l7gate/l7gate/proto/l7gatev1"
	"github.com/l7gate/l7gate/xds"
	"github.com/l7gate/l7gate/xds/server"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
)

const nackDetail = "listener ingress/http: cannot bind proxy port 1: permission denied"

func checkNACK(t *testing.T, err error, consumer string) {
	t.Helper()
	var nack *server.NACKError
	if !errors.As(err, &nack) {
		t.Fatalf("completion error %v, want a NACKError", err)
	}
	if nack.Consumer != consumer || nack.TypeURL != xds.TypeListener || nack.Detail != nackDetail {
		t.Fatalf("NACK error %+v", nack)
	}
	for _, want := range []string{consumer, xds.TypeListener, "ingress/http", nackDetail} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
}

// TestSotWACKNACK drives a state-of-the-world stream by hand: ACK
// resolves, NACK fails naming consumer, type, resource and detail, the
// previous version stays served, and identical updates are not pushed.
func TestSotWACKNACK(t *testing.T) {
	srv := startServer(t, "", 5*time.Second)
	const node = "l7proxy~n1"
	c := newSotW(t, srv.socket, node)
	c.send(&discovery.DiscoveryRequest{TypeUrl: xds.TypeListener})
	waitFor(t, "subscription", subscribed(srv, node, xds.TypeListener))

	comp := srv.Update(t.Context(), resources(10001))
	r1 := c.recv()
	if len(r1.GetResources()) != 1 || r1.GetVersionInfo() == "" {
		t.Fatalf("first response: %v", r1)
	}
	select {
	case <-comp.Done():
		t.Fatal("completion resolved before the ACK")
	default:
	}
	c.send(&discovery.DiscoveryRequest{TypeUrl: xds.TypeListener, VersionInfo: r1.VersionInfo, ResponseNonce: r1.Nonce})
	if err := wait(t, comp); err != nil {
		t.Fatalf("after ACK: %v", err)
	}

	// A rejected update.
	comp = srv.Update(t.Context(), resources(1))
	r2 := c.recv()
	if r2.GetVersionInfo() == r1.GetVersionInfo() {
		t.Fatal("new content, same version")
	}
	c.send(&discovery.DiscoveryRequest{TypeUrl: xds.TypeListener, VersionInfo: r1.VersionInfo, ResponseNonce: r2.Nonce,
		ErrorDetail: &rpcstatus.Status{Code: 3, Message: nackDetail}})
	err := wait(t, comp)
	checkNACK(t, err, node)
	// The consumer still has r1 and the server serves r1: nothing is re-sent.
	c.quiet(300 * time.Millisecond)

	// The same content again is not pushed and fails with the NACK.
	pushes := srv.Stats().SnapshotsSet
	err = wait(t, srv.Update(t.Context(), resources(1)))
	checkNACK(t, err, node)
	c.quiet(200 * time.Millisecond)
	if got := srv.Stats().SnapshotsSet; got != pushes {
		t.Errorf("identical rejected update pushed: %d snapshots, was %d", got, pushes)
	}

	// A fixed update is pushed and ACKed.
	comp = srv.Update(t.Context(), resources(10002))
	r3 := c.recv()
	c.send(&discovery.DiscoveryRequest{TypeUrl: xds.TypeListener, VersionInfo: r3.VersionInfo, ResponseNonce: r3.Nonce})
	if err := wait(t, comp); err != nil {
		t.Fatal(err)
	}
	var l l7gatev1.Listener
	if err := r3.GetResources()[0].UnmarshalTo(&l); err != nil || l.GetProxyPort() != 10002 {
		t.Fatalf("pushed listener %v (%v)", &l, err)
	}

	// Byte-identical update: no push, resolves at once.
	pushes = srv.Stats().SnapshotsSet
	if err := wait(t, srv.Update(t.Context(), resources(10002))); err != nil {
		t.Fatal(err)
	}
	c.quiet(200 * time.Millisecond)
	if got := srv.Stats().SnapshotsSet; got != pushes {
		t.Errorf("identical update pushed")
	}
}

// TestDeltaACKNACK: the same over delta; after the NACK the server sends
// the last good version back.
func TestDeltaACKNACK(t *testing.T) {
	srv := startServer(t, "", 5*time.Second)
	const node = "l7proxy~n1"
	c := newDelta(t, srv.socket, node)
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: xds.TypeListener, ResourceNamesSubscribe: []string{"*"}})
	waitFor(t, "subscription", subscribed(srv, node, xds.TypeListener))

	comp := srv.Update(t.Context(), resources(10001))
	r1 := c.recv()
	if len(r1.GetResources()) != 1 {
		t.Fatalf("first response: %v", r1)
	}
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: xds.TypeListener, ResponseNonce: r1.Nonce})
	if err := wait(t, comp); err != nil {
		t.Fatalf("after ACK: %v", err)
	}

	comp = srv.Update(t.Context(), resources(1))
	r2 := c.recv()
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: xds.TypeListener, ResponseNonce: r2.Nonce,
		ErrorDetail: &rpcstatus.Status{Code: 3, Message: nackDetail}})
	checkNACK(t, wait(t, comp), node)

	// The server rolls this consumer back: it sends the good version.
	r3 := c.recv()
	if len(r3.GetResources()) != 1 || r3.GetResources()[0].GetVersion() != r1.GetResources()[0].GetVersion() {
		t.Fatalf("after NACK the server sent %v, want the first version again", r3)
	}
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: xds.TypeListener, ResponseNonce: r3.Nonce})
	c.quiet(200 * time.Millisecond)

	checkNACK(t, wait(t, srv.Update(t.Context(), resources(1))), node)
	c.quiet(200 * time.Millisecond)

	// Only the membership changes: delta sends only that type.
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: xds.TypeIdentityMembership, ResourceNamesSubscribe: []string{"*"}})
	r4 := c.recv()
	if r4.GetTypeUrl() != xds.TypeIdentityMembership {
		t.Fatalf("got %s", r4.GetTypeUrl())
	}
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: xds.TypeIdentityMembership, ResponseNonce: r4.Nonce})
	comp = srv.Update(t.Context(), resources(10001, membership(256, "198.18.0.1/32"), membership(257, "198.18.0.2/32")))
	r5 := c.recv()
	if r5.GetTypeUrl() != xds.TypeIdentityMembership || len(r5.GetResources()) != 2 {
		t.Fatalf("got %v", r5)
	}
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: xds.TypeIdentityMembership, ResponseNonce: r5.Nonce})
	if err := wait(t, comp); err != nil {
		t.Fatal(err)
	}
	comp = srv.Update(t.Context(), resources(10001, membership(256, "198.18.0.1/32"), membership(257, "198.18.0.3/32")))
	r6 := c.recv()
	if len(r6.GetResources()) != 1 || r6.GetResources()[0].GetName() != "257" {
		t.Fatalf("peer churn sent %v, want only identity 257", r6)
	}
	c.send(&discovery.DeltaDiscoveryRequest{TypeUrl: xds.TypeIdentityMembership, ResponseNonce: r6.Nonce})
	if err := wait(t, comp); err != nil {
		t.Fatal(err)
	}
	c.quiet(200 * time.Millisecond)
}

// TestTimeoutNamesStuckConsumer: one consumer never ACKs; the completion
// times out naming it (and only it), and the other consumer keeps getting
// updates.
func TestTimeoutNamesStuckConsumer(t *testing.T) {
	srv := startServer(t, "", 400*time.Millisecond)
	stuck := newSotW(t, srv.socket, "l7proxy~stuck")
	stuck.send(&discovery.DiscoveryRequest{TypeUrl: xds.TypeListener})
	good := newDelta(t, srv.socket, "l7proxy~good")
	good.send(&discovery.DeltaDiscoveryRequest{TypeUrl: xds.TypeListener})
	waitFor(t, "subscriptions", func() bool {
		return subscribed(srv, "l7proxy~stuck", xds.TypeListener)() && subscribed(srv, "l7proxy~good", xds.TypeListener)()
	})

	for i, port := range []uint32{10001, 10002} {
		start := time.Now()
		comp := srv.Update(t.Context(), resources(port))
		if i == 0 {
			stuck.recv() // and never ACKs, so SotW sends it nothing newer
		}
		r := good.recv()
		good.send(&discovery.DeltaDiscoveryRequest{TypeUrl: xds.TypeListener, ResponseNonce: r.Nonce})
		err := wait(t, comp)
		var pe *server.PendingError
		if !errors.As(err, &pe) || !errors.Is(err, server.ErrACKTimeout) {
			t.Fatalf("update %d: err = %v, want a timeout", i, err)
		}
		if len(pe.Pending) != 1 || pe.Pending[0].Consumer != "l7proxy~stuck" || pe.Pending[0].TypeURL != xds.TypeListener || !pe.Pending[0].Connected {
			t.Fatalf("pending %+v", pe.Pending)
		}
		if !strings.Contains(err.Error(), `"l7proxy~stuck"`) || strings.Contains(err.Error(), "good") || !strings.Contains(err.Error(), "ingress/http") {
			t.Errorf("error %q", err)
		}
		if d := time.Since(start); d < 350*time.Millisecond || d > 5*time.Second {
			t.Errorf("timed out after %s", d)
		}
	}

	// The caller's context bounds the wait too. A server whose own ACK
	// timeout is far away, so only the context can end the wait (on a
	// loaded machine two nearby deadlines race).
	srv2 := startServer(t, "", time.Minute)
	stuck2 := newSotW(t, srv2.socket, "l7proxy~stuck")
	stuck2.send(&discovery.DiscoveryRequest{TypeUrl: xds.TypeListener})
	waitFor(t, "subscription", subscribed(srv2, "l7proxy~stuck", xds.TypeListener))
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	comp := srv2.Update(ctx, resources(10003))
	stuck2.recv()
	if err := wait(t, comp); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "l7proxy~stuck") {
		t.Fatalf("err = %v, want deadline exceeded naming the stuck consumer", err)
	}
}

// TestNotWaitedFor: no consumers, or consumers not subscribed to what
// changed, resolve at once.
func TestNotWaitedFor(t *testing.T) {
	srv := startServer(t, "", 5*time.Second)
	if err := wait(t, srv.Update(t.Context(), resources(10001))); err != nil {
		t.Fatalf("no consumers: %v", err)
	}
	c := newSotW(t, srv.socket, "l7proxy~n1")
	c.send(&discovery.DiscoveryRequest{TypeUrl: xds.TypeListener})
	r := c.recv()
	c.send(&discovery.DiscoveryRequest{TypeUrl: xds.TypeListener, VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce})
	waitFor(t, "ACK", func() bool { return srv.Consumers()[0].Types[xds.TypeListener] })
	// Only IdentityMembership changes; the consumer does not subscribe to it.
	if err := wait(t, srv.Update(t.Context(), resources(10001, membership(256, "198.18.0.1/32")))); err != nil {
		t.Fatalf("unsubscribed type: %v", err)
	}
	c.quiet(200 * time.Millisecond)
}

// TestSotWAndDeltaTogether: a completion waits for both kinds of stream.
func TestSotWAndDeltaTogether(t *testing.T) {
	srv := startServer(t, "", 5*time.Second)
	s := newSotW(t, srv.socket, "l7proxy~a")
	s.send(&discovery.DiscoveryRequest{TypeUrl: xds.TypeListener})
	d := newDelta(t, srv.socket, "l7proxy~b")
	d.send(&discovery.DeltaDiscoveryRequest{TypeUrl: xds.TypeListener})
	waitFor(t, "subscriptions", func() bool {
		return subscribed(srv, "l7proxy~a", xds.TypeListener)() && subscribed(srv, "l7proxy~b", xds.TypeListener)()
	})
	comp := srv.Update(t.Context(), resources(10001))
	rs, rd := s.recv(), d.recv()
	s.send(&discovery.DiscoveryRequest{TypeUrl: xds.TypeListener, VersionInfo: rs.VersionInfo, ResponseNonce: rs.Nonce})
	select {
	case <-comp.Done():
		t.Fatal("resolved with one consumer still to ACK")
	case <-time.After(100 * time.Millisecond):
	}
	d.send(&discovery.DeltaDiscoveryRequest{TypeUrl: xds.TypeListener, ResponseNonce: rd.Nonce})
	if err := wait(t, comp); err != nil {
		t.Fatal(err)
	}
}

// TestPerConsumerResources: producers see the node id; each consumer gets
// its own resources.
func TestPerConsumerResources(t *testing.T) {
	srv := startServer(t, "", 5*time.Second)
	a := newSotW(t, srv.socket, "l7proxy~a")
	a.send(&discovery.DiscoveryRequest{TypeUrl: xds.TypeListener})
	b := newSotW(t, srv.socket, "l7proxy~b")
	b.send(&discovery.DiscoveryRequest{TypeUrl: xds.TypeListener})
	waitFor(t, "subscriptions", func() bool {
		return subscribed(srv, "l7proxy~a", xds.TypeListener)() && subscribed(srv, "l7proxy~b", xds.TypeListener)()
	})
	st := resources(10001)
	st.perNode = map[string]map[string][]proto.Message{"l7proxy~b": {xds.TypeListener: {listener(20000)}}}
	srv.Update(t.Context(), st)
	for c, want := range map[*sotwClient]uint32{a: 10001, b: 20000} {
		var l l7gatev1.Listener
		if err := c.recv().GetResources()[0].UnmarshalTo(&l); err != nil || l.GetProxyPort() != want {
			t.Errorf("%s got port %d, want %d", c.node.Id, l.GetProxyPort(), want)
		}
	}
}

// TestUnknownConsumer: a node id without a producer is refused.
func TestUnknownConsumer(t *testing.T) {
	srv := startServer(t, "", 5*time.Second)
	c := newSotW(t, srv.socket, "sidecar~x")
	c.send(&discovery.DiscoveryRequest{TypeUrl: xds.TypeListener})
	select {
	case _, ok := <-c.resps:
		if ok {
			t.Fatal("unknown consumer got a response")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("stream of an unknown consumer not closed")
	}
	if c.err == nil || !strings.Contains(c.err.Error(), `unknown consumer "sidecar~x"`) {
		t.Fatalf("stream ended with %v", c.err)
	}
}

// TestBadResources: a producer error or duplicate names fail the
// completion and push nothing.
func TestBadResources(t *testing.T) {
	srv := startServer(t, "", 5*time.Second)
	c := newSotW(t, srv.socket, "l7proxy~n1")
	c.send(&discovery.DiscoveryRequest{TypeUrl: xds.TypeListener})
	waitFor(t, "subscription", subscribed(srv, "l7proxy~n1", xds.TypeListener))
	st := resources(10001)
	st.all[xds.TypeListener] = append(st.all[xds.TypeListener], listener(10002))
	err := wait(t, srv.Update(t.Context(), st))
	if err == nil || !strings.Contains(err.Error(), `"ingress/http" twice`) || !strings.Contains(err.Error(), "l7proxy~n1") {
		t.Fatalf("err = %v", err)
	}
	c.quiet(200 * time.Millisecond)
}

// TestConsumerRestartsDuringWait: a consumer that drops its stream before
// ACKing and comes back within the timeout completes the update; one that
// stays away is reported as disconnected.
func TestConsumerRestartsDuringWait(t *testing.T) {
	srv := startServer(t, "", 2*time.Second)
	const node = "l7proxy~n1"
	old := newSotW(t, srv.socket, node)
	old.send(&discovery.DiscoveryRequest{TypeUrl: xds.TypeListener})
	waitFor(t, "subscription", subscribed(srv, node, xds.TypeListener))
	comp := srv.Update(t.Context(), resources(10001))
	old.recv()
	old.close() // the proxy restarts without ACKing
	waitFor(t, "stream closed", func() bool { return srv.Consumers()[0].Streams == 0 })
	select {
	case <-comp.Done():
		t.Fatalf("resolved while the consumer was away: %v", comp.Err())
	case <-time.After(100 * time.Millisecond):
	}
	fresh := newSotW(t, srv.socket, node)
	fresh.send(&discovery.DiscoveryRequest{TypeUrl: xds.TypeListener})
	r := fresh.recv()
	fresh.send(&discovery.DiscoveryRequest{TypeUrl: xds.TypeListener, VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce})
	if err := wait(t, comp); err != nil {
		t.Fatalf("after the restarted consumer ACKed: %v", err)
	}

	comp = srv.Update(t.Context(), resources(10002))
	fresh.recv()
	fresh.close()
	err := wait(t, comp)
	var pe *server.PendingError
	if !errors.As(err, &pe) || len(pe.Pending) != 1 || pe.Pending[0].Connected || !strings.Contains(err.Error(), "(disconnected)") {
		t.Fatalf("err = %v, want a timeout naming the disconnected consumer", err)
	}
}
