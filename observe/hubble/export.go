package hubble

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"google.golang.org/protobuf/encoding/protojson"
	"gopkg.in/natefinch/lumberjack.v2"

	"github.com/l7gate/l7gate/observe"
	observerpb "github.com/l7gate/l7gate/proto/hubble/observerpb"
)

// ExporterConfig configures the JSON-lines flow export.
type ExporterConfig struct {
	// Path of the file; rotated files get a timestamp (lumberjack).
	Path string
	// MaxSizeMB rotates the file at this size (default 10).
	MaxSizeMB int
	// MaxBackups rotated files are kept (default 5).
	MaxBackups int
	Compress   bool
	// Whitelist and Blacklist select the flows exported (Hubble's filter
	// semantics; empty: all).
	Filter *Filter
	// Queue bounds the flows waiting to be written (default 4096); beyond
	// it flows are dropped and counted.
	Queue   int
	Node    string
	Options Options
}

// Exporter writes flows as Hubble's exporter does: one GetFlowsResponse
// per line in protojson, so `hubble observe --input-file FILE` and log
// shippers read it. It is a pipeline sink; a slow disk drops flows
// (counted), never the pipeline.
type Exporter struct {
	cfg     ExporterConfig
	q       chan observe.Event
	w       io.WriteCloser
	written atomic.Uint64
	lost    atomic.Uint64
}

// NewExporter opens the export file (created 0600 when missing).
func NewExporter(cfg ExporterConfig) (*Exporter, error) {
	if cfg.Path == "" {
		return nil, errors.New("flow export: no path")
	}
	if cfg.MaxSizeMB <= 0 {
		cfg.MaxSizeMB = 10
	}
	if cfg.MaxBackups <= 0 {
		cfg.MaxBackups = 5
	}
	if cfg.Queue <= 0 {
		cfg.Queue = 4096
	}
	lj := &lumberjack.Logger{Filename: cfg.Path, MaxSize: cfg.MaxSizeMB, MaxBackups: cfg.MaxBackups, Compress: cfg.Compress}
	return &Exporter{cfg: cfg, q: make(chan observe.Event, cfg.Queue), w: lj}, nil
}

// Consume queues an event for export, or drops and counts it.
func (e *Exporter) Consume(ev observe.Event) {
	select {
	case e.q <- ev:
	default:
		e.lost.Add(1)
	}
}

// Stats returns the flows written and the flows dropped.
func (e *Exporter) Stats() (written, lost uint64) { return e.written.Load(), e.lost.Load() }

// Run writes queued flows until ctx ends, then closes the file.
func (e *Exporter) Run(ctx context.Context) error {
	defer e.w.Close()
	bw := bufio.NewWriterSize(e.w, 64<<10)
	opts := protojson.MarshalOptions{UseProtoNames: true}
	var line []byte
	for {
		var ev observe.Event
		select {
		case <-ctx.Done():
			return bw.Flush()
		case ev = <-e.q:
		}
		f := Convert(ev, e.cfg.Options)
		if !e.cfg.Filter.Match(f) {
			continue
		}
		resp := &observerpb.GetFlowsResponse{ResponseTypes: &observerpb.GetFlowsResponse_Flow{Flow: f}, NodeName: e.cfg.Node, Time: f.GetTime()}
		var err error
		if line, err = opts.MarshalAppend(line[:0], resp); err != nil {
			e.lost.Add(1)
			continue
		}
		line = append(line, '\n')
		if _, err := bw.Write(line); err != nil {
			e.lost.Add(1)
			return fmt.Errorf("flow export %s: %w", e.cfg.Path, err)
		}
		e.written.Add(1)
		if len(e.q) == 0 {
			if err := bw.Flush(); err != nil {
				return fmt.Errorf("flow export %s: %w", e.cfg.Path, err)
			}
		}
	}
}
