package client

import (
	"context"
	"errors"
	"strings"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	l7gatev1 "github.com/l7gate/l7gate/proto/l7gatev1"
	"github.com/l7gate/l7gate/xds"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

func envoyResource(t *testing.T, name, version string, m proto.Message) *discovery.Resource {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return &discovery.Resource{Name: name, Version: version, Resource: a}
}

// fromEnvoy is r as the client receives it: encoded by go-control-plane,
// decoded by the client's own wire code.
func fromEnvoy(t *testing.T, r *discovery.DeltaDiscoveryResponse) *deltaResponse {
	t.Helper()
	b, err := proto.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var out deltaResponse
	if err := out.unmarshal(b); err != nil {
		t.Fatal(err)
	}
	return &out
}

func newTestClient(t *testing.T, h Handler) *Client {
	t.Helper()
	c, err := New(Config{SocketPath: "xds.sock", Node: "n1", Handler: h})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestApply: changes apply to a copy; bad resources and handler errors
// leave the current resources alone; unchanged versions are not re-sent
// to the handler.
func TestApply(t *testing.T) {
	var got []Update
	var reject error
	c := newTestClient(t, func(_ context.Context, u Update) error {
		if reject != nil {
			return reject
		}
		got = append(got, u)
		return nil
	})
	if c.NodeID() != "l7proxy~n1" {
		t.Fatalf("node id %q", c.NodeID())
	}
	ctx := t.Context()
	l := &l7gatev1.Listener{Name: "ingress/http", ProxyPort: 10000, Direction: l7gatev1.Direction_DIRECTION_INGRESS, Parser: "http"}
	if err := c.apply(ctx, fromEnvoy(t, &discovery.DeltaDiscoveryResponse{TypeUrl: xds.TypeListener, Resources: []*discovery.Resource{envoyResource(t, "ingress/http", "v1", l)}})); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Changed[0] != "ingress/http" || !c.Current().Received(xds.TypeListener) || c.Current().Complete() {
		t.Fatalf("updates %+v", got)
	}
	first := c.Current()

	bad := []*discovery.DeltaDiscoveryResponse{
		{TypeUrl: "type.googleapis.com/other.Thing"},
		{TypeUrl: xds.TypeListener, Resources: []*discovery.Resource{envoyResource(t, "other", "v2", l)}},
		{TypeUrl: xds.TypeListener, Resources: []*discovery.Resource{envoyResource(t, "1", "v2", &l7gatev1.IdentityMembership{Name: "1"})}},
		{TypeUrl: xds.TypeListener, Resources: []*discovery.Resource{{Name: "ingress/http", Version: "v2", Resource: &anypb.Any{TypeUrl: xds.TypeListener, Value: []byte{0xff}}}}},
	}
	for i, r := range bad {
		if err := c.apply(ctx, fromEnvoy(t, r)); err == nil {
			t.Errorf("bad response %d accepted", i)
		}
		if c.Current() != first {
			t.Fatalf("bad response %d changed the current resources", i)
		}
	}
	reject = errors.New("cannot bind")
	l2 := proto.Clone(l).(*l7gatev1.Listener)
	l2.ProxyPort = 1
	if err := c.apply(ctx, fromEnvoy(t, &discovery.DeltaDiscoveryResponse{TypeUrl: xds.TypeListener, Resources: []*discovery.Resource{envoyResource(t, "ingress/http", "v2", l2)}})); err == nil || !strings.Contains(err.Error(), "cannot bind") {
		t.Fatalf("handler error not returned: %v", err)
	}
	if c.Current() != first {
		t.Fatal("rejected update became current")
	}
	reject = nil
	// The same version again (a rollback after NACK) is not a change.
	if err := c.apply(ctx, fromEnvoy(t, &discovery.DeltaDiscoveryResponse{TypeUrl: xds.TypeListener, Resources: []*discovery.Resource{envoyResource(t, "ingress/http", "v1", l)}})); err != nil || len(got) != 1 {
		t.Fatalf("unchanged resource re-delivered: %v, %d updates", err, len(got))
	}
	if err := c.apply(ctx, fromEnvoy(t, &discovery.DeltaDiscoveryResponse{TypeUrl: xds.TypeListener, RemovedResources: []string{"ingress/http", "unknown"}})); err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || strings.Join(got[1].Removed, ",") != "ingress/http" || len(c.Current().Listeners) != 0 || len(first.Listeners) != 1 {
		t.Fatalf("removal: %+v", got)
	}
}

func TestNewChecksConfig(t *testing.T) {
	if _, err := New(Config{Node: "n1"}); err == nil {
		t.Error("no handler accepted")
	}
	if _, err := New(Config{Handler: func(context.Context, Update) error { return nil }}); err == nil {
		t.Error("no node accepted")
	}
}
