package policy

import "testing"

func TestSelectorSemantics(t *testing.T) {
	pod := SecurityLabels("prod", map[string]string{"app": "api", "tier": "backend", "pod-template-hash": "x1"},
		map[string]string{"env": "prod"}, "api-sa")
	host := Labels{{Source: SourceReserved, Key: "host"}}
	tests := []struct {
		name   string
		sel    LabelSelector
		labels Labels
		want   bool
	}{
		{"matchLabels equal", LabelSelector{MatchLabels: map[string]string{"app": "api"}}, pod, true},
		{"matchLabels other value", LabelSelector{MatchLabels: map[string]string{"app": "web"}}, pod, false},
		{"matchLabels all must match", LabelSelector{MatchLabels: map[string]string{"app": "api", "tier": "frontend"}}, pod, false},
		{"k8s source prefix", LabelSelector{MatchLabels: map[string]string{"k8s:app": "api"}}, pod, true},
		{"any source prefix", LabelSelector{MatchLabels: map[string]string{"any:app": "api"}}, pod, true},
		{"reserved source does not match k8s label", LabelSelector{MatchLabels: map[string]string{"reserved:app": "api"}}, pod, false},
		{"reserved host", LabelSelector{MatchLabels: map[string]string{"reserved:host": ""}}, host, true},
		{"pod-template-hash is not an identity label", LabelSelector{MatchLabels: map[string]string{"pod-template-hash": "x1"}}, pod, false},
		{"namespace label", LabelSelector{MatchLabels: map[string]string{"io.kubernetes.pod.namespace": "prod"}}, pod, true},
		{"namespace labels via Cilium keys", LabelSelector{MatchLabels: map[string]string{"io.cilium.k8s.namespace.labels.env": "prod"}}, pod, true},
		{"service account", LabelSelector{MatchLabels: map[string]string{"io.cilium.k8s.policy.serviceaccount": "api-sa"}}, pod, true},
		{"In", LabelSelector{MatchExpressions: []LabelSelectorRequirement{{Key: "tier", Operator: "In", Values: []string{"frontend", "backend"}}}}, pod, true},
		{"In miss", LabelSelector{MatchExpressions: []LabelSelectorRequirement{{Key: "tier", Operator: "In", Values: []string{"frontend"}}}}, pod, false},
		{"In absent key", LabelSelector{MatchExpressions: []LabelSelectorRequirement{{Key: "zone", Operator: "In", Values: []string{"a"}}}}, pod, false},
		{"NotIn", LabelSelector{MatchExpressions: []LabelSelectorRequirement{{Key: "tier", Operator: "NotIn", Values: []string{"frontend"}}}}, pod, true},
		{"NotIn hit", LabelSelector{MatchExpressions: []LabelSelectorRequirement{{Key: "tier", Operator: "NotIn", Values: []string{"backend"}}}}, pod, false},
		{"NotIn absent key matches", LabelSelector{MatchExpressions: []LabelSelectorRequirement{{Key: "zone", Operator: "NotIn", Values: []string{"a"}}}}, pod, true},
		{"Exists", LabelSelector{MatchExpressions: []LabelSelectorRequirement{{Key: "tier", Operator: "Exists"}}}, pod, true},
		{"Exists absent", LabelSelector{MatchExpressions: []LabelSelectorRequirement{{Key: "zone", Operator: "Exists"}}}, pod, false},
		{"DoesNotExist", LabelSelector{MatchExpressions: []LabelSelectorRequirement{{Key: "zone", Operator: "DoesNotExist"}}}, pod, true},
		{"DoesNotExist present", LabelSelector{MatchExpressions: []LabelSelectorRequirement{{Key: "app", Operator: "DoesNotExist"}}}, pod, false},
		{"labels and expressions combine", LabelSelector{MatchLabels: map[string]string{"app": "api"}, MatchExpressions: []LabelSelectorRequirement{{Key: "tier", Operator: "NotIn", Values: []string{"backend"}}}}, pod, false},
		{"empty selector matches", LabelSelector{}, pod, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sel, err := compileSelector(&tc.sel, "", SourceAny, "sel")
			if err != nil {
				t.Fatal(err)
			}
			if got := sel.Matches(tc.labels); got != tc.want {
				t.Errorf("selector %s on %v = %v, want %v", sel, tc.labels.Strings(), got, tc.want)
			}
		})
	}
}

func TestSelectorErrors(t *testing.T) {
	tests := []struct {
		sel  LabelSelector
		want string
	}{
		{LabelSelector{MatchExpressions: []LabelSelectorRequirement{{Key: "a", Operator: "In"}}}, "sel.matchExpressions[0].values: operator In needs at least one value"},
		{LabelSelector{MatchExpressions: []LabelSelectorRequirement{{Key: "a", Operator: "Exists", Values: []string{"x"}}}}, "sel.matchExpressions[0].values: operator Exists takes no values"},
		{LabelSelector{MatchExpressions: []LabelSelectorRequirement{{Key: "a", Operator: "Gt"}}}, `sel.matchExpressions[0].operator: unknown operator "Gt" (want In, NotIn, Exists or DoesNotExist)`},
		{LabelSelector{MatchLabels: map[string]string{"a b": "x"}}, `sel.matchLabels[a b]: invalid label key "a b": character ' ' not allowed`},
	}
	for _, tc := range tests {
		_, err := compileSelector(&tc.sel, "", SourceAny, "sel")
		if err == nil || err.Error() != tc.want {
			t.Errorf("got %v, want %q", err, tc.want)
		}
	}
}

// TestNamespaceScoping checks that a namespaced policy's subject and peer
// selectors stay in its namespace unless a peer names the namespace.
func TestNamespaceScoping(t *testing.T) {
	objs := mustDecode(t, `
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: one, labels: {app: x}}
status: {podIP: 198.18.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: two, labels: {app: x}}
status: {podIP: 198.18.0.2}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: one}
spec:
  endpointSelector: {matchLabels: {app: x}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: x}}]
    toPorts: [{ports: [{port: "1"}]}]
  - fromEndpoints: [{matchLabels: {app: x, k8s:io.kubernetes.pod.namespace: two}}]
    toPorts: [{ports: [{port: "2"}]}]
`)
	snap := mustCompute(t, objs)
	one, two := snap.IdentityOf(mustAddr("198.18.0.1")), snap.IdentityOf(mustAddr("198.18.0.2"))
	if snap.Policy(two).Ingress.Enforced {
		t.Error("the policy of namespace one selected a pod of namespace two")
	}
	in := &snap.Policy(one).Ingress
	for _, tc := range []struct {
		peer Identity
		port uint16
		want Decision
	}{{one, 1, DecisionAllowed}, {two, 1, DecisionDenied}, {two, 2, DecisionAllowed}, {one, 2, DecisionDenied}} {
		if got := in.EvaluateL4(tc.peer, ProtoTCP, tc.port).Decision; got != tc.want {
			t.Errorf("peer %d port %d: %s, want %s", tc.peer, tc.port, got, tc.want)
		}
	}
}
