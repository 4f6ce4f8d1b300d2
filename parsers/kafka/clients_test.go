package kafka

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	kafkago "github.com/segmentio/kafka-go"
)

// isKafkaErr reports whether err is or contains the kafka-go error code.
func isKafkaErr(err error, code kafkago.Error) bool {
	if errors.Is(err, code) {
		return true
	}
	var we kafkago.WriteErrors
	if errors.As(err, &we) {
		for _, e := range we {
			if e != nil && isKafkaErr(e, code) {
				return true
			}
		}
	}
	return false
}

func newWriter(t *testing.T, addr, clientID string) *kafkago.Writer {
	tr := &kafkago.Transport{ClientID: clientID}
	w := &kafkago.Writer{
		Addr:         kafkago.TCP(addr),
		BatchTimeout: 5 * time.Millisecond,
		RequiredAcks: kafkago.RequireAll,
		MaxAttempts:  2,
		Transport:    tr,
	}
	t.Cleanup(func() {
		w.Close()
		tr.CloseIdleConnections()
	})
	return w
}

// randomMessages returns n messages with binary keys and values, including
// zero bytes and newlines, so a byte-for-byte comparison means something.
func randomMessages(topic string, n int) []kafkago.Message {
	rng := rand.New(rand.NewPCG(1, 2))
	msgs := make([]kafkago.Message, n)
	for i := range msgs {
		v := make([]byte, 1+rng.IntN(2000))
		for j := range v {
			v[j] = byte(rng.Uint32())
		}
		msgs[i] = kafkago.Message{Topic: topic, Key: []byte(fmt.Sprintf("k\x00%d\n", i)), Value: v}
	}
	return msgs
}

func TestKafkaGoProduceConsumeThroughProxy(t *testing.T) {
	env := newProxyEnv(t, denyTopics("secret"), nil, "orders", "secret")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	w := newWriter(t, env.addr, "kgo-writer")
	defer w.Close()
	msgs := randomMessages("orders", 200)
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatalf("write allowed topic: %v", err)
	}

	r := kafkago.NewReader(kafkago.ReaderConfig{
		Brokers:   []string{env.addr},
		Topic:     "orders",
		Partition: 0,
		MaxWait:   100 * time.Millisecond,
		Dialer:    &kafkago.Dialer{ClientID: "kgo-reader", Timeout: 5 * time.Second},
	})
	defer r.Close()
	for i, want := range msgs {
		got, err := r.ReadMessage(ctx)
		if err != nil {
			t.Fatalf("read message %d: %v", i, err)
		}
		if !bytes.Equal(got.Key, want.Key) || !bytes.Equal(got.Value, want.Value) {
			t.Fatalf("message %d differs after the proxy", i)
		}
	}

	apis := map[string]bool{}
	for _, rec := range env.accessRecords() {
		if rec.Verdict == VerdictAllow {
			apis[rec.APIName] = true
		}
	}
	for _, api := range []string{"apiversions", "metadata", "produce", "fetch"} {
		if !apis[api] {
			t.Errorf("no allowed %s access record (saw %v)", api, apis)
		}
	}
}

func TestKafkaGoDeniedTopicGetsTopicAuthorizationFailed(t *testing.T) {
	// Metadata is allowed for every topic; Produce to "secret" is denied.
	env := newProxyEnv(t, func(r *Request) Decision {
		if r.APIKey == 0 && slices.Contains(r.Topics, "secret") {
			return Deny("no produce to secret", "secret")
		}
		return Allow("")
	}, nil, "orders", "secret")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	w := newWriter(t, env.addr, "kgo")
	defer w.Close()
	err := w.WriteMessages(ctx, kafkago.Message{Topic: "secret", Value: []byte("x")})
	if !isKafkaErr(err, kafkago.TopicAuthorizationFailed) {
		t.Fatalf("write to denied topic: %v, want TopicAuthorizationFailed", err)
	}
	before := env.accepted.Load()
	// The same writer (and its pooled connection) keeps working.
	if err := w.WriteMessages(ctx, kafkago.Message{Topic: "orders", Value: []byte("y")}); err != nil {
		t.Fatalf("write to allowed topic after denial: %v", err)
	}
	if after := env.accepted.Load(); after != before {
		t.Errorf("allowed write needed %d new connections: the denial dropped the connection", after-before)
	}
}

func TestKafkaGoClientIDPolicy(t *testing.T) {
	// Only client "trusted" may produce or fetch; anyone may describe.
	env := newProxyEnv(t, func(r *Request) Decision {
		if r.APIKey != 3 && len(r.Topics) > 0 && r.ClientID != "trusted" {
			return Deny("client "+r.ClientID+" not trusted", r.Topics...)
		}
		return Allow("trusted client")
	}, nil, "orders")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	bad := newWriter(t, env.addr, "intruder")
	defer bad.Close()
	if err := bad.WriteMessages(ctx, kafkago.Message{Topic: "orders", Value: []byte("x")}); !isKafkaErr(err, kafkago.TopicAuthorizationFailed) {
		t.Fatalf("untrusted client write: %v, want TopicAuthorizationFailed", err)
	}
	good := newWriter(t, env.addr, "trusted")
	defer good.Close()
	if err := good.WriteMessages(ctx, kafkago.Message{Topic: "orders", Value: []byte("y")}); err != nil {
		t.Fatalf("trusted client write: %v", err)
	}
	var denied, allowed int
	for _, r := range env.accessRecords() {
		switch {
		case r.ClientID == "intruder" && r.Verdict == VerdictDeny && r.ErrorCode == 29:
			denied++
		case r.ClientID == "trusted" && r.Verdict == VerdictAllow && r.APIName == "produce":
			allowed++
		}
	}
	if denied == 0 || allowed == 0 {
		t.Errorf("access log: %d intruder denials, %d trusted produces", denied, allowed)
	}
}

func TestKafkaGoConsumerGroupThroughProxy(t *testing.T) {
	env := newProxyEnv(t, denyTopics("secret"), nil, "events")
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()

	w := newWriter(t, env.addr, "grp-writer")
	defer w.Close()
	msgs := randomMessages("events", 20)
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}

	read := func(n int) [][]byte {
		r := kafkago.NewReader(kafkago.ReaderConfig{
			Brokers:           []string{env.addr},
			GroupID:           "grp",
			Topic:             "events",
			MaxWait:           100 * time.Millisecond,
			HeartbeatInterval: 500 * time.Millisecond,
			StartOffset:       kafkago.FirstOffset,
			Dialer:            &kafkago.Dialer{ClientID: "grp-reader", Timeout: 5 * time.Second},
		})
		defer r.Close()
		var got [][]byte
		for range n {
			m, err := r.ReadMessage(ctx) // commits synchronously
			if err != nil {
				t.Fatalf("group read: %v", err)
			}
			got = append(got, m.Value)
		}
		return got
	}
	first := read(10)
	for i := range first {
		if !bytes.Equal(first[i], msgs[i].Value) {
			t.Fatalf("group message %d differs", i)
		}
	}
	// A new member of the group resumes from the committed offset.
	second := read(10)
	for i := range second {
		if !bytes.Equal(second[i], msgs[10+i].Value) {
			t.Fatalf("resumed group message %d differs (offset commit lost?)", i)
		}
	}
	apis := map[string]bool{}
	for _, rec := range env.accessRecords() {
		if rec.Verdict == VerdictAllow {
			apis[rec.APIName] = true
		}
	}
	for _, api := range []string{"findcoordinator", "joingroup", "syncgroup", "offsetfetch", "offsetcommit"} {
		if !apis[api] {
			t.Errorf("no allowed %s access record (saw %v)", api, apis)
		}
	}
}

func TestKafkaGoDeniedConsumerGroup(t *testing.T) {
	env := newProxyEnv(t, func(r *Request) Decision {
		if slices.Contains(r.Groups, "forbidden") {
			return Deny("group forbidden")
		}
		return Allow("")
	}, nil, "events")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	r := kafkago.NewReader(kafkago.ReaderConfig{
		Brokers: []string{env.addr},
		GroupID: "forbidden",
		Topic:   "events",
		MaxWait: 100 * time.Millisecond,
		Dialer:  &kafkago.Dialer{ClientID: "grp", Timeout: 5 * time.Second},
	})
	defer r.Close()
	readCtx, readCancel := context.WithTimeout(ctx, 2*time.Second)
	defer readCancel()
	if _, err := r.ReadMessage(readCtx); err == nil {
		t.Fatal("read from a denied group succeeded")
	}
	var sawGroupDenial bool
	for _, rec := range env.accessRecords() {
		if rec.Verdict == VerdictDeny && rec.ErrorCode == ErrCodeGroupAuthorizationFailed {
			sawGroupDenial = true
		}
	}
	if !sawGroupDenial {
		t.Error("no GROUP_AUTHORIZATION_FAILED denial logged")
	}
}

func kcatPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("kcat")
	if err != nil {
		t.Skip("kcat not installed (Debian package kcat); skipping librdkafka interop test")
	}
	return p
}

func runKcat(t *testing.T, kcat, stdin string, args ...string) (string, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, kcat, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

func TestKcatThroughProxy(t *testing.T) {
	kcat := kcatPath(t)
	env := newProxyEnv(t, func(r *Request) Decision {
		if r.ClientID == "kcat-blocked" && (len(r.Topics) > 0 || r.AllTopics) {
			return Deny("blocked client")
		}
		if r.APIKey == 0 && slices.Contains(r.Topics, "secret") {
			return Deny("no produce to secret", "secret")
		}
		return Allow("")
	}, nil, "orders", "secret")

	lines := "alpha\nbeta gamma\ndelta\n"
	if _, errOut, err := runKcat(t, kcat, lines, "-b", env.addr, "-P", "-t", "orders", "-p", "0", "-X", "client.id=kcat-ok"); err != nil {
		t.Fatalf("kcat produce: %v: %s", err, errOut)
	}
	out, errOut, err := runKcat(t, kcat, "", "-b", env.addr, "-C", "-t", "orders", "-p", "0", "-o", "beginning", "-e", "-c", "3", "-f", "%s\n", "-X", "client.id=kcat-ok")
	if err != nil {
		t.Fatalf("kcat consume: %v: %s", err, errOut)
	}
	if out != lines {
		t.Fatalf("kcat read %q, want %q", out, lines)
	}

	// A balanced consumer group (librdkafka: FindCoordinator, JoinGroup,
	// SyncGroup, Heartbeat, OffsetCommit, LeaveGroup) through the proxy.
	out, errOut, err = runKcat(t, kcat, "", "-b", env.addr, "-G", "kcat-group", "-o", "beginning", "-e", "-f", "%s\n",
		"-X", "client.id=kcat-ok", "orders")
	if err != nil || out != lines {
		t.Fatalf("kcat group consume: %q, %v: %s", out, err, errOut)
	}
	groupAPIs := map[string]bool{}
	for _, r := range env.accessRecords() {
		if r.Verdict == VerdictAllow && slices.Contains(r.Groups, "kcat-group") {
			groupAPIs[r.APIName] = true
		}
	}
	for _, api := range []string{"findcoordinator", "joingroup", "syncgroup", "offsetcommit"} {
		if !groupAPIs[api] {
			t.Errorf("kcat group: no allowed %s for the group (saw %v)", api, groupAPIs)
		}
	}

	_, errOut, err = runKcat(t, kcat, "denied\n", "-b", env.addr, "-P", "-t", "secret", "-p", "0",
		"-X", "client.id=kcat-ok", "-X", "message.timeout.ms=5000")
	if err == nil || !strings.Contains(strings.ToLower(errOut), "topic authorization failed") {
		t.Fatalf("kcat produce to denied topic: err %v, stderr %q", err, errOut)
	}

	out, errOut, _ = runKcat(t, kcat, "", "-b", env.addr, "-L", "-t", "orders", "-X", "client.id=kcat-blocked")
	if !strings.Contains(strings.ToLower(out+errOut), "topic authorization failed") {
		t.Fatalf("kcat metadata as blocked client: stdout %q stderr %q", out, errOut)
	}
}
