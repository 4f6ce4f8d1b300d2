package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/redirect"
)

// Status is what `l7gate status` shows.
type Status struct {
	Node      string    `json:"node"`
	StartedAt time.Time `json:"startedAt"`
	// Ready: a revision has been implemented.
	Ready bool `json:"ready"`
	// Revision counts source changes; ImplementedRevision is the last one
	// pushed to every proxy, ACKed and synced to the datapath.
	Revision            uint64                `json:"revision"`
	ImplementedRevision uint64                `json:"implementedRevision"`
	SourceDigest        string                `json:"sourceDigest,omitempty"`
	LastError           string                `json:"lastError,omitempty"`
	Errors              []string              `json:"errors"`
	Warnings            []string              `json:"warnings,omitempty"`
	Policies            []PolicyStatus        `json:"policies"`
	Endpoints           []EndpointStatus      `json:"endpoints"`
	Identities          []policy.IdentityInfo `json:"identities"`
	ProxyPorts          []ProxyPortStatus     `json:"proxyPorts"`
	Proxies             []ProxyConsumer       `json:"proxies"`

	snapshot *policy.Snapshot
	local    []LocalEndpoint
	ports    map[redirect.PortKey]uint16
	rules    map[uint32]policy.Provenance
	policies []PolicyStatus
}

// PolicyStatus is one policy object and the revision that implemented it.
type PolicyStatus struct {
	Name                string `json:"name"`
	Kind                string `json:"kind"`
	File                string `json:"file,omitempty"`
	ImplementedRevision uint64 `json:"implementedRevision"`
}

// EndpointStatus is one endpoint of the cluster and whether it is local.
type EndpointStatus struct {
	policy.Endpoint
	Local   bool   `json:"local"`
	Ifindex int    `json:"ifindex,omitempty"`
	Device  string `json:"device,omitempty"`
}

// ProxyPortStatus is one proxy port allocation.
type ProxyPortStatus struct {
	Direction string `json:"direction"`
	Parser    string `json:"parser"`
	Port      uint16 `json:"port"`
}

// ProxyConsumer is one xDS consumer and its ACK state per resource type.
type ProxyConsumer struct {
	ID      string          `json:"id"`
	Streams int             `json:"streams"`
	Acked   map[string]bool `json:"acked"`
}

// Snapshot returns the status as the API serves it.
func (a *Agent) Snapshot() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := a.status
	st.Errors = slices.Clone(st.Errors)
	if st.Errors == nil {
		st.Errors = []string{}
	}
	st.Policies = slices.Clone(st.policies)
	if st.Policies == nil {
		st.Policies = []PolicyStatus{}
	}
	st.Endpoints = []EndpointStatus{}
	st.Identities = []policy.IdentityInfo{}
	st.ProxyPorts = []ProxyPortStatus{}
	st.Proxies = []ProxyConsumer{}
	if st.snapshot != nil {
		local := map[string]LocalEndpoint{}
		for _, l := range st.local {
			local[l.Namespace+"/"+l.Name] = l
		}
		for _, ep := range st.snapshot.Endpoints {
			es := EndpointStatus{Endpoint: ep}
			if l, ok := local[ep.Namespace+"/"+ep.Name]; ok {
				es.Local, es.Ifindex, es.Device = true, l.Ifindex, l.Device
			}
			st.Endpoints = append(st.Endpoints, es)
		}
		st.Identities = st.snapshot.Identities
	}
	for k, p := range st.ports {
		st.ProxyPorts = append(st.ProxyPorts, ProxyPortStatus{Direction: k.Direction, Parser: k.Parser, Port: p})
	}
	slices.SortFunc(st.ProxyPorts, func(x, y ProxyPortStatus) int { return int(x.Port) - int(y.Port) })
	if a.xds != nil {
		for _, c := range a.xds.Consumers() {
			st.Proxies = append(st.Proxies, ProxyConsumer{ID: c.ID, Streams: c.Streams, Acked: c.Types})
		}
	}
	return st
}

// RuleOf names the policy rule behind a datapath rule id.
func (a *Agent) RuleOf(id uint32) (policy.Provenance, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p, ok := a.status.rules[id]
	return p, ok
}

func (a *Agent) serveStatus(ctx context.Context) error {
	path := StatusSocket(a.cfg.RunDir)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	if err := os.Chmod(path, 0o660); err != nil {
		ln.Close()
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(a.Snapshot())
	})
	mux.HandleFunc("GET /rules", func(w http.ResponseWriter, _ *http.Request) {
		a.mu.Lock()
		rules := map[string]policy.Provenance{}
		for id, p := range a.status.rules {
			rules[fmt.Sprint(id)] = p
		}
		a.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(rules)
	})
	mux.HandleFunc("GET /flows", func(w http.ResponseWriter, r *http.Request) {
		after, _ := strconv.ParseUint(r.URL.Query().Get("after"), 10, 64)
		flows, cursor := a.flows.since(after)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(FlowPage{Flows: flows, Cursor: cursor})
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// FlowPage is a page of recent flows; Cursor is passed as ?after= to get
// the next one.
type FlowPage struct {
	Flows  []flow.Record `json:"flows"`
	Cursor uint64        `json:"cursor"`
}

// FetchFlows reads the flows recorded after cursor.
func FetchFlows(ctx context.Context, runDir string, after uint64) (*FlowPage, error) {
	var page FlowPage
	if err := getJSON(ctx, runDir, "/flows?after="+strconv.FormatUint(after, 10), &page); err != nil {
		return nil, err
	}
	return &page, nil
}

func getJSON(ctx context.Context, runDir, path string, v any) error {
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
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
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("agent %s: %w", path, err)
	}
	return nil
}

// FetchStatus reads an agent's status from its run dir.
func FetchStatus(ctx context.Context, runDir string) (*Status, error) {
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", StatusSocket(runDir))
	}}, Timeout: 5 * time.Second}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent/status", nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("agent status at %s: %w (is the agent running?)", StatusSocket(runDir), err)
	}
	defer resp.Body.Close()
	var st Status
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return nil, fmt.Errorf("agent status: %w", err)
	}
	return &st, nil
}
