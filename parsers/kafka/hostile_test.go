package kafka

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kmsg"
)

// scriptedBroker answers each request frame read from c with answer's
// bytes (nil: stop).
func scriptedBroker(c net.Conn, answer func(key, ver int16, corr int32, frame []byte) []byte) {
	defer c.Close()
	fr := NewFrameReader(c, 0)
	for {
		frame, err := fr.Next()
		if err != nil {
			return
		}
		out := answer(int16(binary.BigEndian.Uint16(frame[4:])), int16(binary.BigEndian.Uint16(frame[6:])),
			int32(binary.BigEndian.Uint32(frame[8:])), frame)
		if out == nil {
			return
		}
		if _, err := c.Write(out); err != nil {
			return
		}
	}
}

func metadataAnswer(corr int32, ver int16, cluster *string, topics map[string][16]byte) []byte {
	m := kmsg.NewPtrMetadataResponse()
	m.SetVersion(ver)
	m.ClusterID = cluster
	for name, id := range topics {
		t := kmsg.NewMetadataResponseTopic()
		t.Topic, t.TopicID = sp(name), id
		m.Topics = append(m.Topics, t)
	}
	out := binary.BigEndian.AppendUint32(nil, 0)
	out = binary.BigEndian.AppendUint32(out, uint32(corr))
	out = append(out, 0) // flexible response header
	out = m.AppendTo(out)
	binary.BigEndian.PutUint32(out, uint32(len(out)-4))
	return out
}

// serveScripted runs Filter.Serve between a raw client and a scripted
// broker, returning the client side and Serve's result.
func serveScripted(t *testing.T, cfg Config, answer func(key, ver int16, corr int32, frame []byte) []byte) (*rawClient, <-chan error) {
	t.Helper()
	f, err := NewFilter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c1, c2 := net.Pipe()
	u1, u2 := net.Pipe()
	go scriptedBroker(u2, answer)
	done := make(chan error, 1)
	go func() { done <- f.Serve(context.Background(), c1, u1) }()
	t.Cleanup(func() { c2.Close() })
	return &rawClient{t: t, c: c2, fr: NewFrameReader(c2, 0), clientID: "hostile"}, done
}

func metadataReqV(v int16, topics ...string) *kmsg.MetadataRequest {
	m := kmsg.NewPtrMetadataRequest()
	m.SetVersion(v)
	for _, name := range topics {
		t := kmsg.NewMetadataRequestTopic()
		t.Topic = sp(name)
		m.Topics = append(m.Topics, t)
	}
	return m
}

// TestHostileKafkaBrokerChangesItsClusterID: a broker that reports one
// cluster id and then another on the same connection (to plant IDs in two
// clusters' tables) gets the connection closed.
func TestHostileKafkaBrokerChangesItsClusterID(t *testing.T) {
	clusters := []string{"cluster-a", "cluster-b"}
	n := 0
	rc, done := serveScripted(t, Config{Decide: allowAll, AllowTopicIDs: true, TopicIDRegistry: NewTopicIDRegistry(TopicIDLimits{}), TopicIDScope: "s"},
		func(key, ver int16, corr int32, _ []byte) []byte {
			c := clusters[min(n, 1)]
			n++
			return metadataAnswer(corr, ver, &c, map[string][16]byte{"public": {byte(n)}})
		})
	rc.roundTrip(metadataReqV(12, "public"))
	rc.send(metadataReqV(12, "public"))
	rc.expectClosed()
	select {
	case err := <-done:
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("Serve = %v, want ErrMalformed (cluster id changed)", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return")
	}
}

// TestHostileKafkaBrokerWithoutClusterIDResolvesNothing: a broker that
// reports no cluster id binds the connection to no table: IDs stay
// unresolved (denied with UNKNOWN_TOPIC_ID) even though it named them.
func TestHostileKafkaBrokerWithoutClusterIDResolvesNothing(t *testing.T) {
	id := [16]byte{7}
	forwarded := 0
	rc, _ := serveScripted(t, Config{Decide: allowAll, AllowTopicIDs: true},
		func(key, ver int16, corr int32, _ []byte) []byte {
			if key == 3 {
				return metadataAnswer(corr, ver, nil, map[string][16]byte{"public": id})
			}
			forwarded++
			return nil
		})
	rc.roundTrip(metadataReqV(12, "public"))
	p := produceReq(13, "", -1, "x")
	p.Topics[0].TopicID = id
	if codes := produceCodes(rc.roundTrip(p)); len(codes) != 1 || codes[0] != ErrCodeUnknownTopicID {
		t.Errorf("produce by an ID from a broker without a cluster id: codes %v, want [100]", codes)
	}
	if forwarded != 0 {
		t.Errorf("%d requests by ID reached the broker", forwarded)
	}
}
