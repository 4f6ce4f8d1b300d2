//go:build !l7gate_proxyonly

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

const starwars = "../../examples/starwars"

type traceJSON struct {
	Verdict   string `json:"verdict"`
	DecidedBy []struct {
		Policy    string `json:"policy"`
		Direction string `json:"direction"`
		Rule      int    `json:"rule"`
		Kind      string `json:"kind"`
		L7        string `json:"l7"`
	} `json:"decidedBy"`
	Egress  map[string]any `json:"egress"`
	Ingress map[string]any `json:"ingress"`
}

// TestStarwarsTrace is the scenario from Cilium's getting-started guide,
// through the command line as a user types it.
func TestStarwarsTrace(t *testing.T) {
	tests := []struct {
		name    string
		policy  string
		src     string
		l7      []string
		verdict string
		kind    string
		l7rule  string
	}{
		{"L4 tiefighter", "policy-l4.yaml", "org=empire,class=tiefighter", nil, "allowed", "allow", ""},
		{"L4 xwing", "policy-l4.yaml", "org=alliance,class=xwing", nil, "denied", "default-deny", ""},
		{"L7 landing", "policy-l7.yaml", "org=empire,class=tiefighter", []string{"--http-method", "POST", "--http-path", "/v1/request-landing"}, "allowed", "allow", "http[0]"},
		{"L7 exhaust port", "policy-l7.yaml", "org=empire,class=tiefighter", []string{"--http-method", "PUT", "--http-path", "/v1/exhaust-port"}, "denied", "default-deny", ""},
		{"L7 xwing", "policy-l7.yaml", "org=alliance,class=xwing", []string{"--http-method", "POST", "--http-path", "/v1/request-landing"}, "denied", "default-deny", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"policy", "trace", "-f", filepath.Join(starwars, "objects.yaml"), "-f", filepath.Join(starwars, tc.policy),
				"--src-labels", tc.src, "--dst-labels", "org=empire,class=deathstar", "--dport", "80", "-o", "json"}, tc.l7...)
			code, out, errOut := runCLI(t, args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			var res traceJSON
			if err := json.Unmarshal([]byte(out), &res); err != nil {
				t.Fatalf("output is not JSON: %v\n%s", err, out)
			}
			if res.Verdict != tc.verdict {
				t.Fatalf("verdict %q, want %q", res.Verdict, tc.verdict)
			}
			if len(res.DecidedBy) != 1 {
				t.Fatalf("decidedBy %+v, want one", res.DecidedBy)
			}
			d := res.DecidedBy[0]
			if d.Policy != "default/rule1" || d.Direction != "ingress" || d.Rule != 0 || d.Kind != tc.kind || d.L7 != tc.l7rule {
				t.Errorf("decidedBy %+v, want default/rule1 ingress rule 0 %s %s", d, tc.kind, tc.l7rule)
			}
			if res.Egress == nil || res.Ingress == nil {
				t.Error("egress/ingress missing")
			}
		})
	}
	// The text form names the verdict and the deciding rule.
	code, out, _ := runCLI(t, "policy", "trace", "-f", starwars+"/objects.yaml", "-f", starwars+"/policy-l7.yaml",
		"--src-labels", "org=empire,class=tiefighter", "--dst-labels", "org=empire,class=deathstar", "--dport", "80",
		"--http-method", "PUT", "--http-path", "/v1/exhaust-port")
	if code != 0 || !strings.Contains(out, "Verdict: DENIED") || !strings.Contains(out, "decided by: default-deny default/rule1") {
		t.Errorf("text trace (exit %d):\n%s", code, out)
	}
}

func TestValidate(t *testing.T) {
	code, out, errOut := runCLI(t, "policy", "validate", "-f", starwars+"/objects.yaml", "-f", starwars+"/policy-l7.yaml")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	// objects.yaml has 4 objects, the policy file one.
	if n := strings.Count(out, "\n"); n != 6 || !strings.Contains(out, "5 object(s) valid") {
		t.Errorf("want 5 summary lines and a total:\n%s", out)
	}
	// policy-l4.yaml and policy-l7.yaml both define default/rule1: the
	// whole folder has a duplicate.
	code, out, errOut = runCLI(t, "policy", "validate", "-f", starwars)
	if code != 2 || !strings.Contains(errOut, "policy-l7.yaml: CiliumNetworkPolicy default/rule1: duplicate object: already defined in") {
		t.Errorf("the duplicate rule1 was not reported (exit %d):\n%s", code, errOut)
	}
	if strings.Count(out, "CiliumNetworkPolicy default/rule1") != 1 {
		t.Errorf("the duplicate was summarised as valid:\n%s", out)
	}

	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(bad, []byte(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: rule1, namespace: default}
spec:
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: "80"}]
      rules:
        http:
        - path: /ok
        - path: "("
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cm}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: good, namespace: default}
spec:
  endpointSelector: {}
  ingress: [{fromEntities: [world]}]
`), 0o644)
	code, out, errOut = runCLI(t, "policy", "validate", "-f", bad)
	if code != 2 {
		t.Errorf("exit %d, want 2", code)
	}
	want := bad + `: CiliumNetworkPolicy default/rule1: spec.ingress[0].toPorts[0].rules.http[1].path: invalid regex "(": missing closing )`
	if !strings.Contains(errOut, want) {
		t.Errorf("stderr lacks %q:\n%s", want, errOut)
	}
	if !strings.Contains(errOut, "warning: "+bad+": ConfigMap /cm: skipped") && !strings.Contains(errOut, "skipped: l7gate does not read kind ConfigMap") {
		t.Errorf("unknown kind not warned about:\n%s", errOut)
	}
	if !strings.Contains(out, "CiliumNetworkPolicy default/good") {
		t.Errorf("the valid object was not loaded:\n%s", out)
	}
}

func TestTraceBadInput(t *testing.T) {
	base := []string{"policy", "trace", "-f", starwars + "/objects.yaml"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--dst-labels", "a=b", "--dport", "80"}, "give exactly one of --src-labels, --src-cidr or --src-entity"},
		{[]string{"--src-labels", "a=b", "--src-entity", "world", "--dst-labels", "a=b", "--dport", "80"}, "give exactly one of --src-labels"},
		{[]string{"--src-labels", "a=b", "--dst-labels", "a=b"}, "--dport"},
		{[]string{"--src-entity", "galaxy", "--dst-labels", "a=b", "--dport", "80"}, `unknown entity "galaxy"`},
		{[]string{"--src-cidr", "10.0.0.0/8", "--dst-labels", "a=b", "--dport", "80"}, "give one address"},
		{[]string{"--src-labels", "a=b", "--dst-labels", "a=b", "--dport", "80", "--kafka-topic", "x"}, "--kafka-api-key is required"},
		{[]string{"--src-labels", "a=b", "--dst-labels", "a=b", "--dport", "80", "-o", "yaml"}, "-o: want text or json"},
	} {
		code, _, errOut := runCLI(t, append(base, tc.args...)...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tc.args, code, errOut, tc.want)
		}
	}
	// A world source against the deathstar: ingress applies, egress does not.
	code, out, _ := runCLI(t, append(base, "-f", starwars+"/policy-l4.yaml", "--src-entity", "world", "--dst-cidr", "198.18.1.10", "--dport", "80", "-o", "json")...)
	var res traceJSON
	if code != 0 || json.Unmarshal([]byte(out), &res) != nil || res.Verdict != "denied" || res.Egress["applies"] != false {
		t.Errorf("world → deathstar by IP: exit %d %s", code, out)
	}
}

func TestHelp(t *testing.T) {
	code, out, _ := runCLI(t, "policy", "trace", "--help")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, flag := range []string{"--src-labels", "--src-namespace", "--src-cidr", "--src-entity", "--dst-labels", "--dport", "--protocol",
		"--http-method", "--http-path", "--http-host", "--http-header", "--kafka-api-key", "--kafka-api-version", "--kafka-client-id", "--kafka-topic", "--output"} {
		if !strings.Contains(out, flag) {
			t.Errorf("--help does not document %s", flag)
		}
	}
}

// TestTracePathNormalization: trace decides on the path the proxy matches,
// normalized the same way (policy.NormalizeRequestTarget).
func TestTracePathNormalization(t *testing.T) {
	base := []string{"policy", "trace", "-f", starwars + "/objects.yaml", "-f", starwars + "/policy-l7.yaml",
		"--src-labels", "org=empire,class=tiefighter", "--dst-labels", "org=empire,class=deathstar", "--dport", "80", "--http-method", "POST"}
	for _, tc := range []struct {
		path, verdict, note string
	}{
		{"/v1//request-landing", "allowed", `matched as "/v1/request-landing"`},
		{"/v1/x/../request-landing", "allowed", `matched as "/v1/request-landing"`},
		{"/v1/request-landing/..%2F..%2Fadmin", "denied", "400 Bad Request"},
	} {
		code, out, errOut := runCLI(t, append(base, "--http-path", tc.path, "-o", "json")...)
		if code != 0 {
			t.Fatalf("%s: exit %d: %s", tc.path, code, errOut)
		}
		var res struct {
			Verdict  string   `json:"verdict"`
			Warnings []string `json:"warnings"`
			Rejected string   `json:"rejected"`
		}
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("%s: %v\n%s", tc.path, err, out)
		}
		if res.Verdict != tc.verdict || !strings.Contains(strings.Join(res.Warnings, "\n")+res.Rejected, tc.note) {
			t.Errorf("%s: %s\nwant verdict %s and %q", tc.path, out, tc.verdict, tc.note)
		}
	}
}

// TestShadowedL7 (issue 23): validate warns, naming both rules, when an
// L3-only allow lifts another rule's L7 rules; trace says the L3 rule
// decided and which L7 rules it shadowed.
func TestShadowedL7(t *testing.T) {
	in := "../../policy/testdata/in/l3-lifts-l7.yaml"
	code, _, errOut := runCLI(t, "policy", "validate", "-f", in)
	want := "warning: " + in + ": CiliumNetworkPolicy ns/server: spec.ingress[0]: L3-only allow lifts the L7 rules of ns/server spec.ingress[1] (port TCP/80)"
	if code != 0 || !strings.Contains(errOut, want) {
		t.Errorf("validate (exit %d) lacks %q:\n%s", code, want, errOut)
	}
	code, out, errOut := runCLI(t, "policy", "trace", "-f", in, "--src-cidr", "198.18.0.2", "--dst-cidr", "198.18.0.1",
		"--dport", "80", "--http-method", "DELETE", "--http-path", "/private")
	for _, s := range []string{"Verdict: ALLOWED", "decided by: allow ns/server (CiliumNetworkPolicy spec.ingress[0])",
		"shadows (not checked for this peer): allow ns/server (CiliumNetworkPolicy spec.ingress[1].http[0])"} {
		if code != 0 || !strings.Contains(out, s) {
			t.Errorf("trace (exit %d) lacks %q:\n%s%s", code, s, out, errOut)
		}
	}
}

// TestInvalidPolicyFailClosedCLI (issue 12 item 8): validate says what
// stands in for an invalid policy; trace runs and shows the fail-closed
// default-deny; rules.dns loads with a warning.
func TestInvalidPolicyFailClosedCLI(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "p.yaml")
	os.WriteFile(f, []byte(`apiVersion: v1
kind: Pod
metadata: {name: app, namespace: ns, labels: {app: app}}
status: {podIP: 198.18.0.1}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: broken, namespace: ns}
spec:
  endpointSelector: {matchLabels: {app: app}}
  egress:
  - toEntitys: [world]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: dns, namespace: ns}
spec:
  endpointSelector: {matchLabels: {app: app}}
  egress:
  - toEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system}}]
    toPorts: [{ports: [{port: "53", protocol: ANY}], rules: {dns: [{matchPattern: "*"}]}}]
`), 0o644)
	code, _, errOut := runCLI(t, "policy", "validate", "-f", f)
	// rules.dns is enforced since issue 16: no warning for it.
	for _, want := range []string{"spec.egress[0].toEntitys: unknown field", "held in default-deny (egress)"} {
		if code != 2 || !strings.Contains(errOut, want) {
			t.Errorf("validate (exit %d) lacks %q:\n%s", code, want, errOut)
		}
	}
	code, out, errOut := runCLI(t, "policy", "trace", "-f", f, "--src-cidr", "198.18.0.1", "--dst-cidr", "203.0.113.9", "--dport", "443")
	if code != 0 || !strings.Contains(out, "Verdict: DENIED") || !strings.Contains(out, "default-deny ns/broken (CiliumNetworkPolicy spec.egress (invalid policy: fail-closed))") {
		t.Errorf("trace (exit %d):\n%s%s", code, out, errOut)
	}
}

// TestTraceAllowLocalhost (issue 12 item 9): the host reaches an endpoint
// in default-deny, decided by the allow-localhost rule, unless
// --allow-localhost=policy.
func TestTraceAllowLocalhost(t *testing.T) {
	f := filepath.Join(t.TempDir(), "p.yaml")
	os.WriteFile(f, []byte("apiVersion: v1\nkind: Pod\nmetadata: {name: app, namespace: ns}\nstatus: {podIP: 198.18.0.1}\n---\n"+
		"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: deny-all, namespace: ns}\nspec: {endpointSelector: {}, ingress: [{}]}\n"), 0o644)
	args := []string{"policy", "trace", "-f", f, "--src-entity", "host", "--dst-cidr", "198.18.0.1", "--dport", "8080"}
	code, out, errOut := runCLI(t, args...)
	if code != 0 || !strings.Contains(out, "Verdict: ALLOWED") || !strings.Contains(out, "decided by: allow allow-localhost (l7gate --allow-localhost=always)") {
		t.Errorf("default (exit %d):\n%s%s", code, out, errOut)
	}
	code, out, errOut = runCLI(t, append(args, "--allow-localhost", "policy")...)
	if code != 0 || !strings.Contains(out, "Verdict: DENIED") {
		t.Errorf("--allow-localhost=policy (exit %d):\n%s%s", code, out, errOut)
	}
	if code, _, errOut := runCLI(t, append(args, "--allow-localhost", "maybe")...); code != 2 || !strings.Contains(errOut, "want always or policy") {
		t.Errorf("bad mode: exit %d %s", code, errOut)
	}
}
