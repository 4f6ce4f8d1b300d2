package policy

import (
	"fmt"
	"testing"
)

// npPods: namespaces x and z with labels ns=<name>, pods x/a and z/b, and
// named container ports.
const npPods = `
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: Namespace
metadata: {name: z, labels: {ns: z, team: blue}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {containers: [{name: c, ports: [{name: serve-80-tcp, containerPort: 80}]}]}
status: {podIP: 198.18.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: z, labels: {pod: b}}
spec: {containers: [{name: c, ports: [{name: serve-80-tcp, containerPort: 80}]}]}
status: {podIP: 198.18.2.2}
`

func traceVerdict(t *testing.T, objs *Objects, src, dst string, port uint16) *TraceResult {
	t.Helper()
	res, err := Trace(objs, TraceRequest{Src: TracePeer{Addr: mustAddr(src)}, Dst: TracePeer{Addr: mustAddr(dst)}, Protocol: ProtoTCP, DPort: port})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestNamespaceSelectorsSelectPods (issue 25, class 1): a namespace
// selector selects pods in namespaces; world and CIDR identities have no
// namespace, whatever operator the selector uses.
func TestNamespaceSelectorsSelectPods(t *testing.T) {
	policies := map[string]string{
		"NP ingress namespaceSelector NotIn": `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: z}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [z]}]}}]}]`,
		"NP ingress namespaceSelector {} and podSelector DoesNotExist": `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: z}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchExpressions: [{key: role, operator: DoesNotExist}]}}]}]`,
		"CNP fromEndpoints namespace NotIn": `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: z}
spec:
  endpointSelector: {}
  ingress: [{fromEndpoints: [{matchExpressions: [{key: io.kubernetes.pod.namespace, operator: NotIn, values: [z]}]}]}]`,
		"CCNP fromEndpoints namespace label DoesNotExist": `
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {pod: b}}
  ingress: [{fromEndpoints: [{matchExpressions: [{key: k8s:io.cilium.k8s.namespace.labels.team, operator: DoesNotExist}]}]}]`,
		"CCNP fromEndpoints without a namespace": `
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {pod: b}}
  ingress: [{fromEndpoints: [{matchExpressions: [{key: pod, operator: NotIn, values: [b]}]}]}]`,
	}
	for name, pol := range policies {
		t.Run(name, func(t *testing.T) {
			objs := mustDecode(t, npPods+"---"+pol)
			if r := traceVerdict(t, objs, "198.18.1.1", "198.18.2.2", 80); r.Verdict != DecisionAllowed {
				t.Errorf("x/a → z/b: %s by %v, want allowed (the selector matches x/a)", r.Verdict, r.DecidedBy)
			}
			for _, ext := range []string{"198.19.5.5", "203.0.113.9"} {
				if r := traceVerdict(t, objs, ext, "198.18.2.2", 80); r.Verdict != DecisionDenied {
					t.Errorf("%s → z/b: %s by %v, want denied (an address outside the cluster has no namespace)", ext, r.Verdict, r.DecidedBy)
				}
			}
		})
	}
	t.Run("NP egress namespaceSelector DoesNotExist", func(t *testing.T) {
		objs := mustDecode(t, npPods+`---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {matchExpressions: [{key: team, operator: DoesNotExist}]}}]}]`)
		for _, ext := range []string{"198.19.5.5", "203.0.113.9"} {
			if r := traceVerdict(t, objs, "198.18.1.1", ext, 443); r.Verdict != DecisionDenied {
				t.Errorf("x/a → %s: %s by %v, want denied", ext, r.Verdict, r.DecidedBy)
			}
		}
	})
}

// TestPodIPBeatsCIDR (issue 25, class 2): a pod's own address resolves to
// the pod even when a policy names it as a /32 among other CIDRs, and the
// ipcache never holds two entries for one prefix.
func TestPodIPBeatsCIDR(t *testing.T) {
	for n := 1; n <= 40; n += 13 {
		doc := npPods + `---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: z}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-cidrs, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 198.18.2.2/32}
`
		for i := range n {
			doc += fmt.Sprintf("    - ipBlock: {cidr: 10.%d.0.0/16}\n", i)
		}
		objs := mustDecode(t, doc)
		snap := mustCompute(t, objs)
		seen := map[string]Identity{}
		for _, e := range snap.IPCache {
			if id, dup := seen[e.Prefix.String()]; dup {
				t.Errorf("%d CIDRs: ipcache has %s twice (identities %d and %d)", n, e.Prefix, id, e.Identity)
			}
			seen[e.Prefix.String()] = e.Identity
		}
		b := snap.IdentityOf(mustAddr("198.18.2.2"))
		if snap.Policy(b) == nil {
			t.Fatalf("%d CIDRs: 198.18.2.2 resolves to %d %v, not to pod z/b", n, b, snap.Labels(b).Strings())
		}
		if r := traceVerdict(t, objs, "198.18.1.1", "198.18.2.2", 80); r.Verdict != DecisionDenied || !r.Destination.Endpoint {
			t.Errorf("%d CIDRs: x/a → z/b: %s (destination %v), want denied by z/b's deny-all", n, r.Verdict, r.Destination.Labels)
		}
	}
}

// TestNamedPortNeedsAPod (issue 25, class 3): a named port is a port on a
// pod; an egress rule without "to" naming one does not allow addresses
// outside the cluster.
func TestNamedPortNeedsAPod(t *testing.T) {
	objs := mustDecode(t, npPods+`---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{ports: [{port: serve-80-tcp}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: c, namespace: z}
spec:
  endpointSelector: {}
  egress: [{toPorts: [{ports: [{port: serve-80-tcp}]}]}]
`)
	for _, src := range []string{"198.18.1.1", "198.18.2.2"} {
		if r := traceVerdict(t, objs, src, "198.19.5.5", 80); r.Verdict != DecisionDenied {
			t.Errorf("%s → 198.19.5.5:80: %s by %v, want denied (no pod there)", src, r.Verdict, r.DecidedBy)
		}
	}
	if r := traceVerdict(t, objs, "198.18.1.1", "198.18.2.2", 80); r.Egress.Verdict != DecisionAllowed {
		t.Errorf("x/a → z/b:80 (a pod with serve-80-tcp): egress %s by %v, want allowed", r.Egress.Verdict, r.Egress.DecidedBy)
	}
	if r := traceVerdict(t, objs, "198.18.2.2", "198.18.1.1", 80); r.Egress.Verdict != DecisionAllowed {
		t.Errorf("z/b → x/a:80 (CNP): egress %s by %v, want allowed", r.Egress.Verdict, r.Egress.DecidedBy)
	}
}
