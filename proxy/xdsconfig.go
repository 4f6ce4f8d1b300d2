package proxy

import (
	"fmt"
	"slices"
	"strings"

	"github.com/l7gate/l7gate/policy"
	l7gatev1 "github.com/l7gate/l7gate/proto/l7gatev1"
	"github.com/l7gate/l7gate/xds"
	"github.com/l7gate/l7gate/xds/client"
)

// ConfigFromXDS builds a Config from the l7gate xDS resources. Errors name
// the offending resource (the proxy NACKs with them).
func ConfigFromXDS(r *client.Resources, version string) (*Config, error) {
	return configFromXDS(r, version, nil, nil)
}

// ConfigFromXDS is the package's ConfigFromXDS compiling the HTTP rules'
// expressions through the proxy's cache, which its next Apply uses too: a
// config change compiles only the expressions the proxy has not seen in
// its current or previous config. (With make bench's CNP of 101 regex
// rules, compiling all of them three times per change — the decode's
// check, this function's and Apply's — was most of the 10–13 ms p50 of the
// push at 0 pods; BenchmarkConfigFromXDS: 13.0 → 2.6 ms per change.)
//
// Identity memberships are converted once per resource message: the xDS
// client keeps the message of every resource a response did not change,
// so a CNP change (a NetworkPolicy resource) reuses the membership list
// and its address index of the last config (make bench at 1000 + 10k
// pods: 1010 memberships, 11k prefixes parsed and indexed twice per
// change, most of the proxy's part of the push; BenchmarkConfigFromXDS
// pods=11000).
func (p *Proxy) ConfigFromXDS(r *client.Resources, version string) (*Config, error) {
	p.memberMu.Lock()
	defer p.memberMu.Unlock()
	return configFromXDS(r, version, &p.matchers, &p.members)
}

func configFromXDS(r *client.Resources, version string, mc *policy.HTTPMatcherCache, mm *memberMemo) (*Config, error) {
	cfg := &Config{Version: version}
	for _, name := range sortedNames(r.Listeners) {
		spec, err := xds.ListenerFromProto(r.Listeners[name])
		if err != nil {
			return nil, err
		}
		cfg.Listeners = append(cfg.Listeners, Listener{Name: spec.Name(), Port: spec.ProxyPort, Direction: spec.Direction, Parser: spec.Parser})
	}
	for _, name := range sortedNames(r.Policies) {
		ep, pol, err := xds.PolicyFromProtoCached(r.Policies[name], mc)
		if err != nil {
			return nil, err
		}
		cfg.Endpoints = append(cfg.Endpoints, Endpoint{Identity: ep.Identity, IPs: ep.IPs, Ingress: pol.Ingress.L7, Egress: pol.Egress.L7,
			FQDNSelectors: pol.Egress.FQDNSelectors})
	}
	var keep map[string]memberOf // the memo's next content, kept if the config compiles
	if mm != nil && mm.same(r.Identities) {
		cfg.Members, cfg.index = mm.members, mm.index
	} else {
		if mm != nil {
			keep = make(map[string]memberOf, len(r.Identities))
		}
		for _, name := range sortedNames(r.Identities) {
			msg := r.Identities[name]
			m, ok := IdentityMembership{}, false
			if mm != nil {
				var old memberOf
				old, ok = mm.byName[name]
				ok = ok && old.msg == msg
				m = old.m
			}
			if !ok {
				var err error
				if m, err = membershipFromXDS(name, msg); err != nil {
					return nil, err
				}
			}
			if keep != nil {
				keep[name] = memberOf{msg: msg, m: m}
			}
			cfg.Members = append(cfg.Members, m)
		}
		cfg.index = newMemberIndex(cfg.Members)
	}
	if _, err := compile(cfg, mc); err != nil {
		return nil, err
	}
	if keep != nil {
		mm.byName, mm.members, mm.index = keep, cfg.Members, cfg.index
	}
	return cfg, nil
}

func membershipFromXDS(name string, msg *l7gatev1.IdentityMembership) (IdentityMembership, error) {
	info, entries, err := xds.MembershipFromProto(msg)
	if err != nil {
		return IdentityMembership{}, err
	}
	m := IdentityMembership{Identity: info.ID}
	for _, e := range entries {
		if e.Identity != info.ID {
			return IdentityMembership{}, fmt.Errorf("identity membership %q: entry for identity %d", name, e.Identity)
		}
		m.Prefixes = append(m.Prefixes, e.Prefix)
	}
	return m, nil
}

// memberMemo: the identity memberships of the proxy's last config, by
// resource name, with the message each was converted from (the client's
// messages are immutable: an unchanged resource is the same message),
// and the config's list and address index (read-only once built).
type memberMemo struct {
	byName  map[string]memberOf
	members []IdentityMembership
	index   *memberIndex
}

type memberOf struct {
	msg *l7gatev1.IdentityMembership
	m   IdentityMembership
}

// same reports whether ids are exactly the memo's messages.
func (mm *memberMemo) same(ids map[string]*l7gatev1.IdentityMembership) bool {
	if mm.index == nil || len(ids) != len(mm.byName) {
		return false
	}
	for name, msg := range ids {
		if old, ok := mm.byName[name]; !ok || old.msg != msg {
			return false
		}
	}
	return true
}

func sortedNames[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.SortFunc(out, strings.Compare)
	return out
}
