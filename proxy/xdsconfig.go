package proxy

import (
	"fmt"
	"slices"
	"strings"

	"github.com/l7gate/l7gate/xds"
	"github.com/l7gate/l7gate/xds/client"
)

// ConfigFromXDS builds a Config from the l7gate xDS resources. Errors name
// the offending resource (the proxy NACKs with them).
func ConfigFromXDS(r *client.Resources, version string) (*Config, error) {
	cfg := &Config{Version: version}
	for _, name := range sortedNames(r.Listeners) {
		spec, err := xds.ListenerFromProto(r.Listeners[name])
		if err != nil {
			return nil, err
		}
		cfg.Listeners = append(cfg.Listeners, Listener{Name: spec.Name(), Port: spec.ProxyPort, Direction: spec.Direction, Parser: spec.Parser})
	}
	for _, name := range sortedNames(r.Policies) {
		ep, pol, err := xds.PolicyFromProto(r.Policies[name])
		if err != nil {
			return nil, err
		}
		cfg.Endpoints = append(cfg.Endpoints, Endpoint{Identity: ep.Identity, IPs: ep.IPs, Ingress: pol.Ingress.L7, Egress: pol.Egress.L7,
			FQDNSelectors: pol.Egress.FQDNSelectors})
	}
	for _, name := range sortedNames(r.Identities) {
		info, entries, err := xds.MembershipFromProto(r.Identities[name])
		if err != nil {
			return nil, err
		}
		m := IdentityMembership{Identity: info.ID}
		for _, e := range entries {
			if e.Identity != info.ID {
				return nil, fmt.Errorf("identity membership %q: entry for identity %d", name, e.Identity)
			}
			m.Prefixes = append(m.Prefixes, e.Prefix)
		}
		cfg.Members = append(cfg.Members, m)
	}
	if _, err := compile(cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}

func sortedNames[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.SortFunc(out, strings.Compare)
	return out
}
