// Package servicemap serves the live service map: a page that draws the
// node's workloads as vertices and their flows as edges coloured by
// verdict (allowed green, denied red, audit amber, redirected to a proxy
// blue), each edge naming the policy that decided, filterable by namespace
// and verdict; clicking an edge lists its recent flows with their L7
// details.
//
// The page is fed by server-sent events from the agent's flow pipeline:
// each stream subscribes to the pipeline like an Observer API follower
// (observe.Pipeline.Subscribe, a bounded channel the pipeline never waits
// for), folds the ring's content into a map (Aggregator) sent as one
// "graph" event, then sends one "flow" event per new flow. A stream that
// falls behind (its channel overflowed) is ended with a "lost" event; the
// browser reconnects and starts from a fresh snapshot. Streams are bounded
// in number and each write has a deadline, so a slow or stuck page costs
// one goroutine and a bounded buffer, never the pipeline's time.
//
// Workloads are the pods of a namespace that share their stable labels
// (policy.StableLabelKey: never pod-template-hash and the other
// per-replica labels), the same rule as `l7gate policy suggest`.
//
// The page's script and Cytoscape (pinned, see assets/cytoscape/VERSION)
// are embedded; nothing is loaded from elsewhere, and the page's
// Content-Security-Policy allows scripts from the agent only. Every label,
// policy name and path is rendered as text (textContent, Cytoscape's canvas
// labels), never as markup.
package servicemap

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/l7gate/l7gate/observe"
)

//go:embed assets
var assets embed.FS

// Source is where the flows come from: the agent's *observe.Pipeline.
type Source interface {
	Subscribe(buffer int) (*observe.Subscription, []observe.Event)
	Unsubscribe(*observe.Subscription)
}

// Defaults.
const (
	DefaultMaxStreams   = 16
	DefaultBuffer       = 1024
	DefaultWriteTimeout = 10 * time.Second
	DefaultHeartbeat    = 15 * time.Second
)

// Config configures a Server; zero values take the defaults.
type Config struct {
	Source Source
	// Node is shown in the page's title.
	Node string
	// MaxStreams bounds the pages connected at once (more get 503).
	MaxStreams int
	// Buffer is each stream's subscription channel size; a stream that
	// lets it overflow is ended.
	Buffer int
	// WriteTimeout bounds each write to a page.
	WriteTimeout time.Duration
	// Heartbeat is the interval of keep-alive comments on an idle stream.
	Heartbeat time.Duration
	Limits    Limits
	Logger    *slog.Logger
}

// Server serves the page, its assets, the snapshot (/graph.json) and the
// event stream (/events).
type Server struct {
	cfg     Config
	streams atomic.Int32
	// Dropped counts streams ended because they fell behind.
	dropped atomic.Uint64
}

// New returns a server.
func New(cfg Config) *Server {
	if cfg.MaxStreams <= 0 {
		cfg.MaxStreams = DefaultMaxStreams
	}
	if cfg.Buffer <= 0 {
		cfg.Buffer = DefaultBuffer
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = DefaultHeartbeat
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Server{cfg: cfg}
}

// DroppedStreams counts the streams ended because they fell behind.
func (s *Server) DroppedStreams() uint64 { return s.dropped.Load() }

// contentSecurityPolicy: scripts from the agent only (the embedded ones),
// connections back to it only, nothing else.
const contentSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// Handler returns the HTTP handler.
func (s *Server) Handler() http.Handler {
	static, _ := fs.Sub(assets, "assets")
	files := http.FileServerFS(static)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		b, err := assets.ReadFile("assets/index.html")
		if err != nil {
			http.Error(w, "page missing", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Write(b)
	})
	mux.Handle("GET /assets/", http.StripPrefix("/assets/", files))
	mux.HandleFunc("GET /graph.json", s.serveGraph)
	mux.HandleFunc("GET /events", s.serveEvents)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", contentSecurityPolicy)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		mux.ServeHTTP(w, r)
	})
}

// snapshot subscribes and folds the ring's content into a map.
func (s *Server) snapshot() (*observe.Subscription, *Aggregator) {
	sub, kept := s.cfg.Source.Subscribe(s.cfg.Buffer)
	agg := NewAggregator(s.cfg.Limits)
	for _, ev := range kept {
		agg.Add(ev.Seq, ev.Record)
	}
	return sub, agg
}

func (s *Server) serveGraph(w http.ResponseWriter, _ *http.Request) {
	sub, agg := s.snapshot()
	s.cfg.Source.Unsubscribe(sub)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(agg.Graph())
}

func (s *Server) serveEvents(w http.ResponseWriter, r *http.Request) {
	if n := s.streams.Add(1); n > int32(s.cfg.MaxStreams) {
		s.streams.Add(-1)
		http.Error(w, "too many service-map streams", http.StatusServiceUnavailable)
		return
	}
	defer s.streams.Add(-1)
	rc := http.NewResponseController(w)
	sub, agg := s.snapshot()
	defer s.cfg.Source.Unsubscribe(sub)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)

	write := func(event string, v any) error {
		b, err := json.Marshal(v)
		if err != nil {
			return err
		}
		rc.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		_, err = fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, b)
		return err
	}
	flush := func() error {
		rc.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		return rc.Flush()
	}
	rc.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
	if _, err := fmt.Fprint(w, "retry: 2000\n\n"); err != nil {
		return
	}
	if err := write("graph", agg.Graph()); err != nil || flush() != nil {
		return
	}
	beat := time.NewTicker(s.cfg.Heartbeat)
	defer beat.Stop()
	ctx := r.Context()
	for {
		select {
		case <-ctx.Done():
			return
		case <-beat.C:
			rc.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
			if _, err := fmt.Fprint(w, ": ping\n\n"); err != nil || flush() != nil {
				return
			}
		case ev := <-sub.C():
			// Take what is queued, then flush once.
			for {
				if lost := sub.TakeLost(); lost > 0 {
					s.dropped.Add(1)
					s.cfg.Logger.Debug("service map stream fell behind; ended", "lost", lost, "remote", r.RemoteAddr)
					write("lost", map[string]uint64{"lost": lost})
					flush()
					return
				}
				if u, ok := agg.Add(ev.Seq, ev.Record); ok {
					if err := write("flow", u); err != nil {
						return
					}
				}
				select {
				case ev = <-sub.C():
					continue
				default:
				}
				break
			}
			if flush() != nil {
				return
			}
		}
	}
}

// Serve serves h on ln until ctx ends.
func Serve(ctx context.Context, ln net.Listener, h http.Handler) error {
	// Streams end with ctx (BaseContext), so Shutdown does not wait for them.
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		srv.Close()
	})
	defer stop()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("service map: %w", err)
	}
	return nil
}
