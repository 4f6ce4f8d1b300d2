package policy

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzDecode feeds arbitrary bytes to the decoder and the engine: they must
// return errors, never panic, and whatever loads must compute.
func FuzzDecode(f *testing.F) {
	files, _ := filepath.Glob("testdata/in/*")
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err == nil {
			f.Add(data)
		}
	}
	f.Add([]byte("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\nspec: {endpointSelector: {}, ingress: [{toPorts: [{ports: [{port: '80'}], rules: {http: [{path: '('}]}}]}]}\n"))
	f.Add([]byte("---\n---\n- [\n"))
	f.Add([]byte(`{"kind":"List","apiVersion":"v1","items":[{"kind":"Pod","apiVersion":"v1","metadata":{"name":"p"},"status":{"podIP":"::1"}}]}`))
	f.Add([]byte(`apiVersion: v1
kind: Service
metadata: {name: s, namespace: d}
spec: {clusterIP: 198.19.0.1, selector: {app: a}, sessionAffinity: ClientIP, internalTrafficPolicy: Local, ports: [{port: 80, targetPort: http}, {port: 53, protocol: UDP, name: dns}]}
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: d, labels: {app: a}}
spec: {nodeName: n1, containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 198.18.0.2}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: t-1, namespace: d, labels: {kubernetes.io/service-name: t}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [198.18.0.3], conditions: {ready: false, serving: true, terminating: true}}]
`))
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, errs := Decode("fuzz.yaml", data)
		for _, err := range errs {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
		}
		// Services as the folder source and the agent take them.
		objs.DeriveEndpointSlices()
		fronts, _ := ServiceFrontends(objs, "n1")
		for _, fe := range fronts {
			if !fe.Address.Addr().Is4() || fe.Address.Port() == 0 {
				t.Fatalf("frontend %s: the socket LB takes IPv4 with a port only", fe.Address)
			}
			for _, be := range fe.Backends {
				if !be.Address.Addr().Is4() || be.Address.Port() == 0 {
					t.Fatalf("backend %s: the socket LB takes IPv4 with a port only", be.Address)
				}
			}
		}
		if _, err := Compute(objs, NewIdentityAllocator()); err != nil {
			t.Fatalf("compute: %v", err)
		}
		objs.DeriveEndpointSlices()
		ServiceFrontends(objs, "n1")
	})
}

// FuzzHTTPMatcher checks the indexed matcher against the naive one for
// arbitrary request paths and methods.
func FuzzHTTPMatcher(f *testing.F) {
	rules := []HTTPRuleRef{
		{AnyPeer: true, Rule: &HTTPRule{Method: "GET", Path: "/api/v1/items"}},
		{AnyPeer: true, Rule: &HTTPRule{Path: "/api/v1/items/[0-9]+"}},
		{AnyPeer: true, Rule: &HTTPRule{Path: "/static/.*", Method: "GET|HEAD"}},
		{AnyPeer: true, Rule: &HTTPRule{Path: ".*\\.css"}},
		{AnyPeer: true, Rule: &HTTPRule{Path: "/v[12]/x"}},
		{AnyPeer: true, Rule: &HTTPRule{Path: "(?s)/any.*"}},
		{AnyPeer: true, Rule: &HTTPRule{Method: "P(UT|OST)", Path: "/a(b|c)?d"}},
		{Peers: []Identity{256}, Rule: &HTTPRule{Method: "DELETE"}},
	}
	m, err := NewHTTPMatcher(rules)
	if err != nil {
		f.Fatal(err)
	}
	f.Add("GET", "/api/v1/items")
	f.Add("HEAD", "/static/x\ny")
	f.Add("PUT", "/acd")
	f.Add("DELETE", "/x.css")
	f.Add("GET", "/any\nthing")
	f.Fuzz(func(t *testing.T, method, path string) {
		req := &HTTPRequest{Method: method, Path: path}
		for _, peer := range []Identity{256, 257} {
			if got, want := m.Match(peer, req), naiveMatch(rules, peer, req); got != want {
				t.Fatalf("%q %q peer %d: matcher %d, naive %d", method, path, peer, got, want)
			}
		}
	})
}
