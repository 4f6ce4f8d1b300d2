package k8s

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// TestReportNode: a report ConfigMap counts for the node its data names
// only under that node's report name, so one node has one report (a
// ConfigMap copied or forged under another name is ignored); an older
// agent's PolicyNodeStatus is named after its node.
func TestReportNode(t *testing.T) {
	cm := func(name, node, policies string) *unstructured.Unstructured {
		return &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "ConfigMap",
			"metadata": map[string]any{"name": name, "namespace": DefaultReportNamespace},
			"data":     map[string]any{"node": node, "policies": policies}}}
	}
	entry := `{"CiliumNetworkPolicy/ns/p":{"uid":"u1","ok":true,"enforcing":true,"observedGeneration":3}}`
	if n := reportNode(cm(reportName("node-a"), "node-a", entry)); n != "node-a" {
		t.Errorf("node-a's report: node %q", n)
	}
	if n := reportNode(cm("other-name", "node-a", entry)); n != "" {
		t.Errorf("a ConfigMap not named as node-a's report counts for %q; want ignored", n)
	}
	if n := reportNode(cm(reportName("node-b"), "node-a", entry)); n != "" {
		t.Errorf("node-b's report naming node-a counts for %q; want ignored", n)
	}
	if e := nodeStatusEntries(cm(reportName("node-a"), "node-a", entry))["CiliumNetworkPolicy/ns/p"]; e.ObservedGeneration != 3 || !e.OK || e.UID != "u1" {
		t.Errorf("entry %+v", e)
	}
	if e := nodeStatusEntries(cm(reportName("node-a"), "node-a", "{not json")); len(e) != 0 {
		t.Errorf("an unreadable report gives %v; want no entries", e)
	}
	pns := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "l7gate.io/v1alpha1", "kind": "PolicyNodeStatus",
		"metadata": map[string]any{"name": "node-c"},
		"status":   map[string]any{"policies": map[string]any{"CiliumNetworkPolicy/ns/p": map[string]any{"observedGeneration": int64(2)}}}}}
	if n, g := NodeReportGenerations(pns); n != "node-c" || g["CiliumNetworkPolicy/ns/p"] != 2 {
		t.Errorf("PolicyNodeStatus: node %q generations %v", n, g)
	}
	long := strings.Repeat("n", 250)
	if name := reportName(long); len(name) > 253 || !strings.HasPrefix(name, reportPrefix) {
		t.Errorf("report name of a long node: %q", name)
	}
}
