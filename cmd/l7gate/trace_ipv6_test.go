//go:build !l7gate_proxyonly

package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
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

// dualStackServices: a RequireDualStack Service over the dual-stack server
// and a second server pod with IPv4 only, and an IPv4-only Service.
const dualStackServices = dualStack + `---
apiVersion: v1
kind: Pod
metadata: {name: server-v4only, namespace: default, labels: {app: server}}
status: {podIP: 198.18.4.3, podIPs: [{ip: 198.18.4.3}]}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: default}
spec:
  clusterIP: 198.19.4.10
  clusterIPs: [198.19.4.10, "fd00:7e2e:2::10"]
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  selector: {app: server}
  ports: [{port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: server4, namespace: default}
spec:
  clusterIP: 198.19.4.11
  selector: {app: server}
  ports: [{port: 8080}]
`

// TestTraceServiceFamily: --family picks the ClusterIP a dual-stack
// Service is traced through (the IPv6 one leads to the pods' IPv6
// addresses, less a pod without one); a Service without a ClusterIP of
// that family is an error naming it.
func TestTraceServiceFamily(t *testing.T) {
	f := filepath.Join(t.TempDir(), "dual.yaml")
	if err := os.WriteFile(f, []byte(dualStackServices), 0o644); err != nil {
		t.Fatal(err)
	}
	type svcJSON struct {
		Verdict string `json:"verdict"`
		Service struct {
			Frontend string `json:"frontend"`
			Backends []struct {
				Backend string `json:"backend"`
				Verdict string `json:"verdict"`
			} `json:"backends"`
		} `json:"service"`
	}
	for _, c := range []struct {
		svc, family, frontend string
		backends              []string
	}{
		{"default/server", "", "198.19.4.10:8080", []string{"198.18.4.2:8080", "198.18.4.3:8080"}},
		{"default/server", "ipv4", "198.19.4.10:8080", []string{"198.18.4.2:8080", "198.18.4.3:8080"}},
		{"default/server", "ipv6", "[fd00:7e2e:2::10]:8080", []string{"[2001:db8:4::2]:8080"}},
		{"default/server", "IPv6", "[fd00:7e2e:2::10]:8080", []string{"[2001:db8:4::2]:8080"}},
		{"default/server4", "ipv4", "198.19.4.11:8080", []string{"198.18.4.2:8080", "198.18.4.3:8080"}},
	} {
		args := []string{"policy", "trace", "-f", f, "--src-labels", "app=client", "--dst-service", c.svc, "--dport", "8080", "-o", "json"}
		if c.family != "" {
			args = append(args, "--family", c.family)
		}
		code, out, errOut := runCLI(t, args...)
		if code != 0 {
			t.Errorf("%s --family %q: exit %d: %s", c.svc, c.family, code, errOut)
			continue
		}
		var res svcJSON
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("output is not JSON: %v\n%s", err, out)
		}
		var backends []string
		for _, b := range res.Service.Backends {
			backends = append(backends, b.Backend)
			if b.Verdict != "allowed" {
				t.Errorf("%s --family %q: backend %s %s, want allowed", c.svc, c.family, b.Backend, b.Verdict)
			}
		}
		if res.Service.Frontend != c.frontend || !slices.Equal(backends, c.backends) || res.Verdict != "allowed" {
			t.Errorf("%s --family %q: %s via %s to %v, want allowed via %s to %v", c.svc, c.family, res.Verdict, res.Service.Frontend, backends, c.frontend, c.backends)
		}
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--dst-service", "default/server4", "--family", "ipv6"}, "service default/server4 has no IPv6 ClusterIP"},
		{[]string{"--dst-service", "default/server", "--family", "ipv5"}, "--family: want ipv4 or ipv6"},
		{[]string{"--dst-labels", "app=server", "--family", "ipv6"}, "--family needs --dst-service"},
	} {
		args := append([]string{"policy", "trace", "-f", f, "--src-labels", "app=client", "--dport", "8080"}, c.args...)
		code, out, errOut := runCLI(t, args...)
		if code != 2 || !strings.Contains(errOut, c.want) {
			t.Errorf("%v: exit %d, stderr %q (stdout %q), want exit 2 naming %q", c.args, code, errOut, out, c.want)
		}
	}
}
