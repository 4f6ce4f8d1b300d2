package suggest

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/policy"
)

const rolloutObjects = `
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: web}}
---
apiVersion: v1
kind: Pod
metadata: {name: api-6b7c9d8f5-x2x9z, namespace: shop, labels: {app: api, pod-template-hash: 6b7c9d8f5}}
status: {podIP: 198.18.9.10}
---
apiVersion: v1
kind: Pod
metadata: {name: web-5d8f7c6b9-abcde, namespace: shop, labels: {app: web, pod-template-hash: 5d8f7c6b9}}
status: {podIP: 198.18.9.11}
---
apiVersion: v1
kind: Pod
metadata: {name: web-7f9c8d6a5-fghij, namespace: shop, labels: {app: web, pod-template-hash: 7f9c8d6a5}}
status: {podIP: 198.18.9.12}
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: shop, labels: {app: db, statefulset.kubernetes.io/pod-name: db-0, controller-revision-hash: db-7c9}}
status: {podIP: 198.18.9.13}
---
apiVersion: v1
kind: Pod
metadata: {name: loner-6d5f4-qwert, namespace: shop, labels: {pod-template-hash: 6d5f4}}
status: {podIP: 198.18.9.14}
`

func rec(src, dst string, port uint16, method, path string) *flow.Record {
	r := &flow.Record{
		Time:        time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Protocol:    "tcp",
		Direction:   flow.Ingress,
		Source:      netip.AddrPortFrom(netip.MustParseAddr(src), 40000),
		Destination: netip.AddrPortFrom(netip.MustParseAddr(dst), port),
		Verdict:     flow.VerdictAllowed,
		Observer:    flow.ObserverDatapath,
	}
	if method != "" {
		r.Protocol, r.Method, r.Path, r.Observer = "http", method, path, ""
	}
	return r
}

// TestStableLabelsGeneralised: two replicas of web whose only difference
// is pod-template-hash (a rollout in progress) are one peer, selected by
// app=web; no selector names a hash, a revision or a pod; the StatefulSet
// pod is selected by app=db; a pod without stable labels gets no policy of
// its own and is a peer only as its whole namespace, and the output says so.
func TestStableLabelsGeneralised(t *testing.T) {
	objs, errs := policy.Decode("rollout.yaml", []byte(rolloutObjects))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	recs := []*flow.Record{
		rec("198.18.9.11", "198.18.9.10", 8080, "GET", "/items/17"),
		rec("198.18.9.12", "198.18.9.10", 8080, "GET", "/items/42"),
		rec("198.18.9.12", "198.18.9.10", 8080, "", ""),
		rec("198.18.9.10", "198.18.9.13", 5432, "", ""),
		rec("198.18.9.14", "198.18.9.13", 5432, "", ""),
		rec("198.18.9.10", "198.18.9.14", 9000, "", ""),
	}
	res, err := Suggest(objs, recs, Options{})
	if err != nil {
		t.Fatal(err)
	}
	y := string(res.YAML())
	// what selects (comments name the pods; nothing else may)
	var spec strings.Builder
	for _, l := range strings.Split(y, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			spec.WriteString(l + "\n")
		}
	}
	for _, bad := range []string{"pod-template-hash", "6b7c9d8f5", "5d8f7c6b9", "7f9c8d6a5", "controller-revision-hash", "statefulset.kubernetes.io", "x2x9z", "abcde", "fghij"} {
		if strings.Contains(spec.String(), bad) {
			t.Errorf("suggestion names %q:\n%s", bad, spec.String())
		}
	}
	// api: one rule from app=web covering both replicas' three flows.
	for _, want := range []string{
		"name: l7gate-suggest-api\n",
		"  # shop/web: 3 flows (1 connection, 2 HTTP requests)\n  - fromEndpoints:\n    - matchLabels:\n        app: web\n",
		"        # 2 requests\n        - method: GET\n          path: \"/items/[0-9]+\"\n",
		"name: l7gate-suggest-db\n",
		"  endpointSelector:\n    matchLabels:\n      app: db\n",
		"  # the peer has no stable labels: this selects every pod of namespace shop\n  - fromEndpoints:\n    - {}\n",
	} {
		if !strings.Contains(y, want) {
			t.Errorf("suggestion lacks %q:\n%s", want, y)
		}
	}
	if strings.Count(y, "fromEndpoints") != 3 {
		t.Errorf("want 3 rules (api←web, db←api, db←namespace):\n%s", y)
	}
	if len(res.Warnings) != 1 || !strings.Contains(res.Warnings[0], "shop/loner (pods loner-6d5f4-qwert) has no stable labels") {
		t.Errorf("warnings: %q", res.Warnings)
	}
	dec, errs := policy.Decode("suggested.yaml", res.YAML())
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	denials, _, err := Check(objs, dec.Policies, recs, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range denials {
		t.Errorf("would deny: %s", d)
	}
}

func TestPathTemplate(t *testing.T) {
	tests := []struct{ in, want string }{
		{"/v1/request-landing", `/v1/request-landing`},
		{"/v1/ships/42", `/v1/ships/[0-9]+`},
		{"/v1/ships/3F2B8C1E-9D4A-4E2B-8F3C-1A2B3C4D5E6F/status", `/v1/ships/` + UUIDSegment + `/status`},
		{"/a.b/c+d/(x)", `/a\.b/c\+d/\(x\)`},
		{"/items/17?page=2", `/items/[0-9]+`},
		{"/shop.Catalog/GetItem", `/shop\.Catalog/GetItem`},
		{"/v2x/12ab", `/v2x/12ab`},
		{"/", `/`},
	}
	for _, tc := range tests {
		got, _ := PathTemplate(tc.in)
		if got != tc.want {
			t.Errorf("PathTemplate(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	// a query, when seen, is allowed after the template
	objs, _ := policy.Decode("rollout.yaml", []byte(rolloutObjects))
	res, _ := Suggest(objs, []*flow.Record{rec("198.18.9.11", "198.18.9.10", 80, "GET", "/items/17?page=2")}, Options{})
	if !strings.Contains(string(res.YAML()), `path: "/items/[0-9]+(\\?.*)?"`) {
		t.Errorf("query not allowed:\n%s", res.YAML())
	}
}
