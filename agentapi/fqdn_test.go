package agentapi

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestHostileFQDNAnswer: POST /fqdn takes one strictly decoded, bounded
// answer; garbage, unknown fields and oversized bodies are 400 and never
// reach the learner.
func TestHostileFQDNAnswer(t *testing.T) {
	l := &recLearner{}
	h := fqdnHandler(l)
	for _, body := range []string{
		"",
		"{",
		`{"name":"a.example","ips":["198.19.0.1"],"extra":1}`,
		`{"name":"a.example","ips":["not an ip"]}`,
		`{"name":"a.example","ips":["198.19.0.1"]}` + strings.Repeat(" ", maxFQDNAnswer),
		`{"name":"a.example","ips":["198.19.0.1"]}{"name":"b.example","ips":["198.19.0.2"]}`,
		`[1,2,3]`,
	} {
		rec := httptest.NewRecorder()
		h(rec, httptest.NewRequest(http.MethodPost, "/fqdn", strings.NewReader(body)))
		if rec.Code != http.StatusBadRequest {
			t.Errorf("%.40q: status %d, want 400", body, rec.Code)
		}
	}
	if len(l.got) != 0 {
		t.Errorf("learner got %v", l.got)
	}
	rec := httptest.NewRecorder()
	h(rec, httptest.NewRequest(http.MethodPost, "/fqdn", strings.NewReader(`{"name":"a.example","ips":["198.19.0.1"],"ttlSeconds":30}`)))
	if rec.Code != http.StatusNoContent || len(l.got) != 1 || l.got[0].IPs[0] != netip.MustParseAddr("198.19.0.1") {
		t.Errorf("valid answer: status %d, learned %v", rec.Code, l.got)
	}
}

type recLearner struct{ got []FQDNAnswer }

func (r *recLearner) LearnFQDN(_ context.Context, a FQDNAnswer) error {
	r.got = append(r.got, a)
	return nil
}

type learnBackend struct {
	backend
	recLearner
}

// TestFQDNClientEpoch: the epoch stays while the agent keeps serving the
// client's connection, and changes once the agent goes away (a restart
// closes every connection), before any request notices.
func TestFQDNClientEpoch(t *testing.T) {
	run := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, StatusSocket(run), &learnBackend{}) }()
	defer func() { cancel(); <-done }()
	fc := NewFQDNClient(StatusSocket(run))
	ans := FQDNAnswer{Name: "a.example", IPs: []netip.Addr{netip.MustParseAddr("198.19.0.1")}, TTLSeconds: 30}
	deadline := time.Now().Add(10 * time.Second)
	for fc.Learn(context.Background(), ans) != nil { // the server starting
		if time.Now().After(deadline) {
			t.Fatal("agent api not serving")
		}
		time.Sleep(5 * time.Millisecond)
	}
	e := fc.Epoch()
	for range 5 {
		if err := fc.Learn(context.Background(), ans); err != nil {
			t.Fatal(err)
		}
	}
	if fc.Epoch() != e {
		t.Fatalf("epoch changed from %d to %d over one kept connection", e, fc.Epoch())
	}
	cancel()
	<-done
	done <- nil // for the deferred wait
	for fc.Epoch() == e {
		if time.Now().After(deadline) {
			t.Fatal("epoch unchanged after the agent closed the connection")
		}
		time.Sleep(2 * time.Millisecond)
	}
}
