package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

type stats struct {
	connections, rejectedConns atomic.Int64
	rejectedPerSource          atomic.Int64
	rejectedNotSteered         atomic.Int64
	upstreamConns              atomic.Int64
	panics                     atomic.Int64
	httpAllowed, httpDenied    atomic.Int64
	kafkaAllowed, kafkaDenied  atomic.Int64
	httpAudited, kafkaAudited  atomic.Int64
	acks, nacks                atomic.Int64
}

// ConfigDumpType is the @type of the proxy's entry in /config_dump.
const ConfigDumpType = "type.googleapis.com/l7gate.v1.ProxyConfigDump"

// AdminHandler serves /ready, /version (Options.Version, as `l7gate
// version` prints it), /config_dump, /stats/prometheus (the proxy's
// metrics and extra collectors, see Registry) and POST /drain (stop
// accepting and drain, bounded by Options.DrainTimeout; the proxy command
// exits when the drain ends).
func (p *Proxy) AdminHandler(extra ...prometheus.Collector) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /version", func(w http.ResponseWriter, _ *http.Request) {
		if p.opts.Version == "" {
			http.Error(w, "no version stamp", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, p.opts.Version)
	})
	mux.HandleFunc("POST /drain", func(w http.ResponseWriter, _ *http.Request) {
		// The whole answer is on the socket before the drain starts: the
		// proxy command exits as soon as a drain with nothing open ends,
		// and an answer still buffered then would reach the caller as EOF.
		body := fmt.Sprintf("DRAINING (up to %s)\n", p.opts.DrainTimeout)
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Header().Set("Connection", "close")
		w.WriteHeader(http.StatusAccepted)
		io.WriteString(w, body)
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), p.opts.DrainTimeout)
			defer cancel()
			p.Drain(ctx)
		}()
	})
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
		if p.Draining() {
			http.Error(w, "DRAINING", http.StatusServiceUnavailable)
			return
		}
		if !p.Ready() {
			http.Error(w, "NOT READY: no config applied yet", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "LIVE")
	})
	mux.HandleFunc("GET /config_dump", func(w http.ResponseWriter, _ *http.Request) {
		// Envoy's ConfigDump shape: {"configs": [{"@type": ..., ...}]}
		type dump struct {
			Type string `json:"@type"`
			*Config
		}
		out := struct {
			Configs []dump `json:"configs"`
		}{Configs: []dump{}}
		if cfg := p.Config(); cfg != nil {
			out.Configs = append(out.Configs, dump{Type: ConfigDumpType, Config: cfg})
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		enc.Encode(out)
	})
	// The runtime's profiles (heap, goroutine, allocs, ...: what the
	// proxy's memory is; debug=1 for text), on the local socket only.
	mux.HandleFunc("GET /debug/pprof/{profile}", func(w http.ResponseWriter, r *http.Request) {
		prof := pprof.Lookup(r.PathValue("profile"))
		if prof == nil {
			http.Error(w, "unknown profile", http.StatusNotFound)
			return
		}
		debug, _ := strconv.Atoi(r.URL.Query().Get("debug"))
		if r.URL.Query().Get("gc") == "1" {
			runtime.GC()
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		if debug > 0 {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		}
		prof.WriteTo(w, debug)
	})
	// An execution trace of the next ?seconds= (default 3, at most 60):
	// scheduling, GC and system calls per goroutine, for a latency tail
	// (go tool trace). 409 while another trace runs.
	mux.HandleFunc("GET /debug/pprof/trace", func(w http.ResponseWriter, r *http.Request) {
		sec, err := strconv.Atoi(r.URL.Query().Get("seconds"))
		if err != nil || sec <= 0 {
			sec = 3
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		if err := trace.Start(w); err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		select {
		case <-time.After(time.Duration(min(sec, 60)) * time.Second):
		case <-r.Context().Done():
		}
		trace.Stop()
	})
	// A CPU profile of the next ?seconds= (default 10, at most 60).
	mux.HandleFunc("GET /debug/pprof/profile", func(w http.ResponseWriter, r *http.Request) {
		sec, err := strconv.Atoi(r.URL.Query().Get("seconds"))
		if err != nil || sec <= 0 {
			sec = 10
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		if err := pprof.StartCPUProfile(w); err != nil {
			http.Error(w, err.Error(), http.StatusConflict)
			return
		}
		select {
		case <-time.After(time.Duration(min(sec, 60)) * time.Second):
		case <-r.Context().Done():
		}
		pprof.StopCPUProfile()
	})
	reg := p.Registry(extra...)
	mux.Handle("GET /stats/prometheus", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	return mux
}

// ServeAdmin serves the admin API on a Unix socket until ctx ends.
func (p *Proxy) ServeAdmin(ctx context.Context, path string, extra ...prometheus.Collector) error {
	// Bound at a temporary name and renamed over path: during a
	// hand-over the old process answers there until the new one does.
	ln, err := listenUnixReplacing(path)
	if err != nil {
		return fmt.Errorf("admin socket: %w", err)
	}
	srv := &http.Server{Handler: p.AdminHandler(extra...), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		// Answer the requests in flight, briefly (the POST /drain that
		// ended the proxy wrote its whole answer before the drain began).
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if srv.Shutdown(sctx) != nil {
			srv.Close()
		}
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
