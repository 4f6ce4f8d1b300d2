package k8s

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"

	"github.com/l7gate/l7gate/policy"
)

// PolicyNodeStatus (l7gate.io/v1alpha1, cluster-scoped, one per node,
// named after the node) is what one node implemented: per Cilium policy,
// the generation, the agent revision that first implemented it, and any
// error, unsupported field or endpoint that fails closed. Each agent
// writes only its own (created whole, then merge-patched with the entries
// that changed; one field manager), so no two writers touch one object;
// the elected agent merges them into every policy's status.nodes and
// conditions (aggregator). Agents never watch these objects: a policy
// change costs N small writes and one or two merged status writes, instead of N writes to each policy that every
// agent watching policies received (make scale).
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
	policyNodeStatusAPIVersion = "l7gate.io/v1alpha1"
	policyNodeStatusKind       = "PolicyNodeStatus"
	// nodeFieldManager owns each node's PolicyNodeStatus.
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

// errNoNodeStatusAPI: the PolicyNodeStatus CRD is not installed.
var errNoNodeStatusAPI = errors.New("the PolicyNodeStatus API (policynodestatuses.l7gate.io) is not installed")

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

// loadNodeStatus reads this node's PolicyNodeStatus (what a previous run
// of the agent reported), once, so that an agent restart rewrites nothing
// that did not change.
func (w *StatusWriter) loadNodeStatus(ctx context.Context) (map[string]nodePolicyStatus, error) {
	u, err := w.cfg.Dynamic.Resource(PolicyNodeStatusResource()).Get(ctx, w.cfg.Node, metav1.GetOptions{})
	if apierrors.IsNotFound(err) && !isMissingAPI(err) {
		return map[string]nodePolicyStatus{}, nil
	}
	if err != nil {
		if isMissingAPI(err) {
			return nil, errNoNodeStatusAPI
		}
		return nil, fmt.Errorf("read policy node status: %w", err)
	}
	w.nodeExists = true
	for _, r := range u.GetOwnerReferences() {
		w.nodeOwned = w.nodeOwned || r.Kind == "Node" && r.Name == w.cfg.Node
	}
	return nodeStatusEntries(u), nil
}

// nodeStatusEntries reads status.policies of a PolicyNodeStatus (entries
// that do not parse are left out).
func nodeStatusEntries(u *unstructured.Unstructured) map[string]nodePolicyStatus {
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

// writeNodeStatus writes this node's PolicyNodeStatus when its entries
// changed (revisions and timestamps aside): a JSON merge patch of the
// changed and removed entries only, or a create when the object does not
// exist. Only this node's agent writes the object, so the patch needs no
// resourceVersion precondition and cannot conflict. A server-side apply
// of the whole object cost the API server about twice the CPU (the YAML
// decoding and structured merge of every entry; make scale). It returns
// whether it wrote.
func (w *StatusWriter) writeNodeStatus(ctx context.Context, want map[string]nodePolicyStatus, now time.Time) (bool, error) {
	if w.nodeWritten == nil {
		prev, err := w.loadNodeStatus(ctx)
		if err != nil {
			return false, err
		}
		w.nodeWritten = prev
	}
	entries := make(map[string]nodePolicyStatus, len(want))
	changed := map[string]any{}
	for k, e := range want {
		if old, ok := w.nodeWritten[k]; ok && sameReport(old, e) {
			entries[k] = old
			continue
		}
		e.LastUpdated = now.UTC().Format(time.RFC3339)
		entries[k] = e
		m, err := wholeEntry(e, entryFields)
		if err != nil {
			return false, err
		}
		changed[k] = m
	}
	for k := range w.nodeWritten {
		if _, ok := want[k]; !ok {
			changed[k] = nil // the policy is gone
		}
	}
	if len(changed) == 0 && w.nodeExists {
		w.log.Debug("policy node status unchanged", "node", w.cfg.Node, "policies", len(entries))
		return false, nil
	}
	if w.nodeUID == "" {
		// The Node owns its PolicyNodeStatus: deleting the node deletes it.
		if n, err := w.cfg.Client.CoreV1().Nodes().Get(ctx, w.cfg.Node, metav1.GetOptions{}); err == nil {
			w.nodeUID = n.UID
		}
	}
	res := w.cfg.Dynamic.Resource(PolicyNodeStatusResource())
	err := errors.New("not found")
	if w.nodeExists {
		patch := map[string]any{"status": map[string]any{"policies": changed}}
		if !w.nodeOwned && w.nodeUID != "" {
			patch["metadata"] = map[string]any{"ownerReferences": w.ownerRefs()}
		}
		var b []byte
		if b, err = json.Marshal(patch); err != nil {
			return false, fmt.Errorf("encode policy node status: %w", err)
		}
		_, err = res.Patch(ctx, w.cfg.Node, types.MergePatchType, b, metav1.PatchOptions{FieldManager: nodeFieldManager})
	}
	if !w.nodeExists || apierrors.IsNotFound(err) && !isMissingAPI(err) {
		// Not there (first report, or deleted meanwhile): create it whole.
		meta := map[string]any{"name": w.cfg.Node}
		if w.nodeUID != "" {
			meta["ownerReferences"] = w.ownerRefs()
		}
		pols := map[string]any{}
		for k, e := range entries {
			pols[k] = e
		}
		var m map[string]any
		b, jerr := json.Marshal(map[string]any{"apiVersion": policyNodeStatusAPIVersion, "kind": policyNodeStatusKind,
			"metadata": meta, "status": map[string]any{"policies": pols}})
		if jerr == nil {
			jerr = json.Unmarshal(b, &m)
		}
		if jerr != nil {
			return false, fmt.Errorf("encode policy node status: %w", jerr)
		}
		_, err = res.Create(ctx, &unstructured.Unstructured{Object: m}, metav1.CreateOptions{FieldManager: nodeFieldManager})
		if apierrors.IsAlreadyExists(err) {
			// Written by a previous run of this agent meanwhile: read it
			// again and write the difference next time.
			w.nodeWritten, w.nodeExists = nil, false
			return false, fmt.Errorf("write policy node status: %w", err)
		}
	}
	if err != nil {
		if isMissingAPI(err) {
			return false, errNoNodeStatusAPI
		}
		return false, fmt.Errorf("write policy node status: %w", err)
	}
	w.nodeExists = true
	w.nodeOwned = w.nodeOwned || w.nodeUID != ""
	w.nodeWritten = maps.Clone(entries)
	w.log.Debug("policy node status written", "node", w.cfg.Node, "policies", len(entries), "changed", len(changed))
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
