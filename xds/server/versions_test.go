package server_test

import (
	"maps"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"

	"github.com/l7gate/l7gate/xds"
)

// TestResourceVersions: what a consumer should have and what it ACKed,
// per resource: equal after an ACK, the old version kept after a NACK.
func TestResourceVersions(t *testing.T) {
	srv := startServer(t, "", 5*time.Second)
	const node = "l7proxy~n1"
	if d, a := srv.ResourceVersions(node, xds.TypeListener); d != nil || a != nil {
		t.Fatalf("unknown consumer: %v %v", d, a)
	}
	c := newSotW(t, srv.socket, node)
	c.send(&discovery.DiscoveryRequest{TypeUrl: xds.TypeListener})
	waitFor(t, "subscription", subscribed(srv, node, xds.TypeListener))
	comp := srv.Update(t.Context(), resources(10001))
	r1 := c.recv()
	if d, a := srv.ResourceVersions(node, xds.TypeListener); len(d) != 1 || a != nil {
		t.Fatalf("before the ACK: desired %v, acked %v", d, a)
	}
	c.send(&discovery.DiscoveryRequest{TypeUrl: xds.TypeListener, VersionInfo: r1.VersionInfo, ResponseNonce: r1.Nonce})
	if err := wait(t, comp); err != nil {
		t.Fatal(err)
	}
	d1, a1 := srv.ResourceVersions(node, xds.TypeListener)
	if len(d1) != 1 || !maps.Equal(d1, a1) {
		t.Fatalf("after the ACK: desired %v, acked %v", d1, a1)
	}
	comp = srv.Update(t.Context(), resources(1))
	r2 := c.recv()
	c.send(&discovery.DiscoveryRequest{TypeUrl: xds.TypeListener, VersionInfo: r1.VersionInfo, ResponseNonce: r2.Nonce,
		ErrorDetail: &rpcstatus.Status{Code: 3, Message: nackDetail}})
	wait(t, comp)
	d2, a2 := srv.ResourceVersions(node, xds.TypeListener)
	if maps.Equal(d2, a2) || !maps.Equal(a2, a1) || d2["ingress/http"] == d1["ingress/http"] {
		t.Errorf("after the NACK: desired %v, acked %v (was %v)", d2, a2, a1)
	}
}

// TestDisconnectedConsumerPruned: a consumer whose last stream closed and
// that no update waits for is forgotten (its resources and ACK state
// too); one an update waits for is kept until the update resolves.
func TestDisconnectedConsumerPruned(t *testing.T) {
	srv := startServer(t, "", 500*time.Millisecond)
	const node = "l7proxy~gone"
	c := newSotW(t, srv.socket, node)
	c.send(&discovery.DiscoveryRequest{TypeUrl: xds.TypeListener})
	waitFor(t, "subscription", subscribed(srv, node, xds.TypeListener))
	comp := srv.Update(t.Context(), resources(10001))
	r := c.recv()
	c.send(&discovery.DiscoveryRequest{TypeUrl: xds.TypeListener, VersionInfo: r.VersionInfo, ResponseNonce: r.Nonce})
	if err := wait(t, comp); err != nil {
		t.Fatal(err)
	}
	c.close()
	waitFor(t, "the consumer forgotten", func() bool { return len(srv.Consumers()) == 0 })
	if d, a := srv.ResourceVersions(node, xds.TypeListener); d != nil || a != nil {
		t.Errorf("a forgotten consumer still has versions %v %v", d, a)
	}

	// Waited for: kept while the update is pending, forgotten after.
	c = newSotW(t, srv.socket, node)
	c.send(&discovery.DiscoveryRequest{TypeUrl: xds.TypeListener})
	waitFor(t, "subscription", subscribed(srv, node, xds.TypeListener))
	comp = srv.Update(t.Context(), resources(10002))
	c.recv()
	c.close()
	waitFor(t, "stream closed", func() bool { cs := srv.Consumers(); return len(cs) == 1 && cs[0].Streams == 0 })
	if err := wait(t, comp); err == nil {
		t.Fatal("update resolved without an ACK")
	}
	waitFor(t, "the consumer forgotten after the timeout", func() bool { return len(srv.Consumers()) == 0 })
}
