package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// dualStack: pods with IPv4 and IPv6 addresses (status.podIPs), IPv6 CIDR
// rules with an except, and an IPv6 fromCIDR.
const dualStack = `apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default, labels: {app: client}}
status: {podIP: 198.18.4.1, podIPs: [{ip: 198.18.4.1}, {ip: "2001:db8:4::1"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: default, labels: {app: server}}
status: {podIP: 198.18.4.2, podIPs: [{ip: 198.18.4.2}, {ip: "2001:db8:4::2"}]}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-egress, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: server}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  - toCIDRSet:
    - cidr: "2001:db8:f000::/36"
      except: ["2001:db8:f000::/40"]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-ingress, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]
  - fromCIDR: ["2001:db8:300::/40"]
    toPorts: [{ports: [{port: "9090", protocol: TCP}]}]
`

// TestTraceIPv6: policy trace takes IPv6 addresses: a pod's IPv6 address
// is that pod, IPv6 CIDR rules (except included) decide by prefix.
func TestTraceIPv6(t *testing.T) {
	f := filepath.Join(t.TempDir(), "dual.yaml")
	if err := os.WriteFile(f, []byte(dualStack), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		src, dst, port, verdict string
	}{
		{"2001:db8:4::1", "2001:db8:4::2", "8080", "allowed"},
		{"2001:db8:4::1", "2001:db8:4::2", "8081", "denied"},
		{"2001:db8:4::1", "2001:db8:f100::1", "22", "allowed"},
		{"2001:db8:4::1", "2001:db8:f000::1", "22", "denied"}, // the except
		{"2001:db8:300::9", "2001:db8:4::2", "9090", "allowed"},
		{"2001:db8:400::9", "2001:db8:4::2", "9090", "denied"},
		{"198.18.4.1", "198.18.4.2", "8080", "allowed"},
	} {
		code, out, errOut := runCLI(t, "policy", "trace", "-f", f, "--src-cidr", c.src, "--dst-cidr", c.dst, "--dport", c.port, "-o", "json")
		if code != 0 {
			t.Fatalf("%s -> %s:%s: exit %d: %s", c.src, c.dst, c.port, code, errOut)
		}
		var res traceJSON
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("output is not JSON: %v\n%s", err, out)
		}
		if res.Verdict != c.verdict {
			t.Errorf("%s -> %s:%s: %s, want %s", c.src, c.dst, c.port, res.Verdict, c.verdict)
		}
	}
}
