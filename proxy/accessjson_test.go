package proxy

import (
	"bytes"
	"encoding/json"
	"io"
	"net/netip"
	"testing"
	"time"

	httpparser "github.com/l7gate/l7gate/parsers/http"
	"github.com/l7gate/l7gate/policy"
)

func sampleRecords() []*AccessRecord {
	return []*AccessRecord{
		{Time: time.Date(2026, 11, 22, 4, 0, 0, 123456789, time.UTC), Protocol: "http", Source: netip.MustParseAddrPort("198.18.1.11:40000"),
			Destination: netip.MustParseAddrPort("198.18.1.10:80"), SrcIdentity: 257, DstIdentity: 256, Verdict: "allowed",
			DecidedBy: []policy.Provenance{{Policy: "default/rule1", PolicyKind: policy.KindCNP, Path: "spec.ingress[0]", L7: "http[0]", Kind: policy.KindAllow}},
			Method:    "GET", Path: "/api/v1/items?q=<a&b>\"\\\n\x01\u2028\xff", Host: "deathstar", Status: 200, LatencyMS: 0.25,
			RawPath: "/api/./v1//items?q=<a&b>", HeaderMismatches: []httpparser.HeaderMismatch{{Action: "LOG", Name: "X-A", Value: "v\"1"}, {Action: "DELETE", Name: "X-B"}}},
		{Time: time.Unix(0, 0).UTC(), Protocol: "kafka", Direction: policy.Egress, Verdict: "denied", Reason: "default-deny x",
			APIKey: "produce", APIVersion: 9, ClientID: "c", CorrelationID: 7, Topics: []string{"a", "b"}, ErrorCode: 29, LatencyMS: 12},
		{},
	}
}

// TestAccessLogJSON: the hand-written encoder writes what encoding/json
// would.
func TestAccessLogJSON(t *testing.T) {
	for i, r := range sampleRecords() {
		want, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		got := appendJSON(nil, r)
		if string(got) != string(want)+"\n" {
			t.Errorf("record %d:\n got %s\nwant %s", i, got, want)
		}
	}
	var buf bytes.Buffer
	sink := JSONLines(&buf)
	sink(sampleRecords()[0])
	sink(sampleRecords()[1])
	dec := json.NewDecoder(&buf)
	for range 2 {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			t.Fatal(err)
		}
	}
}

func BenchmarkAccessLogJSON(b *testing.B) {
	sink := JSONLines(io.Discard)
	rec := sampleRecords()[0]
	b.ReportAllocs()
	for b.Loop() {
		sink(rec)
	}
}
