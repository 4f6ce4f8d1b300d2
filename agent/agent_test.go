package agent

import (
	"testing"

	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/redirect"
	"github.com/l7gate/l7gate/xds/translate"
)

func TestDatapathPolicy(t *testing.T) {
	objs, errs := policy.Load("../examples/starwars/objects.yaml", "../examples/starwars/policy-l7.yaml")
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	snap, err := policy.Compute(objs, policy.NewIdentityAllocator())
	if err != nil {
		t.Fatal(err)
	}
	var local []LocalEndpoint
	for i, ep := range snap.Endpoints {
		local = append(local, LocalEndpoint{Endpoint: ep, Ifindex: 10 + i, Device: "lxc"})
	}
	eps := make([]policy.Endpoint, len(local))
	for i, l := range local {
		eps[i] = l.Endpoint
	}
	need := translate.RequiredListeners(snap, eps)
	if len(need) != 1 || need[0].Direction != policy.Ingress || need[0].Parser != policy.ParserHTTP {
		t.Fatalf("needed listeners %v", need)
	}
	pols, rules, warnings := datapathPolicy(snap, local, map[redirect.PortKey]uint16{portKey(need[0].Direction, need[0].Parser): 15000})
	if len(warnings) != 0 {
		t.Errorf("warnings: %v", warnings)
	}
	var deathstar *bpf.EndpointPolicy
	for i := range pols {
		if len(pols[i].Ingress.Entries) > 0 {
			deathstar = &pols[i]
		}
	}
	if deathstar == nil || !deathstar.Ingress.Enforced || deathstar.Egress.Enforced {
		t.Fatalf("deathstar policy: %+v", pols)
	}
	e := deathstar.Ingress.Entries[0]
	if e.Verdict != bpf.VerdictRedirect || e.ProxyPort != 15000 || e.Port != 80 || e.Protocol != uint8(policy.ProtoTCP) {
		t.Errorf("entry %+v", e)
	}
	if p, ok := rules[e.RuleID]; !ok || p.Policy != "default/rule1" || p.Path != "spec.ingress[0]" {
		t.Errorf("rule %d → %+v", e.RuleID, p)
	}
	// Without a port for the parser the redirect fails closed.
	pols, _, warnings = datapathPolicy(snap, local, nil)
	for _, p := range pols {
		for _, e := range p.Ingress.Entries {
			if e.Verdict != bpf.VerdictDeny {
				t.Errorf("redirect without a proxy port became %v", e.Verdict)
			}
		}
	}
	if len(warnings) == 0 {
		t.Error("no warning for a redirect without a proxy")
	}
}
