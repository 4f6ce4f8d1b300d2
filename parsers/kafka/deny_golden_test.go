package kafka

import (
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/l7gate/l7gate/internal/testutil"
)

// denialShapes are the request shapes whose denials are pinned: the
// decode tests' sample (topics, partitions, groups, ids), an empty request
// (nil arrays, which several versions encode as null), and one with empty
// (non-null) arrays where the request has any.
func denialShapes(key, v int16) map[string]kmsg.Request {
	sample, _ := sampleRequest(key, v)
	empty := kmsg.RequestForKey(key)
	out := map[string]kmsg.Request{"sample": sample, "empty": empty}
	switch q := kmsg.RequestForKey(key).(type) {
	case *kmsg.ProduceRequest:
		q.Topics = []kmsg.ProduceRequestTopic{}
		out["nonnull"] = q
	case *kmsg.FetchRequest:
		q.Topics = []kmsg.FetchRequestTopic{}
		out["nonnull"] = q
	case *kmsg.MetadataRequest:
		q.Topics = []kmsg.MetadataRequestTopic{}
		out["nonnull"] = q
	case *kmsg.OffsetCommitRequest:
		q.Group = "g"
		q.Topics = []kmsg.OffsetCommitRequestTopic{}
		out["nonnull"] = q
	case *kmsg.OffsetFetchRequest:
		q.Group = "g"
		q.Topics = []kmsg.OffsetFetchRequestTopic{}
		q.Groups = []kmsg.OffsetFetchRequestGroup{{Group: "g"}, {Group: "h", Topics: []kmsg.OffsetFetchRequestGroupTopic{}}}
		out["nonnull"] = q
	case *kmsg.FindCoordinatorRequest:
		q.CoordinatorType = 1
		q.CoordinatorKey = "txn"
		q.CoordinatorKeys = []string{"txn"}
		out["nonnull"] = q
	case *kmsg.InitProducerIDRequest:
		q.TransactionalID = nil
		out["nonnull"] = q
	case *kmsg.OffsetDeleteRequest:
		q.Group = "g"
		q.Topics = []kmsg.OffsetDeleteRequestTopic{}
		out["nonnull"] = q
	case *kmsg.AddPartitionsToTxnRequest:
		q.Transactions = []kmsg.AddPartitionsToTxnRequestTransaction{{TransactionalID: "x"}}
		out["nonnull"] = q
	}
	return out
}

// TestDenialGolden pins the bytes of every denial AppendDenial builds, for
// every admitted API and version and several request shapes, so that how
// fillDenial is written (it is generated) cannot change what clients get.
// -update rewrites testdata/denials.golden.
func TestDenialGolden(t *testing.T) {
	dec := NewDecoder(testTopicIDs(), 0)
	var r Request
	var b strings.Builder
	for _, key := range admittedKeys {
		for v := minAdmitted(key); v <= AdmittedMaxVersion(key); v++ {
			shapes := denialShapes(key, v)
			for _, shape := range []string{"sample", "empty", "nonnull"} {
				msg, ok := shapes[shape]
				if !ok {
					continue
				}
				msg.SetVersion(v)
				if err := dec.Decode(appendFrame(nil, msg, 42, "c"), &r); err != nil {
					t.Fatalf("%s v%d %s: decode: %v", APIKeyName(key), v, shape, err)
				}
				frame, code, err := AppendDenial(nil, &r)
				if err != nil {
					t.Fatalf("%s v%d %s: deny: %v", APIKeyName(key), v, shape, err)
				}
				fmt.Fprintf(&b, "%s v%d %s code=%d %s\n", APIKeyName(key), v, shape, code, hex.EncodeToString(frame))
			}
		}
	}
	path := filepath.Join("testdata", "denials.golden")
	testutil.Golden(t, path, []byte(b.String()))
}
