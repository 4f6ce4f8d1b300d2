package kafka

import (
	"context"
	"errors"
	"fmt"
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
