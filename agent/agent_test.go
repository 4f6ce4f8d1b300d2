package agent

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/envoy"
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

func TestFolderSource(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	updates := make(chan SourceUpdate)
	go (&FolderSource{Dir: dir, Interval: 20 * time.Millisecond}).Run(ctx, updates)
	next := func() SourceUpdate {
		select {
		case u := <-updates:
			return u
		case <-time.After(5 * time.Second):
			t.Fatal("no update")
		}
		return SourceUpdate{}
	}
	u1 := next()
	if len(u1.Objects.Namespaces) != 1 {
		t.Fatalf("first update: %+v", u1.Objects)
	}
	write("bad.yaml", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\nspec: {}\n")
	u2 := next()
	if u2.Digest == u1.Digest || len(u2.Errors) != 1 || len(u2.Objects.Namespaces) != 1 {
		t.Fatalf("second update: %d errors, digest changed %v", len(u2.Errors), u2.Digest != u1.Digest)
	}
	select {
	case u := <-updates:
		t.Fatalf("update without a change: %s", u.Digest)
	case <-time.After(100 * time.Millisecond):
	}
}

func TestEnvoyAccessRecord(t *testing.T) {
	r := envoyAccessRecord(envoy.Record{Method: "POST", Path: "/v1/request-landing", Status: 200, Verdict: envoy.VerdictAllowed,
		RuleSet: "l7gate/ingress/256/80", Kind: "allow", PolicyKind: "cnp", Policy: "default/rule1", Rule: "spec.ingress[0].http[0]"})
	if r.Verdict != "allowed" || r.DstIdentity != 256 || r.Direction != policy.Ingress || len(r.DecidedBy) != 1 {
		t.Fatalf("%+v", r)
	}
	p := r.DecidedBy[0]
	if p.Policy != "default/rule1" || p.PolicyKind != policy.KindCNP || p.Path != "spec.ingress[0]" || p.L7 != "http[0]" || p.Kind != policy.KindAllow {
		t.Errorf("provenance %+v", p)
	}
	d := envoyAccessRecord(envoy.Record{Verdict: envoy.VerdictDenied, Status: 200, GRPCStatus: "7", RuleSet: "l7gate/egress/300/50051", Kind: "default-deny"})
	if d.Verdict != "denied" || d.SrcIdentity != 300 || d.Direction != policy.Egress || d.Error != "grpc-status 7" || d.DecidedBy[0].Kind != policy.KindDefaultDeny {
		t.Errorf("%+v", d)
	}
}
