package dns

import (
	"fmt"

	"github.com/l7gate/l7gate/policy"
)

// Checker decides queries against one port's DNS rule set (parser "dns"):
// a query is allowed when a rule that applies to the peer allows every
// name (an allow without rules.dns) or its selector matches the name.
type Checker struct {
	rules []policy.L7Rule
}

// NewChecker compiles rs; a rule that is neither a DNS rule nor allow-all
// is an error (the caller fails closed).
func NewChecker(rs *policy.L7RuleSet) (*Checker, error) {
	c := &Checker{rules: make([]policy.L7Rule, len(rs.Rules))}
	for i, r := range rs.Rules {
		switch {
		case r.DNS != nil:
			sel, err := r.DNS.Compile()
			if err != nil {
				return nil, fmt.Errorf("rule %d: %w", i, err)
			}
			r.DNS = &sel
		case !r.AllowsAll():
			return nil, fmt.Errorf("rule %d: not a DNS rule", i)
		}
		c.rules[i] = r
	}
	return c, nil
}

// Check returns the index of the first rule allowing peer to query name
// (normalised, Question.Name), or -1: denied.
func (c *Checker) Check(peer policy.Identity, name string) int {
	for i := range c.rules {
		r := &c.rules[i]
		if !r.AppliesTo(peer) {
			continue
		}
		if r.DNS == nil || r.DNS.Matches(name) {
			return i
		}
	}
	return -1
}

// DeniedBy names the rules behind a denial for peer (default-deny of
// every rule that applies to it).
func (c *Checker) DeniedBy(peer policy.Identity) []policy.Provenance {
	rs := policy.L7RuleSet{Rules: c.rules}
	return rs.DefaultDenyOrigins(peer)
}

// Rule returns rule i (its provenance names the deciding rule).
func (c *Checker) Rule(i int) *policy.L7Rule { return &c.rules[i] }
