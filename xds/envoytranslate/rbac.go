package envoytranslate

import (
	"fmt"
	"strings"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbacfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/l7gate/l7gate/envoy"
	"github.com/l7gate/l7gate/policy"
)

// ruleSetRBAC renders an L7 rule set as an ALLOW RBAC: one policy per rule
// that can match, so a request matching none is denied (the allow-list).
//
// Peers: on ingress a rule's peers are the downstream, matched as
// direct_remote_ip principals (the connection's source, the pod address
// original_src also keeps); on egress they are the destination, matched as
// destination_ip permissions (the accepted socket's local address, the
// original destination). Addresses come from the ipcache with longest-
// prefix semantics (peers.go).
//
// HTTP: method, path and host are RE2 safe_regex header matchers on
// :method, :path (path and query, as policy matches) and :authority,
// anchored with ^(?:…)$; headers are exact or presence matchers. A
// headerMatches entry with a mismatch action (LOG, ADD, DELETE, REPLACE)
// never denies in policy, so it is left out of the match; stock Envoy's
// RBAC cannot take the action, which is reported as a warning. Rules that
// match nothing (Secret-valued headers, non-HTTP rules) get no policy.
//
// Audit mode: when every rule of the set is in audit mode (Provenance.
// Audit), the rules become the filter's shadow_rules and its enforced
// rules allow every request under envoy.AuditPolicyID: Envoy forwards
// what the rules would deny and reports shadow_engine_result "denied"
// (envoy/als turns that into verdict audit). A set mixing rules in audit
// and enforcing rules is enforced (fail closed).
func (t *translator) routeRBAC(d policy.Direction, rs *policy.L7RuleSet) (*rbacfilterv3.RBAC, []string, error) {
	rules, warns, err := t.ruleSetRBAC(d, rs)
	if err != nil {
		return nil, warns, err
	}
	audit := len(rs.Rules) > 0
	for i := range rs.Rules {
		audit = audit && rs.Rules[i].Origin.Audit
	}
	if !audit {
		return &rbacfilterv3.RBAC{Rules: rules}, warns, nil
	}
	pass := &rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW, Policies: map[string]*rbacv3.Policy{envoy.AuditPolicyID: {
		Principals:  []*rbacv3.Principal{anyPrincipal()},
		Permissions: []*rbacv3.Permission{{Rule: &rbacv3.Permission_Any{Any: true}}},
	}}}
	return &rbacfilterv3.RBAC{Rules: pass, ShadowRules: rules}, warns, nil
}

func (t *translator) ruleSetRBAC(d policy.Direction, rs *policy.L7RuleSet) (*rbacv3.RBAC, []string, error) {
	out := &rbacv3.RBAC{Action: rbacv3.RBAC_ALLOW, Policies: map[string]*rbacv3.Policy{}}
	var warns []string
	for i := range rs.Rules {
		r := &rs.Rules[i]
		id := envoy.PolicyID(r.Origin)
		if r.HTTP == nil && !r.AllowsAll() {
			warns = append(warns, id+": not an HTTP rule: matches nothing")
			continue
		}
		if r.HTTP != nil && r.HTTP.Unsupported != "" {
			continue // policy already warned; the rule matches nothing
		}
		var perms []*rbacv3.Permission
		if r.HTTP != nil {
			var w []string
			perms, w = httpPermissions(r.HTTP)
			for _, s := range w {
				warns = append(warns, id+": "+s)
			}
		}
		p := &rbacv3.Policy{Principals: []*rbacv3.Principal{anyPrincipal()}}
		if !r.AnyPeer {
			var peers []rangeSet
			for _, peer := range r.Peers {
				peers = append(peers, t.peers.ranges(peer)...)
			}
			if len(peers) == 0 {
				warns = append(warns, fmt.Sprintf("%s: peers %v have no addresses in the ipcache: matches nothing", id, r.Peers))
				continue
			}
			if d == policy.Egress {
				perms = append([]*rbacv3.Permission{orPermissions(destinationPermissions(peers))}, perms...)
			} else {
				p.Principals = sourcePrincipals(peers)
			}
		}
		switch len(perms) {
		case 0:
			p.Permissions = []*rbacv3.Permission{{Rule: &rbacv3.Permission_Any{Any: true}}}
		case 1:
			p.Permissions = perms
		default:
			p.Permissions = []*rbacv3.Permission{{Rule: &rbacv3.Permission_AndRules{AndRules: &rbacv3.Permission_Set{Rules: perms}}}}
		}
		if _, dup := out.Policies[id]; dup {
			id = fmt.Sprintf("%s#%d", id, i)
		}
		out.Policies[id] = p
	}
	return out, warns, out.ValidateAll()
}

func anyPrincipal() *rbacv3.Principal {
	return &rbacv3.Principal{Identifier: &rbacv3.Principal_Any{Any: true}}
}

// anchored makes a policy regex match the whole value, as policy does.
func anchored(expr string) string { return "^(?:" + expr + ")$" }

func headerPermission(m *routev3.HeaderMatcher) *rbacv3.Permission {
	return &rbacv3.Permission{Rule: &rbacv3.Permission_Header{Header: m}}
}

func regexHeader(name, expr string) *routev3.HeaderMatcher {
	return &routev3.HeaderMatcher{Name: name, HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
		StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_SafeRegex{
			SafeRegex: &matcherv3.RegexMatcher{Regex: anchored(expr)},
		}},
	}}
}

func httpPermissions(r *policy.HTTPRule) ([]*rbacv3.Permission, []string) {
	var perms []*rbacv3.Permission
	var warns []string
	for _, f := range []struct{ header, expr string }{{":method", r.Method}, {":path", r.Path}, {":authority", r.Host}} {
		if f.expr != "" {
			perms = append(perms, headerPermission(regexHeader(f.header, f.expr)))
		}
	}
	for _, h := range r.Headers {
		name := strings.ToLower(h.Name)
		if h.Mismatch != "" {
			warns = append(warns, fmt.Sprintf("header %s: mismatch action %s is not taken by Envoy; the header does not decide", h.Name, h.Mismatch))
			continue
		}
		m := &routev3.HeaderMatcher{Name: name}
		if h.Presence {
			m.HeaderMatchSpecifier = &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}
		} else {
			m.HeaderMatchSpecifier = &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
				MatchPattern: &matcherv3.StringMatcher_Exact{Exact: h.Value},
			}}
		}
		perms = append(perms, headerPermission(m))
	}
	return perms, warns
}
