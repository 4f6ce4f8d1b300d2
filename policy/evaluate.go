package policy

import (
	"slices"

	"github.com/l7gate/l7gate/flow"
)

// Decision is the outcome of evaluating one direction.
type Decision string

// Decisions.
const (
	DecisionAllowed    Decision = "allowed"
	DecisionDenied     Decision = "denied"
	DecisionRedirected Decision = "redirected"
	// DecisionAudit: a policy in audit mode would deny it; it is
	// forwarded (and recorded with verdict audit) instead. DecidedBy names
	// the rules in audit.
	DecisionAudit Decision = "audit"
)

// CombineDecisions folds the decisions of the directions (or layers) a
// flow passes: denied wins, then audit, else allowed (redirected counts
// as allowed: the L7 verdict is folded in separately).
func CombineDecisions(a, b Decision) Decision {
	switch {
	case a == DecisionDenied || b == DecisionDenied:
		return DecisionDenied
	case a == DecisionAudit || b == DecisionAudit:
		return DecisionAudit
	}
	return DecisionAllowed
}

// L4Result is the L3/L4 verdict of one direction for a new flow.
type L4Result struct {
	Enforced  bool
	Decision  Decision
	Parser    string     // for redirects
	L7        *L7RuleSet // for redirects
	DecidedBy []Provenance
	// Audited: with Decision redirected, deny rules in audit mode that
	// also match the flow (it is forwarded to the proxy and audited).
	Audited []Provenance `json:",omitempty"`
}

// EvaluateL4 applies the direction's entries to a new flow with the given
// peer, protocol and destination port. Order: any matching deny denies;
// else any matching redirect redirects to the L7 parser; else any matching
// allow allows; else the flow is denied when the direction is enforced and
// allowed when it is not.
//
// Audit mode: deny rules all in audit mode (Provenance.Audit) do not deny;
// the flow gets what the other entries give, and an allow becomes
// DecisionAudit naming them (a redirect keeps going to the proxy, with
// Audited set). A default-deny whose rules are all in audit mode is
// DecisionAudit too. One enforcing rule among them enforces.
func (d *DirectionPolicy) EvaluateL4(peer Identity, proto Protocol, port uint16) L4Result {
	res := L4Result{Enforced: d.Enforced}
	var deny, redirect, allow []Provenance
	parser := ""
	for i := range d.Entries {
		e := &d.Entries[i]
		if !e.matches(peer, proto, port) {
			continue
		}
		switch e.Verdict {
		case VerdictDeny:
			deny = append(deny, e.Origins...)
		case VerdictRedirect:
			redirect = append(redirect, e.Origins...)
			parser = e.Parser
		case VerdictAllow:
			allow = append(allow, e.Origins...)
		}
	}
	var audited []Provenance
	if flow.AllAudit(deny) {
		audited, deny = deny, nil
	}
	switch {
	case len(deny) > 0:
		res.Decision, res.DecidedBy = DecisionDenied, deny
	case len(redirect) > 0:
		res.Decision, res.DecidedBy, res.Parser = DecisionRedirected, redirect, parser
		res.L7 = d.L7Set(proto, port)
		res.Audited = sortedProvenance(audited)
	case len(allow) > 0 && len(audited) > 0:
		res.Decision, res.DecidedBy = DecisionAudit, audited
	case len(allow) > 0:
		res.Decision, res.DecidedBy = DecisionAllowed, allow
	case d.Enforced && flow.AllAudit(d.DefaultDeny):
		res.Decision, res.DecidedBy = DecisionAudit, append(audited, d.DefaultDeny...)
	case d.Enforced:
		res.Decision, res.DecidedBy = DecisionDenied, slices.Clone(d.DefaultDeny)
	case len(audited) > 0:
		res.Decision, res.DecidedBy = DecisionAudit, audited
	default:
		res.Decision = DecisionAllowed
	}
	res.DecidedBy = sortedProvenance(res.DecidedBy)
	return res
}

func sortedProvenance(ps []Provenance) []Provenance {
	slices.SortFunc(ps, compareProvenance)
	return slices.CompactFunc(ps, func(a, b Provenance) bool { return compareProvenance(a, b) == 0 })
}

// Audit turns an L7 denial into DecisionAudit when every rule it names is
// in audit mode (the proxy forwards the request and records it as audit).
func (r L7Result) Audit() L7Result {
	if r.Decision == DecisionDenied && flow.AllAudit(r.DecidedBy) {
		r.Decision = DecisionAudit
	}
	return r
}

// DefaultDenyOrigins names the rules behind an L7 rule set's implicit
// deny: every rule that applies to the peer, as default-deny.
func (rs *L7RuleSet) DefaultDenyOrigins(peer Identity) []Provenance {
	var out []Provenance
	for i := range rs.Rules {
		r := &rs.Rules[i]
		if !r.AppliesTo(peer) {
			continue
		}
		o := r.Origin
		o.Kind = KindDefaultDeny
		o.L7 = ""
		out = append(out, o)
	}
	slices.SortFunc(out, compareProvenance)
	return slices.CompactFunc(out, func(a, b Provenance) bool { return compareProvenance(a, b) == 0 })
}

// HTTPMatcher compiles the set's HTTP rules (and allow-all rules); the
// matcher's rule index is the index into rs.Rules.
func (rs *L7RuleSet) HTTPMatcher() (*HTTPMatcher, error) { return rs.HTTPMatcherCached(nil) }

// HTTPMatcherCached is HTTPMatcher with the compiled expressions of c.
func (rs *L7RuleSet) HTTPMatcherCached(c *HTTPMatcherCache) (*HTTPMatcher, error) {
	refs := make([]HTTPRuleRef, len(rs.Rules))
	for i := range rs.Rules {
		r := &rs.Rules[i]
		refs[i] = HTTPRuleRef{AnyPeer: r.AnyPeer, Peers: r.Peers, Rule: r.HTTP}
		if r.HTTP == nil && !r.AllowsAll() {
			refs[i].Rule = &HTTPRule{Unsupported: "not an HTTP rule"}
		}
	}
	return NewHTTPMatcherCached(refs, c)
}

// L7Result is the verdict of an L7 rule set for one request.
type L7Result struct {
	Decision  Decision
	DecidedBy []Provenance
	// DeniedTopics lists the Kafka topics no rule allowed.
	DeniedTopics []string `json:",omitempty"`
	// Shadowed: the request was allowed by an allow-all rule (an allow
	// without L7 rules for the peer); these are the peer's L7 rules it
	// was not checked against.
	Shadowed []Provenance `json:",omitempty"`
}

// shadowedFor lists the L7 rules (not allow-all) that apply to peer.
func (rs *L7RuleSet) shadowedFor(peer Identity) []Provenance {
	var out []Provenance
	for i := range rs.Rules {
		if r := &rs.Rules[i]; !r.AllowsAll() && r.AppliesTo(peer) {
			out = append(out, r.Origin)
		}
	}
	slices.SortFunc(out, compareProvenance)
	return slices.CompactFunc(out, func(a, b Provenance) bool { return compareProvenance(a, b) == 0 })
}

// EvaluateHTTP decides an HTTP request from peer.
func (rs *L7RuleSet) EvaluateHTTP(peer Identity, req *HTTPRequest) (L7Result, error) {
	m, err := rs.HTTPMatcher()
	if err != nil {
		return L7Result{}, err
	}
	if i := m.Match(peer, req); i >= 0 {
		res := L7Result{Decision: DecisionAllowed, DecidedBy: []Provenance{rs.Rules[i].Origin}}
		if rs.Rules[i].AllowsAll() {
			res.Shadowed = rs.shadowedFor(peer)
		}
		return res, nil
	}
	return L7Result{Decision: DecisionDenied, DecidedBy: rs.DefaultDenyOrigins(peer)}, nil
}

// EvaluateKafka decides a Kafka request from peer, topic by topic: the
// request is allowed when every topic it names is allowed by some rule (a
// request without topics needs one rule matching its other fields).
func (rs *L7RuleSet) EvaluateKafka(peer Identity, req *KafkaRequest) L7Result {
	match := func(topic string) int {
		for i := range rs.Rules {
			r := &rs.Rules[i]
			if !r.AppliesTo(peer) {
				continue
			}
			if r.AllowsAll() || (r.Kafka != nil && r.Kafka.MatchesTopic(req.APIKey, req.APIVersion, req.ClientID, topic)) {
				return i
			}
		}
		return -1
	}
	var res L7Result
	lifted := false
	topics := req.Topics
	if len(topics) == 0 {
		topics = []string{""}
	}
	for _, t := range topics {
		i := match(t)
		if i < 0 {
			if t != "" {
				res.DeniedTopics = append(res.DeniedTopics, t)
			}
			res.Decision = DecisionDenied
			continue
		}
		res.DecidedBy = append(res.DecidedBy, rs.Rules[i].Origin)
		lifted = lifted || rs.Rules[i].AllowsAll()
	}
	if res.Decision == DecisionDenied {
		res.DecidedBy = rs.DefaultDenyOrigins(peer)
		return res
	}
	res.Decision = DecisionAllowed
	if lifted {
		res.Shadowed = rs.shadowedFor(peer)
	}
	slices.SortFunc(res.DecidedBy, compareProvenance)
	res.DecidedBy = slices.CompactFunc(res.DecidedBy, func(a, b Provenance) bool { return compareProvenance(a, b) == 0 })
	return res
}

// EvaluateDNS decides a DNS query for name from peer (rules.dns): allowed
// when a rule that applies to the peer allows every name or its selector
// matches the name; a name that does not normalise is denied.
func (rs *L7RuleSet) EvaluateDNS(peer Identity, name string) L7Result {
	n, err := NormalizeDNSName(name)
	if err == nil {
		for i := range rs.Rules {
			r := &rs.Rules[i]
			if !r.AppliesTo(peer) {
				continue
			}
			if r.AllowsAll() {
				return L7Result{Decision: DecisionAllowed, DecidedBy: []Provenance{r.Origin}, Shadowed: rs.shadowedFor(peer)}
			}
			if r.DNS == nil {
				continue
			}
			sel, cerr := r.DNS.Compile() // the IR may come from JSON
			if cerr == nil && sel.Matches(n) {
				return L7Result{Decision: DecisionAllowed, DecidedBy: []Provenance{r.Origin}}
			}
		}
	}
	return L7Result{Decision: DecisionDenied, DecidedBy: rs.DefaultDenyOrigins(peer)}
}
