package agent

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/policy"
)

// flowRing keeps the most recent flows for the status API.
type flowRing struct {
	mu    sync.Mutex
	buf   []flow.Record
	next  int
	total uint64
}

const flowRingSize = 4096

func (r *flowRing) add(f flow.Record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.buf) < flowRingSize {
		r.buf = append(r.buf, f)
	} else {
		r.buf[r.next] = f
	}
	r.next = (r.next + 1) % flowRingSize
	r.total++
}

// since returns the flows recorded after the first `after` ones (the
// ring's total count is the cursor), oldest first.
func (r *flowRing) since(after uint64) ([]flow.Record, uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.total - after
	if after > r.total {
		n = 0
	}
	if n > uint64(len(r.buf)) {
		n = uint64(len(r.buf))
	}
	out := make([]flow.Record, 0, n)
	start := (r.next - int(n) + len(r.buf)) % max(len(r.buf), 1)
	for i := range int(n) {
		out = append(out, r.buf[(start+i)%len(r.buf)])
	}
	return out, r.total
}

// watchFlows turns datapath events into flows: logged (drops at info,
// verdicts at debug) and kept for `l7gate observe`.
func (a *Agent) watchFlows(ctx context.Context) error {
	events, err := a.dp.Events(ctx)
	if err != nil {
		return err
	}
	for ev := range events {
		f := a.flowOf(ev)
		a.flows.add(f)
		attrs := []any{"direction", f.Direction, "src", f.Source, "dst", f.Destination, "srcIdentity", f.SrcIdentity,
			"dstIdentity", f.DstIdentity, "proto", f.IPProtocol, "verdict", f.Verdict, "reason", f.Reason, "endpoint", f.Endpoint}
		for _, p := range f.DecidedBy {
			attrs = append(attrs, "decidedBy", p.String())
		}
		switch {
		case f.Dropped() && ev.Reason == bpf.ReasonUnsupported:
			// IPv6 (neighbour discovery and the like) is not enforced yet
			a.log.Debug("flow dropped", attrs...)
		case f.Dropped():
			a.log.Info("flow dropped", attrs...)
		default:
			a.log.Debug("flow", attrs...)
		}
	}
	return nil
}

// flowOf turns a datapath event into a flow record: a drop is denied
// (Reason says why), a redirect redirected, anything else allowed.
func (a *Agent) flowOf(ev bpf.Event) flow.Record {
	f := flow.Record{Time: time.Now().UTC(), Observer: flow.ObserverDatapath, Source: ev.Src, Destination: ev.Dst,
		SrcIdentity: flow.Identity(ev.SrcIdentity), DstIdentity: flow.Identity(ev.DstIdentity),
		Protocol: strings.ToLower(policy.Protocol(ev.Protocol).String()), IPProtocol: ev.Protocol,
		Reason: ev.Reason.String(), ProxyPort: ev.ProxyPort, FromProxy: ev.FromProxy, Verdict: flow.VerdictAllowed}
	if ev.Direction == bpf.Egress {
		f.Direction = flow.Egress
	}
	switch {
	case ev.Dropped:
		f.Verdict = flow.VerdictDenied
	case ev.Verdict == bpf.VerdictRedirect:
		f.Verdict = flow.VerdictRedirected
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if p, ok := a.st.rules[ev.RuleID]; ok && ev.RuleID != 0 {
		f.DecidedBy = []policy.Provenance{p}
	}
	if ep, ok := a.attached[int(ev.Endpoint)]; ok {
		f.Endpoint = ep.Key()
		if len(f.DecidedBy) == 0 && ev.Reason == bpf.ReasonDefault && ev.Dropped && a.st.snap != nil {
			if pol := a.st.snap.Policy(ep.Identity); pol != nil {
				f.DecidedBy = pol.Direction(f.Direction).DefaultDeny
			}
		}
	}
	return f
}
