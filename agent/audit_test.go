package agent

import (
	"testing"

	"github.com/l7gate/l7gate/bpftranslate"
	"github.com/l7gate/l7gate/policy"
)

// TestAuditStatus: the status lists the policies in audit mode for this
// node's endpoints only, with the endpoints they are in audit for.
func TestAuditStatus(t *testing.T) {
	objs, errs := policy.Decode("in.yaml", []byte(`
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: ns, labels: {app: a}}
status: {podIP: 198.18.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: ns, labels: {app: b}}
status: {podIP: 198.18.0.2}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: audited, namespace: ns, annotations: {l7gate.io/audit: "true"}}
spec:
  endpointSelector: {}
  ingress: [{fromEndpoints: [{matchLabels: {app: a}}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: enforced, namespace: ns}
spec:
  endpointSelector: {matchLabels: {app: b}}
  egress: [{toEndpoints: [{matchLabels: {app: a}}]}]
`))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	snap, err := policy.Compute(objs, policy.NewIdentityAllocator())
	if err != nil {
		t.Fatal(err)
	}
	var local []bpftranslate.LocalEndpoint
	for _, ep := range snap.Endpoints {
		if ep.Name == "b" {
			local = append(local, bpftranslate.LocalEndpoint{Endpoint: ep, Ifindex: 7})
		}
	}
	got := auditStatus(snap, local)
	if len(got) != 1 || got[0].Policy != "ns/audited" || got[0].PolicyKind != policy.KindCNP || len(got[0].Endpoints) != 1 || got[0].Endpoints[0] != "ns/b" {
		t.Errorf("audit status %+v, want ns/audited for ns/b", got)
	}
	if got := auditStatus(snap, nil); len(got) != 0 {
		t.Errorf("no local endpoints: %+v", got)
	}
}
