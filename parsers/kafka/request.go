package kafka

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// Kafka error codes this package emits.
const (
	ErrCodeNone                               int16 = 0
	ErrCodeUnsupportedVersion                 int16 = 35
	ErrCodeTopicAuthorizationFailed           int16 = 29
	ErrCodeGroupAuthorizationFailed           int16 = 30
	ErrCodeClusterAuthorizationFailed         int16 = 31
	ErrCodeSASLAuthenticationFailed           int16 = 58
	ErrCodeTransactionalIDAuthorizationFailed int16 = 53
	ErrCodeUnknownTopicID                     int16 = 100
)

// DefaultMaxControlRequestSize bounds requests other than Produce,
// JoinGroup, SyncGroup and SASLAuthenticate (whose large parts are opaque
// bytes). Those requests are decoded into structs, which can take far more
// memory than their wire size, so they get a tighter limit than frames in
// general.
const DefaultMaxControlRequestSize = 1 << 20

// Request is a decoded Kafka request header plus the names policy needs.
// A Decoder reuses one Request's slices between calls; string fields are
// stable copies, but the slices (Topics, Groups, ...) are overwritten by
// the next Decode.
type Request struct {
	APIKey        int16
	APIVersion    int16
	CorrelationID int32
	// ClientID is the header's client id; a null id is "".
	ClientID string

	// Supported reports that the API key and version are admitted by this
	// package and the body was decoded. Unsupported requests still carry
	// the header fields above.
	Supported bool

	// Topics names every topic the request touches, in request order
	// (repeats possible), including names resolved from topic IDs.
	Topics []string
	// AllTopics is set when the request addresses every topic (Metadata
	// with a null/empty-v0 topic list, OffsetFetch with null topics). A
	// Decider that restricts topics should deny it; a denied Metadata
	// request is then answered with the allowed topics only.
	AllTopics bool
	// TopicIDs lists the topic IDs the request carries (Produce/Fetch v13+,
	// Metadata v10+ by id, ...). Resolved ones also appear in Topics.
	TopicIDs [][16]byte
	// UnresolvedTopicIDs are IDs the connection's TopicIDs table does not
	// know; a filter must deny such a request, never pass it.
	UnresolvedTopicIDs [][16]byte
	// Groups lists consumer group ids (group APIs, OffsetCommit/Fetch,
	// FindCoordinator for groups).
	Groups []string
	// TransactionalIDs lists transactional ids (Produce, InitProducerID,
	// txn APIs, FindCoordinator for transactions).
	TransactionalIDs []string
	// Acks is the Produce acks field (-1, 0, 1); 0 means the broker sends
	// no response.
	Acks int16

	partitions int          // Produce: partitions in the request
	msg        kmsg.Request // decoded body (nil for Produce, decoded lazily)
	body       []byte       // body after the header; valid until the next Decode
}

// APIName returns the lowercase API key name.
func (r *Request) APIName() string { return APIKeyName(r.APIKey) }

// ExpectsResponse reports whether the broker answers this request: Produce
// with acks=0 gets no response.
func (r *Request) ExpectsResponse() bool {
	return !(r.APIKey == 0 && r.Acks == 0 && r.Supported)
}

func (r *Request) reset() {
	*r = Request{
		Topics:             r.Topics[:0],
		TopicIDs:           r.TopicIDs[:0],
		UnresolvedTopicIDs: r.UnresolvedTopicIDs[:0],
		Groups:             r.Groups[:0],
		TransactionalIDs:   r.TransactionalIDs[:0],
	}
}

// maxInterned bounds a Decoder's string cache; past it strings are copied
// per request instead.
const maxInterned = 4096

// Decoder decodes requests of one connection. It caches topic, group and
// client id strings so steady traffic decodes without allocating. Not safe
// for concurrent use.
type Decoder struct {
	ids        *TopicIDs
	idsp       *atomic.Pointer[TopicIDs] // set by a Filter: the table can change under it
	maxControl int
	strs       map[string]string
	schemas    [128]*schema // request layouts, built on first use
}

// NewDecoder returns a Decoder resolving topic IDs through ids (nil: IDs
// stay unresolved). maxControl bounds control requests (see
// DefaultMaxControlRequestSize); <= 0 means the default.
func NewDecoder(ids *TopicIDs, maxControl int) *Decoder {
	if maxControl <= 0 {
		maxControl = DefaultMaxControlRequestSize
	}
	return &Decoder{ids: ids, maxControl: maxControl, strs: make(map[string]string)}
}

func (d *Decoder) intern(b []byte) string {
	if s, ok := d.strs[string(b)]; ok {
		return s
	}
	s := string(b)
	if len(d.strs) < maxInterned && len(s) <= 255 {
		d.strs[s] = s
	}
	return s
}

func (d *Decoder) internString(s string) string {
	if v, ok := d.strs[s]; ok {
		return v
	}
	v := string([]byte(s)) // s may alias the frame buffer
	if len(d.strs) < maxInterned && len(v) <= 255 {
		d.strs[v] = v
	}
	return v
}

func (d *Decoder) addTopicID(r *Request, id [16]byte) {
	r.TopicIDs = append(r.TopicIDs, id)
	ids := d.ids
	if d.idsp != nil {
		ids = d.idsp.Load()
	}
	if ids != nil {
		if name, ok := ids.Name(id); ok {
			r.Topics = append(r.Topics, name)
			return
		}
	}
	r.UnresolvedTopicIDs = append(r.UnresolvedTopicIDs, id)
}

func (d *Decoder) addTopic(r *Request, name string) {
	r.Topics = append(r.Topics, d.internString(name))
}

// Decode decodes one frame (with its 4-byte size prefix, as FrameReader
// returns it) into r. The frame must stay unchanged until the request has
// been answered or forwarded. Errors wrap ErrMalformed (close the
// connection) or ErrUnsupported (header fields in r are valid; deny).
func (d *Decoder) Decode(frame []byte, r *Request) error {
	r.reset()
	if len(frame) < 4 || int(binary.BigEndian.Uint32(frame)) != len(frame)-4 {
		return fmt.Errorf("frame size prefix mismatch: %w", ErrMalformed)
	}
	w := wire{b: frame[4:]}
	r.APIKey = w.int16()
	r.APIVersion = w.int16()
	r.CorrelationID = w.int32()
	if w.bad {
		return fmt.Errorf("short request header: %w", ErrMalformed)
	}
	if r.APIVersion < 0 {
		return fmt.Errorf("negative api version %d: %w", r.APIVersion, ErrMalformed)
	}
	if r.APIKey == 7 && r.APIVersion == 0 {
		// ControlledShutdown v0 has no client id; never admitted.
		return fmt.Errorf("api %d v%d: %w", r.APIKey, r.APIVersion, ErrUnsupported)
	}
	cid, _ := w.nullableString(false) // the header client id is never compact
	if w.bad {
		return fmt.Errorf("short request header: %w", ErrMalformed)
	}
	r.ClientID = d.intern(cid)

	if r.APIKey == 0 && r.APIVersion <= maxProduceVersion {
		flexible := r.APIVersion >= 9
		if flexible {
			w.skipTags()
		}
		r.body = w.b
		if err := d.decodeProduce(&w, r); err != nil {
			return err
		}
		r.Supported = true
		return nil
	}

	if !admitted(r.APIKey, r.APIVersion) {
		return fmt.Errorf("api %d v%d: %w", r.APIKey, r.APIVersion, ErrUnsupported)
	}
	if len(frame) > d.limitFor(r.APIKey) {
		return fmt.Errorf("%s request of %d bytes above limit %d: %w", r.APIName(), len(frame), d.limitFor(r.APIKey), ErrFrameTooLarge)
	}
	msg := kmsg.RequestForKey(r.APIKey)
	msg.SetVersion(r.APIVersion)
	if msg.IsFlexible() {
		w.skipTags()
		if w.bad {
			return fmt.Errorf("request header tags: %w", ErrMalformed)
		}
	}
	r.body = w.b
	if r.APIKey == 18 && r.APIVersion > msg.MaxVersion() {
		// A newer ApiVersions: the broker answers it with v0 and its
		// supported range, so the body need not be understood.
		r.Supported = true
		return nil
	}
	// kmsg decodes only what the layout check accepted: see schema.go.
	if !d.schemaFor(r.APIKey).validate(r.body, r.APIVersion) {
		return fmt.Errorf("decode %s v%d: %w", r.APIName(), r.APIVersion, ErrMalformed)
	}
	if err := msg.(kmsg.UnsafeReadFrom).UnsafeReadFrom(r.body); err != nil {
		return fmt.Errorf("decode %s v%d: %w", r.APIName(), r.APIVersion, ErrMalformed)
	}
	r.msg = msg
	d.collect(r, msg)
	r.Supported = true
	return nil
}

// schemaFor returns the layout of an admitted key (every admitted key but
// Produce has one; a missing one is a bug caught by the tests).
func (d *Decoder) schemaFor(key int16) *schema {
	if d.schemas[key] == nil {
		d.schemas[key] = requestSchema(key)
	}
	return d.schemas[key]
}

func (d *Decoder) limitFor(key int16) int {
	switch key {
	case 11, 14, 36: // JoinGroup, SyncGroup, SASLAuthenticate: opaque bytes
		return int(^uint32(0) >> 1)
	default:
		return d.maxControl
	}
}

// maxProduceVersion is the newest Produce version kmsg v1.15.0 and the
// hand-written decoder below know.
const maxProduceVersion = 13

// decodeProduce walks a Produce body without allocating: only topic names
// (or IDs) are kept; record batches are skipped.
func (d *Decoder) decodeProduce(w *wire, r *Request) error {
	v := r.APIVersion
	flexible := v >= 9
	if v >= 3 {
		txn, null := w.nullableString(flexible)
		if !null && !w.bad {
			r.TransactionalIDs = append(r.TransactionalIDs, d.intern(txn))
		}
	}
	r.Acks = w.int16()
	w.int32() // timeout
	minTopic := 2 + 4
	if flexible {
		minTopic = 1 + 1 + 1
	}
	if v >= 13 {
		minTopic = 16 + 1 + 1
	}
	n := w.arrayLen(flexible, minTopic)
	if n < 0 {
		n = 0 // null topic array: nothing to produce
	}
	for i := 0; i < n && !w.bad; i++ {
		if v >= 13 {
			d.addTopicID(r, w.uuid())
		} else {
			name, null := w.nullableString(flexible)
			if null || w.bad {
				w.fail()
				break
			}
			r.Topics = append(r.Topics, d.intern(name))
		}
		pn := w.arrayLen(flexible, 4+1)
		r.partitions += max(pn, 0)
		for j := 0; j < pn && !w.bad; j++ {
			w.int32() // partition
			w.skipNullableBytes(flexible)
			if flexible {
				w.skipTags()
			}
		}
		if flexible {
			w.skipTags()
		}
	}
	if flexible {
		w.skipTags()
	}
	if w.bad || len(w.b) != 0 {
		return fmt.Errorf("decode produce v%d: %w", v, ErrMalformed)
	}
	return nil
}

func isZeroID(id [16]byte) bool { return id == [16]byte{} }

// collect extracts topics, groups and transactional ids from a decoded
// admitted request.
func (d *Decoder) collect(r *Request, msg kmsg.Request) {
	v := r.APIVersion
	switch m := msg.(type) {
	case *kmsg.FetchRequest:
		for i := range m.Topics {
			if v >= 13 {
				d.addTopicID(r, m.Topics[i].TopicID)
			} else {
				d.addTopic(r, m.Topics[i].Topic)
			}
		}
		for i := range m.ForgottenTopics {
			if v >= 13 {
				d.addTopicID(r, m.ForgottenTopics[i].TopicID)
			} else {
				d.addTopic(r, m.ForgottenTopics[i].Topic)
			}
		}
	case *kmsg.ListOffsetsRequest:
		for i := range m.Topics {
			d.addTopic(r, m.Topics[i].Topic)
		}
	case *kmsg.MetadataRequest:
		if m.Topics == nil || (v == 0 && len(m.Topics) == 0) {
			r.AllTopics = true
		}
		for i := range m.Topics {
			t := &m.Topics[i]
			switch {
			case t.Topic != nil:
				d.addTopic(r, *t.Topic)
			case !isZeroID(t.TopicID):
				d.addTopicID(r, t.TopicID)
			default:
				// Neither name nor id: the broker answers with an
				// error; policy sees an empty name.
				d.addTopic(r, "")
			}
		}
	case *kmsg.OffsetCommitRequest:
		r.Groups = append(r.Groups, d.internString(m.Group))
		for i := range m.Topics {
			if v >= 10 {
				d.addTopicID(r, m.Topics[i].TopicID)
			} else {
				d.addTopic(r, m.Topics[i].Topic)
			}
		}
	case *kmsg.OffsetFetchRequest:
		if v < 8 {
			r.Groups = append(r.Groups, d.internString(m.Group))
			if m.Topics == nil && v >= 2 {
				r.AllTopics = true
			}
			for i := range m.Topics {
				d.addTopic(r, m.Topics[i].Topic)
			}
			break
		}
		for i := range m.Groups {
			g := &m.Groups[i]
			r.Groups = append(r.Groups, d.internString(g.Group))
			if g.Topics == nil {
				r.AllTopics = true
			}
			for j := range g.Topics {
				if v >= 10 {
					d.addTopicID(r, g.Topics[j].TopicID)
				} else {
					d.addTopic(r, g.Topics[j].Topic)
				}
			}
		}
	case *kmsg.CreateTopicsRequest:
		for i := range m.Topics {
			d.addTopic(r, m.Topics[i].Topic)
		}
	case *kmsg.DeleteTopicsRequest:
		for _, t := range m.TopicNames {
			d.addTopic(r, t)
		}
		for i := range m.Topics {
			t := &m.Topics[i]
			if t.Topic != nil {
				d.addTopic(r, *t.Topic)
			} else {
				d.addTopicID(r, t.TopicID)
			}
		}
	case *kmsg.DeleteRecordsRequest:
		for i := range m.Topics {
			d.addTopic(r, m.Topics[i].Topic)
		}
	case *kmsg.OffsetForLeaderEpochRequest:
		for i := range m.Topics {
			d.addTopic(r, m.Topics[i].Topic)
		}
	case *kmsg.TxnOffsetCommitRequest:
		r.TransactionalIDs = append(r.TransactionalIDs, d.internString(m.TransactionalID))
		r.Groups = append(r.Groups, d.internString(m.Group))
		for i := range m.Topics {
			if v >= 6 {
				d.addTopicID(r, m.Topics[i].TopicID)
			} else {
				d.addTopic(r, m.Topics[i].Topic)
			}
		}
	case *kmsg.AddPartitionsToTxnRequest:
		if v < 4 {
			r.TransactionalIDs = append(r.TransactionalIDs, d.internString(m.TransactionalID))
		}
		for i := range m.Topics {
			d.addTopic(r, m.Topics[i].Topic)
		}
		for i := range m.Transactions {
			t := &m.Transactions[i]
			r.TransactionalIDs = append(r.TransactionalIDs, d.internString(t.TransactionalID))
			for j := range t.Topics {
				d.addTopic(r, t.Topics[j].Topic)
			}
		}
	case *kmsg.DescribeProducersRequest:
		for i := range m.Topics {
			d.addTopic(r, m.Topics[i].Topic)
		}
	case *kmsg.CreatePartitionsRequest:
		for i := range m.Topics {
			d.addTopic(r, m.Topics[i].Topic)
		}
	case *kmsg.OffsetDeleteRequest:
		r.Groups = append(r.Groups, d.internString(m.Group))
		for i := range m.Topics {
			d.addTopic(r, m.Topics[i].Topic)
		}
	case *kmsg.DescribeTopicPartitionsRequest:
		for i := range m.Topics {
			d.addTopic(r, m.Topics[i].Topic)
		}
		if m.Cursor != nil {
			d.addTopic(r, m.Cursor.Topic)
		}
	case *kmsg.FindCoordinatorRequest:
		keys := m.CoordinatorKeys
		if v < 4 {
			keys = []string{m.CoordinatorKey}
		}
		for _, k := range keys {
			if m.CoordinatorType == 1 {
				r.TransactionalIDs = append(r.TransactionalIDs, d.internString(k))
			} else {
				r.Groups = append(r.Groups, d.internString(k))
			}
		}
	case *kmsg.JoinGroupRequest:
		r.Groups = append(r.Groups, d.internString(m.Group))
	case *kmsg.HeartbeatRequest:
		r.Groups = append(r.Groups, d.internString(m.Group))
	case *kmsg.LeaveGroupRequest:
		r.Groups = append(r.Groups, d.internString(m.Group))
	case *kmsg.SyncGroupRequest:
		r.Groups = append(r.Groups, d.internString(m.Group))
	case *kmsg.DescribeGroupsRequest:
		for _, g := range m.Groups {
			r.Groups = append(r.Groups, d.internString(g))
		}
	case *kmsg.DeleteGroupsRequest:
		for _, g := range m.Groups {
			r.Groups = append(r.Groups, d.internString(g))
		}
	case *kmsg.InitProducerIDRequest:
		if m.TransactionalID != nil {
			r.TransactionalIDs = append(r.TransactionalIDs, d.internString(*m.TransactionalID))
		}
	case *kmsg.AddOffsetsToTxnRequest:
		r.TransactionalIDs = append(r.TransactionalIDs, d.internString(m.TransactionalID))
		r.Groups = append(r.Groups, d.internString(m.Group))
	case *kmsg.EndTxnRequest:
		r.TransactionalIDs = append(r.TransactionalIDs, d.internString(m.TransactionalID))
	}
}

// admitted reports whether this package decodes (and can deny) the API key
// at version v. Versions are every version kmsg v1.15.0 knows, i.e. up to
// Kafka 4.x; see the package documentation for the list and the reasons.
func admitted(key, v int16) bool {
	switch key {
	case 0, 1, 2, 3, 8, 9, // Produce, Fetch, ListOffsets, Metadata, OffsetCommit, OffsetFetch
		10, 11, 12, 13, 14, 15, 16, // FindCoordinator, JoinGroup, Heartbeat, LeaveGroup, SyncGroup, DescribeGroups, ListGroups
		18,         // ApiVersions
		19, 20, 21, // CreateTopics, DeleteTopics, DeleteRecords
		22, 23, 24, 25, // InitProducerID, OffsetForLeaderEpoch, AddPartitionsToTxn, AddOffsetsToTxn
		26, 28, // EndTxn, TxnOffsetCommit
		36, 37, // SASLAuthenticate, CreatePartitions
		42, 47, // DeleteGroups, OffsetDelete
		60, 61, // DescribeCluster, DescribeProducers
		75: // DescribeTopicPartitions
	case 17: // SASLHandshake v0 is followed by unframed SASL bytes.
		if v < 1 {
			return false
		}
	default:
		return false
	}
	if key == 18 {
		return true // any ApiVersions version; see Decode
	}
	return v <= maxVersion(key)
}

// maxVersion is kmsg's newest version of an API key, -1 if unknown.
func maxVersion(key int16) int16 {
	msg := kmsg.RequestForKey(key)
	if msg == nil {
		return -1
	}
	return msg.MaxVersion()
}

// topicIDVersion reports whether version v of an API addresses topics by
// ID only (see nameOnlyMaxVersion).
func topicIDVersion(key, v int16) bool {
	n := nameOnlyMaxVersion(key)
	return n >= 0 && v > n
}

// AdmittedMaxVersion returns the newest version of an API key this package
// decodes, or -1 when the key is not admitted.
func AdmittedMaxVersion(key int16) int16 {
	if key == 18 {
		return maxVersion(18)
	}
	if v := maxVersion(key); v >= 0 && admitted(key, v) {
		return v
	}
	return -1
}
