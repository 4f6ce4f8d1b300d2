package policy

import (
	"strings"
	"testing"
)

// auditObjects: server's policy allows friend on 80 (HTTP GET /public/.*)
// and denies intruder on 8080; the namespace "audited" has its own pair.
const auditObjects = `
apiVersion: v1
kind: Namespace
metadata: {name: ns}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: ns, labels: {app: server}}
status: {podIP: 198.18.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: friend, namespace: ns, labels: {app: friend}}
status: {podIP: 198.18.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: intruder, namespace: ns, labels: {app: intruder}}
status: {podIP: 198.18.0.3}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: ns, annotations: {ANNOTATION}}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: friend}}]
    toPorts:
    - ports: [{port: "80"}]
      rules: {http: [{method: GET, path: /public/.*}]}
  - fromEndpoints: [{matchLabels: {app: intruder}}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: intruder}}]
    toPorts: [{ports: [{port: "8080"}]}]
`

func auditTrace(t *testing.T, annotation string, opts Options, src string, port uint16, http *HTTPRequest) *TraceResult {
	t.Helper()
	doc := strings.Replace(auditObjects, "ANNOTATION", annotation, 1)
	objs := mustDecode(t, doc)
	res, err := Trace(objs, TraceRequest{
		Src: TracePeer{Namespace: "ns", Labels: map[string]string{"app": src}}, Dst: TracePeer{Namespace: "ns", Labels: map[string]string{"app": "server"}},
		Protocol: ProtoTCP, DPort: port, HTTP: http, Options: opts,
	})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func TestAuditPolicyTrace(t *testing.T) {
	const audit = `l7gate.io/audit: "true"`
	for _, tc := range []struct {
		name       string
		annotation string
		opts       Options
		src        string
		port       uint16
		http       *HTTPRequest
		want       Decision
	}{
		{"peer enforced", "", Options{}, "stranger", 80, nil, DecisionDenied},
		{"peer audited", audit, Options{}, "stranger", 80, nil, DecisionAudit},
		{"peer node-wide audit", "", Options{AuditMode: true}, "stranger", 80, nil, DecisionAudit},
		{"http enforced", "", Options{}, "friend", 80, &HTTPRequest{Method: "GET", Path: "/private"}, DecisionDenied},
		{"http audited", audit, Options{}, "friend", 80, &HTTPRequest{Method: "GET", Path: "/private"}, DecisionAudit},
		{"http allowed in audit", audit, Options{}, "friend", 80, &HTTPRequest{Method: "GET", Path: "/public/x"}, DecisionAllowed},
		{"ingressDeny enforced", "", Options{}, "intruder", 8080, nil, DecisionDenied},
		{"ingressDeny audited", audit, Options{}, "intruder", 8080, nil, DecisionAudit},
		{"allowed port in audit", audit, Options{}, "intruder", 9090, nil, DecisionAllowed},
		{"typo enforces", `l7gate.io/audit: "yes"`, Options{}, "stranger", 80, nil, DecisionDenied},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := auditTrace(t, tc.annotation, tc.opts, tc.src, tc.port, tc.http)
			if res.Verdict != tc.want {
				t.Fatalf("verdict %s, want %s (decided by %v)", res.Verdict, tc.want, res.DecidedBy)
			}
			if tc.want == DecisionAudit {
				if len(res.DecidedBy) == 0 {
					t.Fatal("audit verdict names no rule")
				}
				for _, p := range res.DecidedBy {
					if !p.Audit || p.Policy != "ns/server" {
						t.Errorf("audit decided by %v, want ns/server in audit", p)
					}
				}
			}
		})
	}
}

// A namespace annotated with the audit annotation audits every policy for
// its endpoints; an enforcing policy next to an audited one still enforces
// its default-deny.
func TestAuditNamespaceAndMixed(t *testing.T) {
	doc := strings.Replace(auditObjects, "metadata: {name: ns}", `metadata: {name: ns, annotations: {l7gate.io/audit: "true"}}`, 1)
	doc = strings.Replace(doc, "ANNOTATION", "", 1)
	objs := mustDecode(t, doc)
	res, err := Trace(objs, TraceRequest{Src: TracePeer{Namespace: "ns", Labels: map[string]string{"app": "stranger"}},
		Dst: TracePeer{Namespace: "ns", Labels: map[string]string{"app": "server"}}, Protocol: ProtoTCP, DPort: 80})
	if err != nil {
		t.Fatal(err)
	}
	if res.Verdict != DecisionAudit {
		t.Fatalf("namespace audit: verdict %s, want audit", res.Verdict)
	}
	// a second, enforced policy selecting server: default-deny is enforced again
	mixed := strings.Replace(auditObjects, "ANNOTATION", `l7gate.io/audit: "true"`, 1) + `
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: strict, namespace: ns}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: friend}}]
`
	objs = mustDecode(t, mixed)
	res, err = Trace(objs, TraceRequest{Src: TracePeer{Namespace: "ns", Labels: map[string]string{"app": "stranger"}},
		Dst: TracePeer{Namespace: "ns", Labels: map[string]string{"app": "server"}}, Protocol: ProtoTCP, DPort: 80})
	if err != nil {
		t.Fatal(err)
	}
	if res.Verdict != DecisionDenied {
		t.Fatalf("audited and enforced policy together: verdict %s, want denied", res.Verdict)
	}
}
