package envoy

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/l7gate/l7gate/flow"
)

// The names below are the contract between the resources
// xds/envoytranslate renders and what Envoy reports back in its access
// logs (envoy/als); this file is their one owner.

// RouteName names the route configuration (and filter chain) of an
// endpoint identity's L7 rule set on a destination port:
// "l7gate/<direction>/<identity>/<port>". Envoy logs it as the route name.
func RouteName(d flow.Direction, id flow.Identity, port uint16) string {
	return fmt.Sprintf("l7gate/%s/%d/%d", d, id, port)
}

// ParseRouteName splits a RouteName; ok is false for any other name.
func ParseRouteName(name string) (d flow.Direction, id flow.Identity, port uint16, ok bool) {
	parts := strings.Split(name, "/")
	if len(parts) != 4 || parts[0] != "l7gate" {
		return 0, 0, 0, false
	}
	if err := d.UnmarshalText([]byte(parts[1])); err != nil {
		return 0, 0, 0, false
	}
	n, err1 := strconv.ParseUint(parts[2], 10, 32)
	p, err2 := strconv.ParseUint(parts[3], 10, 16)
	if err1 != nil || err2 != nil {
		return 0, 0, 0, false
	}
	return d, flow.Identity(n), uint16(p), true
}

// PolicyID names an RBAC policy after the rule it came from:
// "<kind>:<policy>:<path>[.<l7>]", e.g.
// "cnp:shop/http-rules:spec.ingress[0].http[1]", with kind cnp, ccnp or np.
// Envoy reports it as enforced_effective_policy_id in the RBAC filter's
// dynamic metadata, which reaches the access-log service (envoy/als). The
// translation appends "#<index>" to a second policy with the same id.
func PolicyID(o flow.Provenance) string {
	rule := o.Path
	if o.L7 != "" {
		rule += "." + o.L7
	}
	return kindAbbrev(o.PolicyKind) + ":" + o.Policy + ":" + rule
}

func kindAbbrev(k flow.PolicyKind) string {
	switch k {
	case flow.KindCNP:
		return "cnp"
	case flow.KindCCNP:
		return "ccnp"
	case flow.KindNP:
		return "np"
	}
	return strings.ToLower(string(k))
}

// AuditPolicyID is the RBAC policy that lets every request of a rule set
// in audit mode through; the rule set itself runs as the filter's shadow
// rules, whose decision (shadow_engine_result) tells audit from allowed.
const AuditPolicyID = "l7gate:audit"

// ParsePolicyID reads a PolicyID back into the provenance fields it
// carries (policy, policy kind, path and L7 rule; a "#<index>" suffix is
// dropped). An id of another shape comes back whole as the policy, and ok
// is false.
func ParsePolicyID(id string) (p flow.Provenance, ok bool) {
	if i := strings.LastIndexByte(id, '#'); i >= 0 {
		id = id[:i]
	}
	parts := strings.SplitN(id, ":", 3)
	if len(parts) != 3 {
		return flow.Provenance{Policy: id}, false
	}
	switch parts[0] {
	case "cnp":
		p.PolicyKind = flow.KindCNP
	case "ccnp":
		p.PolicyKind = flow.KindCCNP
	case "np":
		p.PolicyKind = flow.KindNP
	}
	p.Policy, p.Path = parts[1], parts[2]
	// "spec.ingress[0].http[1]" → path "spec.ingress[0]", L7 "http[1]"
	if i := strings.LastIndex(p.Path, "."); i > 0 && strings.HasPrefix(p.Path[i+1:], "http[") {
		p.Path, p.L7 = p.Path[:i], p.Path[i+1:]
	}
	return p, true
}
