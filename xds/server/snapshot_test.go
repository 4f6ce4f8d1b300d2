package server

import (
	"strings"
	"testing"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	l7gatev1 "github.com/l7gate/l7gate/proto/l7gatev1"
	"github.com/l7gate/l7gate/xds"
	"google.golang.org/protobuf/proto"
)

func member(name string, prefixes ...string) *l7gatev1.IdentityMembership {
	return &l7gatev1.IdentityMembership{Name: name, Prefixes: prefixes}
}

func TestResourceSetVersions(t *testing.T) {
	a, err := newResourceSet(xds.TypeIdentityMembership, []proto.Message{member("1", "198.18.0.1/32"), member("2")})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := newResourceSet(xds.TypeIdentityMembership, []proto.Message{member("2"), member("1", "198.18.0.1/32")})
	if a.version != b.version || a.versions["1"] != b.versions["1"] {
		t.Error("order changed the version")
	}
	c, _ := newResourceSet(xds.TypeIdentityMembership, []proto.Message{member("1", "198.18.0.2/32"), member("2")})
	if c.version == a.version || c.versions["2"] != a.versions["2"] || c.versions["1"] == a.versions["1"] {
		t.Error("versions do not follow content")
	}
	empty, _ := newResourceSet(xds.TypeListener, nil)
	if empty.version == "" {
		t.Error("an empty set needs a version so consumers learn it is empty")
	}
	for _, bad := range [][]proto.Message{
		{member("1"), member("1")},
		{member("")},
		{&l7gatev1.Listener{Name: "x"}},
		{nil},
	} {
		if _, err := newResourceSet(xds.TypeIdentityMembership, bad); err == nil {
			t.Errorf("accepted %v", bad)
		}
	}
}

func TestSnapshotConsistent(t *testing.T) {
	ok, err := newSnapshot(map[string][]proto.Message{xds.TypeListener: {&l7gatev1.Listener{Name: "ingress/http"}}})
	if err != nil || ok.Consistent() != nil {
		t.Fatalf("l7gate snapshot: %v / %v", err, ok.Consistent())
	}
	// An Envoy route nobody references is what the library's check refuses.
	s, err := newSnapshot(map[string][]proto.Message{resource.RouteType: {&routev3.RouteConfiguration{Name: "r1"}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Consistent(); err == nil || !strings.Contains(err.Error(), resource.RouteType) {
		t.Fatalf("Consistent() = %v", err)
	}
	if _, err := newSnapshot(map[string][]proto.Message{"l7gate.v1.Listener": nil}); err == nil {
		t.Error("type URL without prefix accepted")
	}
}
