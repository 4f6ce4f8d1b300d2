package flow

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"
)

func sampleRecords() []*Record {
	return []*Record{
		{Time: time.Date(2026, 11, 22, 4, 0, 0, 123456789, time.UTC), Protocol: "http", Source: netip.MustParseAddrPort("198.18.1.11:40000"),
			Destination: netip.MustParseAddrPort("198.18.1.10:80"), SrcIdentity: 257, DstIdentity: 256, Verdict: VerdictAllowed,
			DecidedBy: []Provenance{{Policy: "default/rule1", PolicyKind: KindCNP, Path: "spec.ingress[0]", L7: "http[0]", Kind: KindAllow}},
			Method:    "GET", Path: "/api/v1/items?q=<a&b>\"\\\n\x01\u2028\xff", Host: "deathstar", Status: 200, LatencyMS: 0.25},
		{Time: time.Unix(0, 0).UTC(), Protocol: "kafka", Direction: Egress, Verdict: VerdictDenied, Reason: "default-deny x",
			APIKey: "produce", APIVersion: 9, ClientID: "c", CorrelationID: 7, Topics: []string{"a", "b"}, ErrorCode: 29, LatencyMS: 12},
		{Time: time.Unix(1, 0).UTC(), Protocol: "tcp", Verdict: VerdictRedirected, Reason: "policy", IPProtocol: 6, ProxyPort: 15001,
			FromProxy: true, Endpoint: "default/deathstar", Observer: ObserverDatapath},
		{Time: time.Unix(2, 0).UTC(), Protocol: "dns", Direction: Egress, Verdict: VerdictAllowed, DNSQuery: "api.example.com.", DNSType: "A",
			DNSRcode: "NOERROR", DNSIPs: []netip.Addr{netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("2001:db8::1")}},
		{Time: time.Unix(2, 0).UTC(), Protocol: "http", Node: "n1", IsReply: true,
			SrcEndpoint: &Endpoint{Namespace: "default", Pod: "xwing", Labels: []string{"k8s:app=xwing", "k8s:x=<&>"},
				WorkloadKind: "Deployment", Workload: "xwing", Service: "default/xwing"},
			DstEndpoint: &Endpoint{Labels: []string{"reserved:world"}}},
		{SrcEndpoint: &Endpoint{}},
		{},
	}
}

// TestRecordJSON: the hand-written encoder writes what encoding/json
// would.
func TestRecordJSON(t *testing.T) {
	for i, r := range sampleRecords() {
		want, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		got := AppendJSON(nil, r)
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

func BenchmarkRecordJSON(b *testing.B) {
	sink := JSONLines(io.Discard)
	rec := sampleRecords()[0]
	b.ReportAllocs()
	for b.Loop() {
		sink(rec)
	}
}

// TestForwardedLinesGolden: the line the file gets and the line the
// agent's intake gets are the same bytes, AppendJSON's (the encoding
// encoding/json would make, TestRecordJSON): encoding each record once
// for both changed no byte of either.
func TestForwardedLinesGolden(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flows.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	raw := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			raw <- nil
			return
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		raw <- b
	}()
	ctx, cancel := context.WithCancel(context.Background())
	f := NewForwarder(path, 0, nil)
	done := make(chan struct{})
	go func() { f.Run(ctx); close(done) }()
	var file bytes.Buffer
	sink, flush := BufferedJSONLinesForward(&file, time.Hour, f)
	var want []byte
	for _, r := range sampleRecords() {
		want = AppendJSON(want, r)
		sink(r)
	}
	direct := sampleRecords()[0]
	want = AppendJSON(want, direct)
	f.Send(direct) // Send encodes as the sink does
	flush()
	deadline := time.Now().Add(5 * time.Second)
	for f.sentCount() < uint64(len(sampleRecords())+1) && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	ln.Close()
	got := <-raw
	if !bytes.Equal(got, want) {
		t.Errorf("intake bytes:\n%s\nwant:\n%s", got, want)
	}
	if wantFile := want[:len(want)-len(AppendJSON(nil, direct))]; !bytes.Equal(file.Bytes(), wantFile) {
		t.Errorf("file bytes:\n%s\nwant:\n%s", file.Bytes(), wantFile)
	}
}

func (f *Forwarder) sentCount() uint64 { s, _ := f.Stats(); return s }
