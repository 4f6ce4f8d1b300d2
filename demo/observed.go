package demo

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/l7gate/l7gate/agentapi"
	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/policy"
)

// observer reads what the agent and the proxy reported about a check: the
// datapath's flows (drops, with the rule behind them) and the proxy's
// access log (L7 verdicts, with the rule behind them).
type observer struct {
	runDir   string
	flowsAt  uint64
	proxyLog string
	logAt    int64
}

func newObserver(runDir string) *observer {
	return &observer{runDir: runDir, proxyLog: filepath.Join(runDir, "proxy.log")}
}

// mark remembers where the flows and the access log are before a check.
func (o *observer) mark(ctx context.Context) {
	if page, err := agentapi.FetchFlows(ctx, o.runDir, ^uint64(0)); err == nil {
		o.flowsAt = page.Cursor
	}
	if st, err := os.Stat(o.proxyLog); err == nil {
		o.logAt = st.Size()
	}
}

// decidedBy returns the rules the agent or the proxy reported for a check
// from src to dst:port since mark, or nil. Reports arrive asynchronously
// (ring buffer, access-log writes), so it looks for up to 2 s.
func (o *observer) decidedBy(ctx context.Context, obs Observation, src netip.Addr, dsts []netip.AddrPort) []string {
	for range 40 {
		if out := o.look(ctx, obs, src, dsts); len(out) > 0 || obs.Verdict == Errored {
			return out
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// look finds what was reported for src to any of dsts (one destination, or
// a Service's backends).
//
// A connection the datapath handed to a proxy is decided by the proxy: its
// access record is written after the answer reaches the client, so until it
// is there the datapath's other records of that connection (the proxy's own
// upstream leg keeps the client's address) must not stand in for it.
func (o *observer) look(ctx context.Context, obs Observation, src netip.Addr, dsts []netip.AddrPort) []string {
	out := o.lookProxy(obs, src, dsts)
	if len(out) == 0 && obs.Verdict != Denied {
		if obs.Verdict != Dropped && o.redirected(ctx, src, dsts) {
			return nil // look again: the proxy's record is on its way
		}
		out = o.lookFlows(ctx, obs.Verdict == Dropped, src, dsts)
	}
	return out
}

// redirected reports whether the datapath handed a connection from src to
// any of dsts to a proxy since mark, or saw a proxy's upstream leg of one
// (from a proxy's socket, keeping the client's address): its record may be
// in the page when the redirect's is not (an event the datapath's rate
// limit or a full ring buffer left out).
func (o *observer) redirected(ctx context.Context, src netip.Addr, dsts []netip.AddrPort) bool {
	page, err := agentapi.FetchFlows(ctx, o.runDir, o.flowsAt)
	if err != nil {
		return false
	}
	return slices.ContainsFunc(page.Flows, func(f flow.Record) bool {
		return (f.Verdict == flow.VerdictRedirected || f.FromProxy) && f.Source.Addr() == src && slices.Contains(dsts, f.Destination)
	})
}

// audited returns the rules of the audit records (datapath or proxy) for
// src to any of dsts since mark, or nil; with wait it looks a few times
// (reports arrive asynchronously), else once.
func (o *observer) audited(ctx context.Context, wait bool, src netip.Addr, dsts []netip.AddrPort) []string {
	for range 10 {
		var out []string
		if page, err := agentapi.FetchFlows(ctx, o.runDir, o.flowsAt); err == nil {
			for _, f := range page.Flows {
				if f.Verdict == flow.VerdictAudit && f.Source.Addr() == src && slices.Contains(dsts, f.Destination) {
					where := "datapath"
					if f.Observer != flow.ObserverDatapath {
						where = "proxy"
					}
					out = addProvenance(out, f.DecidedBy, where)
				}
			}
		}
		if len(out) > 0 || !wait {
			return out
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

func addProvenance(out []string, ps []policy.Provenance, where string) []string {
	for _, p := range ps {
		if s := p.String() + " [" + where + "]"; !containsString(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// lookFlows finds the datapath's report (allowed at L3/L4 or dropped).
func (o *observer) lookFlows(ctx context.Context, dropped bool, src netip.Addr, dsts []netip.AddrPort) []string {
	var out []string
	page, err := agentapi.FetchFlows(ctx, o.runDir, o.flowsAt)
	if err != nil {
		return nil
	}
	for _, f := range page.Flows {
		if f.Dropped() == dropped && f.Source.Addr() == src && slices.Contains(dsts, f.Destination) &&
			f.Verdict != flow.VerdictRedirected {
			out = addProvenance(out, f.DecidedBy, "datapath")
		}
	}
	return out
}

// lookProxy finds the proxy's access-log record (L7 verdicts).
func (o *observer) lookProxy(obs Observation, src netip.Addr, dsts []netip.AddrPort) []string {
	if obs.Verdict == Dropped {
		return nil
	}
	var out []string
	fh, err := os.Open(o.proxyLog)
	if err != nil {
		return nil
	}
	defer fh.Close()
	if _, err := fh.Seek(o.logAt, io.SeekStart); err != nil {
		return nil
	}
	sc := bufio.NewScanner(fh)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if !bytes.HasPrefix(line, []byte("{")) {
			continue
		}
		var rec struct {
			Source      netip.AddrPort      `json:"source"`
			Destination netip.AddrPort      `json:"destination"`
			DecidedBy   []policy.Provenance `json:"decidedBy"`
			Reason      string              `json:"reason"`
			Verdict     string              `json:"verdict"`
			Protocol    string              `json:"protocol"`
		}
		if json.Unmarshal(line, &rec) != nil {
			continue
		}
		if rec.Source.Addr() != src || !slices.Contains(dsts, rec.Destination) {
			continue
		}
		// a Kafka check is several requests: report the ones that decided
		if (obs.Verdict == Denied) != (rec.Verdict == "denied") {
			continue
		}
		if rec.Protocol == "kafka" && rec.Reason != "" && len(rec.DecidedBy) == 0 {
			// the Kafka filter reports its decision as a reason string
			if !containsString(out, rec.Reason+" [proxy]") && strings.Contains(rec.Reason, "/") {
				out = append(out, rec.Reason+" [proxy]")
			}
			continue
		}
		out = addProvenance(out, rec.DecidedBy, "proxy")
	}
	return out
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
