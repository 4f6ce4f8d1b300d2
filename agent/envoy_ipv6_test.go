package agent

import (
	"fmt"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/redirect"
)

// TestEnvoyListenersIPv6: in Envoy mode on a node with IPv6
// (EnvoyConfig.IPv6) the listener pushed to Envoy binds [::] beside
// 0.0.0.0, so IPv6 redirects to its port find a socket; without it only
// 0.0.0.0.
func TestEnvoyListenersIPv6(t *testing.T) {
	objs, errs := policy.Decode("dualstack.yaml", []byte(`apiVersion: v1
kind: Pod
metadata: {name: deathstar, namespace: default, labels: {class: deathstar}}
status: {podIP: 198.18.1.10, podIPs: [{ip: 198.18.1.10}, {ip: "2001:db8:1::10"}]}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7, namespace: default}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET}]
`))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	snap, err := policy.Compute(objs, policy.NewIdentityAllocator())
	if err != nil {
		t.Fatal(err)
	}
	ports := map[redirect.PortKey]uint16{{Direction: "ingress", Parser: "http"}: 15001}
	for _, v6 := range []bool{false, true} {
		a := &Agent{cfg: Config{HTTPProxy: HTTPProxyEnvoy, Envoy: EnvoyConfig{IPv6: v6}}}
		st := a.xdsState(snap, nil, ports, nil, newExclusions())
		res, err := envoyResources("", st)
		if err != nil {
			t.Fatal(err)
		}
		var binds []string
		for _, m := range res[resourcev3.ListenerType] {
			l := m.(*listenerv3.Listener)
			binds = append(binds, l.Address.GetSocketAddress().Address)
			for _, x := range l.AdditionalAddresses {
				binds = append(binds, x.Address.GetSocketAddress().Address)
			}
		}
		want := "[0.0.0.0]"
		if v6 {
			want = "[0.0.0.0 ::]"
		}
		if got := fmt.Sprint(binds); got != want {
			t.Errorf("IPv6 %v: Envoy's listener binds %s, want %s", v6, got, want)
		}
	}
}
