package k8s

import (
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/l7gate/l7gate/policy"
)

func testService(mod func(*corev1.Service)) *corev1.Service {
	local := corev1.ServiceInternalTrafficPolicyLocal
	timeout := int32(60)
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", ResourceVersion: "1", UID: "u1",
		Labels: map[string]string{"tier": "front"}, Annotations: map[string]string{"a": "1"}},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: "198.19.0.10", ClusterIPs: []string{"198.19.0.10"},
			Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromString("http")},
				{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53, TargetPort: intstr.FromInt32(5353)}},
			SessionAffinity:       corev1.ServiceAffinityClientIP,
			SessionAffinityConfig: &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &timeout}},
			InternalTrafficPolicy: &local}}
	if mod != nil {
		mod(s)
	}
	return s
}

func testSlice(mod func(*discoveryv1.EndpointSlice)) *discoveryv1.EndpointSlice {
	yes, no := true, false
	n1, n2 := "n1", "n2"
	name, proto, port := "http", corev1.ProtocolTCP, int32(8080)
	zone := "z"
	es := &discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "web-abc", Namespace: "shop", ResourceVersion: "1",
		Labels:      map[string]string{discoveryv1.LabelServiceName: "web", "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
		Annotations: map[string]string{"endpoints.kubernetes.io/last-change-trigger-time": "2026-01-01T00:00:00Z"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Protocol: &proto, Port: &port}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"198.18.0.2"}, NodeName: &n1, Zone: &zone, Conditions: discoveryv1.EndpointConditions{Ready: &yes, Serving: &yes, Terminating: &no},
				TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "shop", Name: "web-1", UID: "p1", ResourceVersion: "7"}},
			{Addresses: []string{"198.18.0.3"}, NodeName: &n2, Conditions: discoveryv1.EndpointConditions{Ready: &no, Serving: &yes, Terminating: &yes}},
		}}
	if mod != nil {
		mod(es)
	}
	return es
}

func serviceUpdateDigest(t *testing.T, s *Source, svc *corev1.Service, es *discoveryv1.EndpointSlice) (string, *policy.Objects) {
	t.Helper()
	tr, _ := trimEndpointSlice(es)
	d1, err := endpointSliceDocument(tr.(*discoveryv1.EndpointSlice))
	if err != nil {
		t.Fatal(err)
	}
	d2, err := serviceDocument(svc)
	if err != nil {
		t.Fatal(err)
	}
	docs := []document{d1, d2}
	sortDocuments(docs)
	u := s.update(docs)
	if len(u.Errors) > 0 {
		t.Fatal(u.Errors)
	}
	return u.Digest, u.Objects
}

// TestServiceDocuments: Services and EndpointSlices from the API decode
// into the model, and what the controllers rewrite without meaning
// (annotations, resourceVersion, endpoint order, zones, status) does not
// change the digest.
func TestServiceDocuments(t *testing.T) {
	s := &Source{log: testLogger(t)}
	base, objs := serviceUpdateDigest(t, s, testService(nil), testSlice(nil))
	fs, _ := policy.ServiceFrontends(objs, "n1")
	got := fmt.Sprint(fs)
	if len(fs) != 2 || fs[1].Address.String() != "198.19.0.10:80" || !fs[1].Local || fs[1].Affinity.Seconds() != 60 ||
		len(fs[1].Backends) != 1 || fs[1].Backends[0].Address.String() != "198.18.0.2:8080" || fs[1].Backends[0].Pod != "shop/web-1" {
		t.Errorf("frontends from the API objects: %s", got)
	}
	if objs.Services[0].Ports[0].TargetPortName != "http" || objs.Services[0].Ports[1].TargetPort != 5353 {
		t.Errorf("target ports %+v", objs.Services[0].Ports)
	}
	noise, _ := serviceUpdateDigest(t, s,
		testService(func(svc *corev1.Service) {
			svc.ResourceVersion, svc.Annotations = "9", map[string]string{"b": "2"}
			svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "203.0.113.1"}}
		}),
		testSlice(func(es *discoveryv1.EndpointSlice) {
			es.ResourceVersion = "9"
			es.Annotations["endpoints.kubernetes.io/last-change-trigger-time"] = "2026-01-01T00:00:01Z"
			es.Endpoints[0], es.Endpoints[1] = es.Endpoints[1], es.Endpoints[0]
			es.Endpoints[1].Zone = nil
			es.Endpoints[1].TargetRef.ResourceVersion = "8"
		}))
	if noise != base {
		t.Error("resourceVersion, annotations, status, endpoint order, zones or targetRef versions changed the digest")
	}
	for name, c := range map[string][2]any{
		"a backend becomes ready": {nil, func(es *discoveryv1.EndpointSlice) {
			yes, no := true, false
			es.Endpoints[1].Conditions = discoveryv1.EndpointConditions{Ready: &yes, Serving: &yes, Terminating: &no}
		}},
		"a port changes": {func(svc *corev1.Service) { svc.Spec.Ports[0].Port = 81 }, nil},
		"affinity off":   {func(svc *corev1.Service) { svc.Spec.SessionAffinity = corev1.ServiceAffinityNone }, nil},
	} {
		var sm func(*corev1.Service)
		var em func(*discoveryv1.EndpointSlice)
		if c[0] != nil {
			sm = c[0].(func(*corev1.Service))
		}
		if c[1] != nil {
			em = c[1].(func(*discoveryv1.EndpointSlice))
		}
		if d, _ := serviceUpdateDigest(t, s, testService(sm), testSlice(em)); d == base {
			t.Errorf("%s: digest unchanged", name)
		}
	}
	// Only the slice named kubernetes in default is the API server's.
	api := testSlice(func(es *discoveryv1.EndpointSlice) {
		es.Name, es.Namespace, es.Labels = "kubernetes", "default", map[string]string{discoveryv1.LabelServiceName: "kubernetes"}
	})
	_, objs = serviceUpdateDigest(t, s, testService(nil), api)
	if len(objs.APIServers) != 1 || !strings.Contains(fmt.Sprint(objs.APIServers[0].IPs), "198.18.0.2") {
		t.Errorf("kube-apiserver from default/kubernetes: %+v", objs.APIServers)
	}
}
