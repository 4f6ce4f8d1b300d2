package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"
)

type stats struct {
	connections, rejectedConns atomic.Int64
	rejectedPerSource          atomic.Int64
	rejectedNotSteered         atomic.Int64
	upstreamConns              atomic.Int64
	panics                     atomic.Int64
	httpAllowed, httpDenied    atomic.Int64
	kafkaAllowed, kafkaDenied  atomic.Int64
	acks, nacks                atomic.Int64
}

// ConfigDumpType is the @type of the proxy's entry in /config_dump.
const ConfigDumpType = "type.googleapis.com/l7gate.v1.ProxyConfigDump"

// AdminHandler serves /ready, /config_dump, /stats/prometheus and POST
// /drain (stop accepting and drain, bounded by Options.DrainTimeout; the
// proxy command exits when the drain ends).
func (p *Proxy) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /drain", func(w http.ResponseWriter, _ *http.Request) {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), p.opts.DrainTimeout)
			defer cancel()
			p.Drain(ctx)
		}()
		w.WriteHeader(http.StatusAccepted)
		fmt.Fprintf(w, "DRAINING (up to %s)\n", p.opts.DrainTimeout)
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
	mux.HandleFunc("GET /stats/prometheus", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		s := &p.stats
		fmt.Fprintf(w, "# HELP l7gate_proxy_connections_total Client connections accepted.\n# TYPE l7gate_proxy_connections_total counter\nl7gate_proxy_connections_total %d\n", s.connections.Load())
		fmt.Fprintf(w, "# HELP l7gate_proxy_connections_rejected_total Client connections closed at accept: limit (all connections), per_source (one source identity), not_steered (not redirected by the datapath, e.g. a direct connection to a proxy port).\n# TYPE l7gate_proxy_connections_rejected_total counter\n")
		fmt.Fprintf(w, "l7gate_proxy_connections_rejected_total{reason=\"limit\"} %d\n", s.rejectedConns.Load())
		fmt.Fprintf(w, "l7gate_proxy_connections_rejected_total{reason=\"per_source\"} %d\n", s.rejectedPerSource.Load())
		fmt.Fprintf(w, "l7gate_proxy_connections_rejected_total{reason=\"not_steered\"} %d\n", s.rejectedNotSteered.Load())
		fmt.Fprintf(w, "# HELP l7gate_proxy_upstream_connections_total Upstream connections opened.\n# TYPE l7gate_proxy_upstream_connections_total counter\nl7gate_proxy_upstream_connections_total %d\n", s.upstreamConns.Load())
		fmt.Fprintf(w, "# HELP l7gate_proxy_connection_panics_total Client connections closed because handling them panicked (the proxy kept running).\n# TYPE l7gate_proxy_connection_panics_total counter\nl7gate_proxy_connection_panics_total %d\n", s.panics.Load())
		fmt.Fprintf(w, "# HELP l7gate_proxy_active_connections Client connections open now.\n# TYPE l7gate_proxy_active_connections gauge\nl7gate_proxy_active_connections %d\n", p.conns.Load())
		fmt.Fprintf(w, "# HELP l7gate_proxy_requests_total L7 requests by protocol and verdict.\n# TYPE l7gate_proxy_requests_total counter\n")
		fmt.Fprintf(w, "l7gate_proxy_requests_total{protocol=\"http\",verdict=\"allowed\"} %d\n", s.httpAllowed.Load())
		fmt.Fprintf(w, "l7gate_proxy_requests_total{protocol=\"http\",verdict=\"denied\"} %d\n", s.httpDenied.Load())
		fmt.Fprintf(w, "l7gate_proxy_requests_total{protocol=\"kafka\",verdict=\"allowed\"} %d\n", s.kafkaAllowed.Load())
		fmt.Fprintf(w, "l7gate_proxy_requests_total{protocol=\"kafka\",verdict=\"denied\"} %d\n", s.kafkaDenied.Load())
		fmt.Fprintf(w, "# HELP l7gate_proxy_config_updates_total Configs applied (ack) or rejected (nack).\n# TYPE l7gate_proxy_config_updates_total counter\n")
		fmt.Fprintf(w, "l7gate_proxy_config_updates_total{result=\"ack\"} %d\n", s.acks.Load())
		fmt.Fprintf(w, "l7gate_proxy_config_updates_total{result=\"nack\"} %d\n", s.nacks.Load())
		p.writeKafkaStats(w)
	})
	return mux
}

// ServeAdmin serves the admin API on a Unix socket until ctx ends.
func (p *Proxy) ServeAdmin(ctx context.Context, path string) error {
	// Bound at a temporary name and renamed over path: during a
	// hand-over the old process answers there until the new one does.
	ln, err := listenUnixReplacing(path)
	if err != nil {
		return fmt.Errorf("admin socket: %w", err)
	}
	srv := &http.Server{Handler: p.AdminHandler(), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
