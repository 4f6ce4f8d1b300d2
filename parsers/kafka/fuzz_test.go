package kafka

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"testing"

	"github.com/twmb/franz-go/pkg/kmsg"
)

func FuzzReadFrame(f *testing.F) {
	f.Add([]byte{0, 0, 0, 1, 9})
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0, 1, 0, 0, 1})
	f.Add(append(frameOf([]byte("abc")), frameOf([]byte("defg"))...))
	f.Fuzz(func(t *testing.T, data []byte) {
		const max = 1 << 12
		fr := NewFrameReader(bytes.NewReader(data), max)
		for {
			frame, err := fr.Next()
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) &&
					!errors.Is(err, ErrFrameTooLarge) && !errors.Is(err, ErrMalformed) {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if len(frame) > 4+max || int(binary.BigEndian.Uint32(frame)) != len(frame)-4 {
				t.Fatalf("bad frame of %d bytes", len(frame))
			}
		}
	})
}

func FuzzDecodeRequest(f *testing.F) {
	for i, c := range sampleCases() {
		msg, _ := sampleRequest(c.key, c.ver)
		msg.SetVersion(c.ver)
		f.Add(appendFrame(nil, msg, int32(i), "fuzz"))
	}
	f.Add([]byte{0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, frame []byte) {
		dec := NewDecoder(testTopicIDs(), 0)
		var r Request
		err := dec.Decode(frame, &r)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrUnsupported) && !errors.Is(err, ErrFrameTooLarge) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		if r.APIKey == 0 && r.APIVersion < 13 {
			// The hand-written Produce decoder agrees with kmsg.
			m := kmsg.NewPtrProduceRequest()
			m.SetVersion(r.APIVersion)
			if err := m.ReadFrom(r.body); err != nil {
				t.Fatalf("we decoded a produce kmsg rejects: %v", err)
			}
			var names []string
			for _, tp := range m.Topics {
				names = append(names, tp.Topic)
			}
			if !slices.Equal(names, r.Topics) {
				t.Fatalf("topics %q, kmsg %q", r.Topics, names)
			}
		}
		resp, _, err := AppendDenial(nil, &r)
		if err != nil {
			if errors.Is(err, ErrUnsupported) || errors.Is(err, ErrMalformed) {
				return
			}
			t.Fatalf("deny: %v", err)
		}
		if len(resp) < 8 || int32(binary.BigEndian.Uint32(resp[4:])) != r.CorrelationID {
			t.Fatal("denial lacks the correlation id")
		}
	})
}

func metadataResponseSeed(v int16) []byte {
	resp := kmsg.NewPtrMetadataResponse()
	resp.SetVersion(v)
	b := kmsg.NewMetadataResponseBroker()
	b.Host, b.Port = "127.0.0.1", 9092
	resp.Brokers = append(resp.Brokers, b)
	for i, name := range []string{"a", "b"} {
		tp := kmsg.NewMetadataResponseTopic()
		tp.Topic = sp(name)
		tp.TopicID = [16]byte{byte(i + 1)}
		tp.Partitions = append(tp.Partitions, kmsg.NewMetadataResponseTopicPartition())
		resp.Topics = append(resp.Topics, tp)
	}
	return resp.AppendTo(nil)
}

func FuzzLearnResponse(f *testing.F) {
	for _, v := range []int16{10, 12, 13} {
		f.Add(int16(3), v, metadataResponseSeed(v))
	}
	dtp := kmsg.NewPtrDescribeTopicPartitionsResponse()
	tp := kmsg.NewDescribeTopicPartitionsResponseTopic()
	tp.Topic, tp.TopicID = sp("c"), [16]byte{3}
	dtp.Topics = append(dtp.Topics, tp)
	f.Add(int16(75), int16(0), dtp.AppendTo(nil))
	f.Fuzz(func(t *testing.T, key, v int16, body []byte) {
		if v < 0 || v > 20 {
			return
		}
		ids := NewTopicIDs(4)
		n, err := ids.LearnResponse(key, v, body)
		if err != nil && !errors.Is(err, ErrMalformed) {
			t.Fatalf("unexpected error %v", err)
		}
		if ids.Len() > 4 || ids.Len() > n {
			t.Fatalf("table holds %d entries after learning %d", ids.Len(), n)
		}
	})
}

func TestLearnResponseLearnsMetadataIDs(t *testing.T) {
	ids := NewTopicIDs(0)
	n, err := ids.LearnResponse(3, 12, metadataResponseSeed(12))
	if err != nil || n != 2 {
		t.Fatalf("learned %d, %v", n, err)
	}
	if name, ok := ids.Name([16]byte{2}); !ok || name != "b" {
		t.Errorf("id 2 = %q, %v", name, ok)
	}
	if id, ok := ids.ID("a"); !ok || id != ([16]byte{1}) {
		t.Errorf("a = %x, %v", id, ok)
	}
	// A full table learns nothing more (forgetting an entry could let a
	// liar remap it later): the new ID stays unresolved.
	small := NewTopicIDs(1)
	small.Learn("x", [16]byte{1})
	small.Learn("y", [16]byte{2})
	if small.Len() != 1 || small.Refused() != 1 {
		t.Errorf("bounded table holds %d, refused %d", small.Len(), small.Refused())
	}
	if _, ok := small.Name([16]byte{2}); ok {
		t.Error("a full table learned a new ID")
	}
	if name, ok := small.Name([16]byte{1}); !ok || name != "x" {
		t.Errorf("first entry = %q, %v", name, ok)
	}
}

func apiVersionsSeed(v int16) []byte {
	resp := kmsg.NewPtrApiVersionsResponse()
	resp.SetVersion(v)
	for _, k := range []struct{ key, min, max int16 }{{0, 3, 13}, {1, 4, 17}, {17, 0, 1}, {29, 0, 3}, {3, 0, 13}} {
		ak := kmsg.NewApiVersionsResponseApiKey()
		ak.ApiKey, ak.MinVersion, ak.MaxVersion = k.key, k.min, k.max
		resp.ApiKeys = append(resp.ApiKeys, ak)
	}
	return resp.AppendTo(nil)
}

func FuzzClampAPIVersions(f *testing.F) {
	for _, v := range []int16{0, 3, 4} {
		f.Add(v, apiVersionsSeed(v), false, false)
	}
	f.Fuzz(func(t *testing.T, v int16, body []byte, keepUnknown, allowIDs bool) {
		if v < 0 || v > 4 {
			return
		}
		out, ok, err := clampAPIVersions(nil, v, body, keepUnknown, allowIDs)
		if err != nil && !errors.Is(err, ErrMalformed) {
			t.Fatalf("unexpected error %v", err)
		}
		if !ok {
			return
		}
		resp := kmsg.NewPtrApiVersionsResponse()
		resp.SetVersion(v)
		if err := resp.ReadFrom(out); err != nil {
			t.Fatalf("clamped response does not decode: %v", err)
		}
		for _, k := range resp.ApiKeys {
			if ours := AdmittedMaxVersion(k.ApiKey); ours >= 0 && k.MaxVersion > ours && k.MinVersion <= ours {
				t.Fatalf("key %d offered up to v%d", k.ApiKey, k.MaxVersion)
			}
			if !keepUnknown && AdmittedMaxVersion(k.ApiKey) < 0 {
				t.Fatalf("unadmitted key %d offered", k.ApiKey)
			}
		}
	})
}

func TestClampAPIVersions(t *testing.T) {
	out, ok, err := clampAPIVersions(nil, 3, apiVersionsSeed(3), false, false)
	if err != nil || !ok {
		t.Fatalf("clamp: %v %v", ok, err)
	}
	resp := kmsg.NewPtrApiVersionsResponse()
	resp.SetVersion(3)
	if err := resp.ReadFrom(out); err != nil {
		t.Fatal(err)
	}
	got := map[int16][2]int16{}
	for _, k := range resp.ApiKeys {
		got[k.ApiKey] = [2]int16{k.MinVersion, k.MaxVersion}
	}
	want := map[int16][2]int16{0: {3, 12}, 1: {4, 12}, 17: {1, 1}, 3: {0, 13}}
	if len(got) != len(want) {
		t.Fatalf("keys = %v, want %v", got, want)
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("key %d = %v, want %v", k, got[k], w)
		}
	}
}

// FuzzTopicIDAnswers feeds Metadata and DescribeTopicPartitions answers to
// the session code that binds a connection to its cluster, learns IDs and
// clears the IDs of denied topics: it must never fail on anything but
// ErrMalformed, and what it lets through must carry no ID of topic "b"
// (denied).
func FuzzTopicIDAnswers(f *testing.F) {
	for _, v := range []int16{10, 12, 13} {
		f.Add(int16(3), v, metadataResponseSeed(v))
	}
	dtp := kmsg.NewPtrDescribeTopicPartitionsResponse()
	for i, name := range []string{"a", "b"} {
		tp := kmsg.NewDescribeTopicPartitionsResponseTopic()
		tp.Topic, tp.TopicID = sp(name), [16]byte{byte(i + 1)}
		dtp.Topics = append(dtp.Topics, tp)
	}
	f.Add(int16(75), int16(0), dtp.AppendTo(nil))
	reg := NewTopicIDRegistry(TopicIDLimits{IDs: 64})
	f.Fuzz(func(t *testing.T, key, v int16, body []byte) {
		if (key != 3 && key != 75) || v < 0 || v > 13 || (key == 3 && v < 10) {
			return
		}
		fl, err := NewFilter(Config{Decide: denyTopics("b"), AllowTopicIDs: true, TopicIDRegistry: reg, TopicIDScope: "fuzz"})
		if err != nil {
			t.Fatal(err)
		}
		s := &session{f: fl}
		out, err := s.topicIDs(pending{key: key, ver: v}, []byte{0, 0, 0, 0, 0, 0, 0, 1}, body)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		sent := body
		if out != nil {
			sent = out[8:]
		}
		resp := kmsg.ResponseForKey(key)
		resp.SetVersion(v)
		if err := resp.ReadFrom(sent); err != nil {
			t.Fatalf("passed an answer that does not decode: %v", err)
		}
		check := func(name *string, id [16]byte) {
			if name != nil && *name == "b" && id != ([16]byte{}) {
				t.Fatalf("denied topic b passed with ID %x", id)
			}
		}
		switch m := resp.(type) {
		case *kmsg.MetadataResponse:
			for _, tp := range m.Topics {
				check(tp.Topic, tp.TopicID)
			}
		case *kmsg.DescribeTopicPartitionsResponse:
			for _, tp := range m.Topics {
				check(tp.Topic, tp.TopicID)
			}
		}
	})
}
