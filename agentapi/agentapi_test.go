package agentapi

import (
	"context"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/source"
)

type backend struct{ recs []flow.Record }

func (b *backend) Status() Status {
	return Status{Node: "n1", Ready: true, Revision: 3, ImplementedRevision: 3,
		Endpoints: []EndpointStatus{{Endpoint: policy.Endpoint{Namespace: "default", Name: "web"}, Local: true, Ifindex: 7,
			Failures: []source.EndpointFailure{{Endpoint: "default/web", Step: "datapath policy", Directions: []string{"egress"}, Error: "boom"}}}}}
}

func (b *backend) Rules() map[uint32]policy.Provenance {
	return map[uint32]policy.Provenance{42: {Policy: "default/rule1", Kind: policy.KindAllow}}
}

func (b *backend) Flows(after uint64) ([]flow.Record, uint64) {
	if after >= uint64(len(b.recs)) {
		return nil, uint64(len(b.recs))
	}
	return b.recs[after:], uint64(len(b.recs))
}

// TestClientServer: what the server serves on the socket, the client
// reads back.
func TestClientServer(t *testing.T) {
	run := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	b := &backend{recs: []flow.Record{{Verdict: flow.VerdictDenied, Reason: "default"}, {Verdict: flow.VerdictRedirected}}}
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, StatusSocket(run), b) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	var st *Status
	var err error
	for range 100 { // until the server listens
		if st, err = FetchStatus(ctx, run); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	if st.Node != "n1" || len(st.Endpoints) != 1 || st.Endpoints[0].Failures[0].Directions[0] != "egress" {
		t.Errorf("status %+v", st)
	}
	page, err := FetchFlows(ctx, run, 1)
	if err != nil || page.Cursor != 2 || len(page.Flows) != 1 || page.Flows[0].Verdict != flow.VerdictRedirected {
		t.Errorf("flows after 1: %+v %v", page, err)
	}
	page, err = FetchFlows(ctx, run, 2)
	if err != nil || page.Flows == nil || len(page.Flows) != 0 {
		t.Errorf("flows after 2: %+v %v", page, err)
	}
	rules, err := FetchRules(ctx, run)
	if err != nil || rules[42].Policy != "default/rule1" {
		t.Errorf("rules %v %v", rules, err)
	}
	if got := filepath.Base(XDSSocket(run)); got != "xds.sock" {
		t.Errorf("xds socket %s", got)
	}
}

// TestListenTCPTwice: a rolling update's new agent binds the metrics,
// Observer API and service map ports while the old one still holds them
// (same node, host network); both listeners accept.
func TestListenTCPTwice(t *testing.T) {
	ctx := context.Background()
	old, err := ListenTCP(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	succ, err := ListenTCP(ctx, old.Addr().String())
	if err != nil {
		t.Fatalf("second listener on %s: %v", old.Addr(), err)
	}
	defer succ.Close()
	// Either socket may get a connection; each must be usable. Close the
	// old one (the old pod exits): the new one gets every connection.
	old.Close()
	done := make(chan error, 1)
	go func() {
		c, err := succ.Accept()
		if err == nil {
			c.Close()
		}
		done <- err
	}()
	c, err := net.DialTimeout("tcp", succ.Addr().String(), 2*time.Second)
	if err != nil {
		t.Fatalf("dial the successor: %v", err)
	}
	c.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("accept: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the successor never accepted")
	}
}

// TestFetchMemory: GET /debug/memory collects first (a dropped 64 MiB
// buffer is not in the live heap it reports, and the pages are returned
// to the OS), and the heap profile is served.
func TestFetchMemory(t *testing.T) {
	run := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, StatusSocket(run), &backend{}) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	for range 100 { // until the server listens
		if _, err := FetchStatus(ctx, run); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	before, err := FetchMemory(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	garbage := make([]byte, 64<<20)
	for i := range garbage {
		garbage[i] = 1
	}
	garbage = nil
	m, err := FetchMemory(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	if m.NumGC <= before.NumGC || m.HeapAlloc > before.HeapAlloc+32<<20 || m.HeapSys-m.HeapReleased > before.HeapSys-before.HeapReleased+32<<20 {
		t.Errorf("memory after dropping 64 MiB: %+v (before %+v)", m, before)
	}
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", StatusSocket(run))
	}}}
	resp, err := hc.Get("http://agent/debug/pprof/heap?gc=1&debug=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "# HeapAlloc = ") {
		t.Errorf("heap profile: %s %.200s", resp.Status, body)
	}
}
