package kafka

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestKgoTopicIDModeThroughProxy runs franz-go's client through the filter
// in topic-ID mode: it learns IDs from Metadata on one connection and
// produces and fetches by ID (Produce and Fetch v13+) on others, so every
// ID request is resolved through the shared per-cluster table (after the
// proxy asked the broker's cluster id on connections that had not seen
// it). A denied topic stays denied when addressed by ID.
func TestKgoTopicIDModeThroughProxy(t *testing.T) {
	reg := NewTopicIDRegistry(TopicIDLimits{})
	env := newProxyEnv(t, denyTopics("secret"), func(c *Config) {
		c.AllowTopicIDs, c.TopicIDRegistry, c.TopicIDScope = true, reg, "kgo"
	}, "orders", "secret")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(env.addr), kgo.ConsumeTopics("orders"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.RecordRetries(3), kgo.RequestRetries(3))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	const n = 50
	for i := range n {
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: "orders", Value: fmt.Appendf(nil, "order-%d", i)}).FirstErr(); err != nil {
			t.Fatalf("produce %d: %v", i, err)
		}
	}
	got := 0
	for got < n {
		fs := cl.PollFetches(ctx)
		if err := fs.Err0(); err != nil {
			t.Fatalf("after %d records: %v", got, err)
		}
		got += fs.NumRecords()
	}
	err = cl.ProduceSync(ctx, &kgo.Record{Topic: "secret", Value: []byte("x")}).FirstErr()
	if !errors.Is(err, kerr.TopicAuthorizationFailed) {
		t.Errorf("produce to a denied topic: %v, want TOPIC_AUTHORIZATION_FAILED", err)
	}
	byID := map[string]int{}
	for _, r := range env.accessRecords() {
		if (r.APIKey == 0 || r.APIKey == 1) && r.APIVersion >= 13 && r.Verdict == VerdictAllow {
			byID[r.APIName]++
		}
		if r.Reason == "unresolved topic id" || r.Reason == "topic ids not enabled" {
			t.Errorf("request denied for its topic IDs: %+v", r)
		}
	}
	if byID["produce"] < n || byID["fetch"] == 0 {
		t.Errorf("requests by topic ID allowed: %v (want every produce and fetch by ID)", byID)
	}
	t.Logf("%d connections, %d topic-ID tables; by ID: %v", env.accepted.Load(), reg.Len(), byID)
}

// TestKgoFetchSessionDoesNotOutliveARevokedTopic: a consumer allowed to
// read "orders" keeps a fetch session (KIP-227): later Fetch requests name
// only what changed, often no topic at all. When policy stops allowing the
// topic, records produced afterwards must not reach the consumer through
// the session.
func TestKgoFetchSessionDoesNotOutliveARevokedTopic(t *testing.T) {
	var revoked atomic.Bool
	env := newProxyEnv(t, func(r *Request) Decision {
		if revoked.Load() && r.APIKey != 18 && r.APIKey != 3 {
			for _, tp := range r.Topics {
				if tp == "orders" {
					return Deny("revoked", tp)
				}
			}
		}
		return Allow("ok")
	}, nil, "orders")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(env.addr), kgo.ConsumeTopics("orders"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	producer := dialRaw(t, env.upstream, "producer") // straight to the broker
	produce := func(v string) {
		if codes := produceCodes(producer.roundTrip(produceReq(9, "orders", -1, v))); len(codes) != 1 || codes[0] != 0 {
			t.Fatalf("produce %s: %v", v, codes)
		}
	}
	produce("before")
	for got := 0; got == 0; {
		fs := cl.PollFetches(ctx)
		if err := fs.Err0(); err != nil {
			t.Fatal(err)
		}
		got = fs.NumRecords()
	}
	// Let the session settle into incremental fetches naming nothing.
	time.Sleep(500 * time.Millisecond)
	revoked.Store(true)
	// Fetches already at the broker were decided before the revocation and
	// may still answer: produce once two fetches decided after it have
	// completed.
	mark := len(env.accessRecords())
	for fetches := 0; fetches < 3; {
		fetches = 0
		for _, r := range env.accessRecords()[mark:] {
			if r.APIKey == 1 {
				fetches++
			}
		}
		if ctx.Err() != nil {
			t.Fatal("no fetch after the revocation")
		}
		waitCtx, c := context.WithTimeout(ctx, 50*time.Millisecond)
		cl.PollFetches(waitCtx)
		c()
	}
	produce("after-1")
	produce("after-2")
	pollCtx, pollCancel := context.WithTimeout(ctx, 3*time.Second)
	defer pollCancel()
	var leaked []string
	for pollCtx.Err() == nil {
		fs := cl.PollFetches(pollCtx)
		fs.EachRecord(func(r *kgo.Record) { leaked = append(leaked, string(r.Value)) })
	}
	if len(leaked) > 0 {
		t.Errorf("records of a revoked topic reached the consumer: %q", leaked)
	}
}
