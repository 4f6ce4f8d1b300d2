package agentapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/l7gate/l7gate/policy"
)

// FetchStatus reads an agent's status from its run dir.
func FetchStatus(ctx context.Context, runDir string) (*Status, error) {
	var st Status
	if err := getJSON(ctx, runDir, "/status", &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// Memory is the agent's heap right after a collection that returned the
// freed pages to the OS (GET /debug/memory): the live heap, and what the
// heap holds from the OS. Bytes, from runtime.MemStats.
type Memory struct {
	HeapAlloc    uint64 `json:"heapAlloc"`
	HeapInuse    uint64 `json:"heapInuse"`
	HeapSys      uint64 `json:"heapSys"`
	HeapReleased uint64 `json:"heapReleased"`
	Sys          uint64 `json:"sys"`
	NumGC        uint32 `json:"numGC"`
}

// FetchMemory collects the agent's garbage, returns the freed pages to
// the OS, and reads its heap (a steady measure of what the agent holds:
// its RSS right after is too).
func FetchMemory(ctx context.Context, runDir string) (*Memory, error) {
	var m Memory
	if err := getJSON(ctx, runDir, "/debug/memory", &m); err != nil {
		return nil, err
	}
	return &m, nil
}

// FetchFlows reads the flow records recorded after cursor.
func FetchFlows(ctx context.Context, runDir string, after uint64) (*FlowPage, error) {
	var page FlowPage
	if err := getJSON(ctx, runDir, "/flows?after="+strconv.FormatUint(after, 10), &page); err != nil {
		return nil, err
	}
	return &page, nil
}

// FetchRules reads the policy rule behind each datapath rule id.
func FetchRules(ctx context.Context, runDir string) (map[uint32]policy.Provenance, error) {
	var raw map[string]policy.Provenance
	if err := getJSON(ctx, runDir, "/rules", &raw); err != nil {
		return nil, err
	}
	out := make(map[uint32]policy.Provenance, len(raw))
	for k, p := range raw {
		id, err := strconv.ParseUint(k, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("agent /rules: rule id %q: %w", k, err)
		}
		out[uint32(id)] = p
	}
	return out, nil
}

func getJSON(ctx context.Context, runDir, path string, v any) error {
	// One request per connection: a Transport per call would otherwise
	// leave its idle keep-alive connection open on both ends.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", StatusSocket(runDir))
	}}, Timeout: 5 * time.Second}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent"+path, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("agent at %s: %w (is the agent running?)", StatusSocket(runDir), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("agent %s: %s", path, resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("agent %s: %w", path, err)
	}
	return nil
}
