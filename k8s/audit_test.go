package k8s

import (
	"encoding/json"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/l7gate/l7gate/policy"
)

// TestAuditAnnotations: the audit annotation of a Namespace, a
// NetworkPolicy and a CiliumNetworkPolicy reaches policy (and other
// annotations do not, so they never change the digest); removing it
// enforces again.
func TestAuditAnnotations(t *testing.T) {
	audit := map[string]string{policy.AuditAnnotation: "true", "other": "x"}
	decode := func(ann map[string]string) *policy.Objects {
		t.Helper()
		ns, err := namespaceDocument(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns", Annotations: ann}})
		if err != nil {
			t.Fatal(err)
		}
		np, err := networkPolicyDocument(&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "np", Namespace: "ns", Annotations: ann}})
		if err != nil {
			t.Fatal(err)
		}
		u := &unstructured.Unstructured{}
		if err := json.Unmarshal([]byte(`{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"cnp","namespace":"ns"},"spec":{"endpointSelector":{}}}`), &u.Object); err != nil {
			t.Fatal(err)
		}
		u.SetAnnotations(ann)
		cnp, err := ciliumDocument(u)
		if err != nil {
			t.Fatal(err)
		}
		s := &Source{log: testLogger(t)}
		up := s.update([]document{ns, np, cnp})
		if len(up.Errors) > 0 {
			t.Fatal(up.Errors)
		}
		return up.Objects
	}
	objs := decode(audit)
	if len(objs.Namespaces) != 1 || !objs.Namespaces[0].Audit {
		t.Errorf("namespace not in audit: %+v", objs.Namespaces)
	}
	if len(objs.Policies) != 2 {
		t.Fatalf("policies %+v", objs.Policies)
	}
	for _, p := range objs.Policies {
		if !p.Audit {
			t.Errorf("%s %s not in audit", p.Kind, p.Name())
		}
	}
	objs = decode(map[string]string{"other": "x"})
	if objs.Namespaces[0].Audit || objs.Policies[0].Audit || objs.Policies[1].Audit {
		t.Error("audit without the annotation")
	}
}
