package kafka

import (
	"fmt"
	"sync"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// DefaultMaxTopicIDs bounds a TopicIDs table by default.
const DefaultMaxTopicIDs = 1 << 16

// TopicIDs maps Kafka topic IDs to names, learned from the Metadata (and
// DescribeTopicPartitions) responses a broker sends. A Filter keeps one per
// connection unless Config.TopicIDs shares one across connections to the
// same cluster. Safe for concurrent use.
type TopicIDs struct {
	mu     sync.RWMutex
	byID   map[[16]byte]string
	byName map[string][16]byte
	max    int
}

// NewTopicIDs returns an empty table holding at most max entries (<= 0:
// DefaultMaxTopicIDs). When full, an arbitrary old entry is evicted; a
// request naming an evicted ID is then reported unresolved (denied), never
// passed.
func NewTopicIDs(max int) *TopicIDs {
	if max <= 0 {
		max = DefaultMaxTopicIDs
	}
	return &TopicIDs{byID: make(map[[16]byte]string), byName: make(map[string][16]byte), max: max}
}

// Name returns the topic name for an ID.
func (t *TopicIDs) Name(id [16]byte) (string, bool) {
	t.mu.RLock()
	name, ok := t.byID[id]
	t.mu.RUnlock()
	return name, ok
}

// ID returns the topic ID for a name.
func (t *TopicIDs) ID(name string) ([16]byte, bool) {
	t.mu.RLock()
	id, ok := t.byName[name]
	t.mu.RUnlock()
	return id, ok
}

// Len returns the number of IDs known.
func (t *TopicIDs) Len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.byID)
}

// Learn records that id names topic name. The zero ID and the empty name
// are ignored. A recreated topic (same name, new ID) keeps its old ID too:
// both refer to the same name for policy purposes.
func (t *TopicIDs) Learn(name string, id [16]byte) {
	if name == "" || isZeroID(id) {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if old, ok := t.byID[id]; ok && old == name {
		return
	}
	if _, ok := t.byID[id]; !ok && len(t.byID) >= t.max {
		for k, n := range t.byID {
			delete(t.byID, k)
			if t.byName[n] == k {
				delete(t.byName, n)
			}
			break
		}
	}
	t.byID[id] = name
	t.byName[name] = id
}

// LearnResponse learns topic IDs from a response body (after the response
// header) of the given API key and version. Responses are untrusted too (a
// "broker" is whatever the client connected to) and are checked like
// requests before decoding. Metadata v10+ and
// DescribeTopicPartitions carry IDs; other keys are ignored. It returns the
// number of (name, id) pairs seen.
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
