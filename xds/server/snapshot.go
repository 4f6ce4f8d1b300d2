package server

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/proto"
)

// maxTypes bounds the resource types of one consumer. go-control-plane
// buffers at most this many responses per stream; with more types a
// snapshot update could block on a stream that is itself waiting for us.
const maxTypes = 10

// resourceSet is one type's resources for one consumer. Its version is a
// hash of the names and deterministic encodings, so equal content has an
// equal version and causes no push. Immutable once built.
type resourceSet struct {
	typeURL  string
	version  string
	names    []string // sorted
	items    map[string]types.ResourceWithTTL
	versions map[string]string // per-resource hash, for delta xDS
	// msgs: the messages as the producer returned them.
	msgs []proto.Message
}

// prev is the set rendered before (or nil): a message that is the very one
// prev holds under the same name keeps its hash without being encoded
// again (Producer: a message handed to the server is never modified), and
// when every message is the very one prev was built from, in the same
// order, prev is the set (a policy change leaves the 1000 identity
// memberships of 11k pods as they were: their maps, sort and hash cost
// ~1 ms of every push).
func newResourceSet(typeURL string, msgs []proto.Message, prev *resourceSet) (*resourceSet, error) {
	if prev != nil && prev.typeURL == typeURL && len(msgs) == len(prev.msgs) && slices.Equal(msgs, prev.msgs) {
		return prev, nil
	}
	rs := &resourceSet{typeURL: typeURL, items: make(map[string]types.ResourceWithTTL, len(msgs)), versions: make(map[string]string, len(msgs)),
		msgs: slices.Clone(msgs)}
	for i, m := range msgs {
		if m == nil {
			return nil, fmt.Errorf("%s[%d]: nil resource", typeURL, i)
		}
		if got := "type.googleapis.com/" + string(m.ProtoReflect().Descriptor().FullName()); got != typeURL {
			return nil, fmt.Errorf("%s[%d]: resource of type %s", typeURL, i, got)
		}
		name := cache.GetResourceName(m)
		if name == "" {
			return nil, fmt.Errorf("%s[%d]: resource without a name", typeURL, i)
		}
		if _, dup := rs.items[name]; dup {
			return nil, fmt.Errorf("%s: resource %q twice", typeURL, name)
		}
		rs.items[name] = types.ResourceWithTTL{Resource: m}
		if prev != nil && prev.items[name].Resource == m {
			rs.versions[name] = prev.versions[name]
		} else {
			b, err := cache.MarshalResource(m)
			if err != nil {
				return nil, fmt.Errorf("%s %q: marshal: %w", typeURL, name, err)
			}
			rs.versions[name] = cache.HashResource(b)
		}
		rs.names = append(rs.names, name)
	}
	slices.Sort(rs.names)
	h := sha256.New()
	h.Write([]byte(typeURL))
	for _, n := range rs.names {
		h.Write([]byte{0})
		h.Write([]byte(n))
		h.Write([]byte{0})
		h.Write([]byte(rs.versions[n]))
	}
	rs.version = hex.EncodeToString(h.Sum(nil)[:8])
	return rs, nil
}

// snapshot implements cache.ResourceSnapshot for any type URL (the
// library's own Snapshot knows only Envoy's types).
type snapshot struct {
	sets map[string]*resourceSet
}

var _ cache.ResourceSnapshot = (*snapshot)(nil)

// prev holds the sets rendered before, by type (nil entries allowed).
func newSnapshot(byType map[string][]proto.Message, prev map[string]*resourceSet) (*snapshot, error) {
	if len(byType) > maxTypes {
		return nil, fmt.Errorf("%d resource types, at most %d", len(byType), maxTypes)
	}
	s := &snapshot{sets: map[string]*resourceSet{}}
	for _, t := range slices.Sorted(maps.Keys(byType)) {
		if !strings.HasPrefix(t, "type.googleapis.com/") {
			return nil, fmt.Errorf("type URL %q: want type.googleapis.com/<message>", t)
		}
		rs, err := newResourceSet(t, byType[t], prev[t])
		if err != nil {
			return nil, err
		}
		s.sets[t] = rs
	}
	return s, nil
}

// Consistent checks what the library's Snapshot.Consistent checks for
// Envoy's types (every EDS/RDS resource referenced by CDS/LDS and the
// reverse); l7gate's own types carry no references, and names were
// checked when the sets were built.
func (s *snapshot) Consistent() error {
	known := map[string][]types.Resource{}
	for t, rs := range s.sets {
		if cache.GetResponseType(t) == types.UnknownType {
			continue
		}
		for _, n := range rs.names {
			known[t] = append(known[t], rs.items[n].Resource)
		}
	}
	if len(known) == 0 {
		return nil
	}
	std, err := cache.NewSnapshot("consistency-check", known)
	if err != nil {
		return err
	}
	return std.Consistent()
}

// versions returns every type's version, to tell whether a new snapshot
// would change anything.
func (s *snapshot) versions() map[string]string {
	out := map[string]string{}
	for t, rs := range s.sets {
		out[t] = rs.version
	}
	return out
}

func (s *snapshot) GetVersion(typeURL string) string {
	if rs := s.sets[typeURL]; rs != nil {
		return rs.version
	}
	return ""
}

func (s *snapshot) GetResourcesAndTTL(typeURL string) map[string]types.ResourceWithTTL {
	if rs := s.sets[typeURL]; rs != nil {
		return rs.items
	}
	return nil
}

func (s *snapshot) GetResources(typeURL string) map[string]types.Resource {
	rs := s.sets[typeURL]
	if rs == nil {
		return nil
	}
	out := make(map[string]types.Resource, len(rs.items))
	for n, r := range rs.items {
		out[n] = r.Resource
	}
	return out
}

// ConstructVersionMap: the per-resource versions were computed with the
// sets.
func (s *snapshot) ConstructVersionMap() error { return nil }

func (s *snapshot) GetVersionMap(typeURL string) map[string]string {
	if rs := s.sets[typeURL]; rs != nil {
		return rs.versions
	}
	return nil
}
