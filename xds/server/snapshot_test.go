package server

import (
	"slices"
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
	a, err := newResourceSet(xds.TypeIdentityMembership, []proto.Message{member("1", "198.18.0.1/32"), member("2")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := newResourceSet(xds.TypeIdentityMembership, []proto.Message{member("2"), member("1", "198.18.0.1/32")}, nil)
	if a.version != b.version || a.versions["1"] != b.versions["1"] {
		t.Error("order changed the version")
	}
	c, _ := newResourceSet(xds.TypeIdentityMembership, []proto.Message{member("1", "198.18.0.2/32"), member("2")}, nil)
	if c.version == a.version || c.versions["2"] != a.versions["2"] || c.versions["1"] == a.versions["1"] {
		t.Error("versions do not follow content")
	}
	empty, _ := newResourceSet(xds.TypeListener, nil, nil)
	if empty.version == "" {
		t.Error("an empty set needs a version so consumers learn it is empty")
	}
	for _, bad := range [][]proto.Message{
		{member("1"), member("1")},
		{member("")},
		{&l7gatev1.Listener{Name: "x"}},
		{nil},
	} {
		if _, err := newResourceSet(xds.TypeIdentityMembership, bad, nil); err == nil {
			t.Errorf("accepted %v", bad)
		}
	}
}

func TestSnapshotConsistent(t *testing.T) {
	ok, err := newSnapshot(map[string][]proto.Message{xds.TypeListener: {&l7gatev1.Listener{Name: "ingress/http"}}}, nil)
	if err != nil || ok.Consistent() != nil {
		t.Fatalf("l7gate snapshot: %v / %v", err, ok.Consistent())
	}
	// An Envoy route nobody references is what the library's check refuses.
	s, err := newSnapshot(map[string][]proto.Message{resource.RouteType: {&routev3.RouteConfiguration{Name: "r1"}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Consistent(); err == nil || !strings.Contains(err.Error(), resource.RouteType) {
		t.Fatalf("Consistent() = %v", err)
	}
	if _, err := newSnapshot(map[string][]proto.Message{"l7gate.v1.Listener": nil}, nil); err == nil {
		t.Error("type URL without prefix accepted")
	}
}

// TestResourceSetReusesUnchangedMessages: a message the producer returned
// before keeps its version without being encoded again (shown by
// modifying it, which the Producer contract forbids: the stale version
// proves the encoding was skipped); a new message is encoded (equal
// content, equal version; new content, new version).
func TestResourceSetReusesUnchangedMessages(t *testing.T) {
	one, two := member("1", "198.18.0.1/32"), member("2")
	prev, err := newResourceSet(xds.TypeIdentityMembership, []proto.Message{one, two}, nil)
	if err != nil {
		t.Fatal(err)
	}
	two.Prefixes = []string{"198.18.0.9/32"} // forbidden; only to see the skip
	next, err := newResourceSet(xds.TypeIdentityMembership, []proto.Message{one, two}, prev)
	if err != nil {
		t.Fatal(err)
	}
	if next.versions["2"] != prev.versions["2"] || next.version != prev.version {
		t.Errorf("a message from the previous set was encoded again: version %s, before %s", next.versions["2"], prev.versions["2"])
	}
	fresh, _ := newResourceSet(xds.TypeIdentityMembership, []proto.Message{member("1", "198.18.0.1/32"), member("2", "198.18.0.9/32")}, prev)
	if fresh.versions["1"] != prev.versions["1"] {
		t.Error("an equal new message got a new version")
	}
	if fresh.versions["2"] == prev.versions["2"] {
		t.Error("a changed new message kept the old version")
	}
	// Same name, another message: encoded, even if the previous set had
	// the name.
	other, _ := newResourceSet(xds.TypeIdentityMembership, []proto.Message{member("1", "198.18.0.2/32"), two}, prev)
	if other.versions["1"] == prev.versions["1"] {
		t.Error("a new message under an old name kept the old version")
	}
}

// TestResourceSetReusesUnchangedSet: when every message is the very one
// the previous set was built from, in the same order, the previous set is
// the new one (no maps, sort or hash rebuilt); any other message, or
// another order, builds a new set (with the version its content has).
func TestResourceSetReusesUnchangedSet(t *testing.T) {
	one, two := member("1", "198.18.0.1/32"), member("2")
	prev, err := newResourceSet(xds.TypeIdentityMembership, []proto.Message{one, two}, nil)
	if err != nil {
		t.Fatal(err)
	}
	same, err := newResourceSet(xds.TypeIdentityMembership, []proto.Message{one, two}, prev)
	if err != nil || same != prev {
		t.Errorf("the same messages built a new set (%v)", err)
	}
	reordered, _ := newResourceSet(xds.TypeIdentityMembership, []proto.Message{two, one}, prev)
	if reordered == prev || reordered.version != prev.version {
		t.Errorf("reordered messages: same set %v, version %s want %s", reordered == prev, reordered.version, prev.version)
	}
	changed, _ := newResourceSet(xds.TypeIdentityMembership, []proto.Message{one, member("2", "198.18.0.9/32")}, prev)
	if changed == prev || changed.version == prev.version {
		t.Error("a new message kept the previous set")
	}
	fewer, _ := newResourceSet(xds.TypeIdentityMembership, []proto.Message{one}, prev)
	if fewer == prev || fewer.version == prev.version || len(fewer.names) != 1 {
		t.Error("a removed message kept the previous set")
	}
	// The producer's slice is not kept: changing it later changes nothing.
	msgs := []proto.Message{one, two}
	own, _ := newResourceSet(xds.TypeIdentityMembership, msgs, nil)
	msgs[1] = member("3")
	if again, _ := newResourceSet(xds.TypeIdentityMembership, msgs, own); again == own {
		t.Error("the set kept the caller's slice")
	}
}

// BenchmarkResourceSet: 1000 NetworkPolicy-sized messages, all new or all
// from the previous set (the translate cache's steady state).
func BenchmarkResourceSet(b *testing.B) {
	msgs := make([]proto.Message, 1000)
	for i := range msgs {
		ps := make([]string, 20)
		for j := range ps {
			ps[j] = "198.18.0.1/32"
		}
		msgs[i] = member(string(rune('a'+i%26))+strings.Repeat("x", i/26), ps...)
	}
	prev, _ := newResourceSet(xds.TypeIdentityMembership, msgs, nil)
	// reuse-set: the very messages of prev, in its order (a CNP change's
	// identity memberships); reuse: the same messages in another slice
	// order, so the set is built again without encoding.
	shifted := append(slices.Clone(msgs[1:]), msgs[0])
	for _, mode := range []string{"encode-all", "reuse", "reuse-set"} {
		b.Run(mode, func(b *testing.B) {
			p, in := prev, msgs
			switch mode {
			case "encode-all":
				p = nil
			case "reuse":
				in = shifted
			}
			for range b.N {
				if _, err := newResourceSet(xds.TypeIdentityMembership, in, p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
