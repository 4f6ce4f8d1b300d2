package policy

import (
	"slices"
	"strings"
	"testing"
)

// l3LiftObjects: an L3-only allow for a peer and L7 rules on a port for the
// same peer, in both directions (ingress by labels, egress by CIDR), as in
// Cilium's TestWildcardCIDRRulesEgress and Test_MergeRules.
const l3LiftObjects = `
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: ns, labels: {app: server}}
status: {podIP: 198.18.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: admin, namespace: ns, labels: {app: admin}}
status: {podIP: 198.18.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: friend, namespace: ns, labels: {app: friend}}
status: {podIP: 198.18.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: ns, labels: {app: client}}
status: {podIP: 198.18.0.4}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: ns}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  # 0: admin at L3 only (every port)
  - fromEndpoints: [{matchLabels: {app: admin}}]
  # 1: HTTP rules on 80 for admin and friend
  - fromEndpoints: [{matchLabels: {app: admin}}, {matchLabels: {app: friend}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET, path: /public/.*}]}
  ingressDeny:
  # 0: nobody reaches 8080, admin included
  - toPorts: [{ports: [{port: "8080"}]}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client, namespace: ns}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  # 0: 203.0.113.0/24 at L3 only
  - toCIDR: [203.0.113.0/24]
  # 1: HTTP rules on 80 for the same CIDR
  - toCIDR: [203.0.113.0/24]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET, path: /}]}
  # 2: HTTP rules on 80 for another CIDR, not lifted
  - toCIDRSet: [{cidr: 198.51.100.0/24}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET, path: /}]}
`

// TestL3OnlyAllowLiftsL7: an L3-only allow for a peer gives that peer an
// allow-all L7 rule on ports where another rule redirects it (Cilium's
// semantics); the connection stays redirected, deny rules still win, and
// peers without the L3 allow keep the L7 rules.
func TestL3OnlyAllowLiftsL7(t *testing.T) {
	objs := mustDecode(t, l3LiftObjects)
	admin := TracePeer{Addr: mustAddr("198.18.0.2")}
	friend := TracePeer{Addr: mustAddr("198.18.0.3")}
	server := TracePeer{Addr: mustAddr("198.18.0.1")}
	client := TracePeer{Addr: mustAddr("198.18.0.4")}
	tests := []struct {
		name     string
		src, dst TracePeer
		port     uint16
		req      *HTTPRequest
		dir      Direction
		want     Decision
		l4       Decision
		path     string // the deciding rule
		l7       string
		shadowed []string // paths of the L7 rules the decision shadows
	}{
		{"ingress: L3 allow lifts the L7 rules for admin", admin, server, 80, &HTTPRequest{Method: "DELETE", Path: "/private"},
			Ingress, DecisionAllowed, DecisionRedirected, "spec.ingress[0]", "", []string{"spec.ingress[1].http[0]"}},
		{"ingress: admin's matching request still allowed", admin, server, 80, &HTTPRequest{Method: "GET", Path: "/public/x"},
			Ingress, DecisionAllowed, DecisionRedirected, "spec.ingress[1]", "http[0]", nil},
		{"ingress: friend has no L3 allow", friend, server, 80, &HTTPRequest{Method: "DELETE", Path: "/private"},
			Ingress, DecisionDenied, DecisionRedirected, "spec.ingress[1]", "", nil},
		{"ingress: deny still wins over the L3 allow", admin, server, 8080, nil,
			Ingress, DecisionDenied, DecisionDenied, "spec.ingressDeny[0]", "", nil},
		{"egress: L3 CIDR allow lifts the L7 rules", client, TracePeer{Addr: mustAddr("203.0.113.7")}, 80, &HTTPRequest{Method: "POST", Path: "/admin"},
			Egress, DecisionAllowed, DecisionRedirected, "spec.egress[0]", "", []string{"spec.egress[1].http[0]"}},
		{"egress: other CIDR keeps its L7 rules", client, TracePeer{Addr: mustAddr("198.51.100.7")}, 80, &HTTPRequest{Method: "POST", Path: "/admin"},
			Egress, DecisionDenied, DecisionRedirected, "spec.egress[2]", "", nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, err := Trace(objs, TraceRequest{Src: tc.src, Dst: tc.dst, Protocol: ProtoTCP, DPort: tc.port, HTTP: tc.req})
			if err != nil {
				t.Fatal(err)
			}
			d := res.Ingress
			if tc.dir == Egress {
				d = res.Egress
			}
			if d.Verdict != tc.want || d.L4 != tc.l4 {
				t.Fatalf("%s: verdict %s (L4 %s), want %s (L4 %s); decided by %v", tc.dir, d.Verdict, d.L4, tc.want, tc.l4, d.DecidedBy)
			}
			if !slices.ContainsFunc(d.DecidedBy, func(p Provenance) bool { return p.Path == tc.path && p.L7 == tc.l7 }) {
				t.Errorf("decided by %v, want %s %s", d.DecidedBy, tc.path, tc.l7)
			}
			var shadowed []string
			if d.L7 != nil {
				for _, p := range d.L7.Shadowed {
					shadowed = append(shadowed, p.Path+"."+p.L7)
				}
			}
			if !slices.Equal(shadowed, tc.shadowed) {
				t.Errorf("shadowed %v, want %v", shadowed, tc.shadowed)
			}
		})
	}
}

// TestShadowWarning: validation names both rules when an L3-only allow
// shadows another rule's L7 rules for the same peer.
func TestShadowWarning(t *testing.T) {
	objs := mustDecode(t, l3LiftObjects)
	ws := ShadowWarnings(objs, mustCompute(t, objs))
	var got []string
	for _, w := range ws {
		got = append(got, w.String())
	}
	want := []string{
		"test.yaml: CiliumNetworkPolicy ns/client: spec.egress[0]: L3-only allow lifts the L7 rules of ns/client spec.egress[1] (port TCP/80) for the same peers: their requests are not checked against those rules",
		"test.yaml: CiliumNetworkPolicy ns/server: spec.ingress[0]: L3-only allow lifts the L7 rules of ns/server spec.ingress[1] (port TCP/80) for the same peers: their requests are not checked against those rules",
	}
	if !slices.Equal(got, want) {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestShadowWarningNeedsEndpoints: rules with different endpointSelectors
// that select the same pod are compared through the computed policy; the
// static comparison alone cannot see them.
func TestShadowWarningNeedsEndpoints(t *testing.T) {
	objs := mustDecode(t, `
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: ns, labels: {app: web, tier: front}}
status: {podIP: 198.18.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: ops, namespace: ns, labels: {app: ops}}
status: {podIP: 198.18.0.2}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7, namespace: ns}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - toPorts:
    - ports: [{port: "8080"}]
      rules: {http: [{method: GET}]}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ops, namespace: ns}
spec:
  endpointSelector: {matchLabels: {tier: front}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: ops}}]
`)
	if ws := ShadowWarnings(objs, nil); len(ws) != 0 {
		t.Errorf("static comparison found %v; the subjects differ in text", ws)
	}
	ws := ShadowWarnings(objs, mustCompute(t, objs))
	want := "test.yaml: CiliumNetworkPolicy ns/ops: spec.ingress[0]: L3-only allow lifts the L7 rules of ns/l7 spec.ingress[0] (port TCP/8080) for the same peers: their requests are not checked against those rules"
	if len(ws) != 1 || ws[0].String() != want {
		t.Errorf("warnings %v, want [%s]", ws, want)
	}
}
