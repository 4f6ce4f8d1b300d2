package agentapi

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"time"

	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/policy"
)

// Backend is what the API serves; the agent implements it.
type Backend interface {
	Status() Status
	// Rules names the policy rule behind each datapath rule id.
	Rules() map[uint32]policy.Provenance
	// Flows returns the records after the first `after` ones, and the
	// cursor for the next call.
	Flows(after uint64) ([]flow.Record, uint64)
}

// Handler serves GET /status, /rules and /flows?after=N from b.
func Handler(b Backend) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, b.Status())
	})
	mux.HandleFunc("GET /rules", func(w http.ResponseWriter, _ *http.Request) {
		rules := map[string]policy.Provenance{}
		for id, p := range b.Rules() {
			rules[strconv.FormatUint(uint64(id), 10)] = p
		}
		writeJSON(w, rules)
	})
	mux.HandleFunc("GET /flows", func(w http.ResponseWriter, r *http.Request) {
		after, _ := strconv.ParseUint(r.URL.Query().Get("after"), 10, 64)
		flows, cursor := b.Flows(after)
		if flows == nil {
			flows = []flow.Record{}
		}
		writeJSON(w, FlowPage{Flows: flows, Cursor: cursor})
	})
	if l, ok := b.(FQDNLearner); ok {
		mux.HandleFunc("POST /fqdn", fqdnHandler(l))
	}
	debugHandlers(mux)
	return mux
}

// debugHandlers serves what the agent's memory is, on its local socket
// only: GET /debug/memory (Memory, after a collection that returns the
// freed pages to the OS, so the process's RSS read right after holds
// little but live memory) and the runtime's profiles under
// /debug/pprof/ (heap, goroutine, allocs, ...; debug=1 for text, gc=1
// collects first).
func debugHandlers(mux *http.ServeMux) {
	mux.HandleFunc("GET /debug/memory", func(w http.ResponseWriter, _ *http.Request) {
		debug.FreeOSMemory()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		writeJSON(w, Memory{HeapAlloc: ms.HeapAlloc, HeapInuse: ms.HeapInuse, HeapSys: ms.HeapSys,
			HeapReleased: ms.HeapReleased, Sys: ms.Sys, NumGC: ms.NumGC})
	})
	mux.HandleFunc("GET /debug/pprof/{profile}", func(w http.ResponseWriter, r *http.Request) {
		prof := pprof.Lookup(r.PathValue("profile"))
		if prof == nil {
			http.Error(w, "unknown profile", http.StatusNotFound)
			return
		}
		debugLevel, _ := strconv.Atoi(r.URL.Query().Get("debug"))
		if r.URL.Query().Get("gc") == "1" {
			runtime.GC()
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		if debugLevel > 0 {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		}
		prof.WriteTo(w, debugLevel)
	})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// Serve serves the API on the Unix socket path (mode 0660; a stale socket
// file is replaced) until ctx ends.
func Serve(ctx context.Context, path string, b Backend) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	// Closing leaves the file: a successor agent may own the path by then
	// (a rolling update); the next start replaces a stale one.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return err
	}
	// IdleTimeout: a client that keeps a connection idle does not hold a
	// goroutine and a file descriptor of the agent for ever.
	srv := &http.Server{Handler: Handler(b), ReadHeaderTimeout: 5 * time.Second, IdleTimeout: time.Minute}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
