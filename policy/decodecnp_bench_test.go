package policy

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
)

// benchCNP: l7gate-bench's controlplane policy, a CNP of 101 HTTP rules
// (each path a regex).
func benchCNP(change int) []byte {
	var b strings.Builder
	b.WriteString("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: bench\n  namespace: bench\nspec:\n  endpointSelector:\n    matchLabels:\n      app: bench-server\n  ingress:\n  - fromEndpoints:\n    - matchLabels:\n        app: bench-client\n    toPorts:\n    - ports:\n      - port: \"80\"\n        protocol: TCP\n      rules:\n        http:\n")
	fmt.Fprintf(&b, "        - method: GET\n          path: /api/v1/cp%d/[a-z]+\n", change)
	for i := range 100 {
		fmt.Fprintf(&b, "        - method: GET\n          path: /api/v1/r%d/[a-z]+\n", i)
	}
	return []byte(b.String())
}

// BenchmarkDecodeCNP: the folder source's decode of a changed CNP file
// (l7gate-bench's controlplane phase: 101 HTTP rules).
func BenchmarkDecodeCNP(b *testing.B) {
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		if _, errs := Decode("policy.yaml", benchCNP(i)); len(errs) > 0 {
			b.Fatal(errs)
		}
	}
}

// TestValidAnchoredAgreesWithCompile: the decoder's validation without
// compiling (validAnchored) accepts exactly the regexes compileAnchored
// compiles, with the same error, over hand-picked edge cases and random
// strings of regex syntax.
func TestValidAnchoredAgreesWithCompile(t *testing.T) {
	cases := []string{"", "/api/v1/[a-z]+", "GET|POST", "a)(b", "(", ")", "[", "a**", "x{2,1}", `\`, `a\`, `\8`, "(?P<n>a)", "(?i)abc",
		"(?z)a", "a{1000}{1000}", "a{1001}", strings.Repeat("(", 999) + strings.Repeat(")", 999),
		strings.Repeat("(", 1000) + strings.Repeat(")", 1000), strings.Repeat("(?:", 1001) + strings.Repeat(")", 1001),
		strings.Repeat("a*", 1000), "\xff", `\pN`, `\p{Foo}`, "[[:alpha:]]", "[[:foo:]]", "$^", `\Q(\E`}
	rng := rand.New(rand.NewPCG(19, 41))
	atoms := []string{"a", "(", ")", "[", "]", "{", "}", "*", "+", "?", "|", `\`, "^", "$", ".", "-", ",", "2", "(?:", "(?i)", "[^", `\d`, `\p`, "{1,3}", ":]", "[:"}
	for range 20000 {
		var b strings.Builder
		for range 1 + rng.IntN(8) {
			b.WriteString(atoms[rng.IntN(len(atoms))])
		}
		cases = append(cases, b.String())
	}
	for _, c := range cases {
		_, want := compileAnchored(c)
		got := validAnchored(c)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("%q: validAnchored %v, compileAnchored %v", c, got, want)
		}
	}
}

// TestDecodeSharesEqualLabelMaps: pods of one input with equal labels
// share one label map (however the labels are ordered); pods whose labels
// differ, even where a key and value run together alike, do not.
func TestDecodeSharesEqualLabelMaps(t *testing.T) {
	objs, errs := Decode("pods.yaml", []byte(`apiVersion: v1
kind: Pod
metadata: {name: a, namespace: web, labels: {app: web, tier: "1"}}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: web, labels: {tier: "1", app: web}}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: web, labels: {app: web1, tier: ""}}
---
apiVersion: v1
kind: Pod
metadata: {name: d, namespace: web, labels: {app: web, tier: "2"}}
---
apiVersion: v1
kind: Pod
metadata: {name: e, namespace: web}
`))
	if len(errs) > 0 || len(objs.Pods) != 5 {
		t.Fatalf("decode: %d pods, %v", len(objs.Pods), errs)
	}
	by := map[string]map[string]string{}
	for _, p := range objs.Pods {
		by[p.Name] = p.Labels
	}
	same := func(a, b map[string]string) bool { return fmt.Sprintf("%p", a) == fmt.Sprintf("%p", b) }
	if !same(by["a"], by["b"]) {
		t.Error("pods a and b have equal labels but two maps")
	}
	for _, n := range []string{"c", "d"} {
		if same(by["a"], by[n]) {
			t.Errorf("pod %s shares pod a's labels %v: has %v", n, by["a"], by[n])
		}
	}
	if by["c"]["app"] != "web1" || by["d"]["tier"] != "2" || len(by["e"]) != 0 || objs.labelSets != nil {
		t.Errorf("labels %v (interning state %v)", by, objs.labelSets)
	}
}
