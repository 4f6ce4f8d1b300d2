package kafka

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"testing"

	"github.com/twmb/franz-go/pkg/kmsg"
)

var (
	testID1 = [16]byte{1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1}
	testID2 = [16]byte{2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2}
)

const testIDName = "named-by-id"

// want is what decoding a sample request must yield.
type want struct {
	topics     []string
	unresolved [][16]byte
	groups     []string
	txnIDs     []string
	allTopics  bool
	denyCode   int16 // main error code of the denial
}

func sp(s string) *string { return &s }

// sampleRequest builds an admitted request of key at version v naming
// topics "t1"/"t2" (or testID1/testID2 where the version uses IDs).
func sampleRequest(key, v int16) (kmsg.Request, want) {
	var w want
	w.denyCode = ErrCodeTopicAuthorizationFailed
	byID := func(minIDVersion int16) bool { return v >= minIDVersion }
	switch key {
	case 0:
		r := kmsg.NewPtrProduceRequest()
		r.Acks = -1
		r.TimeoutMillis = 1000
		if v >= 3 {
			r.TransactionID = sp("txn")
			w.txnIDs = []string{"txn"}
		}
		for i, name := range []string{"t1", "t2"} {
			t := kmsg.NewProduceRequestTopic()
			t.Topic = name
			t.TopicID = [][16]byte{testID1, testID2}[i]
			p := kmsg.NewProduceRequestTopicPartition()
			p.Partition = int32(i)
			p.Records = []byte("not-really-a-batch")
			t.Partitions = append(t.Partitions, p)
			r.Topics = append(r.Topics, t)
		}
		if byID(13) {
			w.topics, w.unresolved = []string{testIDName}, [][16]byte{testID2}
		} else {
			w.topics = []string{"t1", "t2"}
		}
		return r, w
	case 1:
		r := kmsg.NewPtrFetchRequest()
		r.ClusterID = sp("cluster")
		r.ReplicaState.ID, r.ReplicaState.Epoch = 3, 4
		r.Rack = "rack-a"
		t := kmsg.NewFetchRequestTopic()
		t.Topic, t.TopicID = "t1", testID1
		p := kmsg.NewFetchRequestTopicPartition()
		p.ReplicaDirectoryID = testID2
		p.HighWatermark = 99
		t.Partitions = append(t.Partitions, p)
		r.Topics = append(r.Topics, t)
		w.topics = []string{"t1"}
		if byID(13) {
			w.topics = []string{testIDName}
		}
		if v >= 7 {
			f := kmsg.NewFetchRequestForgottenTopic()
			f.Topic, f.TopicID = "t2", testID2
			f.Partitions = []int32{0}
			r.ForgottenTopics = append(r.ForgottenTopics, f)
			if byID(13) {
				w.unresolved = [][16]byte{testID2}
			} else {
				w.topics = append(w.topics, "t2")
			}
		}
		return r, w
	case 2:
		r := kmsg.NewPtrListOffsetsRequest()
		for _, name := range []string{"t1", "t2"} {
			t := kmsg.NewListOffsetsRequestTopic()
			t.Topic = name
			t.Partitions = append(t.Partitions, kmsg.NewListOffsetsRequestTopicPartition())
			r.Topics = append(r.Topics, t)
		}
		w.topics = []string{"t1", "t2"}
		return r, w
	case 3:
		r := kmsg.NewPtrMetadataRequest()
		t := kmsg.NewMetadataRequestTopic()
		t.Topic = sp("t1")
		r.Topics = append(r.Topics, t)
		w.topics = []string{"t1"}
		if v >= 12 {
			t := kmsg.NewMetadataRequestTopic()
			t.TopicID = testID1
			r.Topics = append(r.Topics, t)
			w.topics = append(w.topics, testIDName)
		}
		return r, w
	case 8:
		r := kmsg.NewPtrOffsetCommitRequest()
		r.Group = "g1"
		t := kmsg.NewOffsetCommitRequestTopic()
		t.Topic, t.TopicID = "t1", testID1
		t.Partitions = append(t.Partitions, kmsg.NewOffsetCommitRequestTopicPartition())
		r.Topics = append(r.Topics, t)
		w.groups = []string{"g1"}
		w.topics = []string{"t1"}
		if byID(10) {
			w.topics = []string{testIDName}
		}
		return r, w
	case 9:
		r := kmsg.NewPtrOffsetFetchRequest()
		w.groups = []string{"g1"}
		if v < 8 {
			r.Group = "g1"
			t := kmsg.NewOffsetFetchRequestTopic()
			t.Topic = "t1"
			t.Partitions = []int32{0, 1}
			r.Topics = append(r.Topics, t)
			w.topics = []string{"t1"}
			return r, w
		}
		g := kmsg.NewOffsetFetchRequestGroup()
		g.Group = "g1"
		t := kmsg.NewOffsetFetchRequestGroupTopic()
		t.Topic, t.TopicID = "t1", testID1
		t.Partitions = []int32{0}
		g.Topics = append(g.Topics, t)
		r.Groups = append(r.Groups, g)
		w.topics = []string{"t1"}
		if byID(10) {
			w.topics = []string{testIDName}
		}
		return r, w
	case 10:
		r := kmsg.NewPtrFindCoordinatorRequest()
		r.CoordinatorKey = "g1"
		r.CoordinatorKeys = []string{"g1", "g2"}
		w.groups = []string{"g1"}
		if v >= 4 {
			w.groups = []string{"g1", "g2"}
		}
		w.denyCode = ErrCodeGroupAuthorizationFailed
		return r, w
	case 11:
		r := kmsg.NewPtrJoinGroupRequest()
		r.Group = "g1"
		r.ProtocolType = "consumer"
		r.InstanceID, r.Reason = sp("i"), sp("why")
		r.Protocols = append(r.Protocols, kmsg.JoinGroupRequestProtocol{Name: "range", Metadata: []byte{0, 1, 2}})
		w.groups, w.denyCode = []string{"g1"}, ErrCodeGroupAuthorizationFailed
		return r, w
	case 12:
		r := kmsg.NewPtrHeartbeatRequest()
		r.Group = "g1"
		w.groups, w.denyCode = []string{"g1"}, ErrCodeGroupAuthorizationFailed
		return r, w
	case 13:
		r := kmsg.NewPtrLeaveGroupRequest()
		r.Group = "g1"
		r.Members = append(r.Members, kmsg.LeaveGroupRequestMember{MemberID: "m", InstanceID: sp("i"), Reason: sp("r")})
		w.groups, w.denyCode = []string{"g1"}, ErrCodeGroupAuthorizationFailed
		return r, w
	case 14:
		r := kmsg.NewPtrSyncGroupRequest()
		r.Group = "g1"
		r.ProtocolType, r.Protocol = sp("consumer"), sp("range")
		r.GroupAssignment = append(r.GroupAssignment, kmsg.SyncGroupRequestGroupAssignment{MemberID: "m", MemberAssignment: []byte{1}})
		w.groups, w.denyCode = []string{"g1"}, ErrCodeGroupAuthorizationFailed
		return r, w
	case 15:
		r := kmsg.NewPtrDescribeGroupsRequest()
		r.Groups = []string{"g1", "g2"}
		w.groups, w.denyCode = []string{"g1", "g2"}, ErrCodeGroupAuthorizationFailed
		return r, w
	case 16:
		w.denyCode = ErrCodeClusterAuthorizationFailed
		r := kmsg.NewPtrListGroupsRequest()
		r.StatesFilter, r.TypesFilter = []string{"Stable"}, []string{"classic"}
		return r, w
	case 17:
		r := kmsg.NewPtrSASLHandshakeRequest()
		r.Mechanism = "PLAIN"
		w.denyCode = 33
		return r, w
	case 18:
		r := kmsg.NewPtrApiVersionsRequest()
		r.ClientSoftwareName, r.ClientSoftwareVersion = "test", "1"
		r.ClusterID = sp("c")
		w.denyCode = ErrCodeClusterAuthorizationFailed
		return r, w
	case 19:
		r := kmsg.NewPtrCreateTopicsRequest()
		for _, name := range []string{"t1", "t2"} {
			t := kmsg.NewCreateTopicsRequestTopic()
			t.Topic = name
			t.ReplicaAssignment = append(t.ReplicaAssignment, kmsg.CreateTopicsRequestTopicReplicaAssignment{Partition: 0, Replicas: []int32{1, 2}})
			t.Configs = append(t.Configs, kmsg.CreateTopicsRequestTopicConfig{Name: "retention.ms", Value: sp("1")})
			r.Topics = append(r.Topics, t)
		}
		w.topics = []string{"t1", "t2"}
		return r, w
	case 20:
		r := kmsg.NewPtrDeleteTopicsRequest()
		if v < 6 {
			r.TopicNames = []string{"t1", "t2"}
			w.topics = []string{"t1", "t2"}
			return r, w
		}
		a := kmsg.NewDeleteTopicsRequestTopic()
		a.Topic = sp("t1")
		b := kmsg.NewDeleteTopicsRequestTopic()
		b.TopicID = testID2
		r.Topics = append(r.Topics, a, b)
		w.topics, w.unresolved = []string{"t1"}, [][16]byte{testID2}
		return r, w
	case 21:
		r := kmsg.NewPtrDeleteRecordsRequest()
		t := kmsg.NewDeleteRecordsRequestTopic()
		t.Topic = "t1"
		t.Partitions = append(t.Partitions, kmsg.NewDeleteRecordsRequestTopicPartition())
		r.Topics = append(r.Topics, t)
		w.topics = []string{"t1"}
		return r, w
	case 22:
		r := kmsg.NewPtrInitProducerIDRequest()
		r.TransactionalID = sp("txn")
		w.txnIDs, w.denyCode = []string{"txn"}, ErrCodeTransactionalIDAuthorizationFailed
		return r, w
	case 23:
		r := kmsg.NewPtrOffsetForLeaderEpochRequest()
		t := kmsg.NewOffsetForLeaderEpochRequestTopic()
		t.Topic = "t1"
		t.Partitions = append(t.Partitions, kmsg.NewOffsetForLeaderEpochRequestTopicPartition())
		r.Topics = append(r.Topics, t)
		w.topics = []string{"t1"}
		return r, w
	case 24:
		r := kmsg.NewPtrAddPartitionsToTxnRequest()
		if v < 4 {
			r.TransactionalID = "txn"
			t := kmsg.NewAddPartitionsToTxnRequestTopic()
			t.Topic = "t1"
			t.Partitions = []int32{0}
			r.Topics = append(r.Topics, t)
			w.txnIDs, w.topics = []string{"txn"}, []string{"t1"}
			return r, w
		}
		x := kmsg.NewAddPartitionsToTxnRequestTransaction()
		x.TransactionalID = "txn"
		for _, name := range []string{"t1", "t2"} {
			t := kmsg.NewAddPartitionsToTxnRequestTransactionTopic()
			t.Topic = name
			t.Partitions = []int32{0}
			x.Topics = append(x.Topics, t)
		}
		r.Transactions = append(r.Transactions, x)
		w.txnIDs, w.topics = []string{"txn"}, []string{"t1", "t2"}
		return r, w
	case 25:
		r := kmsg.NewPtrAddOffsetsToTxnRequest()
		r.TransactionalID, r.Group = "txn", "g1"
		w.txnIDs, w.groups, w.denyCode = []string{"txn"}, []string{"g1"}, ErrCodeTransactionalIDAuthorizationFailed
		return r, w
	case 26:
		r := kmsg.NewPtrEndTxnRequest()
		r.TransactionalID = "txn"
		w.txnIDs, w.denyCode = []string{"txn"}, ErrCodeTransactionalIDAuthorizationFailed
		return r, w
	case 28:
		r := kmsg.NewPtrTxnOffsetCommitRequest()
		r.TransactionalID, r.Group = "txn", "g1"
		t := kmsg.NewTxnOffsetCommitRequestTopic()
		t.Topic, t.TopicID = "t1", testID1
		t.Partitions = append(t.Partitions, kmsg.NewTxnOffsetCommitRequestTopicPartition())
		r.Topics = append(r.Topics, t)
		w.txnIDs, w.groups, w.topics = []string{"txn"}, []string{"g1"}, []string{"t1"}
		if byID(6) {
			w.topics = []string{testIDName}
		}
		return r, w
	case 36:
		r := kmsg.NewPtrSASLAuthenticateRequest()
		r.SASLAuthBytes = []byte("\x00user\x00pass")
		w.denyCode = ErrCodeSASLAuthenticationFailed
		return r, w
	case 37:
		r := kmsg.NewPtrCreatePartitionsRequest()
		t := kmsg.NewCreatePartitionsRequestTopic()
		t.Topic, t.Count = "t1", 3
		t.Assignment = append(t.Assignment, kmsg.CreatePartitionsRequestTopicAssignment{Replicas: []int32{1}})
		r.Topics = append(r.Topics, t)
		w.topics = []string{"t1"}
		return r, w
	case 42:
		r := kmsg.NewPtrDeleteGroupsRequest()
		r.Groups = []string{"g1"}
		w.groups, w.denyCode = []string{"g1"}, ErrCodeGroupAuthorizationFailed
		return r, w
	case 47:
		r := kmsg.NewPtrOffsetDeleteRequest()
		r.Group = "g1"
		t := kmsg.NewOffsetDeleteRequestTopic()
		t.Topic = "t1"
		t.Partitions = append(t.Partitions, kmsg.NewOffsetDeleteRequestTopicPartition())
		r.Topics = append(r.Topics, t)
		w.groups, w.topics = []string{"g1"}, []string{"t1"}
		return r, w
	case 60:
		w.denyCode = ErrCodeClusterAuthorizationFailed
		return kmsg.NewPtrDescribeClusterRequest(), w
	case 61:
		r := kmsg.NewPtrDescribeProducersRequest()
		t := kmsg.NewDescribeProducersRequestTopic()
		t.Topic, t.Partitions = "t1", []int32{0}
		r.Topics = append(r.Topics, t)
		w.topics = []string{"t1"}
		return r, w
	case 75:
		r := kmsg.NewPtrDescribeTopicPartitionsRequest()
		t := kmsg.NewDescribeTopicPartitionsRequestTopic()
		t.Topic = "t1"
		r.Topics = append(r.Topics, t)
		r.Cursor = &kmsg.DescribeTopicPartitionsRequestCursor{Topic: "t2", Partition: 1}
		w.topics = []string{"t1", "t2"}
		return r, w
	}
	panic(fmt.Sprintf("no sample for key %d", key))
}

var admittedKeys = []int16{0, 1, 2, 3, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 28, 36, 37, 42, 47, 60, 61, 75}

func minAdmitted(key int16) int16 {
	if key == 17 {
		return 1
	}
	return 0
}

// appendFrame encodes req as a complete request frame.
func appendFrame(dst []byte, req kmsg.Request, corr int32, clientID string) []byte {
	return kmsg.NewRequestFormatter(kmsg.FormatterClientID(clientID)).AppendRequest(dst, req, corr)
}

type sampleCase struct {
	name string
	key  int16
	ver  int16
}

func sampleCases() []sampleCase {
	var cs []sampleCase
	for _, k := range admittedKeys {
		for _, v := range []int16{minAdmitted(k), AdmittedMaxVersion(k)} {
			cs = append(cs, sampleCase{fmt.Sprintf("%s/v%d", APIKeyName(k), v), k, v})
		}
	}
	return cs
}

func testTopicIDs() *TopicIDs {
	ids := NewTopicIDs(0)
	ids.Learn(testIDName, testID1)
	return ids
}

func TestDecodeAdmittedRequestsAtMinAndMaxVersion(t *testing.T) {
	dec := NewDecoder(testTopicIDs(), 0)
	var r Request
	for i, c := range sampleCases() {
		t.Run(c.name, func(t *testing.T) {
			msg, w := sampleRequest(c.key, c.ver)
			msg.SetVersion(c.ver)
			corr := int32(1000 + i)
			frame := appendFrame(nil, msg, corr, "client-"+c.name)
			if err := dec.Decode(frame, &r); err != nil {
				t.Fatalf("decode: %v", err)
			}
			if r.APIKey != c.key || r.APIVersion != c.ver || r.CorrelationID != corr || r.ClientID != "client-"+c.name {
				t.Fatalf("header = key %d v%d corr %d client %q", r.APIKey, r.APIVersion, r.CorrelationID, r.ClientID)
			}
			if !r.Supported {
				t.Fatal("not supported")
			}
			check := func(what string, got, want []string) {
				t.Helper()
				if !slices.Equal(got, want) {
					t.Errorf("%s = %q, want %q", what, got, want)
				}
			}
			check("topics", r.Topics, w.topics)
			check("groups", r.Groups, w.groups)
			check("transactional ids", r.TransactionalIDs, w.txnIDs)
			if !slices.Equal(r.UnresolvedTopicIDs, w.unresolved) {
				t.Errorf("unresolved = %x, want %x", r.UnresolvedTopicIDs, w.unresolved)
			}
			if r.AllTopics != w.allTopics {
				t.Errorf("AllTopics = %v", r.AllTopics)
			}
		})
	}
}

// errorCodes collects every ErrorCode field in a response.
func errorCodes(v reflect.Value, out *[]int16) {
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			errorCodes(v.Elem(), out)
		}
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			f := v.Type().Field(i)
			if f.Name == "ErrorCode" && f.Type.Kind() == reflect.Int16 {
				*out = append(*out, int16(v.Field(i).Int()))
				continue
			}
			errorCodes(v.Field(i), out)
		}
	case reflect.Slice:
		for i := 0; i < v.Len(); i++ {
			errorCodes(v.Index(i), out)
		}
	}
}

// parseResponseFrame checks a response frame's size, correlation id and
// header version, and decodes its body at version v.
func parseResponseFrame(t *testing.T, frame []byte, key, v int16, corr int32) kmsg.Response {
	t.Helper()
	if len(frame) < 8 || int(binary.BigEndian.Uint32(frame)) != len(frame)-4 {
		t.Fatalf("bad response frame size")
	}
	if got := int32(binary.BigEndian.Uint32(frame[4:])); got != corr {
		t.Fatalf("response correlation id %d, want %d", got, corr)
	}
	resp := kmsg.ResponseForKey(key)
	resp.SetVersion(v)
	body := frame[8:]
	if resp.IsFlexible() && key != 18 {
		if body[0] != 0 {
			t.Fatalf("flexible response header tags byte = %d", body[0])
		}
		body = body[1:]
	}
	if err := resp.ReadFrom(body); err != nil {
		t.Fatalf("decode response: %v", err)
	}
	// A wrong header version would shift the body: re-encoding must
	// reproduce it exactly.
	if again := resp.AppendTo(nil); !bytes.Equal(again, body) {
		t.Fatalf("response body does not round-trip (%d vs %d bytes)", len(again), len(body))
	}
	return resp
}

func TestDenialIsTheAPIsOwnResponse(t *testing.T) {
	dec := NewDecoder(testTopicIDs(), 0)
	var r Request
	for i, c := range sampleCases() {
		t.Run(c.name, func(t *testing.T) {
			msg, w := sampleRequest(c.key, c.ver)
			msg.SetVersion(c.ver)
			corr := int32(7000 + i)
			if err := dec.Decode(appendFrame(nil, msg, corr, "c"), &r); err != nil {
				t.Fatalf("decode: %v", err)
			}
			frame, code, err := AppendDenial(nil, &r)
			if err != nil {
				t.Fatalf("deny: %v", err)
			}
			if code != w.denyCode {
				t.Errorf("main code %d, want %d", code, w.denyCode)
			}
			resp := parseResponseFrame(t, frame, c.key, c.ver, corr)
			var codes []int16
			errorCodes(reflect.ValueOf(resp), &codes)
			nonzero := 0
			for _, got := range codes {
				if got != 0 && got != w.denyCode {
					t.Errorf("error code %d in denial, want only %d", got, w.denyCode)
				}
				if got != 0 {
					nonzero++
				}
			}
			if nonzero == 0 {
				t.Errorf("denial carries no error code (codes %v)", codes)
			}
			if n := len(w.topics) + len(w.unresolved); n > 0 && nonzero < n && c.key != 1 && c.key != 75 {
				t.Errorf("%d error codes for %d topics", nonzero, n)
			}
		})
	}
}

func TestDecodeMetadataAllTopics(t *testing.T) {
	dec := NewDecoder(nil, 0)
	var r Request
	for _, v := range []int16{0, 1, 12} {
		m := kmsg.NewPtrMetadataRequest()
		m.SetVersion(v)
		if v == 0 {
			m.Topics = []kmsg.MetadataRequestTopic{}
		} // v1+: nil means all topics
		if err := dec.Decode(appendFrame(nil, m, 1, "c"), &r); err != nil {
			t.Fatal(err)
		}
		if !r.AllTopics || len(r.Topics) != 0 {
			t.Errorf("v%d: AllTopics=%v topics=%q", v, r.AllTopics, r.Topics)
		}
	}
	// v1+ empty (non-null) list means no topics, not all.
	m := kmsg.NewPtrMetadataRequest()
	m.SetVersion(4)
	m.Topics = []kmsg.MetadataRequestTopic{}
	if err := dec.Decode(appendFrame(nil, m, 1, "c"), &r); err != nil {
		t.Fatal(err)
	}
	if r.AllTopics {
		t.Error("empty v4 topic list decoded as all topics")
	}
}

func TestDecodeUnsupportedKeepsHeader(t *testing.T) {
	dec := NewDecoder(nil, 0)
	var r Request
	for _, tc := range []struct {
		name string
		msg  kmsg.Request
		ver  int16
	}{
		{"describeacls", kmsg.NewPtrDescribeACLsRequest(), 1},
		{"saslhandshake-v0", kmsg.NewPtrSASLHandshakeRequest(), 0},
	} {
		tc.msg.SetVersion(tc.ver)
		err := dec.Decode(appendFrame(nil, tc.msg, 42, "who"), &r)
		if !errors.Is(err, ErrUnsupported) {
			t.Fatalf("%s: err = %v, want ErrUnsupported", tc.name, err)
		}
		if r.Supported || r.CorrelationID != 42 || r.ClientID != "who" || r.APIKey != tc.msg.Key() {
			t.Errorf("%s: header not kept: %+v", tc.name, r)
		}
		if _, _, err := AppendDenial(nil, &r); !errors.Is(err, ErrUnsupported) {
			t.Errorf("%s: AppendDenial err = %v", tc.name, err)
		}
	}
	// A Produce version past what we know.
	frame := appendFrame(nil, kmsg.NewPtrProduceRequest(), 9, "x")
	binary.BigEndian.PutUint16(frame[6:], uint16(maxProduceVersion+1))
	if err := dec.Decode(frame, &r); !errors.Is(err, ErrUnsupported) {
		t.Errorf("produce v%d: err = %v", maxProduceVersion+1, err)
	}
}

func TestDecodeRejectsMalformed(t *testing.T) {
	dec := NewDecoder(nil, 0)
	var r Request
	p := kmsg.NewPtrProduceRequest()
	p.SetVersion(9)
	t1 := kmsg.NewProduceRequestTopic()
	t1.Topic = "t1"
	p.Topics = append(p.Topics, t1)
	good := appendFrame(nil, p, 1, "c")
	for name, frame := range map[string][]byte{
		"empty":            {},
		"size mismatch":    append(append([]byte(nil), good...), 0),
		"short header":     {0, 0, 0, 3, 0, 0, 0},
		"negative version": {0, 0, 0, 10, 0, 0, 0xff, 0xff, 0, 0, 0, 1, 0xff, 0xff},
		"truncated body":   fixSize(good[:len(good)-2]),
		"trailing bytes":   fixSize(append(append([]byte(nil), good...), 0)),
		"huge topic count": fixSize(append(append([]byte(nil), good[:len(good)-len(p.AppendTo(nil))]...), 0x00, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f)),
	} {
		if err := dec.Decode(frame, &r); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", name, err)
		}
	}
}

func fixSize(frame []byte) []byte {
	out := append([]byte(nil), frame...)
	binary.BigEndian.PutUint32(out, uint32(len(out)-4))
	return out
}

func TestDecodeControlRequestSizeLimit(t *testing.T) {
	dec := NewDecoder(nil, 128)
	var r Request
	m := kmsg.NewPtrMetadataRequest()
	m.SetVersion(4)
	for i := range 20 {
		tp := kmsg.NewMetadataRequestTopic()
		tp.Topic = sp(fmt.Sprintf("topic-%02d", i))
		m.Topics = append(m.Topics, tp)
	}
	if err := dec.Decode(appendFrame(nil, m, 1, "c"), &r); !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("err = %v, want ErrFrameTooLarge", err)
	}
}

func TestDecodeProduceDoesNotAllocate(t *testing.T) {
	p := kmsg.NewPtrProduceRequest()
	p.SetVersion(9)
	p.Acks = -1
	for _, name := range []string{"a", "b", "c"} {
		tp := kmsg.NewProduceRequestTopic()
		tp.Topic = name
		pp := kmsg.NewProduceRequestTopicPartition()
		pp.Records = make([]byte, 1000)
		tp.Partitions = append(tp.Partitions, pp)
		p.Topics = append(p.Topics, tp)
	}
	frame := appendFrame(nil, p, 1, "client")
	dec := NewDecoder(nil, 0)
	var r Request
	_ = dec.Decode(frame, &r) // warm the caches
	allocs := testing.AllocsPerRun(100, func() {
		if err := dec.Decode(frame, &r); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocations per produce decode, want 0", allocs)
	}
}

func TestAPIKeyNames(t *testing.T) {
	for name, key := range map[string]int16{
		"produce": 0, "fetch": 1, "listoffsets": 2, "metadata": 3, "offsetcommit": 8,
		"offsetfetch": 9, "findcoordinator": 10, "joingroup": 11, "heartbeat": 12,
		"leavegroup": 13, "syncgroup": 14, "describegroups": 15, "listgroups": 16,
		"saslhandshake": 17, "apiversions": 18, "createtopics": 19, "deletetopics": 20,
		"deleterecords": 21, "initproducerid": 22, "offsetforleaderepoch": 23,
		"addpartitionstotxn": 24, "addoffsetstotxn": 25, "endtxn": 26, "txnoffsetcommit": 28,
		"describeacls": 29, "describeconfigs": 32, "saslauthenticate": 36,
		"describetopicpartitions": 75,
	} {
		if got := APIKeyName(key); got != name {
			t.Errorf("APIKeyName(%d) = %q, want %q", key, got, name)
		}
		if got, ok := APIKeyByName(name); !ok || got != key {
			t.Errorf("APIKeyByName(%q) = %d, %v", name, got, ok)
		}
	}
	if k, ok := APIKeyByName("offsets"); !ok || k != 2 {
		t.Errorf("alias offsets = %d, %v", k, ok)
	}
	if k, ok := APIKeyByName("Produce"); !ok || k != 0 {
		t.Errorf("Produce = %d, %v", k, ok)
	}
	if _, ok := APIKeyByName("nope"); ok {
		t.Error("unknown name resolved")
	}
	if APIKeyName(-1) != "unknown" || APIKeyName(1000) != "unknown" {
		t.Error("unknown key named")
	}
	// Every key kmsg knows round-trips.
	for k := int16(0); k < 200; k++ {
		if kmsg.RequestForKey(k) == nil {
			continue
		}
		got, ok := APIKeyByName(APIKeyName(k))
		if !ok || got != k {
			t.Errorf("key %d round-trips to %d, %v", k, got, ok)
		}
	}
}

// Every version of every admitted request, as kmsg encodes it, passes the
// layout check that guards kmsg's decoder (schema.go).
func TestSchemasAcceptEveryVersion(t *testing.T) {
	for _, k := range admittedKeys {
		if k == 0 {
			continue // Produce has its own decoder
		}
		s := requestSchema(k)
		if s == nil {
			t.Fatalf("no layout for admitted key %d", k)
		}
		for v := minAdmitted(k); v <= AdmittedMaxVersion(k); v++ {
			msg, _ := sampleRequest(k, v)
			msg.SetVersion(v)
			body := msg.AppendTo(nil)
			if !s.validate(body, v) {
				t.Errorf("%s v%d: layout rejects kmsg's encoding", APIKeyName(k), v)
			}
			if len(body) > 0 && s.validate(body[:len(body)-1], v) {
				t.Errorf("%s v%d: layout accepts a truncated body", APIKeyName(k), v)
			}
		}
	}
	for _, k := range []int16{3, 18, 75} {
		for v := int16(0); v <= maxVersion(k); v++ {
			var body []byte
			switch k {
			case 3:
				body = metadataResponseSeed(v)
			case 18:
				body = apiVersionsSeed(v)
			case 75:
				r := kmsg.NewPtrDescribeTopicPartitionsResponse()
				tp := kmsg.NewDescribeTopicPartitionsResponseTopic()
				tp.Topic = sp("x")
				tp.Partitions = append(tp.Partitions, kmsg.NewDescribeTopicPartitionsResponseTopicPartition())
				r.Topics = append(r.Topics, tp)
				r.NextCursor = &kmsg.DescribeTopicPartitionsResponseNextCursor{Topic: "x"}
				body = r.AppendTo(nil)
			}
			if !responseSchema(k).validate(body, v) {
				t.Errorf("%s response v%d: layout rejects kmsg's encoding", APIKeyName(k), v)
			}
		}
	}
}

// A tagged-field count far larger than the message made kmsg loop for
// seconds; the layout check rejects it up front.
func TestHugeTagCountIsRejected(t *testing.T) {
	m := kmsg.NewPtrListOffsetsRequest()
	m.SetVersion(11)
	tp := kmsg.NewListOffsetsRequestTopic()
	tp.Topic = "t1"
	tp.Partitions = append(tp.Partitions, kmsg.NewListOffsetsRequestTopicPartition())
	m.Topics = append(m.Topics, tp)
	frame := appendFrame(nil, m, 1, "c")
	// Replace the request's final tag count (0) with 2^32-1.
	bad := fixSize(append(frame[:len(frame)-1:len(frame)-1], 0xff, 0xff, 0xff, 0xff, 0x0f))
	var r Request
	if err := NewDecoder(nil, 0).Decode(bad, &r); !errors.Is(err, ErrMalformed) {
		t.Fatalf("err = %v, want ErrMalformed", err)
	}
	// The same inside Fetch's known tagged struct (ReplicaState).
	f := kmsg.NewPtrFetchRequest()
	f.SetVersion(15)
	body := f.AppendTo(nil)
	// Replace the final empty tag section with one tag 1 holding a
	// ReplicaState whose own tag count is huge.
	inner := []byte{0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0x0f}
	body = append(body[:len(body)-1], 1, 1, byte(len(inner)))
	body = append(body, inner...)
	if requestSchema(1).validate(body, 15) {
		t.Fatal("huge tag count inside a known tagged struct accepted")
	}
}
