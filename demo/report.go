package demo

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	"github.com/l7gate/l7gate/policy"
)

// Result is one check's outcome.
type Result struct {
	Step     int // from 1
	StepName string
	Check    Check
	Observed Observation
	Trace    TraceSummary
	// DecidedBy is what the datapath (drops) or the proxy (L7 verdicts)
	// reported as the deciding rule for this very request.
	DecidedBy []string
}

// Passed reports whether the observed verdict is the expected one and,
// when the check names a deciding rule, whether the datapath or the proxy
// reported that rule for the request.
func (r *Result) Passed() bool {
	return r.Observed.Verdict == r.Check.Expect && (r.Check.DecidedBy == "" || namesRule(r.DecidedBy, r.Check.DecidedBy))
}

// namesRule reports whether one of the rules contains want.
func namesRule(rules []string, want string) bool {
	for _, s := range rules {
		if strings.Contains(s, want) {
			return true
		}
	}
	return false
}

// TraceSummary is what policy.Trace predicts for a check: the verdict
// mapped onto the check's terms (an L3/L4 denial is dropped, an L7 one
// denied) and the rules that decided it. It never decides a check.
type TraceSummary struct {
	Verdict   Verdict
	DecidedBy []string
	Note      string
	Err       error
}

// TraceCheck runs policy.Trace for a check against objs (the scenario's
// objects and the policies in force). A check by name is traced as what
// it does: first the DNS query to its server (A, or AAAA over IPv6) — a
// query dropped or refused is the outcome — then the request to the
// answered host with Host: the name.
func TraceCheck(objs *policy.Objects, sc *Scenario, c Check) TraceSummary {
	src, dst := sc.Host(c.From), sc.Host(c.To)
	if src == nil || dst == nil {
		return TraceSummary{Err: fmt.Errorf("unknown host")}
	}
	if c.Name != "" && c.HTTP != nil {
		q := c
		q.To, q.Port, q.Name, q.ResolvedBy, q.HTTP = c.ResolvedBy, 53, "", "", nil
		q.DNS = &DNSQuery{Name: c.Name, AAAA: c.Family == FamilyIPv6}
		if tr := TraceCheck(objs, sc, q); tr.Err != nil || tr.Verdict == Denied || tr.Verdict == Dropped {
			return tr
		}
		h := *c.HTTP
		if h.Host == "" {
			h.Host = strings.TrimSuffix(c.Name, ".")
		}
		c.HTTP = &h
	}
	addr := netip.AddrPortFrom(dst.Addr(c.Family), c.Port)
	req := policy.TraceRequest{
		// A pod's address among the inputs resolves to that pod; any other
		// address to world or a CIDR identity, as the datapath sees it.
		Src:      policy.TracePeer{Addr: src.Addr(c.Family)},
		Dst:      policy.TracePeer{Addr: dst.Addr(c.Family)},
		Protocol: policy.ProtoTCP,
		DPort:    c.Port,
	}
	if src == node {
		// the agent maps the node's own addresses to the host identity
		req.Src = policy.TracePeer{Entity: "host"}
	}
	if dst.Service != nil {
		// to each backend the socket load balancer may pick
		req.Dst = policy.TracePeer{Service: dst.Service.Namespace + "/" + dst.Service.Name}
	}
	switch {
	case c.HTTP != nil:
		h := &policy.HTTPRequest{Method: c.HTTP.Method, Path: c.HTTP.Path, Host: httpHost(c.HTTP, addr)}
		for _, k := range slices.Sorted(maps.Keys(c.HTTP.Headers)) {
			h.Headers = append(h.Headers, policy.HTTPHeader{Name: k, Value: c.HTTP.Headers[k]})
		}
		req.HTTP = h
	case c.GRPC != nil:
		req.HTTP = &policy.HTTPRequest{Method: "POST", Path: c.GRPC.Method, Host: addr.String(),
			Headers: []policy.HTTPHeader{{Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"}}}
	case c.DNS != nil:
		req.Protocol, req.DNSName = policy.ProtoUDP, c.DNS.Name
	case c.Kafka != nil:
		k := &policy.KafkaRequest{APIKey: policy.KafkaProduce, ClientID: KafkaClientID, Topics: []string{c.Kafka.Topic()}}
		if c.Kafka.Consume != "" {
			k.APIKey = policy.KafkaFetch
		}
		req.Kafka = k
	}
	if len(c.Resolved) > 0 {
		req.Options.FQDNCache = c.Resolved
	}
	res, err := policy.Trace(objs, req)
	if err != nil {
		return TraceSummary{Err: err}
	}
	out := TraceSummary{Verdict: Allowed}
	for _, p := range res.DecidedBy {
		out.DecidedBy = append(out.DecidedBy, p.String())
	}
	if res.Verdict == policy.DecisionAudit {
		out.Verdict = Audited
	}
	if res.Verdict == policy.DecisionDenied {
		out.Verdict = Denied
		for _, d := range []policy.DirectionTrace{res.Egress, res.Ingress} {
			if d.Verdict == policy.DecisionDenied && d.L4 == policy.DecisionDenied {
				out.Verdict = Dropped
			}
		}
	}
	for _, d := range []policy.DirectionTrace{res.Egress, res.Ingress} {
		if d.L7 != nil && d.L7.Note != "" {
			out.Note = d.L7.Note
		}
	}
	if s := res.Service; s != nil && len(s.Backends) == 0 {
		// refused at connect(): no connection, as a drop
		out.Verdict, out.Note = Dropped, s.Note
	}
	return out
}

// String renders the trace as "<verdict> by <rule>[; <rule>...]".
func (t TraceSummary) String() string {
	if t.Err != nil {
		return "error: " + t.Err.Error()
	}
	s := string(t.Verdict)
	if len(t.DecidedBy) == 0 {
		s += " (no policy applies)"
	} else {
		s += " by " + strings.Join(t.DecidedBy, "; ")
	}
	if t.Note != "" {
		s += " (" + t.Note + ")"
	}
	return s
}

// RequestString renders a check's request: "HTTP POST /path [X-Token: 1]",
// "gRPC /pkg.Svc/M", "Kafka produce topic".
func (c *Check) RequestString() string {
	switch {
	case c.HTTP != nil:
		s := "HTTP " + c.HTTP.Method + " " + c.HTTP.Path
		var hs []string
		if c.HTTP.Host != "" {
			hs = append(hs, "Host: "+c.HTTP.Host)
		}
		for _, k := range slices.Sorted(maps.Keys(c.HTTP.Headers)) {
			hs = append(hs, k+": "+c.HTTP.Headers[k])
		}
		if len(hs) > 0 {
			s += " [" + strings.Join(hs, ", ") + "]"
		}
		return s
	case c.GRPC != nil:
		return "gRPC " + c.GRPC.Method
	case c.Kafka != nil:
		if c.Kafka.Produce != "" {
			return "Kafka produce " + c.Kafka.Produce
		}
		return "Kafka consume " + c.Kafka.Consume
	case c.DNS != nil:
		if c.DNS.AAAA {
			return "DNS AAAA " + c.DNS.Name
		}
		return "DNS A " + c.DNS.Name
	}
	return "?"
}

// Line is the check's one-line report:
//
//	PASS step 2 "L3/L4 policy" | default/xwing → default/deathstar:80 | HTTP POST /v1/request-landing | expected dropped | observed dropped (connect timeout) | policy.Trace: dropped by default-deny default/rule1 (CiliumNetworkPolicy spec.ingress[0])
func (r *Result) Line() string {
	mark := "PASS"
	if !r.Passed() {
		mark = "FAIL"
	}
	obs := string(r.Observed.Verdict)
	if r.Observed.Detail != "" {
		obs += " (" + r.Observed.Detail + ")"
	}
	decided := "policy.Trace: " + r.Trace.String()
	if len(r.DecidedBy) > 0 {
		decided = "decided by " + strings.Join(r.DecidedBy, "; ")
	}
	expect := string(r.Check.Expect)
	if r.Check.DecidedBy != "" {
		expect += " by " + r.Check.DecidedBy
	}
	family := ""
	if r.Check.Family == FamilyIPv6 {
		family = " over IPv6"
	}
	return fmt.Sprintf("%s step %d %q | %s → %s:%d | %s | expected %s | observed %s | %s",
		mark, r.Step, r.StepName, r.Check.From, r.Check.To, r.Check.Port, r.Check.RequestString()+family, expect, obs, decided)
}
