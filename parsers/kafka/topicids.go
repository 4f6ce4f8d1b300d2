package kafka

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// DefaultMaxTopicIDs bounds a TopicIDs table by default.
const DefaultMaxTopicIDs = 1 << 16

// TopicIDs maps the topic IDs of one Kafka cluster to names, learned from
// the Metadata (and DescribeTopicPartitions) responses its brokers send.
// Safe for concurrent use.
//
// Brokers are untrusted, so the table only ever resolves a mapping that no
// answer contradicted: an ID seen with two names, or a name seen with two
// IDs (a remap, or a deleted and recreated topic), stays unresolved for the
// table's life, and so does every ID of that name. A full table learns
// nothing more (nothing is evicted: forgetting a contradiction would let a
// liar remap the ID again). Unresolved IDs are denied, never passed.
type TopicIDs struct {
	mu     sync.RWMutex
	byID   map[[16]byte]idEntry
	byName map[string]nameEntry
	max    int
	// total counts entries across a registry's tables (nil: this table
	// only); maxTotal bounds it.
	total    *atomic.Int64
	maxTotal int64
	refused  atomic.Int64
}

type idEntry struct {
	name        string
	conflicting bool // the ID was seen with another name
}

type nameEntry struct {
	id          [16]byte
	conflicting bool // the name was seen with another ID
}

// NewTopicIDs returns an empty table holding at most max entries (<= 0:
// DefaultMaxTopicIDs).
func NewTopicIDs(max int) *TopicIDs {
	if max <= 0 {
		max = DefaultMaxTopicIDs
	}
	return &TopicIDs{byID: make(map[[16]byte]idEntry), byName: make(map[string]nameEntry), max: max}
}

// Name returns the topic name for an ID, unless the ID is unknown or
// contradicted.
func (t *TopicIDs) Name(id [16]byte) (string, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	e, ok := t.byID[id]
	if !ok || e.conflicting {
		return "", false
	}
	if n := t.byName[e.name]; n.conflicting || n.id != id {
		return "", false
	}
	return e.name, true
}

// ID returns the topic ID for a name, unless unknown or contradicted.
func (t *TopicIDs) ID(name string) ([16]byte, bool) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	n, ok := t.byName[name]
	if !ok || n.conflicting {
		return [16]byte{}, false
	}
	if e := t.byID[n.id]; e.conflicting || e.name != name {
		return [16]byte{}, false
	}
	return n.id, true
}

// Len returns the number of IDs the table holds (contradicted ones
// included).
func (t *TopicIDs) Len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.byID)
}

// Refused returns how many new IDs were not learned because a table (or
// the registry) was full.
func (t *TopicIDs) Refused() int64 { return t.refused.Load() }

// reserve takes room for n new entries.
func (t *TopicIDs) reserve(n int) bool {
	if len(t.byID)+len(t.byName)+n > 2*t.max {
		return false
	}
	if t.total != nil && t.total.Add(int64(n)) > t.maxTotal {
		t.total.Add(-int64(n))
		return false
	}
	return true
}

// Learn records that id names topic name. The zero ID and the empty name
// are ignored. A mapping that contradicts an earlier one (same ID, other
// name; same name, other ID) makes both unresolved for good.
func (t *TopicIDs) Learn(name string, id [16]byte) {
	if name == "" || isZeroID(id) {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	e, haveID := t.byID[id]
	n, haveName := t.byName[name]
	if haveID && haveName && e.name == name && n.id == id {
		return // known (or already contradicted)
	}
	if haveID && e.name != name && !e.conflicting {
		e.conflicting = true
		t.byID[id] = e
	}
	if haveName && n.id != id && !n.conflicting {
		n.conflicting = true
		t.byName[name] = n
	}
	need := 0
	if !haveID {
		need++
	}
	if !haveName {
		need++
	}
	if !t.reserve(need) {
		// Full: the ID stays unknown (denied). A contradiction of a known
		// entry was recorded above regardless.
		t.refused.Add(1)
		return
	}
	if !haveID {
		t.byID[id] = idEntry{name: name}
	}
	if !haveName {
		t.byName[name] = nameEntry{id: id}
	}
}

// LearnResponse learns topic IDs from a response body (after the response
// header) of the given API key and version. Responses are untrusted too (a
// "broker" is whatever the client connected to) and are checked like
// requests before decoding. Metadata v10+ and DescribeTopicPartitions carry
// IDs; other keys are ignored. It returns the number of (name, id) pairs
// seen.
func (t *TopicIDs) LearnResponse(key, version int16, body []byte) (int, error) {
	switch key {
	case 3:
		if version < 10 {
			return 0, nil
		}
		resp := kmsg.NewPtrMetadataResponse()
		resp.SetVersion(version)
		if !responseSchema(3).validate(body, version) || resp.ReadFrom(body) != nil {
			return 0, fmt.Errorf("decode metadata response v%d: %w", version, ErrMalformed)
		}
		n := 0
		for i := range resp.Topics {
			tp := &resp.Topics[i]
			if tp.Topic != nil && tp.ErrorCode == 0 && !isZeroID(tp.TopicID) {
				t.Learn(*tp.Topic, tp.TopicID)
				n++
			}
		}
		return n, nil
	case 75:
		resp := kmsg.NewPtrDescribeTopicPartitionsResponse()
		resp.SetVersion(version)
		if !responseSchema(75).validate(body, version) || resp.ReadFrom(body) != nil {
			return 0, fmt.Errorf("decode describetopicpartitions response v%d: %w", version, ErrMalformed)
		}
		n := 0
		for i := range resp.Topics {
			tp := &resp.Topics[i]
			if tp.Topic != nil && tp.ErrorCode == 0 && !isZeroID(tp.TopicID) {
				t.Learn(*tp.Topic, tp.TopicID)
				n++
			}
		}
		return n, nil
	}
	return 0, nil
}

// learnsFrom reports whether responses to key at version carry topic IDs
// worth parsing.
func learnsFrom(key, version int16) bool {
	return (key == 3 && version >= 10) || key == 75
}

// TopicIDLimits bound a TopicIDRegistry; zero fields take the defaults.
type TopicIDLimits struct {
	// Clusters bounds the tables (default 256), ClustersPerScope the
	// tables of one scope (default 8), so that one hostile upstream
	// claiming many cluster ids cannot take every table.
	Clusters, ClustersPerScope int
	// IDsPerCluster bounds one table (default DefaultMaxTopicIDs), IDs all
	// tables together (default 1<<20).
	IDsPerCluster, IDs int
}

// TopicIDRegistry holds one TopicIDs table per (scope, cluster id). A
// connection's table is chosen by the cluster id its broker reports in
// Metadata (v10+) and by its scope, which the caller sets to what it
// trusts the upstream to be (the proxy uses the upstream's security
// identity): a broker claiming another cluster's id can then only affect
// tables of its own scope. Tables are never evicted (see TopicIDs); when
// the registry is full a new cluster gets no table and its connections
// resolve no ID. Safe for concurrent use.
type TopicIDRegistry struct {
	lim     TopicIDLimits
	mu      sync.Mutex
	tables  map[[2]string]*TopicIDs
	scopes  map[string]int
	entries atomic.Int64
}

// NewTopicIDRegistry returns an empty registry.
func NewTopicIDRegistry(lim TopicIDLimits) *TopicIDRegistry {
	if lim.Clusters <= 0 {
		lim.Clusters = 256
	}
	if lim.ClustersPerScope <= 0 {
		lim.ClustersPerScope = 8
	}
	if lim.IDsPerCluster <= 0 {
		lim.IDsPerCluster = DefaultMaxTopicIDs
	}
	if lim.IDs <= 0 {
		lim.IDs = 1 << 20
	}
	return &TopicIDRegistry{lim: lim, tables: map[[2]string]*TopicIDs{}, scopes: map[string]int{}}
}

// Table returns the table of a cluster in a scope, creating it, or nil
// when the registry (or the scope) already holds its maximum of tables.
func (g *TopicIDRegistry) Table(scope, clusterID string) *TopicIDs {
	k := [2]string{scope, clusterID}
	g.mu.Lock()
	defer g.mu.Unlock()
	if t, ok := g.tables[k]; ok {
		return t
	}
	if len(g.tables) >= g.lim.Clusters || g.scopes[scope] >= g.lim.ClustersPerScope {
		return nil
	}
	t := NewTopicIDs(g.lim.IDsPerCluster)
	t.total, t.maxTotal = &g.entries, 2*int64(g.lim.IDs)
	g.tables[k] = t
	g.scopes[scope]++
	return t
}

// Len returns the number of tables.
func (g *TopicIDRegistry) Len() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.tables)
}
