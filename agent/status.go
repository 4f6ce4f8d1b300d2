package agent

import (
	"cmp"
	"maps"
	"slices"

	"github.com/l7gate/l7gate/agentapi"
	"github.com/l7gate/l7gate/bpftranslate"
	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/source"
)

// Status implements agentapi.Backend: what `l7gate status` shows.
func (a *Agent) Status() agentapi.Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := agentapi.Status{Node: a.cfg.Node, StartedAt: a.st.startedAt, Ready: a.st.implementedRevision > 0,
		Revision: a.st.revision, ImplementedRevision: a.st.implementedRevision, SourceDigest: a.st.digest,
		LastError: a.st.lastError, Errors: slices.Clone(a.st.errors), Warnings: slices.Clone(a.st.warnings),
		Failures: slices.Clone(a.st.failures), Policies: slices.Clone(a.st.policies),
		Endpoints: []agentapi.EndpointStatus{}, Identities: []policy.IdentityInfo{}, ProxyPorts: []agentapi.ProxyPortStatus{},
		Proxies: []agentapi.ProxyConsumer{}, Services: a.services.list(), SocketLB: a.cfg.SocketLB}
	if st.Errors == nil {
		st.Errors = []string{}
	}
	if st.Policies == nil {
		st.Policies = []agentapi.PolicyStatus{}
	}
	failed := map[string][]source.EndpointFailure{}
	for _, f := range a.st.failures {
		failed[f.Endpoint] = append(failed[f.Endpoint], f)
	}
	if a.st.snap != nil {
		local := map[string]bpftranslate.LocalEndpoint{}
		for _, l := range a.st.local {
			local[l.Key()] = l
		}
		for _, ep := range a.st.snap.Endpoints {
			es := agentapi.EndpointStatus{Endpoint: ep}
			if l, ok := local[ep.Namespace+"/"+ep.Name]; ok {
				es.Local, es.Ifindex, es.Device = true, l.Ifindex, l.Device
				es.Failures = failed[l.Key()]
			}
			st.Endpoints = append(st.Endpoints, es)
		}
		st.Identities = a.st.snap.Identities
		st.Audit = auditStatus(a.st.snap, a.st.local)
	}
	st.AuditMode = a.cfg.Policy.AuditMode
	for k, p := range a.st.ports {
		st.ProxyPorts = append(st.ProxyPorts, agentapi.ProxyPortStatus{Direction: k.Direction, Parser: k.Parser, Port: p})
	}
	slices.SortFunc(st.ProxyPorts, func(x, y agentapi.ProxyPortStatus) int { return cmp.Compare(x.Port, y.Port) })
	for _, c := range a.xds.Consumers() {
		st.Proxies = append(st.Proxies, agentapi.ProxyConsumer{ID: c.ID, Streams: c.Streams, Acked: c.Types})
	}
	return st
}

// Rules implements agentapi.Backend.
func (a *Agent) Rules() map[uint32]policy.Provenance {
	a.mu.Lock()
	defer a.mu.Unlock()
	return maps.Clone(a.st.rules)
}

func policyStatuses(o *policy.Objects, rev uint64) []agentapi.PolicyStatus {
	out := []agentapi.PolicyStatus{}
	for _, p := range o.Policies {
		out = append(out, agentapi.PolicyStatus{Name: p.Name(), Kind: string(p.Kind), File: p.Ref.File, ImplementedRevision: rev})
	}
	slices.SortFunc(out, func(a, b agentapi.PolicyStatus) int {
		return cmp.Or(cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Name, b.Name))
	})
	return out
}

// auditStatus lists the policies in audit mode for the local endpoints:
// those whose rules in the endpoints' policies carry Provenance.Audit.
func auditStatus(snap *policy.Snapshot, local []bpftranslate.LocalEndpoint) []agentapi.AuditStatus {
	type key struct {
		name string
		kind policy.PolicyKind
	}
	eps := map[key]map[string]bool{}
	add := func(p policy.Provenance, ep string) {
		if !p.Audit {
			return
		}
		k := key{p.Policy, p.PolicyKind}
		if eps[k] == nil {
			eps[k] = map[string]bool{}
		}
		eps[k][ep] = true
	}
	for _, l := range local {
		pol := snap.Policy(l.Identity)
		if pol == nil {
			continue
		}
		for _, dp := range []*policy.DirectionPolicy{&pol.Ingress, &pol.Egress} {
			for _, p := range dp.DefaultDeny {
				add(p, l.Key())
			}
			for _, e := range dp.Entries {
				for _, p := range e.Origins {
					add(p, l.Key())
				}
			}
			for _, rs := range dp.L7 {
				for _, r := range rs.Rules {
					add(r.Origin, l.Key())
				}
			}
		}
	}
	var out []agentapi.AuditStatus
	for k, m := range eps {
		a := agentapi.AuditStatus{Policy: k.name, PolicyKind: k.kind}
		for ep := range m {
			a.Endpoints = append(a.Endpoints, ep)
		}
		slices.Sort(a.Endpoints)
		out = append(out, a)
	}
	slices.SortFunc(out, func(x, y agentapi.AuditStatus) int {
		return cmp.Or(cmp.Compare(x.Policy, y.Policy), cmp.Compare(x.PolicyKind, y.PolicyKind))
	})
	return out
}
