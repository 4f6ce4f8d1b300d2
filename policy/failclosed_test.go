package policy

import (
	"strings"
	"testing"
)

const fcPods = `
apiVersion: v1
kind: Pod
metadata: {name: app, namespace: ns, labels: {app: app}}
status: {podIP: 198.18.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
status: {podIP: 198.18.0.53}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: ns, labels: {app: other}}
status: {podIP: 198.18.0.2}
`

// dnsLockdown is the egress lockdown every Cilium user has: DNS to
// kube-dns with a DNS-visibility rule, HTTPS to the world.
const dnsLockdown = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: lockdown, namespace: ns}
spec:
  endpointSelector: {matchLabels: {app: app}}
  egress:
  - toEndpoints:
    - matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, "k8s:k8s-app": kube-dns}
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns: [{matchPattern: "*"}]
  - toEntities: [world]
    toPorts:
    - ports: [{port: "443", protocol: TCP}]
`

// TestDNSRulesEnforced (issue 16): rules.dns on port 53 ANY redirects UDP
// and TCP 53 to the DNS parser; a query is allowed only for names the
// rules match; the policy's default-deny stays for everything else. (It
// replaces TestDNSRulesKeepDefaultDeny: before the DNS proxy the port rule
// allowed nothing.)
func TestDNSRulesEnforced(t *testing.T) {
	strict := strings.Replace(dnsLockdown, `dns: [{matchPattern: "*"}]`, `dns: [{matchPattern: "*.example.com"}, {matchName: api.other.org}]`, 1)
	// UDP only: the trace must find the UDP rule set (it once looked for
	// TCP's whatever the flow's protocol).
	udpOnly := strings.Replace(dnsLockdown, `protocol: ANY`, `protocol: UDP`, 1)
	for _, tc := range []struct {
		doc   string
		dst   string
		proto Protocol
		port  uint16
		name  string
		want  Decision
		l7    bool
	}{
		{dnsLockdown, "203.0.113.9", ProtoTCP, 80, "", DecisionDenied, false}, // default-deny stays
		{dnsLockdown, "203.0.113.9", ProtoTCP, 443, "", DecisionAllowed, false},
		{dnsLockdown, "198.18.0.53", ProtoUDP, 53, "anything.example.", DecisionAllowed, true},
		{dnsLockdown, "198.18.0.53", ProtoTCP, 53, "anything.example.", DecisionAllowed, true},
		{dnsLockdown, "198.18.0.53", ProtoUDP, 53, `bad\032name.`, DecisionDenied, true},      // unmatchable: even * denies
		{dnsLockdown, "198.18.0.2", ProtoUDP, 53, "anything.example.", DecisionDenied, false}, // not kube-dns
		{strict, "198.18.0.53", ProtoUDP, 53, "www.example.com", DecisionAllowed, true},
		{strict, "198.18.0.53", ProtoUDP, 53, "API.other.org.", DecisionAllowed, true},
		{strict, "198.18.0.53", ProtoUDP, 53, "example.com", DecisionDenied, true},
		{strict, "198.18.0.53", ProtoTCP, 53, "evil.org", DecisionDenied, true},
		{udpOnly, "198.18.0.53", ProtoUDP, 53, "anything.example.", DecisionAllowed, true},
		{udpOnly, "198.18.0.53", ProtoTCP, 53, "anything.example.", DecisionDenied, false}, // no TCP rule
	} {
		objs, errs := Decode("test.yaml", []byte(fcPods+"---"+tc.doc))
		if len(errs) > 0 || len(objs.Warnings) > 0 {
			t.Fatalf("decode: %v %v", errs, objs.Warnings)
		}
		res, err := Trace(objs, TraceRequest{Src: TracePeer{Addr: mustAddr("198.18.0.1")}, Dst: TracePeer{Addr: mustAddr(tc.dst)}, Protocol: tc.proto, DPort: tc.port, DNSName: tc.name})
		if err != nil {
			t.Fatal(err)
		}
		if res.Egress.Verdict != tc.want || !res.Egress.Enforced || (res.Egress.L7 != nil) != tc.l7 {
			t.Errorf("app → %s %s/%d %q: egress %s (enforced %v, l7 %+v) by %v, want %s", tc.dst, tc.proto, tc.port, tc.name, res.Egress.Verdict, res.Egress.Enforced, res.Egress.L7, res.Egress.DecidedBy, tc.want)
		}
		if tc.l7 && (res.Egress.L7.Parser != ParserDNS || !res.Egress.L7.Evaluated) {
			t.Errorf("%q: L7 %+v", tc.name, res.Egress.L7)
		}
	}
}

func traceFrom(t *testing.T, objs *Objects, src, dst string, port uint16) *TraceResult {
	t.Helper()
	res, err := Trace(objs, TraceRequest{Src: TracePeer{Addr: mustAddr(src)}, Dst: TracePeer{Addr: mustAddr(dst)}, Protocol: ProtoTCP, DPort: port})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestInvalidNewPolicyFailsClosed (issue 12 item 8): a new object that
// fails to decode, but whose endpointSelector (podSelector) and direction
// fields decode, puts the endpoints it selects into default-deny in the
// directions it names.
func TestInvalidNewPolicyFailsClosed(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		ingress   bool // app's ingress from other is denied by the stub
		egress    bool // app's egress to the world is denied by the stub
	}{
		{"CNP typo in an ingress rule", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: broken, namespace: ns}
spec:
  endpointSelector: {matchLabels: {app: app}}
  ingress:
  - fromEndpoint: [{matchLabels: {app: other}}]`, true, false},
		{"CNP bad regex, both directions", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: broken, namespace: ns}
spec:
  endpointSelector: {matchLabels: {app: app}}
  egress: [{toEntities: [world]}]
  ingress:
  - toPorts: [{ports: [{port: "80"}], rules: {http: [{path: "("}]}}]`, true, true},
		{"CNP specs, one rule broken", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: broken, namespace: ns}
specs:
- endpointSelector: {matchLabels: {app: app}}
  egress: [{toEntitys: [world]}]`, false, true},
		{"CNP with enableDefaultDeny false stays additive", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: broken, namespace: ns}
spec:
  endpointSelector: {matchLabels: {app: app}}
  enableDefaultDeny: {ingress: false}
  ingress: [{fromEndpoints: [{matchLabel: {app: other}}]}]`, false, false},
		{"CCNP misspelt apiVersion", `
apiVersion: cilium.io/v3
kind: CiliumClusterwideNetworkPolicy
metadata: {name: broken}
spec:
  endpointSelector: {matchLabels: {app: app}}
  egress: [{toEntities: [world]}]`, false, true},
		{"NP bad peer, policyTypes both", `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: broken, namespace: ns}
spec:
  podSelector: {matchLabels: {app: app}}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]`, true, true},
		{"NP policyTypes omitted", `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: broken, namespace: ns}
spec:
  podSelector: {matchLabels: {app: app}}
  ingress: [{form: []}]`, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs, errs := Decode("test.yaml", []byte(fcPods+"---"+tc.doc))
			if len(errs) != 1 {
				t.Fatalf("want one error, got %v", errs)
			}
			var dirs []string
			if tc.ingress {
				dirs = append(dirs, "ingress")
			}
			if tc.egress {
				dirs = append(dirs, "egress")
			}
			if len(dirs) > 0 {
				if want := "held in default-deny (" + strings.Join(dirs, ", ") + ")"; !strings.Contains(errs[0].Error(), want) {
					t.Errorf("error does not say %q: %v", want, errs[0])
				}
			}
			in := traceFrom(t, objs, "198.18.0.2", "198.18.0.1", 80)
			if got := in.Ingress.Verdict == DecisionDenied; got != tc.ingress {
				t.Errorf("other → app: ingress %s by %v; want denied=%v", in.Ingress.Verdict, in.Ingress.DecidedBy, tc.ingress)
			}
			if tc.ingress && (len(in.Ingress.DecidedBy) == 0 || !strings.Contains(in.Ingress.DecidedBy[0].Path, "invalid")) {
				t.Errorf("the default-deny does not name the invalid policy: %v", in.Ingress.DecidedBy)
			}
			eg := traceFrom(t, objs, "198.18.0.1", "203.0.113.9", 443)
			if got := eg.Egress.Verdict == DecisionDenied; got != tc.egress {
				t.Errorf("app → world: egress %s by %v; want denied=%v", eg.Egress.Verdict, eg.Egress.DecidedBy, tc.egress)
			}
			// Other pods are not affected.
			if r := traceFrom(t, objs, "198.18.0.1", "198.18.0.2", 80); r.Ingress.Verdict != DecisionAllowed {
				t.Errorf("app → other: %s, want allowed (other is not selected)", r.Ingress.Verdict)
			}
		})
	}
	// An endpointSelector that does not decode cannot be confined: error
	// only, no stub.
	objs, errs := Decode("test.yaml", []byte(fcPods+`---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: broken, namespace: ns}
spec:
  endpointSelector: {matchLabel: {app: app}}
  ingress: [{}]`))
	if len(errs) != 1 || len(objs.Policies) != 0 {
		t.Errorf("undecodable endpointSelector: %d errors, %d policies; want 1 error, no stub", len(errs), len(objs.Policies))
	}
}

func decodeOrDie(t *testing.T, file, doc string) (*Objects, []error) {
	t.Helper()
	return Decode(file, []byte(doc))
}

// TestTrackerKeepsLastValid (issue 12 item 8): an update that fails to
// decode keeps the last valid version of that object in force; a deleted
// object goes; a broken file keeps its objects' last valid versions.
func TestTrackerKeepsLastValid(t *testing.T) {
	v1 := `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: app, namespace: ns}
spec:
  endpointSelector: {matchLabels: {app: app}}
  ingress: [{fromEndpoints: [{matchLabels: {app: other}}], toPorts: [{ports: [{port: "80"}]}]}]`
	v2bad := `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: app, namespace: ns}
spec:
  endpointSelector: {matchLabels: {app: app}}
  ingress: [{fromEndpoints: [{matchLabels: {app: other}}], toPorts: [{ports: [{port: "eighty-one-is-too-long"}]}]}]`
	tr := NewTracker()
	step := func(name string, docs map[string]string) (*Objects, []error) {
		all := &Objects{}
		var errs []error
		for _, f := range []string{"pods.yaml", "policy.yaml"} {
			if d, ok := docs[f]; ok {
				o, e := decodeOrDie(t, f, d)
				errs = append(errs, e...)
				errs = append(errs, all.Merge(o)...)
			}
		}
		return tr.Apply(all, errs)
	}
	verdict := func(objs *Objects, port uint16) Decision {
		return traceFrom(t, objs, "198.18.0.2", "198.18.0.1", port).Ingress.Verdict
	}

	objs, errs := step("v1", map[string]string{"pods.yaml": fcPods, "policy.yaml": v1})
	if len(errs) != 0 || verdict(objs, 80) != DecisionAllowed || verdict(objs, 81) != DecisionDenied {
		t.Fatalf("v1: errs %v, 80 %s, 81 %s", errs, verdict(objs, 80), verdict(objs, 81))
	}
	for i := range 2 { // repeated invalid updates keep v1
		objs, errs = step("v2", map[string]string{"pods.yaml": fcPods, "policy.yaml": v2bad})
		if len(errs) != 1 || !strings.Contains(errs[0].Error(), "the last valid version stays in force") {
			t.Fatalf("v2 #%d: errors %v", i, errs)
		}
		if verdict(objs, 80) != DecisionAllowed || verdict(objs, 81) != DecisionDenied {
			t.Errorf("v2 #%d: the last valid version is not in force: 80 %s, 81 %s", i, verdict(objs, 80), verdict(objs, 81))
		}
	}
	// The whole file no longer parses: its objects keep their last valid
	// versions.
	objs, errs = step("broken file", map[string]string{"pods.yaml": fcPods, "policy.yaml": "spec: [\n"})
	if len(errs) != 1 || verdict(objs, 80) != DecisionAllowed || verdict(objs, 81) != DecisionDenied {
		t.Errorf("broken file: errors %v, 80 %s, 81 %s; want v1 in force", errs, verdict(objs, 80), verdict(objs, 81))
	}
	// Deleted: gone, and not resurrected by a later invalid object.
	objs, errs = step("deleted", map[string]string{"pods.yaml": fcPods})
	if len(errs) != 0 || verdict(objs, 81) != DecisionAllowed {
		t.Errorf("deleted: errors %v, 81 %s; want no policy", errs, verdict(objs, 81))
	}
	objs, errs = step("new invalid", map[string]string{"pods.yaml": fcPods, "policy.yaml": v2bad})
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "held in default-deny (ingress)") || verdict(objs, 80) != DecisionDenied {
		t.Errorf("new invalid object: errors %v, 80 %s; want the fail-closed stub", errs, verdict(objs, 80))
	}
}
