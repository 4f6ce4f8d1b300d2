package k8s

import (
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/source"
)

func netipMust(s string) netip.Addr { return netip.MustParseAddr(s) }

func testPod(name, ip string, mod func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", ResourceVersion: "1",
		Labels: map[string]string{"app": name}, ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "i"}}}}
	if ip != "" {
		p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "c", State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}}}
	}
	if mod != nil {
		mod(p)
	}
	return p
}

func decodePods(t *testing.T, pods ...*corev1.Pod) map[string]policy.Pod {
	t.Helper()
	docs, err := podDocuments(pods)
	if err != nil {
		t.Fatal(err)
	}
	s := &Source{log: testLogger(t)}
	u := s.update(docs)
	if len(u.Errors) > 0 {
		t.Fatal(u.Errors)
	}
	out := map[string]policy.Pod{}
	for _, p := range u.Objects.Pods {
		out[p.Name] = p
	}
	return out
}

func TestPodDocumentsTerminating(t *testing.T) {
	now := metav1.NewTime(time.Now())
	stopping := testPod("stopping", "198.18.0.5", func(p *corev1.Pod) { p.DeletionTimestamp = &now })
	handedOver := testPod("old", "198.18.0.6", func(p *corev1.Pod) { p.DeletionTimestamp = &now })
	successor := testPod("new", "198.18.0.6", nil)
	exited := testPod("exited", "198.18.0.7", func(p *corev1.Pod) {
		p.DeletionTimestamp = &now
		p.Status.ContainerStatuses[0].State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{}}
	})
	pending := testPod("pending", "", nil)
	got := decodePods(t, stopping, handedOver, successor, exited, pending)
	if p := got["stopping"]; len(p.IPs) != 1 || p.Phase != "Running" {
		t.Errorf("terminating, still running: %+v (want its IP kept)", p)
	}
	if p := got["old"]; len(p.IPs) != 0 {
		t.Errorf("terminating pod whose IP a live pod has: %+v (want no IP)", p)
	}
	if p := got["new"]; len(p.IPs) != 1 {
		t.Errorf("live pod: %+v", p)
	}
	if p := got["exited"]; p.Phase != "Succeeded" {
		t.Errorf("terminated pod phase %q, want Succeeded (skipped by policy)", p.Phase)
	}
	if p := got["pending"]; len(p.IPs) != 0 || p.Name != "pending" {
		t.Errorf("pod without an IP: %+v", p)
	}
}

// The digest ignores what does not change policy.
func TestDigestIgnoresNoise(t *testing.T) {
	s := &Source{log: testLogger(t)}
	digest := func(pods ...*corev1.Pod) string {
		var trimmed []*corev1.Pod
		for _, p := range pods {
			tp, _ := trimPod(p)
			trimmed = append(trimmed, tp.(*cachedPod).pod())
		}
		docs, err := podDocuments(trimmed)
		if err != nil {
			t.Fatal(err)
		}
		return s.update(docs).Digest
	}
	base := digest(testPod("a", "198.18.0.1", nil))
	noise := digest(testPod("a", "198.18.0.1", func(p *corev1.Pod) {
		p.ResourceVersion = "99"
		p.ManagedFields = nil
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
		p.Annotations = map[string]string{lastApplied: "{}"}
		p.Spec.Containers[0].Image = "i:2"
	}))
	if base != noise {
		t.Error("resourceVersion, managedFields, conditions, last-applied or image changed the digest")
	}
	if base == digest(testPod("a", "198.18.0.1", func(p *corev1.Pod) { p.Labels["v"] = "2" })) {
		t.Error("a label change kept the digest")
	}

	u := &unstructured.Unstructured{}
	if err := json.Unmarshal([]byte(`{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"p","namespace":"ns",
		"resourceVersion":"5","generation":3,"managedFields":[{"manager":"kubectl"}]},"spec":{"endpointSelector":{}},
		"status":{"conditions":[{"type":"Valid","status":"True"}]}}`), &u.Object); err != nil {
		t.Fatal(err)
	}
	u.SetGeneration(3) // as the API server's JSON decoder gives it (int64)
	d, err := ciliumDocument(u)
	if err != nil {
		t.Fatal(err)
	}
	if s := string(d.json); strings.Contains(s, "status") || strings.Contains(s, "resourceVersion") || strings.Contains(s, "managedFields") {
		t.Errorf("cilium document keeps noise: %s", s)
	}
	if d.info.Generation != 3 {
		t.Errorf("generation %d, want 3", d.info.Generation)
	}
}

// TestNodeEntryEndpointFailures: an endpoint that fails closed under a
// policy's rules makes this node's entry not OK and names it, while the
// policy stays enforcing.
func TestNodeEntryEndpointFailures(t *testing.T) {
	ns := nodeEntry(PolicyStatus{Revision: 4, Generation: 2, EndpointFailures: []string{"default/web: datapath policy: invalid policy entry"}})
	if ns.OK || !ns.Enforcing || !strings.Contains(ns.Error, "default/web: datapath policy: invalid policy entry") {
		t.Errorf("node status %+v", ns)
	}
	rej := nodeEntry(PolicyStatus{Revision: 10, Err: &policy.FieldError{Path: "spec.x", Err: errString("unknown field")}})
	if rej.OK || rej.Enforcing || rej.Error != "spec.x: unknown field" {
		t.Errorf("rejected: %+v", rej)
	}
}

type errString string

func (e errString) Error() string { return string(e) }

// TestSourceKeepsLastValid (issue 12 item 8): an invalid update of a policy
// keeps its last valid version in force and is reported invalid once; a
// new invalid policy holds its endpoints in default-deny.
func TestSourceKeepsLastValid(t *testing.T) {
	s := &Source{log: testLogger(t)}
	cnp := func(port string) document {
		u := &unstructured.Unstructured{}
		if err := json.Unmarshal([]byte(`{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"p","namespace":"ns"},
			"spec":{"endpointSelector":{"matchLabels":{"app":"a"}},"ingress":[{"toPorts":[{"ports":[{"port":"`+port+`"}]}]}]}}`), &u.Object); err != nil {
			t.Fatal(err)
		}
		d, err := ciliumDocument(u)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	ports := func(u source.Update) []uint16 {
		var out []uint16
		for _, p := range u.Objects.Policies {
			for _, sec := range p.Rules[0].Allow[policy.Ingress] {
				for _, pr := range sec.Ports {
					for _, ps := range pr.Ports {
						out = append(out, ps.Port)
					}
				}
			}
		}
		return out
	}
	u := s.update([]document{cnp("80")})
	if len(u.Errors) != 0 || !slices.Equal(ports(u), []uint16{80}) {
		t.Fatalf("valid: %v %v", u.Errors, ports(u))
	}
	u = s.update([]document{cnp("Eighty")})
	if len(u.Errors) != 1 || !strings.Contains(u.Errors[0].Error(), "the last valid version stays in force") {
		t.Fatalf("invalid update: errors %v", u.Errors)
	}
	if !slices.Equal(ports(u), []uint16{80}) {
		t.Errorf("invalid update: policies %v, want the last valid version (port 80)", ports(u))
	}
	items := statusItems(7, u, nil, nil)
	if len(items) != 1 || items[0].st.Err == nil {
		t.Errorf("status items %+v, want one, invalid", items)
	}
	// Deleted, then created invalid: the fail-closed stand-in.
	s.update(nil)
	u = s.update([]document{cnp("Eighty")})
	if len(u.Errors) != 1 || !strings.Contains(u.Errors[0].Error(), "held in default-deny (ingress)") ||
		len(u.Objects.Policies) != 1 || u.Objects.Policies[0].Invalid == "" {
		t.Errorf("new invalid policy: errors %v, policies %+v", u.Errors, u.Objects.Policies)
	}
	if items := statusItems(8, u, nil, nil); len(items) != 1 || items[0].st.Err == nil {
		t.Errorf("status items %+v, want one, invalid", items)
	}
}
