package flow

import "fmt"

// PolicyKind is the kind of object a rule came from.
type PolicyKind string

// Policy kinds.
const (
	KindCNP  PolicyKind = "CiliumNetworkPolicy"
	KindCCNP PolicyKind = "CiliumClusterwideNetworkPolicy"
	KindNP   PolicyKind = "NetworkPolicy"
)

// RuleKind says how a rule decided: it allowed, it denied, or the endpoint
// was in default-deny mode and nothing allowed the traffic.
type RuleKind string

// Rule kinds in provenance.
const (
	KindAllow       RuleKind = "allow"
	KindDeny        RuleKind = "deny"
	KindDefaultDeny RuleKind = "default-deny"
)

// Provenance names the rule behind an entry or verdict.
type Provenance struct {
	// Policy is "namespace/name" (or "name" for clusterwide policies).
	Policy     string     `json:"policy"`
	PolicyKind PolicyKind `json:"policyKind"`
	Direction  Direction  `json:"direction"`
	// Rule is the index of the entry in its ingress/egress(/Deny) list.
	Rule int      `json:"rule"`
	Kind RuleKind `json:"kind"`
	// Path is the full field path, e.g. "spec.ingress[0]" or
	// "specs[1].egressDeny[2]".
	Path string `json:"path"`
	// L7 names the L7 rule, e.g. "http[1]", when an L7 rule decided.
	L7 string `json:"l7,omitempty"`
	// Audit: the policy is in audit mode (its own annotation, its
	// endpoint's namespace, or the node's --policy-audit-mode): what it
	// would drop or deny is forwarded and recorded with VerdictAudit.
	Audit bool `json:"audit,omitempty"`
}

// AllAudit reports whether ps is non-empty and every rule in it is in
// audit mode: only then is a denial they decide audited instead of
// enforced (one enforcing rule among them enforces).
func AllAudit(ps []Provenance) bool {
	for _, p := range ps {
		if !p.Audit {
			return false
		}
	}
	return len(ps) > 0
}

func (p Provenance) String() string {
	s := fmt.Sprintf("%s %s (%s %s", p.Kind, p.Policy, p.PolicyKind, p.Path)
	if p.L7 != "" {
		s += "." + p.L7
	}
	if p.Audit {
		s += " [audit]"
	}
	return s + ")"
}
