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
	// stale UID is not d's report of this policy (d is pending).
	nodes := map[string]bool{"a": true, "b": true, "c": true, "d": true}
	reports := map[string]map[string]nodePolicyStatus{
		"a": {key: ok(3, 7)},
		"b": {key: ok(3, 9)},
		"c": {key: ok(2, 4)},
		"d": {key: {UID: "old", nodeStatus: nodeStatus{OK: true, Enforcing: true, ObservedGeneration: 1}}},
	}
	patch, complete, err := aggregatePatch(pol, key, reports, nodes, now)
	if err != nil || patch == nil || complete {
		t.Fatalf("patch %s complete %v err %v", patch, complete, err)
	}
	if s := string(patch); !strings.Contains(s, `"a":{`) || !strings.Contains(s, `"c":{`) || !strings.Contains(s, `"d":{"enforcing":false,"error":"`+pendingNoEntry) ||
		!strings.Contains(s, `"Valid"`) || !strings.Contains(s, `"observedGeneration":3`) {
		t.Errorf("patch %s", s)
	}
	apply(patch)
	// The same reports again: nothing to write.
	if patch, _, _ := aggregatePatch(pol, key, reports, nodes, now.Add(time.Minute)); patch != nil {
		t.Errorf("unchanged reports rewritten: %s", patch)
	}
	// c catches up, d goes (node deleted): complete; only what changed.
	reports["c"] = map[string]nodePolicyStatus{key: ok(3, 5)}
	delete(reports, "d")
	delete(nodes, "d")
	patch, complete, _ = aggregatePatch(pol, key, reports, nodes, now)
	if !complete || patch == nil || strings.Contains(string(patch), `"a":`) || !strings.Contains(string(patch), `"d":null`) || strings.Contains(string(patch), "conditions") {
		t.Errorf("catch-up patch %s complete %v: want only c, and d removed", patch, complete)
	}
	apply(patch)
	// A node that left: its entry is removed.
	delete(reports, "b")
	delete(nodes, "b")
	patch, _, _ = aggregatePatch(pol, key, reports, nodes, now)
	if string(patch) != `{"status":{"nodes":{"b":null}}}` {
		t.Errorf("removal patch %s", patch)
	}
	apply(patch)
	// A rejection at the current generation: Valid=False with the error;
	// an endpoint failing closed on one node does not make it invalid.
	reports["a"] = map[string]nodePolicyStatus{key: {UID: "u1", nodeStatus: nodeStatus{ObservedGeneration: 3, Error: "spec.x: unknown field"}}}
	patch, _, _ = aggregatePatch(pol, key, reports, nodes, now)
	if s := string(patch); !strings.Contains(s, `"status":"False","lastTransitionTime"`) || !strings.Contains(s, "spec.x: unknown field") {
		t.Errorf("rejection patch %s", s)
	}
	reports["a"] = map[string]nodePolicyStatus{key: {UID: "u1", nodeStatus: nodeStatus{Enforcing: true, ObservedGeneration: 3, Error: "endpoints fail closed: shop/api"}}}
	patch, _, _ = aggregatePatch(pol, key, reports, nodes, now)
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
	nodes := map[string]bool{}
	for i := range 40 {
		nodes[fmt.Sprintf("n%02d", i)] = true
		reports[fmt.Sprintf("n%02d", i)] = map[string]nodePolicyStatus{key: {UID: "u1", nodeStatus: nodeStatus{OK: true, Enforcing: true, Revision: 7, ObservedGeneration: 3}}}
	}
	reports["n05"][key] = nodePolicyStatus{UID: "u1", nodeStatus: nodeStatus{Enforcing: true, ObservedGeneration: 3, Error: "endpoints fail closed: shop/api-0"}}
	reports["n06"][key] = nodePolicyStatus{UID: "u1", nodeStatus: nodeStatus{OK: true, Enforcing: true, ObservedGeneration: 2}}
	patch, complete, err := aggregatePatchLimit(pol, key, reports, nodes, now, 32)
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
	patch, complete, _ = aggregatePatchLimit(pol, key, reports, nodes, now, 32)
	if !complete || !strings.Contains(string(patch), `"type":"Implemented","status":"True"`) ||
		!strings.Contains(string(patch), "40 of 40 nodes implemented generation 3; 1 node reports an error") {
		t.Errorf("complete patch %s complete %v", patch, complete)
	}
	// A new generation: every node is behind at first. The status lists
	// at most the limit (errors first), not the whole cluster: make scale
	// at N = 200 saw the first merged writes of each change list every
	// node (~98 KB per agent per policy change).
	pol.SetGeneration(4)
	patch, _, _ = aggregatePatchLimit(pol, key, reports, nodes, now, 32)
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
	patch, _, _ = aggregatePatchLimit(pol, key, reports, nodes, now, 40)
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

// TestAggregatePatchCountsNodesWithoutReport: a policy's status counts the
// nodes that should run an agent, not the nodes that reported: a node
// without a report (or whose report lacks the policy) is listed as pending
// and named by the Implemented condition, which stays False; a report from
// a node that no longer exists counts for nothing; the named nodes are
// bounded.
func TestAggregatePatchCountsNodesWithoutReport(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	key := "CiliumNetworkPolicy/shop/api"
	newPol := func() *unstructured.Unstructured {
		return &unstructured.Unstructured{Object: map[string]any{"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
			"metadata": map[string]any{"name": "api", "namespace": "shop", "uid": "u1", "generation": int64(3)}}}
	}
	at := func(gen int64) map[string]nodePolicyStatus {
		return map[string]nodePolicyStatus{key: {UID: "u1", nodeStatus: nodeStatus{OK: true, Enforcing: true, Revision: 7, ObservedGeneration: gen}}}
	}
	type statusPatch struct {
		Status struct {
			Nodes      map[string]*nodeStatus `json:"nodes"`
			Conditions []condition            `json:"conditions"`
		} `json:"status"`
	}
	decode := func(patch []byte) statusPatch {
		t.Helper()
		var m statusPatch
		if err := json.Unmarshal(patch, &m); err != nil {
			t.Fatalf("patch %s: %v", patch, err)
		}
		return m
	}
	implemented := func(m statusPatch) *condition {
		for i := range m.Status.Conditions {
			if m.Status.Conditions[i].Type == ConditionImplemented {
				return &m.Status.Conditions[i]
			}
		}
		return nil
	}

	t.Run("NodeWithoutReport", func(t *testing.T) {
		// Listing every node: c has no PolicyNodeStatus, d's lacks the
		// policy; both are listed as pending, not left out.
		nodes := map[string]bool{"a": true, "b": true, "c": true, "d": true}
		reports := map[string]map[string]nodePolicyStatus{"a": at(3), "b": at(3), "d": {}}
		patch, complete, err := aggregatePatch(newPol(), key, reports, nodes, now)
		if err != nil || complete {
			t.Fatalf("patch %s complete %v err %v: want incomplete (c and d have not reported)", patch, complete, err)
		}
		m := decode(patch)
		if c := m.Status.Nodes["c"]; c == nil || c.OK || c.Enforcing || c.Error != pendingNoReport || c.ObservedGeneration != 0 {
			t.Errorf("status.nodes.c = %+v: want pending (%q)", c, pendingNoReport)
		}
		if d := m.Status.Nodes["d"]; d == nil || d.OK || d.Enforcing || d.Error != pendingNoEntry {
			t.Errorf("status.nodes.d = %+v: want pending (%q)", d, pendingNoEntry)
		}
		if a := m.Status.Nodes["a"]; a == nil || !a.OK || a.ObservedGeneration != 3 {
			t.Errorf("status.nodes.a = %+v: want a's report", a)
		}
		// The pending nodes are not a verdict on the policy: Valid stays
		// True (from a and b).
		for _, c := range m.Status.Conditions {
			if c.Type == ConditionValid && c.Status != "True" {
				t.Errorf("Valid %+v: pending nodes made the policy invalid", c)
			}
		}
	})

	t.Run("ReportOfDeletedNode", func(t *testing.T) {
		// "gone" is no longer a Node (its PolicyNodeStatus lingers): it is
		// neither listed nor counted, and its old entry goes.
		pol := newPol()
		pol.Object["status"] = map[string]any{"nodes": map[string]any{"gone": map[string]any{"ok": true, "enforcing": true, "observedGeneration": int64(3)}}}
		nodes := map[string]bool{"a": true}
		reports := map[string]map[string]nodePolicyStatus{"a": at(3), "gone": at(3)}
		patch, complete, err := aggregatePatch(pol, key, reports, nodes, now)
		if err != nil || !complete {
			t.Fatalf("patch %s complete %v err %v: want complete (a is the only node)", patch, complete, err)
		}
		if m := decode(patch); m.Status.Nodes["gone"] != nil || !strings.Contains(string(patch), `"gone":null`) || m.Status.Nodes["a"] == nil {
			t.Errorf("patch %s: want a listed and gone's entry removed", patch)
		}
		// Summarized: the deleted node is not in the count either.
		for i := range 5 {
			nodes[fmt.Sprintf("n%d", i)] = true
			reports[fmt.Sprintf("n%d", i)] = at(3)
		}
		patch, complete, _ = aggregatePatchLimit(newPol(), key, reports, nodes, now, 2)
		if impl := implemented(decode(patch)); !complete || impl == nil || impl.Status != "True" || impl.Message != "6 of 6 nodes implemented generation 3" {
			t.Errorf("Implemented %+v (complete %v) in %s: want True, 6 of 6 (gone not counted)", impl, complete, patch)
		}
	})

	t.Run("SummarizedWithMissingNodes", func(t *testing.T) {
		// Five nodes over a limit of 2: a and b at the generation, c
		// without a report, d's report without the policy, e behind. The
		// condition counts 2 of 5 and names c and d; status.nodes lists
		// the two pending nodes (before the one behind).
		nodes := map[string]bool{"a": true, "b": true, "c": true, "d": true, "e": true}
		reports := map[string]map[string]nodePolicyStatus{"a": at(3), "b": at(3), "d": {}, "e": at(2), "gone": at(3)}
		pol := newPol()
		// A condition from before, True for every node that had reported.
		pol.Object["status"] = map[string]any{"conditions": []any{map[string]any{"type": ConditionImplemented, "status": "True",
			"reason": ReasonAllNodes, "message": "2 of 2 nodes implemented generation 3", "observedGeneration": int64(3), "lastTransitionTime": "2025-12-31T00:00:00Z"}}}
		patch, complete, err := aggregatePatchLimit(pol, key, reports, nodes, now, 2)
		if err != nil || complete {
			t.Fatalf("patch %s complete %v err %v", patch, complete, err)
		}
		m := decode(patch)
		impl := implemented(m)
		if impl == nil || impl.Status != "False" || impl.Reason != ReasonPending ||
			impl.Message != "2 of 5 nodes implemented generation 3; 2 nodes have not reported: c, d" {
			t.Errorf("Implemented %+v: want False, \"2 of 5 nodes implemented generation 3; 2 nodes have not reported: c, d\"", impl)
		}
		if len(m.Status.Nodes) != 2 || m.Status.Nodes["c"] == nil || m.Status.Nodes["d"] == nil {
			t.Errorf("status.nodes in %s: want c and d (pending) within the limit of 2", patch)
		}
		// Every node reports: True.
		reports["c"], reports["d"], reports["e"] = at(3), at(3), at(3)
		patch, complete, _ = aggregatePatchLimit(pol, key, reports, nodes, now, 2)
		if impl := implemented(decode(patch)); !complete || impl == nil || impl.Status != "True" || impl.Message != "5 of 5 nodes implemented generation 3" {
			t.Errorf("Implemented %+v (complete %v): want True, 5 of 5", impl, complete)
		}
		// A new generation nobody implemented yet: the condition says so
		// at once (no node's Valid/Supported yet), not the old True.
		pol.SetGeneration(4)
		patch, _, _ = aggregatePatchLimit(pol, key, reports, nodes, now, 2)
		if impl := implemented(decode(patch)); impl == nil || impl.Status != "False" || impl.ObservedGeneration != 4 ||
			impl.Message != "0 of 5 nodes implemented generation 4" {
			t.Errorf("Implemented %+v after a new generation: want False, 0 of 5 at generation 4", impl)
		}
	})

	t.Run("PendingNamesBounded", func(t *testing.T) {
		nodes := map[string]bool{"a": true}
		reports := map[string]map[string]nodePolicyStatus{"a": at(3)}
		for i := range 15 {
			nodes[fmt.Sprintf("p%02d", i)] = true
		}
		patch, _, _ := aggregatePatchLimit(newPol(), key, reports, nodes, now, 4)
		m := decode(patch)
		want := "1 of 16 nodes implemented generation 3; 15 nodes have not reported: p00, p01, p02, p03, p04, p05, p06, p07, p08, p09 and 5 more"
		if impl := implemented(m); impl == nil || impl.Message != want {
			t.Errorf("Implemented %+v: want %q", impl, want)
		}
		if len(m.Status.Nodes) != 4 || m.Status.Nodes["p00"] == nil || m.Status.Nodes["p03"] == nil {
			t.Errorf("status.nodes in %s: want the first 4 pending nodes (limit 4)", patch)
		}
	})
}

// TestPartialDue: a policy whose nodes have not all reported waits while
// their reports keep arriving (each write reaches every agent), and is
// written once they settle (quiet for aggregateQuiet) or after
// aggregateMaxDelay, partial writes at most every aggregatePartialEvery.
func TestPartialDue(t *testing.T) {
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	for _, tc := range []struct {
		name        string
		now         time.Duration
		since, last time.Duration
		lastPartial time.Time
		want        bool
	}{
		{"just changed", 100 * time.Millisecond, 0, 0, time.Time{}, false},
		{"reports still arriving past the quiet period", 1500 * time.Millisecond, 0, 1200 * time.Millisecond, time.Time{}, false},
		{"reports still arriving, 4.9 s", 4900 * time.Millisecond, 0, 4500 * time.Millisecond, time.Time{}, false},
		{"settled", 2300 * time.Millisecond, 0, 1200 * time.Millisecond, time.Time{}, true},
		{"nothing arrived (a stalled node)", aggregateQuiet, 0, 0, time.Time{}, true},
		{"max delay while still arriving", aggregateMaxDelay, 0, aggregateMaxDelay - 100*time.Millisecond, time.Time{}, true},
		{"settled, partial write just before", 2300 * time.Millisecond, 0, 1200 * time.Millisecond, at(time.Second), false},
		{"settled, partial write long before", 5 * time.Second, 0, 1200 * time.Millisecond, at(time.Second), true},
	} {
		mark := dirtyMark{since: at(tc.since), last: at(tc.last), changes: 1}
		if got := partialDue(at(tc.now), mark, tc.lastPartial); got != tc.want {
			t.Errorf("%s: partialDue = %v, want %v", tc.name, got, tc.want)
		}
	}
}
