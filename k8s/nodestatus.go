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
// writes only its own (server-side apply, one field manager), so no two
// writers touch one object; the elected agent merges them into every
// policy's status.nodes and conditions (StatusAggregator). Agents never
// watch these objects: a policy change costs N small writes and a few
// merged status writes, instead of N writes to each policy that every
// agent watching policies received (make scale).
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

// writeNodeStatus applies this node's PolicyNodeStatus when its entries
// changed (revisions and timestamps aside). It returns whether it wrote.
func (w *StatusWriter) writeNodeStatus(ctx context.Context, want map[string]nodePolicyStatus, now time.Time) (bool, error) {
	if w.nodeWritten == nil {
		prev, err := w.loadNodeStatus(ctx)
		if err != nil {
			return false, err
		}
		w.nodeWritten = prev
	}
	entries := make(map[string]nodePolicyStatus, len(want))
	changed := len(want) != len(w.nodeWritten)
	for k, e := range want {
		if old, ok := w.nodeWritten[k]; ok && sameReport(old, e) {
			entries[k] = old
			continue
		}
		e.LastUpdated = now.UTC().Format(time.RFC3339)
		entries[k] = e
		changed = true
	}
	if !changed {
		w.log.Debug("policy node status unchanged", "node", w.cfg.Node, "policies", len(entries))
		return false, nil
	}
	if w.nodeUID == "" {
		// The Node owns its PolicyNodeStatus: deleting the node deletes it.
		if n, err := w.cfg.Client.CoreV1().Nodes().Get(ctx, w.cfg.Node, metav1.GetOptions{}); err == nil {
			w.nodeUID = n.UID
		}
	}
	meta := map[string]any{"name": w.cfg.Node}
	if w.nodeUID != "" {
		meta["ownerReferences"] = []any{map[string]any{"apiVersion": "v1", "kind": "Node", "name": w.cfg.Node, "uid": string(w.nodeUID)}}
	}
	pols := map[string]any{}
	for k, e := range entries {
		b, err := json.Marshal(e)
		if err != nil {
			return false, fmt.Errorf("encode policy node status: %w", err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			return false, fmt.Errorf("encode policy node status: %w", err)
		}
		pols[k] = m
	}
	obj := &unstructured.Unstructured{Object: map[string]any{"apiVersion": policyNodeStatusAPIVersion, "kind": policyNodeStatusKind,
		"metadata": meta, "status": map[string]any{"policies": pols}}}
	_, err := w.cfg.Dynamic.Resource(PolicyNodeStatusResource()).Apply(ctx, w.cfg.Node, obj,
		metav1.ApplyOptions{FieldManager: nodeFieldManager, Force: true})
	if err != nil {
		if isMissingAPI(err) {
			return false, errNoNodeStatusAPI
		}
		return false, fmt.Errorf("write policy node status: %w", err)
	}
	w.nodeWritten = maps.Clone(entries)
	w.log.Debug("policy node status written", "node", w.cfg.Node, "policies", len(entries))
	return true, nil
}
