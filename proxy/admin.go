package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
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
	acks, nacks                atomic.Int64
}

// ConfigDumpType is the @type of the proxy's entry in /config_dump.
const ConfigDumpType = "type.googleapis.com/l7gate.v1.ProxyConfigDump"

// AdminHandler serves /ready, /config_dump and /stats/prometheus (the
// proxy's metrics and extra collectors, see Registry).
func (p *Proxy) AdminHandler(extra ...prometheus.Collector) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /ready", func(w http.ResponseWriter, _ *http.Request) {
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
	reg := p.Registry(extra...)
	mux.Handle("GET /stats/prometheus", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	return mux
}

// ServeAdmin serves the admin API on a Unix socket until ctx ends.
func (p *Proxy) ServeAdmin(ctx context.Context, path string, extra ...prometheus.Collector) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("admin socket dir: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale admin socket: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return fmt.Errorf("admin socket: %w", err)
	}
	srv := &http.Server{Handler: p.AdminHandler(extra...), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
