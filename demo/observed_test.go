package demo

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/l7gate/l7gate/agentapi"
	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/policy"
)

type flowsBackend struct{ recs []flow.Record }

func (b *flowsBackend) Status() agentapi.Status             { return agentapi.Status{} }
func (b *flowsBackend) Rules() map[uint32]policy.Provenance { return nil }
func (b *flowsBackend) Flows(after uint64) ([]flow.Record, uint64) {
	if after >= uint64(len(b.recs)) {
		return nil, uint64(len(b.recs))
	}
	return b.recs[after:], uint64(len(b.recs))
}

// TestDecidedByWaitsForTheProxy: a connection the datapath redirected is
// decided by the proxy, whose access record is written after the client
// got its answer. Until it is there, the datapath's record of the proxy's
// upstream leg (same client address: the proxy keeps the source) must not
// stand in for it — a clean-clone run reported "decided by allow
// shop/backend-http (spec.ingress[0]) [datapath]" for a check that expected
// the L7 rule spec.ingress[0].http[0].
func TestDecidedByWaitsForTheProxy(t *testing.T) {
	src := netip.MustParseAddr("198.18.1.11")
	dst := netip.MustParseAddrPort("198.18.1.10:80")
	l4 := policy.Provenance{Policy: "shop/backend-http", Kind: policy.KindAllow, Direction: flow.Ingress, Path: "spec.ingress[0]", PolicyKind: "CiliumNetworkPolicy"}
	l7 := policy.Provenance{Policy: "shop/backend-http", Kind: policy.KindAllow, Direction: flow.Ingress, Path: "spec.ingress[0]", L7: "http[0]", PolicyKind: "CiliumNetworkPolicy"}
	redirected := flow.Record{Observer: flow.ObserverDatapath, Verdict: flow.VerdictRedirected, Source: netip.AddrPortFrom(src, 40000), Destination: dst, DecidedBy: []policy.Provenance{l4}}
	upstream := flow.Record{Observer: flow.ObserverDatapath, Verdict: flow.VerdictAllowed, FromProxy: true, Source: netip.AddrPortFrom(src, 40001), Destination: dst, DecidedBy: []policy.Provenance{l4}}
	for _, tc := range []struct {
		name string
		recs []flow.Record
	}{
		{"redirect and upstream leg", []flow.Record{redirected, upstream}},
		// A later clean-clone run reported [datapath] again: the page had
		// the upstream leg (marked as from a proxy) and no redirect record.
		{"upstream leg only", []flow.Record{upstream}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			runDir := t.TempDir()
			b := &flowsBackend{recs: tc.recs}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go agentapi.Serve(ctx, agentapi.StatusSocket(runDir), b)
			o := newObserver(runDir)
			if err := os.WriteFile(o.proxyLog, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			for range 100 { // the server starts beside the test
				if _, err := agentapi.FetchFlows(ctx, runDir, 0); err == nil {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			// the proxy's record arrives 300 ms after the check saw its answer
			go func() {
				time.Sleep(300 * time.Millisecond)
				line, _ := json.Marshal(map[string]any{"source": netip.AddrPortFrom(src, 40000).String(), "destination": dst.String(),
					"verdict": "allowed", "protocol": "http", "decidedBy": []policy.Provenance{l7}})
				f, err := os.OpenFile(filepath.Join(runDir, "proxy.log"), os.O_APPEND|os.O_WRONLY, 0)
				if err == nil {
					f.Write(append(line, '\n'))
					f.Close()
				}
			}()
			got := o.decidedBy(ctx, Observation{Verdict: Allowed}, src, []netip.AddrPort{dst})
			want := []string{l7.String() + " [proxy]"}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("decided by %q, want %q", got, want)
			}
		})
	}
}
