package flow

import (
	"encoding/json"
	"net/netip"
	"reflect"
	"testing"
	"time"
)

// kafkaLine is a record as the Go proxy writes one per Kafka request.
func kafkaLine() []byte {
	return AppendJSON(nil, &Record{Time: time.Date(2026, 12, 7, 15, 0, 0, 123456789, time.UTC), Protocol: "kafka",
		Source: netip.MustParseAddrPort("198.18.1.11:40000"), Destination: netip.MustParseAddrPort("198.18.1.10:9092"), SrcIdentity: 257, DstIdentity: 256,
		Verdict: VerdictAllowed, Reason: "bench/l7 spec.ingress[0] kafka[0]", APIKey: "produce", APIVersion: 9,
		ClientID: "l7gate-bench", CorrelationID: 12345, Topics: []string{"bench"}})
}

// TestDecodeRecordFast: the proxy's Kafka, DNS and datapath records take
// the fast path and decode as encoding/json decodes them; records with
// nested values, escapes or unknown keys do not take it, and still decode.
func TestDecodeRecordFast(t *testing.T) {
	fast := map[int]bool{1: true, 2: true, 6: true} // of sampleRecords
	lines := [][]byte{kafkaLine()}
	want := []bool{true}
	for i, r := range sampleRecords() {
		lines = append(lines, AppendJSON(nil, r))
		want = append(want, fast[i])
	}
	lines = append(lines, []byte(`{"protocol":"kafka","unknown":1}`), []byte(`{"Protocol":"kafka"}`), []byte(`{"protocol":null}`),
		[]byte(`{"latencyMs":1.5e-3,"topics":[],"status":-0}`), []byte(`{"srcIdentity":4294967296}`))
	want = append(want, false, false, false, true, false)
	for i, line := range lines {
		line = line[:len(line)-len(trailingNewline(line))]
		var got, ref Record
		ok := decodeRecordFast(line, &got)
		if ok != want[i] {
			t.Errorf("line %d %s: fast path %v, want %v", i, line, ok, want[i])
		}
		refErr := json.Unmarshal(line, &ref)
		if ok && (refErr != nil || !reflect.DeepEqual(got, ref)) {
			t.Errorf("line %d %s: fast %+v, encoding/json %+v (%v)", i, line, got, ref, refErr)
		}
		var viaDecode Record
		if err := decodeRecord(line, &viaDecode); (err == nil) != (refErr == nil) || (err == nil && !reflect.DeepEqual(viaDecode, ref)) {
			t.Errorf("line %d %s: decodeRecord %+v (%v), encoding/json %+v (%v)", i, line, viaDecode, err, ref, refErr)
		}
	}
}

func trailingNewline(b []byte) []byte {
	if len(b) > 0 && b[len(b)-1] == '\n' {
		return b[len(b)-1:]
	}
	return nil
}

// FuzzDecodeRecordFast: whatever the fast path accepts, encoding/json
// accepts and decodes to the same record.
func FuzzDecodeRecordFast(f *testing.F) {
	f.Add(kafkaLine())
	for _, r := range sampleRecords() {
		f.Add(AppendJSON(nil, r))
	}
	f.Add([]byte(`{"latencyMs":-0.5E+2,"topics":["a",""],"fromProxy":false,"isReply":true,"correlationID":-2147483648}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var got, ref Record
		if !decodeRecordFast(data, &got) {
			return
		}
		if err := json.Unmarshal(data, &ref); err != nil {
			t.Fatalf("fast path accepted %q, encoding/json: %v", data, err)
		}
		if !reflect.DeepEqual(got, ref) {
			t.Fatalf("%q: fast %+v, encoding/json %+v", data, got, ref)
		}
	})
}

// BenchmarkDecodeRecord is the agent's intake decoding one Kafka record.
func BenchmarkDecodeRecord(b *testing.B) {
	line := kafkaLine()
	line = line[:len(line)-1]
	b.Run("fast", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var r Record
			if decodeRecord(line, &r) != nil {
				b.Fatal("decode")
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var r Record
			if json.Unmarshal(line, &r) != nil {
				b.Fatal("decode")
			}
		}
	})
}
