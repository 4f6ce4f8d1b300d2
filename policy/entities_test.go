package policy

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
)

const hostPods = `
apiVersion: v1
kind: Pod
metadata: {name: app, namespace: ns, labels: {app: app}}
status: {podIP: 198.18.0.1}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-all, namespace: ns}
spec:
  endpointSelector: {}
  ingress: [{}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7, namespace: ns}
spec:
  endpointSelector: {}
  ingress:
  - toPorts: [{ports: [{port: "80"}], rules: {http: [{path: /healthz}]}}]
  ingressDeny:
  - fromEntities: [host]
    toPorts: [{ports: [{port: "22"}]}]
`

// TestAllowLocalhost (issue 12 item 9): the host (kubelet probes) reaches
// every endpoint by default, decided by the allow-localhost rule; deny
// rules still win and L7 rules still apply; LocalhostPolicy turns it off.
func TestAllowLocalhost(t *testing.T) {
	objs := mustDecode(t, hostPods)
	trace := func(opts Options, port uint16, http *HTTPRequest) *TraceResult {
		res, err := Trace(objs, TraceRequest{Src: TracePeer{Entity: "host"}, Dst: TracePeer{Addr: mustAddr("198.18.0.1")}, Protocol: ProtoTCP, DPort: port, HTTP: http, Options: opts})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	res := trace(Options{}, 8080, nil)
	if res.Verdict != DecisionAllowed || len(res.DecidedBy) != 1 || res.DecidedBy[0] != AllowLocalhostOrigin() {
		t.Errorf("host → app:8080: %s by %v, want allowed by allow-localhost", res.Verdict, res.DecidedBy)
	}
	if got := res.DecidedBy[0].String(); got != "allow allow-localhost (l7gate --allow-localhost=always)" {
		t.Errorf("provenance renders as %q", got)
	}
	if res := trace(Options{}, 22, nil); res.Verdict != DecisionDenied || res.DecidedBy[0].Path != "spec.ingressDeny[0]" {
		t.Errorf("host → app:22: %s by %v, want denied by the deny rule", res.Verdict, res.DecidedBy)
	}
	res = trace(Options{}, 80, &HTTPRequest{Method: "GET", Path: "/admin"})
	if res.Verdict != DecisionDenied || res.Ingress.L4 != DecisionRedirected {
		t.Errorf("host → app:80 GET /admin: %s (L4 %s), want redirected and denied by the L7 rules", res.Verdict, res.Ingress.L4)
	}
	if res := trace(Options{}, 80, &HTTPRequest{Method: "GET", Path: "/healthz"}); res.Verdict != DecisionAllowed {
		t.Errorf("host → app:80 GET /healthz: %s, want allowed", res.Verdict)
	}
	if res := trace(Options{AllowLocalhost: LocalhostPolicy}, 8080, nil); res.Verdict != DecisionDenied {
		t.Errorf("--allow-localhost=policy: host → app:8080 %s by %v, want denied", res.Verdict, res.DecidedBy)
	}
	if _, err := ParseLocalhostMode("sometimes"); err == nil {
		t.Error("ParseLocalhostMode accepted a bad mode")
	}
}

const apiObjects = `
apiVersion: v1
kind: Pod
metadata: {name: app, namespace: ns, labels: {app: app}}
status: {podIP: 198.18.0.1}
---
apiVersion: v1
kind: Node
metadata: {name: cp}
status: {addresses: [{type: InternalIP, address: 198.18.100.1}]}
---
apiVersion: v1
kind: Node
metadata: {name: worker}
status: {addresses: [{type: InternalIP, address: 198.18.100.2}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: kubernetes, namespace: default, labels: {kubernetes.io/service-name: kubernetes}}
addressType: IPv4
endpoints:
- addresses: [198.18.100.1]
- addresses: [203.0.113.10]
- addresses: [203.0.113.11]
  conditions: {ready: false}
ports: [{name: https, port: 6443, protocol: TCP}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: egress, namespace: ns}
spec:
  endpointSelector: {matchLabels: {app: app}}
  egress:
  - toEntities: [kube-apiserver]
    toPorts: [{ports: [{port: "6443"}]}]
  - toEntities: [remote-node]
    toPorts: [{ports: [{port: "10250"}]}]
  - toCIDR: [203.0.113.10/32, 198.51.100.0/24]
    toPorts: [{ports: [{port: "443"}]}]
`

// TestKubeAPIServerEntity (issue 12 item 9): the kube-apiserver entity is
// the addresses of the default/kubernetes EndpointSlice (and of
// Options.KubeAPIServer, for a folder source); an address that is also a
// node's is both entities; CIDR rules do not select it.
func TestKubeAPIServerEntity(t *testing.T) {
	objs := mustDecode(t, apiObjects)
	egress := func(opts Options, dst string, port uint16) Decision {
		res, err := Trace(objs, TraceRequest{Src: TracePeer{Addr: mustAddr("198.18.0.1")}, Dst: TracePeer{Addr: mustAddr(dst)}, Protocol: ProtoTCP, DPort: port, Options: opts})
		if err != nil {
			t.Fatal(err)
		}
		return res.Egress.Verdict
	}
	for _, tc := range []struct {
		dst  string
		port uint16
		want Decision
	}{
		{"203.0.113.10", 6443, DecisionAllowed}, // from the EndpointSlice
		{"198.18.100.1", 6443, DecisionAllowed}, // a node's address, also the API server's
		{"198.18.100.1", 10250, DecisionAllowed},
		{"198.18.100.2", 10250, DecisionAllowed}, // remote-node only
		{"198.18.100.2", 6443, DecisionDenied},
		{"203.0.113.11", 6443, DecisionDenied}, // not ready
		{"203.0.113.10", 443, DecisionDenied},  // CIDR rules do not select the API server
		{"198.51.100.9", 443, DecisionAllowed},
		{"192.0.2.50", 6443, DecisionDenied},
	} {
		if got := egress(Options{}, tc.dst, tc.port); got != tc.want {
			t.Errorf("app → %s:%d: %s, want %s", tc.dst, tc.port, got, tc.want)
		}
	}
	if got := egress(Options{KubeAPIServer: []netip.Addr{mustAddr("192.0.2.50")}}, "192.0.2.50", 6443); got != DecisionAllowed {
		t.Errorf("Options.KubeAPIServer: app → 192.0.2.50:6443 %s, want allowed", got)
	}
	snap := mustCompute(t, objs)
	if !slices.ContainsFunc(snap.Warnings, func(w string) bool { return strings.Contains(w, "203.0.113.10 is also a policy CIDR") }) {
		t.Errorf("no warning about the CIDR naming the API server: %v", snap.Warnings)
	}
	both := snap.IdentityOf(mustAddr("198.18.100.1"))
	if got := snap.Labels(both).Strings(); !slices.Equal(got, []string{"reserved:kube-apiserver", "reserved:remote-node"}) {
		t.Errorf("identity %d of a node that runs the API server has labels %v", both, got)
	}
	seen := map[netip.Prefix]bool{}
	for _, e := range snap.IPCache {
		if seen[e.Prefix] {
			t.Errorf("ipcache holds %s twice", e.Prefix)
		}
		seen[e.Prefix] = true
	}
	// Other EndpointSlices are a Service's backends, not the API server's.
	other := mustDecode(t, "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-abc, namespace: shop, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nendpoints: []\n")
	if len(other.APIServers) != 0 || len(other.Warnings) != 0 || len(other.EndpointSlices) != 1 {
		t.Errorf("another EndpointSlice: %+v", other)
	}
}

// TestEntityAddressesOfPods: a kube-apiserver address or a node address
// that is a pod's keeps the pod's identity, with a warning; the other
// addresses get theirs (entityAddresses looks up only these addresses).
func TestEntityAddressesOfPods(t *testing.T) {
	objs, errs := Decode("pods.yaml", []byte(`apiVersion: v1
kind: Pod
metadata: {name: api, namespace: web, labels: {app: api}}
status: {podIP: 198.18.7.1}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: web, labels: {app: other}}
status: {podIP: 198.18.7.2}
---
apiVersion: v1
kind: Node
metadata: {name: node-a}
status: {addresses: [{type: InternalIP, address: 198.18.7.2}, {type: InternalIP, address: 198.18.100.3}]}
`))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	snap, err := ComputeWith(objs, NewIdentityAllocator(), Options{KubeAPIServer: []netip.Addr{mustAddr("198.18.7.1"), mustAddr("192.0.2.60")}})
	if err != nil {
		t.Fatal(err)
	}
	warned := func(s string) bool {
		return slices.ContainsFunc(snap.Warnings, func(w string) bool { return strings.Contains(w, s) })
	}
	if !warned("kube-apiserver address 198.18.7.1 is a pod's") || !warned("node node-a: address 198.18.7.2 is also a pod's") {
		t.Errorf("warnings %v", snap.Warnings)
	}
	for addr, want := range map[string]func(Identity) bool{
		"198.18.7.1":   func(id Identity) bool { return id >= 256 },
		"198.18.7.2":   func(id Identity) bool { return id >= 256 },
		"192.0.2.60":   func(id Identity) bool { return id == IdentityKubeAPIServer },
		"198.18.100.3": func(id Identity) bool { return id == IdentityRemoteNode },
	} {
		if id := snap.IdentityOf(mustAddr(addr)); !want(id) {
			t.Errorf("%s has identity %d (%v)", addr, id, snap.Labels(id).Strings())
		}
	}
}
