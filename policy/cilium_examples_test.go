package policy

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestCiliumExampleClasses (issue 26): one minimal example per class of
// YAML found in Cilium's examples/policies. What Cilium's CRD (v1.20.2)
// and the API server do with each was checked against a real
// kube-apiserver; l7gate accepts what Cilium enforces (warning when a part
// is not enforced, never widening access) and keeps typos errors that name
// the field (the invalid policy then holds its endpoints in default-deny).
func TestCiliumExampleClasses(t *testing.T) {
	for _, tc := range []struct {
		file string
		// accepted: no error; warns lists substrings of expected warnings
		warns []string
		// err: substring of the one expected error
		err string
		// held: directions the invalid policy holds in default-deny
		held []Direction
	}{
		// API server: pruned (strict field validation, kubectl's default:
		// rejected). A comment either way: accepted, warned, enforced.
		{file: "description-outside-spec.yaml", warns: []string{"description: ignored: not a field of CiliumNetworkPolicy"}},
		{file: "description-in-spec.yaml"},
		// Cilium's CRD enum rejects "in" in every mode: an error saying so.
		{file: "lowercase-operator.yaml", err: `spec.ingress[0].fromEndpoints[0].matchExpressions[0].operator: unknown operator "in": operators are case-sensitive, did you mean In? (Cilium's CRD and Kubernetes reject "in" too)`, held: []Direction{Ingress}},
		// Not in Cilium's schema (its name is authentication since 1.14):
		// rejected under strict validation, pruned otherwise — which would
		// allow without the authentication asked for. Error.
		{file: "auth-block.yaml", err: "spec.egress[0].auth: unknown field (did you mean authentication?)", held: []Direction{Egress}},
		// The API server rejects it in every mode (no apiVersion).
		{file: "apiversion-lowercase.yaml", err: "apiversion: unknown field (did you mean apiVersion? keys are case-sensitive)", held: []Direction{Ingress}},
		// Pruned without strict validation, leaving fromEndpoints: [{}]:
		// every pod of the namespace instead of the frontend. Error.
		{file: "role-beside-matchlabels.yaml", err: "spec.ingress[0].fromEndpoints[0].role: unknown field (a label? labels go under matchLabels: {role: ...})", held: []Direction{Ingress}},
		// A typo in the case of a key: rejected by the API server.
		{file: "kafka-role-capitalised.yaml", err: "spec.ingress[0].toPorts[0].rules.kafka[0].Role: unknown field (did you mean role? keys are case-sensitive)", held: []Direction{Ingress}},
		// rules.dns and toFQDNs: enforced (issue 16), no warnings.
		{file: "dns-rules.yaml"},
		// cilium-agent's import format, not a Kubernetes object.
		{file: "rule-list.json", err: "`cilium policy import` format) is not a Kubernetes object"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			objs, errs := Load(filepath.Join("testdata", "cilium-examples", tc.file))
			if tc.err == "" {
				if len(errs) != 0 {
					t.Fatalf("rejected: %v", errs)
				}
				for _, w := range tc.warns {
					if !slices.ContainsFunc(objs.Warnings, func(x Warning) bool { return strings.Contains(x.String(), w) }) {
						t.Errorf("no warning %q in %v", w, objs.Warnings)
					}
				}
				if len(tc.warns) == 0 && len(objs.Warnings) != 0 {
					t.Errorf("warnings %v, want none", objs.Warnings)
				}
				if len(objs.Policies) != 1 || objs.Policies[0].Invalid != "" {
					t.Fatalf("policies %+v", objs.Policies)
				}
				return
			}
			if len(errs) != 1 || !strings.Contains(errs[0].Error(), tc.err) {
				t.Fatalf("errors %v, want one with %q", errs, tc.err)
			}
			var held []Direction
			for _, p := range objs.Policies {
				if p.Invalid != "" {
					held = append(held, p.stubDirections()...)
				}
			}
			if !slices.Equal(held, tc.held) {
				t.Errorf("held in default-deny: %v, want %v", held, tc.held)
			}
		})
	}
}

// TestDescriptionOutsideSpecEnforced: the policy with a description
// outside spec is enforced like the same policy without it.
func TestDescriptionOutsideSpecEnforced(t *testing.T) {
	objs, errs := Load("testdata/cilium-examples/description-outside-spec.yaml")
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	pods := mustDecode(t, `
apiVersion: v1
kind: Pod
metadata: {name: broker, namespace: default, labels: {app: broker}}
status: {podIP: 198.18.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: hq, namespace: default, labels: {app: hq}}
status: {podIP: 198.18.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: default, labels: {app: other}}
status: {podIP: 198.18.0.3}
`)
	if errs := objs.Merge(pods); len(errs) > 0 {
		t.Fatal(errs)
	}
	for src, want := range map[string]Decision{"198.18.0.2": DecisionAllowed, "198.18.0.3": DecisionDenied} {
		if r := traceFrom(t, objs, src, "198.18.0.1", 9092); r.Verdict != want {
			t.Errorf("%s → broker: %s, want %s", src, r.Verdict, want)
		}
	}
}

// TestDuplicateObjectsNameBothFiles (issue 26): the same object in two
// files, or twice in one, is an error naming where the kept one is.
func TestDuplicateObjectsNameBothFiles(t *testing.T) {
	dir := t.TempDir()
	doc := "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: rule1, namespace: default}\nspec: {endpointSelector: {}, ingress: [{}]}\n"
	writeFile(t, filepath.Join(dir, "a.yaml"), doc)
	writeFile(t, filepath.Join(dir, "b.yaml"), doc+"---\n"+doc)
	objs, errs := Load(dir)
	var msgs []string
	for _, e := range errs {
		msgs = append(msgs, e.Error())
	}
	a, b := filepath.Join(dir, "a.yaml"), filepath.Join(dir, "b.yaml")
	want := []string{
		b + ": CiliumNetworkPolicy default/rule1: duplicate object: already defined earlier in this input (that definition is kept)",
		b + ": CiliumNetworkPolicy default/rule1: duplicate object: already defined in " + a + " (that definition is kept)",
	}
	if !slices.Equal(msgs, want) || len(objs.Policies) != 1 || objs.Policies[0].Ref.File != a {
		t.Errorf("errors:\n%s\nwant:\n%s\npolicies %d", strings.Join(msgs, "\n"), strings.Join(want, "\n"), len(objs.Policies))
	}
}
