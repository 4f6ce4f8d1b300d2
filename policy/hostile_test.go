package policy

import (
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"
)

// The hostile-policy part of the hostile-input suite (go test -run Hostile
// ./...): policies an attacker or a careless operator can write. Each must
// give a clear error or a bounded, fail-closed result, never a crash, a
// runaway in time or memory, or wider access.

const hostileHead = `apiVersion: v1
kind: Pod
metadata: {name: app, namespace: ns, labels: {app: app}}
status: {podIP: 198.18.0.1}
---
`

func cnpWithIngressHTTP(field, expr string) string {
	return hostileHead + `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: re, namespace: ns}
spec:
  endpointSelector: {matchLabels: {app: app}}
  ingress:
  - toPorts:
    - ports: [{port: "80"}]
      rules: {http: [{` + field + `: '` + expr + `'}]}
`
}

// measure decodes and computes doc and reports the time and bytes
// allocated.
func measure(t *testing.T, doc string) (*Objects, []error, time.Duration, uint64) {
	t.Helper()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	objs, errs := Decode("hostile.yaml", []byte(doc))
	if _, err := Compute(objs, NewIdentityAllocator()); err != nil {
		t.Fatalf("compute: %v", err)
	}
	took := time.Since(start)
	runtime.ReadMemStats(&after)
	return objs, errs, took, after.TotalAlloc - before.TotalAlloc
}

// TestHostilePolicyRegexes: regexes that compile to huge programs (or do
// not compile) are rejected with a clear error naming the field, in
// bounded time and memory; the policy then holds its endpoints in
// default-deny.
func TestHostilePolicyRegexes(t *testing.T) {
	for _, tc := range []struct {
		name, field, expr, want string
	}{
		{"a megabyte literal", "path", strings.Repeat("a", 1<<20), "regex of 1048576 bytes is longer than l7gate's limit of 10000"},
		{"100k alternatives", "path", strings.Repeat("/x|", 100000) + "/y", "longer than l7gate's limit"},
		{"repetitions that multiply", "path", "(a{1000}){1000}", "invalid repeat count"},
		{"repetitions just within Go's parser", "path", `(?:[a-z]{100}){10}x{999}`, ""},
		{"many classes", "host", strings.Repeat(`[\p{L}\p{N}]{999}`, 11), "compiles to 10991 instructions, more than l7gate's limit of 10000"},
		{"nesting", "method", strings.Repeat("(", 1001) + "GET" + strings.Repeat(")", 1001), "nests too deeply"},
		{"unbalanced", "path", "/a(", "missing closing )"},
		{"backreference (not RE2)", "path", `(a)\1`, "invalid escape"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs, errs, took, alloc := measure(t, cnpWithIngressHTTP(tc.field, tc.expr))
			t.Logf("%s: %v, %d KiB allocated", tc.name, took.Round(time.Millisecond), alloc>>10)
			if took > 10*time.Second || alloc > 512<<20 {
				t.Errorf("took %v and %d MiB", took, alloc>>20)
			}
			if tc.want == "" {
				if len(errs) != 0 {
					t.Fatalf("rejected: %v", errs)
				}
				return
			}
			if len(errs) != 1 {
				t.Fatalf("want one error, got %d", len(errs))
			}
			msg := errs[0].Error()
			if !strings.Contains(msg, "spec.ingress[0].toPorts[0].rules.http[0]."+tc.field+": ") || !strings.Contains(msg, tc.want) {
				t.Errorf("error %.300q does not name the field and %q", msg, tc.want)
			}
			if len(msg) > 12000 {
				t.Errorf("error message of %d bytes", len(msg))
			}
			if len(objs.Policies) != 1 || objs.Policies[0].Invalid == "" {
				t.Errorf("no fail-closed stand-in: %+v", objs.Policies)
			}
		})
	}
}

// TestHostilePolicyNesting: deeply nested YAML and JSON are parse errors.
func TestHostilePolicyNesting(t *testing.T) {
	for _, n := range []int{10000, 1000000} {
		for _, doc := range []string{
			"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\nspec: " + strings.Repeat("[", n) + strings.Repeat("]", n) + "\n",
			`{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "x"}, "spec": ` + strings.Repeat(`{"a":`, n) + "1" + strings.Repeat("}", n) + "}",
		} {
			_, errs, took, _ := measure(t, doc)
			if len(errs) != 1 || !strings.Contains(errs[0].Error(), "depth") || took > 5*time.Second {
				t.Errorf("depth %d: %v in %v", n, errs, took)
			}
		}
	}
}

// TestHostilePolicyScale: huge numbers of selectors, CIDRs, rules and
// ports compute in bounded (not quadratic) time and memory. A policy that
// needs more entries than the datapath takes for one endpoint holds the
// endpoint in default-deny (fail closed) instead of being built in part.
func TestHostilePolicyScale(t *testing.T) {
	const n = 10000
	build := func(rules, cidrs, ranges int) string {
		var b strings.Builder
		b.WriteString(hostileHead + "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: big, namespace: ns}\nspec:\n  endpointSelector: {}\n  ingress:\n  - fromEndpoints:\n")
		for i := range n {
			fmt.Fprintf(&b, "    - {matchLabels: {app: a%d}, matchExpressions: [{key: tier, operator: NotIn, values: [t%d]}]}\n", i, i)
		}
		b.WriteString("    toPorts: [{ports: [{port: \"80\"}], rules: {http: [\n")
		for i := range rules {
			fmt.Fprintf(&b, "      {path: '/p%d/.*', method: GET},\n", i)
		}
		b.WriteString("    ]}}]\n  - fromCIDR: [\n")
		for i := range cidrs {
			fmt.Fprintf(&b, "      10.%d.%d.0/24,\n", i/256, i%256)
		}
		b.WriteString("    ]\n    toPorts: [{ports: [\n")
		for i := range ranges {
			fmt.Fprintf(&b, "      {port: \"%d\", endPort: %d},\n", 1+i*60, 60+i*60)
		}
		b.WriteString("    ]}]\n")
		for i := range 500 {
			fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Pod\nmetadata: {name: p%d, namespace: ns, labels: {app: a%d}}\nstatus: {podIP: 198.18.%d.%d}\n", i, i, 1+i/200, 1+i%200)
		}
		return b.String()
	}
	for _, tc := range []struct {
		name                 string
		rules, cidrs, ranges int
		overflow             bool
	}{
		{"10k selectors, 10k HTTP rules, 10k CIDRs × 1000 port ranges", n, n, 1000, true},
		{"10k selectors, 50 HTTP rules, 1000 CIDRs × 10 port ranges", 50, 1000, 10, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs, errs, took, alloc := measure(t, build(tc.rules, tc.cidrs, tc.ranges))
			t.Logf("%v, %d MiB allocated", took.Round(time.Millisecond), alloc>>20)
			if len(errs) != 0 {
				t.Fatal(errs)
			}
			if took > 30*time.Second || alloc > 4<<30 {
				t.Errorf("took %v and %d MiB", took, alloc>>20)
			}
			snap := mustCompute(t, objs)
			in := &snap.Policy(snap.IdentityOf(mustAddr("198.18.0.1"))).Ingress
			if !in.Enforced {
				t.Fatal("ingress not enforced")
			}
			overflowed := len(in.Entries) == 0
			if overflowed != tc.overflow {
				t.Errorf("%d entries; want overflow %v", len(in.Entries), tc.overflow)
			}
			if tc.overflow && !slices.ContainsFunc(snap.Warnings, func(w string) bool { return strings.Contains(w, "held in default-deny in this direction") }) {
				t.Errorf("no warning about the overflow: %v", snap.Warnings)
			}
			if r := in.EvaluateL4(IdentityWorld, ProtoTCP, 80); tc.overflow && (r.Decision != DecisionDenied ||
				!slices.ContainsFunc(r.DecidedBy, func(p Provenance) bool { return p.Policy == "entry-budget" })) {
				t.Errorf("world → app:80 %s by %v, want denied by the entry budget", r.Decision, r.DecidedBy)
			}
		})
	}
}

// TestHostilePolicyFields: ICMP, DNS and typo games give errors naming the
// field (or, for what l7gate does not enforce, warnings) and never widen
// access.
func TestHostilePolicyFields(t *testing.T) {
	policy := func(body string) string {
		return hostileHead + "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: h, namespace: ns}\nspec:\n  endpointSelector: {matchLabels: {app: app}}\n" + body
	}
	for _, tc := range []struct {
		name, body, want string
	}{
		{"icmp type out of range", "  ingress: [{icmps: [{fields: [{type: 256}]}]}]\n", `spec.ingress[0].icmps[0].fields[0].type: unknown ICMP type "256"`},
		{"icmp negative type", "  ingress: [{icmps: [{fields: [{type: -1}]}]}]\n", `spec.ingress[0].icmps[0].fields[0].type: unknown ICMP type "-1"`},
		{"icmp unknown family", "  ingress: [{icmps: [{fields: [{type: 8, family: IPv5}]}]}]\n", `spec.ingress[0].icmps[0].fields[0].family: unknown family "IPv5"`},
		{"icmp type as a list", "  ingress: [{icmps: [{fields: [{type: [8]}]}]}]\n", `spec.ingress[0].icmps[0].fields[0].type: expected a string or a number, got a list`},
		{"icmp typo", "  ingress: [{icmps: [{field: [{type: 8}]}]}]\n", `spec.ingress[0].icmps[0].field: unknown field`},
		{"dns typo", "  egress: [{toPorts: [{ports: [{port: '53'}], rules: {dns: [{matchNam: x}]}}]}]\n", `spec.egress[0].toPorts[0].rules.dns[0].matchNam: unknown field`},
		{"dns empty rule", "  egress: [{toPorts: [{ports: [{port: '53'}], rules: {dns: [{}]}}]}]\n", `rules.dns[0]: give matchName or matchPattern`},
		{"dns in a deny rule", "  egressDeny: [{toPorts: [{ports: [{port: '53'}], rules: {dns: [{matchName: x}]}}]}]\n", `spec.egressDeny[0].toPorts[0].rules: L7 rules are not allowed in deny rules`},
		{"dns with http", "  egress: [{toPorts: [{ports: [{port: '53'}], rules: {dns: [{matchName: x}], http: [{}]}}]}]\n", `only one of http, kafka, dns or l7proto/l7 may be set`},
		{"typo in a selector", "  ingress: [{fromEndpoints: [{matchLabel: {app: x}}]}]\n", `spec.ingress[0].fromEndpoints[0].matchLabel: unknown field`},
		{"role beside matchLabels", "  ingress: [{fromEndpoints: [{matchLabels: null, role: frontend}]}]\n", `spec.ingress[0].fromEndpoints[0].role: unknown field`},
		{"typo in a port", "  ingress: [{toPorts: [{ports: [{prot: '80'}]}]}]\n", `spec.ingress[0].toPorts[0].ports[0].prot: unknown field`},
		{"port out of range", "  ingress: [{toPorts: [{ports: [{port: '65536'}]}]}]\n", `invalid port "65536"`},
		{"endPort below port", "  ingress: [{toPorts: [{ports: [{port: '80', endPort: 79}]}]}]\n", `endPort: 79 must be between port 80 and 65535`},
		{"endPort overflow", "  ingress: [{toPorts: [{ports: [{port: '80', endPort: 4294967296}]}]}]\n", `endPort: expected an integer fitting 32 bits`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs, errs, _, _ := measure(t, policy(tc.body))
			if len(errs) != 1 || !strings.Contains(errs[0].Error(), tc.want) {
				t.Fatalf("errors %v, want one with %q", errs, tc.want)
			}
			// The stand-in never allows anything.
			for _, p := range objs.Policies {
				for _, r := range p.Rules {
					if len(r.Allow[Ingress])+len(r.Allow[Egress]) > 0 {
						t.Errorf("the stand-in of an invalid policy allows: %+v", r)
					}
				}
			}
		})
	}
}

// TestHostileShadowComparison: the validation that compares sections
// pairwise stays bounded on a policy with thousands of sections.
func TestHostileShadowComparison(t *testing.T) {
	var b strings.Builder
	b.WriteString("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: many, namespace: ns}\nspec:\n  endpointSelector: {}\n  ingress:\n")
	for i := range 5000 {
		fmt.Fprintf(&b, "  - fromEndpoints: [{matchLabels: {app: a%d}}]\n", i)
		fmt.Fprintf(&b, "  - fromEndpoints: [{matchLabels: {app: a%d}}]\n    toPorts: [{ports: [{port: \"80\"}], rules: {http: [{method: GET}]}}]\n", i)
	}
	objs, errs := Decode("many.yaml", []byte(b.String()))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	start := time.Now()
	ws := ShadowWarnings(objs, nil)
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("took %v", took)
	}
	t.Logf("%d warnings in %v", len(ws), time.Since(start).Round(time.Millisecond))
}
