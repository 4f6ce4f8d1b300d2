package agent

import (
	"net/netip"
	"os"
	"testing"
)

// dualStackPods: the starwars pods with an IPv6 address each (podIPs; the
// xwing lists its IPv6 address first and a link-local one).
const dualStackPods = `apiVersion: v1
kind: Pod
metadata: {name: deathstar, namespace: default, labels: {org: empire, class: deathstar}}
status:
  podIP: 198.18.1.10
  podIPs: [{ip: 198.18.1.10}, {ip: "2001:db8:1::10"}]
---
apiVersion: v1
kind: Pod
metadata: {name: tiefighter, namespace: default, labels: {org: empire, class: tiefighter}}
status:
  podIP: 198.18.1.11
---
apiVersion: v1
kind: Pod
metadata: {name: xwing, namespace: default, labels: {org: alliance, class: xwing}}
status:
  podIP: 198.18.1.12
  podIPs: [{ip: "fe80::12"}, {ip: "2001:db8:1::12"}, {ip: 198.18.1.12}]
`

// TestAttachCarriesIPv6: an endpoint is attached with its IPv6 address
// (the only IPv6 source the datapath lets it use) beside its IPv4 one; an
// IPv4-only pod gets none (it may send no IPv6 but neighbour discovery).
func TestAttachCarriesIPv6(t *testing.T) {
	h := newHarness(t, starwarsVeths())
	h.start()
	objs := t.TempDir() + "/pods.yaml"
	if err := os.WriteFile(objs, []byte(dualStackPods), 0o644); err != nil {
		t.Fatal(err)
	}
	h.send(objs, "../examples/starwars/policy-l7.yaml")
	if r := h.await("revision 1", anyReport); len(r.failures) != 0 {
		t.Fatalf("failures %+v", r.failures)
	}
	h.dp.mu.Lock()
	defer h.dp.mu.Unlock()
	for _, c := range []struct {
		ifindex  int
		ip4, ip6 string
	}{{deathstar, "198.18.1.10", "2001:db8:1::10"}, {tiefighter, "198.18.1.11", ""}, {xwing, "198.18.1.12", "2001:db8:1::12"}} {
		ep := h.dp.eps[c.ifindex]
		var want6 netip.Addr
		if c.ip6 != "" {
			want6 = netip.MustParseAddr(c.ip6)
		}
		if ep.IPv4 != netip.MustParseAddr(c.ip4) || ep.IPv6 != want6 {
			t.Errorf("endpoint %d attached with %v %v, want %s %s", c.ifindex, ep.IPv4, ep.IPv6, c.ip4, c.ip6)
		}
	}
}
