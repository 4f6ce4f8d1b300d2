package suggest

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/policy"
)

// Denial is an observed flow (or several alike) that the checked policies
// would deny.
type Denial struct {
	// Flow describes it: direction, peers, port and request.
	Flow  string
	Count int
	// DecidedBy names the rules that would deny it.
	DecidedBy []string
	// Example is the first such record.
	Example *flow.Record
	// Audit: the rules that would deny it are in audit mode (the policy's
	// annotation, its namespace's, or Options.AuditMode): applied, they
	// forward it and record it with verdict audit; enforced, they deny it.
	Audit bool
}

func (d Denial) String() string {
	s := fmt.Sprintf("%s (%s)", d.Flow, plural(d.Count, "flow"))
	if d.Audit {
		s += " [audit]"
	}
	if len(d.DecidedBy) > 0 {
		s += ": " + strings.Join(d.DecidedBy, "; ")
	}
	return s
}

// Check evaluates every record Suggest would use (the same Options)
// against the given policies, with the Pods and Namespaces of objs (its
// own policies are not used), as `l7gate policy trace` evaluates a flow:
// the direction the record was observed in (ingress at the receiver,
// egress at the sender), at L3/L4 and, for proxy records, at L7. It returns
// the flows those policies would deny, sorted. Records Suggest skips are
// not checked (stats says which and why), nor are connections the
// datapath redirected to a proxy: the proxy's records of their requests are.
// A flow that policies in audit mode would deny is listed too, with Audit
// set: enforcing them would deny it.
func Check(objs *policy.Objects, policies []policy.Policy, recs []*flow.Record, opts Options) ([]Denial, Stats, error) {
	work := *objs
	work.Policies = policies
	snap, err := policy.ComputeWith(&work, policy.NewIdentityAllocator(), policy.Options{AuditMode: opts.AuditMode})
	if err != nil {
		return nil, Stats{}, fmt.Errorf("compute: %w", err)
	}
	c := newCluster(objs)
	var st Stats
	byFlow := map[string]*Denial{}
	for _, r := range recs {
		st.Read++
		obs, reason := c.place(r, &opts)
		if reason != "" {
			st.skip(reason)
			continue
		}
		if obs.redirected {
			// Not an allowed flow: the proxy decided the requests on it,
			// and its records of them are checked (at L3/L4 too).
			st.skip("redirected to a proxy (checked through the proxy's records of the requests)")
			continue
		}
		st.Used++
		// A pod or an address: the identity the computed ipcache gives
		// it; an entity: the reserved identity the record names.
		id := func(p peer, a netip.Addr, recID flow.Identity) policy.Identity {
			if p.kind == peerEntity {
				return recID
			}
			return snap.IdentityOf(a.Unmap())
		}
		src, dst := c.peerOf(r.Source.Addr(), r.SrcIdentity), c.peerOf(r.Destination.Addr(), r.DstIdentity)
		req := policy.TraceRequest{Protocol: obs.proto, DPort: obs.port}
		desc := fmt.Sprintf("%s %s → %s %s/%d", obs.dir, src, dst, obs.proto, obs.port)
		switch obs.l7 {
		case "http":
			req.HTTP = &policy.HTTPRequest{Method: r.Method, Path: r.Path, Host: r.Host}
			desc += fmt.Sprintf(" HTTP %s %s", r.Method, r.Path)
		case "kafka":
			req.Kafka = &policy.KafkaRequest{APIKey: obs.kafkaKey, APIVersion: r.APIVersion, ClientID: r.ClientID, Topics: r.Topics}
			desc += fmt.Sprintf(" Kafka %s %s", policy.KafkaAPIName(obs.kafkaKey), strings.Join(r.Topics, ","))
		}
		res := policy.TraceIdentities(snap, id(src, r.Source.Addr(), r.SrcIdentity), id(dst, r.Destination.Addr(), r.DstIdentity), &req)
		d := res.Ingress
		if obs.dir == flow.Egress {
			d = res.Egress
		}
		if d.Verdict != policy.DecisionDenied && d.Verdict != policy.DecisionAudit {
			continue
		}
		den := byFlow[desc]
		if den == nil {
			den = &Denial{Flow: desc, Example: r, Audit: d.Verdict == policy.DecisionAudit}
			for _, p := range d.DecidedBy {
				den.DecidedBy = append(den.DecidedBy, p.String())
			}
			if d.L7 != nil && d.L7.Note != "" {
				den.DecidedBy = append(den.DecidedBy, d.L7.Note)
			}
			byFlow[desc] = den
		}
		den.Count++
	}
	out := make([]Denial, 0, len(byFlow))
	for _, k := range sortedKeys(byFlow) {
		out = append(out, *byFlow[k])
	}
	slices.SortStableFunc(out, func(a, b Denial) int { return strings.Compare(a.Flow, b.Flow) })
	return out, st, nil
}
