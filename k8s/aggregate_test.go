package k8s

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// TestAggregatePatch: a policy's status from the nodes' reports.
func TestAggregatePatch(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	key := "CiliumNetworkPolicy/shop/api"
	pol := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
		"metadata": map[string]any{"name": "api", "namespace": "shop", "uid": "u1", "generation": int64(3)}}}
	ok := func(gen int64, rev uint64) nodePolicyStatus {
		return nodePolicyStatus{UID: "u1", nodeStatus: nodeStatus{OK: true, Enforcing: true, Revision: rev, ObservedGeneration: gen}}
	}
	apply := func(patch []byte) {
		t.Helper()
		var m map[string]any
		if err := json.Unmarshal(patch, &m); err != nil {
			t.Fatal(err)
		}
		st, _ := pol.Object["status"].(map[string]any)
		if st == nil {
			st = map[string]any{}
		}
		ps := m["status"].(map[string]any)
		if c, ok := ps["conditions"]; ok {
			st["conditions"] = c
		}
		if n, ok := ps["nodes"].(map[string]any); ok {
			cur, _ := st["nodes"].(map[string]any)
			if cur == nil {
				cur = map[string]any{}
			}
			for k, v := range n {
				if v == nil {
					delete(cur, k)
				} else {
					cur[k] = v
				}
			}
			st["nodes"] = cur
		}
		pol.Object["status"] = st
	}

	// Two nodes at the current generation, one behind, one reporting an
	// older policy of the same name (another UID): not complete; the
	// stale UID is left out.
	reports := map[string]map[string]nodePolicyStatus{
		"a": {key: ok(3, 7)},
		"b": {key: ok(3, 9)},
		"c": {key: ok(2, 4)},
		"d": {key: {UID: "old", nodeStatus: nodeStatus{OK: true, Enforcing: true, ObservedGeneration: 1}}},
	}
	patch, complete, err := aggregatePatch(pol, key, reports, now)
	if err != nil || patch == nil || complete {
		t.Fatalf("patch %s complete %v err %v", patch, complete, err)
	}
	if s := string(patch); !strings.Contains(s, `"a":{`) || !strings.Contains(s, `"c":{`) || strings.Contains(s, `"d":`) ||
		!strings.Contains(s, `"Valid"`) || !strings.Contains(s, `"observedGeneration":3`) {
		t.Errorf("patch %s", s)
	}
	apply(patch)
	// The same reports again: nothing to write.
	if patch, _, _ := aggregatePatch(pol, key, reports, now.Add(time.Minute)); patch != nil {
		t.Errorf("unchanged reports rewritten: %s", patch)
	}
	// c catches up, d goes (node deleted): complete; only what changed.
	reports["c"] = map[string]nodePolicyStatus{key: ok(3, 5)}
	delete(reports, "d")
	patch, complete, _ = aggregatePatch(pol, key, reports, now)
	if !complete || patch == nil || strings.Contains(string(patch), `"a":`) || strings.Contains(string(patch), "conditions") {
		t.Errorf("catch-up patch %s complete %v: want only c", patch, complete)
	}
	apply(patch)
	// A node that left: its entry is removed.
	delete(reports, "b")
	patch, _, _ = aggregatePatch(pol, key, reports, now)
	if string(patch) != `{"status":{"nodes":{"b":null}}}` {
		t.Errorf("removal patch %s", patch)
	}
	apply(patch)
	// A rejection at the current generation: Valid=False with the error;
	// an endpoint failing closed on one node does not make it invalid.
	reports["a"] = map[string]nodePolicyStatus{key: {UID: "u1", nodeStatus: nodeStatus{ObservedGeneration: 3, Error: "spec.x: unknown field"}}}
	patch, _, _ = aggregatePatch(pol, key, reports, now)
	if s := string(patch); !strings.Contains(s, `"status":"False","lastTransitionTime"`) || !strings.Contains(s, "spec.x: unknown field") {
		t.Errorf("rejection patch %s", s)
	}
	reports["a"] = map[string]nodePolicyStatus{key: {UID: "u1", nodeStatus: nodeStatus{Enforcing: true, ObservedGeneration: 3, Error: "endpoints fail closed: shop/api"}}}
	patch, _, _ = aggregatePatch(pol, key, reports, now)
	if s := string(patch); !strings.Contains(s, `"message":"policy accepted"`) && strings.Contains(s, "conditions") {
		t.Errorf("endpoint failure patch %s", s)
	}
}

func TestPolicyStatusKey(t *testing.T) {
	for _, k := range []objectKey{{"CiliumNetworkPolicy", "shop", "api"}, {"CiliumClusterwideNetworkPolicy", "", "hosts"}} {
		got, ok := parsePolicyStatusKey(policyStatusKey(k))
		if !ok || got != k {
			t.Errorf("%v → %q → %v %v", k, policyStatusKey(k), got, ok)
		}
	}
	for _, bad := range []string{"", "Pod/a/b", "CiliumNetworkPolicy/x", "CiliumClusterwideNetworkPolicy/a/b"} {
		if _, ok := parsePolicyStatusKey(bad); ok {
			t.Errorf("%q parsed", bad)
		}
	}
}

// TestAggregatePatchSummarizesManyNodes: beyond the node limit, a
// policy's status lists only the nodes with something to say (an error,
// or behind the current generation) and counts the others in the
// Implemented condition, so the status every agent's policy watch carries
// does not grow with the cluster (make scale: at N = 200 every agent
// received ~195 KB per policy change, mostly status.nodes).
func TestAggregatePatchSummarizesManyNodes(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	key := "CiliumNetworkPolicy/shop/api"
	pol := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
		"metadata": map[string]any{"name": "api", "namespace": "shop", "uid": "u1", "generation": int64(3)},
		// A status from before, listing every node.
		"status": map[string]any{"nodes": map[string]any{"n00": map[string]any{"ok": true, "enforcing": true, "observedGeneration": int64(2)}}}}}
	reports := map[string]map[string]nodePolicyStatus{}
	for i := range 40 {
		reports[fmt.Sprintf("n%02d", i)] = map[string]nodePolicyStatus{key: {UID: "u1", nodeStatus: nodeStatus{OK: true, Enforcing: true, Revision: 7, ObservedGeneration: 3}}}
	}
	reports["n05"][key] = nodePolicyStatus{UID: "u1", nodeStatus: nodeStatus{Enforcing: true, ObservedGeneration: 3, Error: "endpoints fail closed: shop/api-0"}}
	reports["n06"][key] = nodePolicyStatus{UID: "u1", nodeStatus: nodeStatus{OK: true, Enforcing: true, ObservedGeneration: 2}}
	patch, complete, err := aggregatePatchLimit(pol, key, reports, now, 32)
	if err != nil || patch == nil || complete {
		t.Fatalf("patch %s complete %v err %v", patch, complete, err)
	}
	var m struct {
		Status struct {
			Nodes      map[string]*nodeStatus `json:"nodes"`
			Conditions []condition            `json:"conditions"`
		} `json:"status"`
	}
	if err := json.Unmarshal(patch, &m); err != nil {
		t.Fatal(err)
	}
	// n05 (its error) and n06 (behind) are listed; n00's old entry goes.
	if len(m.Status.Nodes) != 3 || m.Status.Nodes["n05"] == nil || m.Status.Nodes["n06"] == nil || m.Status.Nodes["n00"] != nil {
		t.Errorf("status.nodes in the patch: %s; want n05 and n06, and n00 removed", patch)
	}
	var impl *condition
	for i := range m.Status.Conditions {
		if m.Status.Conditions[i].Type == ConditionImplemented {
			impl = &m.Status.Conditions[i]
		}
	}
	if impl == nil || impl.Status != "False" || impl.ObservedGeneration != 3 ||
		impl.Message != "39 of 40 nodes implemented generation 3; 1 node reports an error (status.nodes)" {
		t.Fatalf("Implemented condition %+v in %s", impl, patch)
	}
	// Every node at the generation: Implemented=True.
	reports["n06"][key] = nodePolicyStatus{UID: "u1", nodeStatus: nodeStatus{OK: true, Enforcing: true, ObservedGeneration: 3}}
	patch, complete, _ = aggregatePatchLimit(pol, key, reports, now, 32)
	if !complete || !strings.Contains(string(patch), `"type":"Implemented","status":"True"`) ||
		!strings.Contains(string(patch), "40 of 40 nodes implemented generation 3; 1 node reports an error") {
		t.Errorf("complete patch %s complete %v", patch, complete)
	}
	// A new generation: every node is behind at first. The status lists
	// at most the limit (errors first), not the whole cluster: make scale
	// at N = 200 saw the first merged writes of each change list every
	// node (~98 KB per agent per policy change).
	pol.SetGeneration(4)
	patch, _, _ = aggregatePatchLimit(pol, key, reports, now, 32)
	m.Status.Nodes = nil
	if err := json.Unmarshal(patch, &m); err != nil {
		t.Fatal(err)
	}
	listed := 0
	for _, ns := range m.Status.Nodes {
		if ns != nil {
			listed++
		}
	}
	if listed > 32 || m.Status.Nodes["n05"] == nil {
		t.Errorf("%d nodes listed with every node behind (limit 32, n05's error first): %s", listed, patch)
	}
	pol.SetGeneration(3)
	// Up to the limit, every node is listed as before.
	patch, _, _ = aggregatePatchLimit(pol, key, reports, now, 40)
	if !strings.Contains(string(patch), `"n39":{`) || strings.Contains(string(patch), ConditionImplemented) {
		t.Errorf("patch at the limit %s: want every node listed, no Implemented condition", patch)
	}
}

// TestReportCacheDecodesOncePerResourceVersion: the merge decodes a node's
// report once per resourceVersion, a newer version replaces it, an older
// one (an informer's update handler asks for both) does not, and a node
// whose report is gone is forgotten.
func TestReportCacheDecodesOncePerResourceVersion(t *testing.T) {
	report := func(rv string, gen int64) *unstructured.Unstructured {
		return &unstructured.Unstructured{Object: map[string]any{"apiVersion": "l7gate.io/v1alpha1", "kind": "PolicyNodeStatus",
			"metadata": map[string]any{"name": "node-a", "uid": "n1", "resourceVersion": rv},
			"status": map[string]any{"policies": map[string]any{"CiliumNetworkPolicy/shop/api": map[string]any{
				"ok": true, "enforcing": true, "observedGeneration": gen}}}}}
	}
	gen := func(e map[string]nodePolicyStatus) int64 { return e["CiliumNetworkPolicy/shop/api"].ObservedGeneration }
	var c reportCache
	if g := gen(c.entries(report("9", 1))); g != 1 {
		t.Fatalf("generation %d, want 1", g)
	}
	// The same resourceVersion is not decoded again: an object that
	// (impossibly) changed under it still reads as cached.
	if g := gen(c.entries(report("9", 5))); g != 1 {
		t.Errorf("same resourceVersion decoded again (generation %d)", g)
	}
	if g := gen(c.entries(report("10", 2))); g != 2 {
		t.Errorf("newer resourceVersion: generation %d, want 2", g)
	}
	// The old version is decoded for the caller but does not replace the
	// newer one in the cache.
	if g := gen(c.entries(report("9", 1))); g != 1 {
		t.Errorf("old resourceVersion: generation %d, want 1", g)
	}
	if g := gen(c.entries(report("10", 7))); g != 2 {
		t.Errorf("after an old version was asked for, the newer one reads generation %d, want 2 (cached)", g)
	}
	c.keep(nil)
	if g := gen(c.entries(report("10", 3))); g != 3 {
		t.Errorf("a forgotten node's report came from the cache (generation %d, want 3)", g)
	}
}
