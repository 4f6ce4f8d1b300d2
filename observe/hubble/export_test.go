package hubble

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/l7gate/l7gate/observe"
	flowpb "github.com/l7gate/l7gate/proto/hubble/flowpb"
	observerpb "github.com/l7gate/l7gate/proto/hubble/observerpb"
)

func readExport(t *testing.T, path string) []*observerpb.GetFlowsResponse {
	t.Helper()
	fh, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	var out []*observerpb.GetFlowsResponse
	sc := bufio.NewScanner(fh)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var resp observerpb.GetFlowsResponse
		if err := protojson.Unmarshal(sc.Bytes(), &resp); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		out = append(out, &resp)
	}
	return out
}

// TestExporter: the export file has one GetFlowsResponse per line
// (Hubble's exporter format), only the flows the filter selects.
func TestExporter(t *testing.T) {
	path := filepath.Join(t.TempDir(), "flows.json")
	filter, err := NewFilter([]*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	e, err := NewExporter(ExporterConfig{Path: path, Filter: filter, Node: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	for i, r := range scenario() {
		e.Consume(observe.Event{Seq: uint64(i + 1), Record: r})
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if n, _ := e.Stats(); n == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("exporter did not write the dropped flows")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	got := readExport(t, path)
	if len(got) != 3 || got[0].GetNodeName() != "n1" || got[0].GetFlow().GetVerdict() != flowpb.Verdict_DROPPED ||
		got[1].GetFlow().GetL7().GetHttp().GetMethod() != "PUT" || got[2].GetFlow().GetL7().GetKafka() == nil {
		t.Errorf("export %v", got)
	}
	if _, lost := e.Stats(); lost != 0 {
		t.Errorf("lost %d", lost)
	}
}

// TestExporterRotatesAndDrops: the file rotates at its size limit keeping
// MaxBackups old files, and a full queue drops (counted) rather than
// blocking the pipeline.
func TestExporterRotatesAndDrops(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "flows.json")
	e, err := NewExporter(ExporterConfig{Path: path, MaxSizeMB: 1, MaxBackups: 2, Queue: 8})
	if err != nil {
		t.Fatal(err)
	}
	rec := scenario()[2]
	for range 20 { // no Run yet: 8 queued, 12 dropped
		e.Consume(observe.Event{Record: rec})
	}
	if _, lost := e.Stats(); lost != 12 {
		t.Errorf("lost %d, want 12", lost)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	// ~1 KiB per line: 4 MiB makes three rotations
	for i := 0; i < 4200; i++ {
		for len(e.q) == cap(e.q) {
			time.Sleep(100 * time.Microsecond)
		}
		e.Consume(observe.Event{Seq: uint64(i), Record: rec})
	}
	for {
		if n, _ := e.Stats(); n == 4208 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	var backups int
	deadline := time.Now().Add(5 * time.Second)
	for { // lumberjack removes old backups in the background
		entries, _ := os.ReadDir(dir)
		backups = 0
		for _, de := range entries {
			if strings.HasPrefix(de.Name(), "flows-") {
				backups++
			}
		}
		if backups <= 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	st, _ := os.Stat(path)
	if backups != 2 || st.Size() > 1<<20 {
		t.Errorf("after 4200 flows: %d backups (want 2), current file %d bytes", backups, st.Size())
	}
}
