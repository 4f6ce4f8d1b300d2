package k8s

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"

	"github.com/l7gate/l7gate/policy"
)

// A node's report is what one node implemented: per Cilium policy,
// the generation, the agent revision that first implemented it, and any
// error, unsupported field or endpoint that fails closed. Each agent
// writes only its own (created whole, then merge-patched with the entries
// that changed; one field manager), so no two writers touch one object;
// the elected agent merges them into every policy's status.nodes and
// conditions (aggregator). Agents never watch these objects: a policy
// change costs N small writes and one or two merged status writes, instead of N writes to each policy that every
// agent watching policies received (make scale).
//
// Since wave 11 the report is a ConfigMap (see reportLabel); before, it
// was a PolicyNodeStatus (l7gate.io/v1alpha1, cluster-scoped, named after
// the node), which the elected agent still reads for nodes whose agent
// predates the ConfigMap (an upgrade in progress). What follows is that
// CRD's shape, the same entries the ConfigMap's data.policies holds.
//
// The CRD makes status.policies an atomic map (x-kubernetes-map-type:
// atomic; it has one owner): managedFields then name the map, not every
// entry's fields, which were 44% of a report at 10 policies and which
// every write decoded, merged and stored again (make scale). A cluster
// whose CRD predates it behaves the same, at that cost.
//
// Shape:
//
//	status:
//	  policies:
//	    CiliumNetworkPolicy/shop/api:   {uid, observedGeneration, revision, ok, enforcing, error, warnings, lastUpdated}
//	    CiliumClusterwideNetworkPolicy/hosts: {...}
func PolicyNodeStatusResource() schema.GroupVersionResource {
	return schema.GroupVersionResource{Group: "l7gate.io", Version: "v1alpha1", Resource: "policynodestatuses"}
}

const (
	// nodeFieldManager owns each node's report.
	nodeFieldManager = "l7gate-agent"
)

// nodePolicyStatus is one policy's entry in a PolicyNodeStatus: what goes
// into the policy's status.nodes[node], and the policy's UID (a policy
// deleted and created again under the same name starts afresh).
type nodePolicyStatus struct {
	UID types.UID `json:"uid,omitempty"`
	nodeStatus
}

// policyStatusKey names a Cilium policy in a PolicyNodeStatus:
// "Kind/namespace/name", or "Kind/name" for clusterwide ones.
func policyStatusKey(k objectKey) string {
	if k.Namespace == "" {
		return k.Kind + "/" + k.Name
	}
	return k.Kind + "/" + k.Namespace + "/" + k.Name
}

// parsePolicyStatusKey is policyStatusKey's inverse.
func parsePolicyStatusKey(s string) (objectKey, bool) {
	parts := strings.Split(s, "/")
	switch {
	case len(parts) == 2 && parts[0] == string(policy.KindCCNP):
		return objectKey{Kind: parts[0], Name: parts[1]}, true
	case len(parts) == 3 && parts[0] == string(policy.KindCNP):
		return objectKey{Kind: parts[0], Namespace: parts[1], Name: parts[2]}, true
	}
	return objectKey{}, false
}

// sameReport reports whether two entries say the same, revision and time
// aside: the revision that first implemented a generation stays.
func sameReport(a, b nodePolicyStatus) bool {
	a.Revision, b.Revision, a.LastUpdated, b.LastUpdated = 0, 0, "", ""
	return reflect.DeepEqual(a, b)
}

// nodeEntry is this node's entry for a policy status.
func nodeEntry(st PolicyStatus) nodeStatus {
	ns := nodeStatus{OK: st.Err == nil, Enforcing: st.Err == nil, Revision: st.Revision, ObservedGeneration: st.Generation, Warnings: st.Warnings}
	if st.Err != nil {
		ns.Error = truncate(st.Err.Error())
	} else if len(st.EndpointFailures) > 0 {
		// Enforcing, but some endpoints fail closed instead of getting
		// the policy's rules.
		ns.OK = false
		ns.Error = truncate("endpoints fail closed: " + strings.Join(st.EndpointFailures, "; "))
	}
	return ns
}

// isMissingAPI tells a missing resource type (CRD not installed) from a
// missing object.
func isMissingAPI(err error) bool {
	if meta.IsNoMatchError(err) {
		return true
	}
	var se apierrors.APIStatus
	if errors.As(err, &se) && se.Status().Code == 404 {
		d := se.Status().Details
		return d == nil || d.Name == ""
	}
	return false
}

// The report transport (issue 22): each node's report is a ConfigMap in
// a namespace of their own (ElectionConfig.ReportNamespace, default
// DefaultReportNamespace; nothing else may live there, since every agent
// can write every ConfigMap in it), named reportName(node), labelled
// reportLabel, its data "node" the node's name and "policies" the
// entries as JSON (the PolicyNodeStatus status.policies map). One report
// write cost the API server's process 4.8 ms of CPU as a PolicyNodeStatus
// at 10 policies (3.5 ms at 1, 13.8 ms at 50: decoding the stored object
// against the CRD schema, validating, managed fields) and 1.9 ms as a
// ConfigMap at 1 or 10 (a built-in type: protobuf in etcd, no schema, the
// report one opaque string; BenchmarkReportWrite in bench/scale), and a
// policy change costs one report write per node.
const (
	reportLabel      = "l7gate.io/policy-node-status"
	reportLabelValue = "v1"
	reportPrefix     = "l7gate-policy-status."
	reportDataNode   = "node"
	reportDataPols   = "policies"
)

// configMapResource: the core ConfigMaps (the aggregator's informer).
var configMapResource = schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}

// reportName is the name of node's report ConfigMap: reportPrefix and
// the node's name, or, when that is too long for an object name, a hash
// of it (the node is in the data either way).
func reportName(node string) string {
	if n := reportPrefix + node; len(n) <= 253 {
		return n
	}
	h := sha256.Sum256([]byte(node))
	return reportPrefix + "sha256-" + hex.EncodeToString(h[:])
}

// reportNode is the node a report (a report ConfigMap, or a
// PolicyNodeStatus an older agent wrote) is about; "" for a ConfigMap not
// named as that node's report is (it is ignored: one report per node).
func reportNode(u *unstructured.Unstructured) string {
	if isReportConfigMap(u) {
		n, _, _ := unstructured.NestedString(u.Object, "data", reportDataNode)
		if n == "" || u.GetName() != reportName(n) {
			return ""
		}
		return n
	}
	return u.GetName()
}

// isReportConfigMap tells a report ConfigMap from a PolicyNodeStatus (a
// PolicyNodeStatus has no data: its schema prunes it).
func isReportConfigMap(u *unstructured.Unstructured) bool {
	_, data := u.Object["data"]
	return u.GetKind() == "ConfigMap" || data
}

// loadNodeStatus reads this node's report (what a previous run of the
// agent reported), once, so that an agent restart rewrites nothing that
// did not change. The first time, it also deletes the node's
// PolicyNodeStatus, the report of an agent before the ConfigMap one: an
// elected agent of that version reads only those, and must not take a
// report this agent no longer keeps for what this node implements (it
// then shows the node as not reported: pending).
func (w *StatusWriter) loadNodeStatus(ctx context.Context) (map[string]nodePolicyStatus, error) {
	if !w.legacyDeleted {
		err := w.cfg.Dynamic.Resource(PolicyNodeStatusResource()).Delete(ctx, w.cfg.Node, metav1.DeleteOptions{})
		switch {
		case err == nil || apierrors.IsNotFound(err) || isMissingAPI(err):
			w.legacyDeleted = true
		default:
			return nil, fmt.Errorf("delete the policy node status of an older agent: %w", err)
		}
	}
	cm, err := w.cfg.Client.CoreV1().ConfigMaps(w.reportNamespace).Get(ctx, reportName(w.cfg.Node), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return map[string]nodePolicyStatus{}, nil
	}
	if err != nil {
		if apierrors.IsForbidden(err) {
			return nil, fmt.Errorf("read policy node status: the agent may not get configmaps in namespace %s (the chart's Role there; --status-namespace): %w", w.reportNamespace, err)
		}
		return nil, fmt.Errorf("read policy node status: %w", err)
	}
	w.nodeExists = true
	for _, r := range cm.OwnerReferences {
		w.nodeOwned = w.nodeOwned || r.Kind == "Node" && r.Name == w.cfg.Node
	}
	e, err := decodeReport(cm.Data[reportDataPols])
	if err != nil {
		// Rewritten whole below.
		w.log.Warn("policy node status unreadable; writing it again", "error", err)
		return map[string]nodePolicyStatus{}, nil
	}
	return e, nil
}

// decodeReport decodes a report's "policies" data.
func decodeReport(s string) (map[string]nodePolicyStatus, error) {
	out := map[string]nodePolicyStatus{}
	if s == "" {
		return out, nil
	}
	if err := json.Unmarshal([]byte(s), &out); err != nil {
		return nil, fmt.Errorf("decode policy node status: %w", err)
	}
	return out, nil
}

// nodeStatusEntries reads a report: the "policies" data of a report
// ConfigMap, or status.policies of a PolicyNodeStatus (an older agent's);
// anything that does not parse is left out.
func nodeStatusEntries(u *unstructured.Unstructured) map[string]nodePolicyStatus {
	if isReportConfigMap(u) {
		s, _, _ := unstructured.NestedString(u.Object, "data", reportDataPols)
		e, err := decodeReport(s)
		if err != nil {
			return map[string]nodePolicyStatus{}
		}
		return e
	}
	out := map[string]nodePolicyStatus{}
	raw, _, _ := unstructured.NestedMap(u.Object, "status", "policies")
	for k, v := range raw {
		b, err := json.Marshal(v)
		if err != nil {
			continue
		}
		var e nodePolicyStatus
		if json.Unmarshal(b, &e) == nil {
			out[k] = e
		}
	}
	return out
}

// writeNodeStatus writes this node's report when its entries changed
// (revisions and timestamps aside): a merge patch of its "policies" data
// (the whole report: one string), or a create when it does not exist.
// Only this node's agent writes it, so the patch needs no
// resourceVersion precondition and cannot conflict. It returns whether it
// wrote.
func (w *StatusWriter) writeNodeStatus(ctx context.Context, want map[string]nodePolicyStatus, now time.Time) (bool, error) {
	if w.nodeWritten == nil {
		prev, err := w.loadNodeStatus(ctx)
		if err != nil {
			return false, err
		}
		w.nodeWritten = prev
	}
	entries := make(map[string]nodePolicyStatus, len(want))
	changed := 0
	for k, e := range want {
		if old, ok := w.nodeWritten[k]; ok && sameReport(old, e) {
			entries[k] = old
			continue
		}
		e.LastUpdated = now.UTC().Format(time.RFC3339)
		entries[k] = e
		changed++
	}
	for k := range w.nodeWritten {
		if _, ok := want[k]; !ok {
			changed++ // the policy is gone
		}
	}
	if changed == 0 && w.nodeExists {
		w.log.Debug("policy node status unchanged", "node", w.cfg.Node, "policies", len(entries))
		return false, nil
	}
	if w.nodeUID == "" {
		// The Node owns its report: deleting the node deletes it.
		if n, err := w.cfg.Client.CoreV1().Nodes().Get(ctx, w.cfg.Node, metav1.GetOptions{}); err == nil {
			w.nodeUID = n.UID
		}
	}
	report, err := json.Marshal(entries) // sorted keys
	if err != nil {
		return false, fmt.Errorf("encode policy node status: %w", err)
	}
	cms := w.cfg.Client.CoreV1().ConfigMaps(w.reportNamespace)
	name := reportName(w.cfg.Node)
	err = errors.New("not found")
	if w.nodeExists {
		patch := map[string]any{"data": map[string]any{reportDataPols: string(report)}}
		if !w.nodeOwned && w.nodeUID != "" {
			patch["metadata"] = map[string]any{"ownerReferences": w.ownerRefs()}
		}
		var b []byte
		if b, err = json.Marshal(patch); err != nil {
			return false, fmt.Errorf("encode policy node status: %w", err)
		}
		_, err = cms.Patch(ctx, name, types.MergePatchType, b, metav1.PatchOptions{FieldManager: nodeFieldManager})
	}
	if !w.nodeExists || apierrors.IsNotFound(err) {
		// Not there (first report, or deleted meanwhile): create it whole.
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: w.reportNamespace,
			Labels: map[string]string{reportLabel: reportLabelValue, "app.kubernetes.io/part-of": "l7gate"}},
			Data: map[string]string{reportDataNode: w.cfg.Node, reportDataPols: string(report)}}
		if w.nodeUID != "" {
			cm.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: w.cfg.Node, UID: w.nodeUID}}
		}
		_, err = cms.Create(ctx, cm, metav1.CreateOptions{FieldManager: nodeFieldManager})
		if apierrors.IsAlreadyExists(err) {
			// Written by a previous run of this agent meanwhile: read it
			// again and write the difference next time.
			w.nodeWritten, w.nodeExists = nil, false
			return false, fmt.Errorf("write policy node status: %w", err)
		}
	}
	if err != nil {
		if apierrors.IsForbidden(err) {
			return false, fmt.Errorf("write policy node status: the agent may not create or patch configmaps in namespace %s (the chart's Role there; --status-namespace): %w", w.reportNamespace, err)
		}
		return false, fmt.Errorf("write policy node status: %w", err)
	}
	w.nodeExists = true
	w.nodeOwned = w.nodeOwned || w.nodeUID != ""
	w.nodeWritten = maps.Clone(entries)
	w.log.Debug("policy node status written", "node", w.cfg.Node, "policies", len(entries), "changed", changed)
	return true, nil
}

// entryFields are the fields of a PolicyNodeStatus entry and of a
// policy's status.nodes[node] (uid: the former only; the CRDs' schemas,
// the API server prunes any other).
var entryFields = []string{"uid", "ok", "enforcing", "revision", "observedGeneration", "error", "warnings", "lastUpdated"}

// wholeEntry is v (a nodePolicyStatus or nodeStatus) as a merge patch
// that replaces the stored entry whole: a merge patch keeps the fields it
// does not name, so each field v leaves out (an error gone, warnings
// gone) is named with null. Without it a node whose endpoints recovered
// still showed their error, next to ok: true.
func wholeEntry(v any, fields []string) (map[string]any, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode node status: %w", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("encode node status: %w", err)
	}
	for _, f := range fields {
		if _, ok := m[f]; !ok {
			m[f] = nil
		}
	}
	return m, nil
}

// ownerRefs names this node's Node as the owner of its PolicyNodeStatus.
func (w *StatusWriter) ownerRefs() []any {
	return []any{map[string]any{"apiVersion": "v1", "kind": "Node", "name": w.cfg.Node, "uid": string(w.nodeUID)}}
}

// DefaultReportNamespace holds the nodes' report ConfigMaps unless
// ElectionConfig.ReportNamespace says otherwise (the chart creates it).
const DefaultReportNamespace = "l7gate-policy-status"

// NodeReportNamespace is where the nodes' report ConfigMaps live for a
// configured ElectionConfig.ReportNamespace (empty: DefaultReportNamespace).
func NodeReportNamespace(configured string) string { return cmp.Or(configured, DefaultReportNamespace) }

// NodeReportName is the name of node's report ConfigMap.
func NodeReportName(node string) string { return reportName(node) }

// NodeReportSelector selects the nodes' report ConfigMaps (a label
// selector).
func NodeReportSelector() string { return reportLabel + "=" + reportLabelValue }

// NodeReportGenerations reads a report (a report ConfigMap, or an older
// agent's PolicyNodeStatus): the node, and per policy
// ("Kind/namespace/name" or "Kind/name") the generation it implemented.
func NodeReportGenerations(u *unstructured.Unstructured) (string, map[string]int64) {
	e := nodeStatusEntries(u)
	out := make(map[string]int64, len(e))
	for k, v := range e {
		out[k] = v.ObservedGeneration
	}
	return reportNode(u), out
}
