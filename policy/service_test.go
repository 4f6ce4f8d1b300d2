package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"
)

const serviceObjects = `
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {tier: front}}
spec:
  clusterIP: 198.19.0.10
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
  - {name: dns, port: 53, protocol: UDP, targetPort: 5353}
  - {name: sctp, port: 9, protocol: SCTP}
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}, {name: dns, port: 5353, protocol: UDP}]
endpoints:
- addresses: [198.18.0.2]
  nodeName: n1
  targetRef: {kind: Pod, name: web-1}
- addresses: [198.18.0.3]
  nodeName: n2
  conditions: {ready: true}
- addresses: [198.18.0.4]
  nodeName: n1
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [198.18.0.5]
  nodeName: n1
  conditions: {ready: false, serving: false}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-b, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- addresses: [198.18.0.2]
  nodeName: n1
---
apiVersion: v1
kind: Service
metadata: {name: draining, namespace: shop}
spec:
  clusterIP: 198.19.0.11
  internalTrafficPolicy: Local
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: draining-1, namespace: shop, labels: {kubernetes.io/service-name: draining}}
ports: [{port: 80}]
endpoints:
- addresses: [198.18.0.6]
  nodeName: n1
  conditions: {ready: false, serving: true, terminating: true}
- addresses: [198.18.0.7]
  nodeName: n2
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: shop}
spec: {clusterIP: 198.19.0.12, ports: [{port: 80}], selector: {app: nobody}}
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: shop}
spec: {clusterIP: None, ports: [{port: 80}], selector: {app: web}}
---
apiVersion: v1
kind: Service
metadata: {name: dual, namespace: shop}
spec: {clusterIPs: [198.19.0.13, "fd00::13"], ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: dual-v6, namespace: shop, labels: {kubernetes.io/service-name: dual}}
addressType: IPv6
ports: [{port: 8080}]
endpoints:
- addresses: ["fd00::1:3"]
- addresses: ["fd00::1:2"]
  targetRef: {kind: Pod, name: dual-1}
- addresses: ["fd00::1:4"]
  conditions: {ready: false}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: shop}
spec: {type: ExternalName, externalName: example.com}
`

func TestServiceFrontends(t *testing.T) {
	objs := mustDecode(t, serviceObjects)
	if len(objs.Services) != 6 || len(objs.EndpointSlices) != 4 {
		t.Fatalf("decoded %d services, %d slices", len(objs.Services), len(objs.EndpointSlices))
	}
	type fe struct {
		addr     string
		proto    Protocol
		backends string
		state    string
	}
	summary := func(fs []ServiceFrontend) []fe {
		var out []fe
		for _, f := range fs {
			var bs []string
			for _, b := range f.Backends {
				bs = append(bs, b.Address.String())
			}
			out = append(out, fe{f.Address.String(), f.Protocol, strings.Join(bs, " "), f.State})
		}
		return out
	}
	got, notes := ServiceFrontends(objs, "n1")
	want := []fe{
		// web:80 — ready endpoints of both slices, deduplicated; the
		// terminating and the not-serving ones left out
		{"198.19.0.10:53", ProtoUDP, "198.18.0.2:5353 198.18.0.3:5353", FrontendReady},
		{"198.19.0.10:80", ProtoTCP, "198.18.0.2:8080 198.18.0.3:8080", FrontendReady},
		// Local: only n1's endpoints; none ready there, so the serving
		// terminating one
		{"198.19.0.11:80", ProtoTCP, "198.18.0.6:80", FrontendTerminating},
		{"198.19.0.12:80", ProtoTCP, "", FrontendNoBackends},
		// dual-stack: each ClusterIP gets its own family's endpoints
		{"198.19.0.13:80", ProtoTCP, "", FrontendNoBackends},
		{"[fd00::13]:80", ProtoTCP, "[fd00::1:2]:8080 [fd00::1:3]:8080", FrontendReady},
	}
	if fmt.Sprint(summary(got)) != fmt.Sprint(want) {
		t.Fatalf("frontends on n1:\n got %v\nwant %v", summary(got), want)
	}
	if got[1].Affinity != time.Minute || got[1].Backends[0].Pod != "shop/web-1" || got[1].Backends[0].Node != "n1" {
		t.Errorf("web:80 %+v", got[1])
	}
	if len(got) != 6 || len(got[5].Backends) == 0 || got[5].Backends[0].Pod != "shop/dual-1" {
		t.Errorf("dual [fd00::13]:80 %+v", got[5])
	}
	if !slices.ContainsFunc(notes, func(n string) bool { return strings.Contains(n, "9/SCTP") }) ||
		slices.ContainsFunc(notes, func(n string) bool { return strings.Contains(n, "fd00::13") }) {
		t.Errorf("notes %v", notes)
	}
	// On n3, internalTrafficPolicy Local has nothing.
	got, _ = ServiceFrontends(objs, "n3")
	if got[2].State != FrontendNoLocalBackends || len(got[2].Backends) != 0 {
		t.Errorf("draining on n3: %+v", got[2])
	}
	// Without a node (tools), every endpoint: the ready one on n2.
	got, _ = ServiceFrontends(objs, "")
	if s := summary(got)[2]; s.backends != "198.18.0.7:80" || s.state != FrontendReady {
		t.Errorf("draining without a node: %+v", s)
	}
}

func TestDecodeServiceErrors(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{"apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {clusterIP: 10.0.0.300}", `spec.clusterIPs[0]: invalid IP "10.0.0.300"`},
		{"apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 0}]}", "spec.ports[0].port: 0 is not a port"},
		{"apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80, protocol: ICMP}]}", "spec.ports[0].protocol"},
		{"apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80, targetPort: -web}]}", "spec.ports[0].targetPort"},
		{"apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {sessionAffinity: Cookie}", "spec.sessionAffinity"},
		{"apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {internalTrafficPolicy: Nearby}", "spec.internalTrafficPolicy"},
		{"apiVersion: v2\nkind: Service\nmetadata: {name: a}", "unsupported apiVersion"},
		{"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a}\nendpoints: [{addresses: [nope]}]", `endpoints[0].addresses[0]: invalid IP "nope"`},
		{"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a}\naddressType: Bogus", "addressType"},
		{"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: a}\nports: [{port: 70000}]", "ports[0].port"},
	} {
		objs, errs := Decode("test.yaml", []byte(tc.doc))
		if len(errs) != 1 || !strings.Contains(errs[0].Error(), tc.want) {
			t.Errorf("%q: errors %v, want one containing %q", tc.doc, errs, tc.want)
		}
		if len(objs.Services)+len(objs.EndpointSlices) != 0 {
			t.Errorf("%q: an invalid object was kept", tc.doc)
		}
	}
}

// TestDeriveEndpointSlices: in a folder (no EndpointSlice controller), a
// Service with a selector gets its endpoints from the pods.
func TestDeriveEndpointSlices(t *testing.T) {
	objs := mustDecode(t, `
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 198.18.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: shop, labels: {app: web}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 9090}]}]}
status: {podIP: 198.18.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: web-old, namespace: shop, labels: {app: web}}
status: {podIP: 198.18.0.4, phase: Succeeded}
---
apiVersion: v1
kind: Pod
metadata: {name: web-elsewhere, namespace: other, labels: {app: web}}
status: {podIP: 198.18.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: dual-1, namespace: shop, labels: {app: dual}}
status: {podIP: 198.18.0.6, podIPs: [{ip: 198.18.0.6}, {ip: "fd00::6"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: v4only-1, namespace: shop, labels: {app: dual}}
status: {podIP: 198.18.0.7}
---
apiVersion: v1
kind: Service
metadata: {name: dual, namespace: shop}
spec: {clusterIPs: [198.19.0.12, "fd00::12"], selector: {app: dual}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: six, namespace: shop}
spec: {clusterIPs: ["fd00::14"], selector: {app: dual}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 198.19.0.10, selector: {app: web}, ports: [{name: http, port: 80, targetPort: http}, {name: admin, port: 81, targetPort: 7000}]}
---
apiVersion: v1
kind: Service
metadata: {name: given, namespace: shop}
spec: {clusterIP: 198.19.0.11, selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: given-1, namespace: shop, labels: {kubernetes.io/service-name: given}}
ports: [{port: 80}]
endpoints: [{addresses: [198.18.0.9]}]
`)
	objs.DeriveEndpointSlices()
	got, _ := ServiceFrontends(objs, "")
	var lines []string
	for _, f := range got {
		var bs []string
		for _, b := range f.Backends {
			bs = append(bs, b.Address.String()+"("+b.Pod+")")
		}
		lines = append(lines, f.Address.String()+" → "+strings.Join(bs, " "))
	}
	want := []string{
		"198.19.0.10:80 → 198.18.0.2:8080(shop/web-1) 198.18.0.3:9090(shop/web-2)",
		"198.19.0.10:81 → 198.18.0.2:7000(shop/web-1) 198.18.0.3:7000(shop/web-2)",
		"198.19.0.11:80 → 198.18.0.9:80()", // its own slice: nothing derived
		// dual-stack: a slice per ClusterIP family, each with the pods
		// that have an address of it
		"198.19.0.12:80 → 198.18.0.6:8080(shop/dual-1) 198.18.0.7:8080(shop/v4only-1)",
		"[fd00::12]:80 → [fd00::6]:8080(shop/dual-1)",
		"[fd00::14]:80 → [fd00::6]:8080(shop/dual-1)", // IPv6 only: no IPv4 slice
	}
	if !slices.Equal(lines, want) {
		t.Errorf("derived:\n%s\nwant\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	var slices6 []string
	for _, es := range objs.EndpointSlices {
		if es.Service == "web" && !es.Derived {
			t.Errorf("slice %s not marked derived", es.Name)
		}
		if es.Derived {
			slices6 = append(slices6, es.Name+"/"+es.AddressType)
		}
	}
	if g, w := strings.Join(slices6, " "), "dual-l7gate-0/IPv4 dual-l7gate6-0/IPv6 six-l7gate6-0/IPv6 web-l7gate-0/IPv4 web-l7gate-1/IPv4"; g != w {
		t.Errorf("derived slices %s, want %s", g, w)
	}
}

const toServicesObjects = `
apiVersion: v1
kind: Pod
metadata: {name: deathstar-1, namespace: default, labels: {org: empire, class: deathstar}}
status: {podIP: 198.18.20.1}
---
apiVersion: v1
kind: Pod
metadata: {name: deathstar-2, namespace: default, labels: {org: empire, class: deathstar}}
status: {podIP: 198.18.20.2}
---
apiVersion: v1
kind: Pod
metadata: {name: decoy, namespace: default, labels: {org: empire, class: decoy}}
status: {podIP: 198.18.20.5}
---
apiVersion: v1
kind: Pod
metadata: {name: tiefighter, namespace: default, labels: {org: empire, class: tiefighter}}
status: {podIP: 198.18.20.3}
---
apiVersion: v1
kind: Pod
metadata: {name: deathstar-x, namespace: other, labels: {org: empire, class: deathstar}}
status: {podIP: 198.18.20.4}
---
apiVersion: v1
kind: Service
metadata: {name: deathstar, namespace: default, labels: {env: staging}}
spec: {clusterIP: 198.19.20.10, selector: {org: empire, class: deathstar}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: default}
spec: {clusterIP: 198.19.20.12, selector: {class: nobody}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: default}
spec: {clusterIP: 198.19.20.11, ports: [{port: 5432}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: legacy-1, namespace: default, labels: {kubernetes.io/service-name: legacy}}
ports: [{port: 5432}]
endpoints:
- addresses: [203.0.113.5]
- addresses: [198.18.20.5]
`

// TestToServices: Cilium's toServices semantics, traced through the
// Services (--dst-service) and to the backends directly.
func TestToServices(t *testing.T) {
	base := mustDecode(t, toServicesObjects)
	base.DeriveEndpointSlices()
	tie := TracePeer{Labels: map[string]string{"org": "empire", "class": "tiefighter"}}
	for _, tc := range []struct {
		name, policy string
		dst          TracePeer
		port         uint16
		want         Decision
	}{
		{"k8sService allows the Service's pods", `toServices: [{k8sService: {serviceName: deathstar, namespace: default}}]`, TracePeer{Service: "default/deathstar"}, 80, DecisionAllowed},
		{"…directly by address too", `toServices: [{k8sService: {serviceName: deathstar, namespace: default}}]`, TracePeer{Addr: mustAddr("198.18.20.2")}, 80, DecisionAllowed},
		{"…not another pod", `toServices: [{k8sService: {serviceName: deathstar, namespace: default}}]`, TracePeer{Addr: mustAddr("198.18.20.5")}, 80, DecisionDenied},
		{"…not the same labels in another namespace", `toServices: [{k8sService: {serviceName: deathstar, namespace: default}}]`, TracePeer{Addr: mustAddr("198.18.20.4")}, 80, DecisionDenied},
		{"…the ClusterIP on the Service's port is the Service (load-balanced)", `toServices: [{k8sService: {serviceName: deathstar, namespace: default}}]`, TracePeer{Addr: mustAddr("198.19.20.10")}, 80, DecisionAllowed},
		{"…not the ClusterIP on a port it lacks (world)", `toServices: [{k8sService: {serviceName: deathstar, namespace: default}}]`, TracePeer{Addr: mustAddr("198.19.20.10")}, 81, DecisionDenied},
		{"namespace omitted: any namespace", `toServices: [{k8sService: {serviceName: deathstar}}]`, TracePeer{Service: "default/deathstar"}, 80, DecisionAllowed},
		{"another namespace named", `toServices: [{k8sService: {serviceName: deathstar, namespace: other}}]`, TracePeer{Service: "default/deathstar"}, 80, DecisionDenied},
		{"k8sServiceSelector over Service labels", `toServices: [{k8sServiceSelector: {selector: {matchLabels: {env: staging}}}}]`, TracePeer{Service: "default/deathstar"}, 80, DecisionAllowed},
		{"k8sServiceSelector, other labels", `toServices: [{k8sServiceSelector: {selector: {matchLabels: {env: prod}}}}]`, TracePeer{Service: "default/deathstar"}, 80, DecisionDenied},
		{"with toPorts", "toServices: [{k8sService: {serviceName: deathstar}}]\n    toPorts: [{ports: [{port: \"80\"}]}]", TracePeer{Service: "default/deathstar"}, 80, DecisionAllowed},
		{"with toPorts, other port", "toServices: [{k8sService: {serviceName: deathstar}}]\n    toPorts: [{ports: [{port: \"81\"}]}]", TracePeer{Service: "default/deathstar"}, 80, DecisionDenied},
		{"no selector: endpoint addresses as CIDRs", `toServices: [{k8sService: {serviceName: legacy}}]`, TracePeer{Addr: mustAddr("203.0.113.5")}, 5432, DecisionAllowed},
		{"…which never select pods", `toServices: [{k8sService: {serviceName: legacy}}]`, TracePeer{Addr: mustAddr("198.18.20.5")}, 5432, DecisionDenied},
		{"toEndpoints works for Service traffic", `toEndpoints: [{matchLabels: {class: deathstar}}]`, TracePeer{Service: "default/deathstar"}, 80, DecisionAllowed},
		{"a Service without backends refuses", `toServices: [{k8sService: {serviceName: empty}}]`, TracePeer{Service: "default/empty"}, 80, DecisionDenied},
	} {
		t.Run(tc.name, func(t *testing.T) {
			objs := mustDecode(t, toServicesObjects+`---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: tie, namespace: default}
spec:
  endpointSelector: {matchLabels: {class: tiefighter}}
  egress:
  - `+tc.policy+"\n")
			objs.DeriveEndpointSlices()
			res, err := Trace(objs, TraceRequest{Src: tie, Dst: tc.dst, Protocol: ProtoTCP, DPort: tc.port})
			if err != nil {
				t.Fatal(err)
			}
			if res.Verdict != tc.want {
				t.Errorf("verdict %s, want %s (%+v)", res.Verdict, tc.want, res.Service)
			}
			if tc.dst.Service != "" && res.Service == nil {
				t.Error("no service trace")
			}
		})
	}
	// The Service's trace lists every backend.
	res, err := Trace(base, TraceRequest{Src: tie, Dst: TracePeer{Service: "default/deathstar"}, DPort: 80})
	if err != nil {
		t.Fatal(err)
	}
	if res.Service == nil || len(res.Service.Backends) != 2 || res.Service.Frontend.String() != "198.19.20.10:80" {
		t.Errorf("service trace %+v", res.Service)
	}
	if _, err := Trace(base, TraceRequest{Src: tie, Dst: TracePeer{Service: "default/deathstar"}, DPort: 81}); err == nil || !strings.Contains(err.Error(), "80/TCP") {
		t.Errorf("unknown port: %v", err)
	}
	if _, err := Trace(base, TraceRequest{Src: tie, Dst: TracePeer{Service: "nope"}, DPort: 80}); err == nil {
		t.Error("a service without namespace traced")
	}
}

// TestToServicesDeny: l7gate resolves toServices in egressDeny (Cilium
// leaves it unresolved, denying nothing).
func TestToServicesDeny(t *testing.T) {
	objs := mustDecode(t, toServicesObjects+`---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: tie, namespace: default}
spec:
  endpointSelector: {matchLabels: {class: tiefighter}}
  egress: [{toEntities: [all]}]
  egressDeny: [{toServices: [{k8sService: {serviceName: deathstar}}]}]
`)
	objs.DeriveEndpointSlices()
	tie := TracePeer{Labels: map[string]string{"class": "tiefighter", "org": "empire"}}
	for dst, want := range map[string]Decision{"198.18.20.1": DecisionDenied, "198.18.20.5": DecisionAllowed} {
		res, err := Trace(objs, TraceRequest{Src: tie, Dst: TracePeer{Addr: mustAddr(dst)}, DPort: 80})
		if err != nil {
			t.Fatal(err)
		}
		if res.Verdict != want {
			t.Errorf("→ %s: %s, want %s", dst, res.Verdict, want)
		}
	}
}

func TestToServicesInvalid(t *testing.T) {
	for _, tc := range []struct{ entry, want string }{
		{`[{}]`, "toServices[0]: empty"},
		{`[{k8sService: {namespace: default}}]`, "toServices[0].k8sService.serviceName: missing"},
		{`[{k8sServiceSelector: {namespace: default}}]`, "toServices[0].k8sServiceSelector.selector: missing"},
		{`[{k8sService: {serviceName: a, bogus: 1}}]`, "bogus"},
	} {
		_, errs := Decode("p.yaml", []byte(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: default}
spec:
  endpointSelector: {}
  egress: [{toServices: `+tc.entry+`}]
`))
		if len(errs) != 1 || !strings.Contains(errs[0].Error(), tc.want) {
			t.Errorf("%s: %v, want an error with %q", tc.entry, errs, tc.want)
		}
	}
}

// TestTrackerKeepsServices: an update that breaks a Service keeps its
// last valid version (its backends stay as they were, not dropped).
func TestTrackerKeepsServices(t *testing.T) {
	tr := NewTracker()
	good := `apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 198.19.0.10, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
ports: [{port: 80}]
endpoints: [{addresses: [198.18.0.2]}]
`
	objs, errs := tr.Apply(Decode("f.yaml", []byte(good)))
	if len(errs) != 0 || len(objs.Services) != 1 || len(objs.EndpointSlices) != 1 {
		t.Fatalf("first: %v %+v", errs, objs)
	}
	bad := strings.Replace(strings.Replace(good, "198.19.0.10", "198.19.0.300", 1), "198.18.0.2]", "nope]", 1)
	objs, errs = tr.Apply(Decode("f.yaml", []byte(bad)))
	if len(errs) != 2 || len(objs.Services) != 1 || objs.Services[0].ClusterIPs[0] != mustAddr("198.19.0.10") || len(objs.EndpointSlices) != 1 {
		t.Fatalf("after a broken update: %v %+v", errs, objs)
	}
	var ie *InvalidObjectError
	if !errors.As(errs[0], &ie) || ie.Fallback != FallbackLastValid {
		t.Errorf("error %v does not say the last valid version stays", errs[0])
	}
	objs, _ = tr.Apply(Decode("f.yaml", nil))
	if len(objs.Services)+len(objs.EndpointSlices) != 0 {
		t.Error("deleted objects kept")
	}
	_ = netip.Addr{}
}

func TestServiceFrontendConflict(t *testing.T) {
	objs := mustDecode(t, `apiVersion: v1
kind: Service
metadata: {name: b, namespace: shop}
spec: {clusterIP: 198.19.0.10, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: a, namespace: shop}
spec: {clusterIP: 198.19.0.10, ports: [{port: 80}, {port: 80, protocol: UDP, name: u}]}
`)
	fs, notes := ServiceFrontends(objs, "")
	if len(fs) != 3 || fs[0].Service != "shop/a" || fs[1].Service != "shop/b" || fs[1].State != FrontendConflict || fs[2].State == FrontendConflict {
		t.Errorf("frontends %+v", fs)
	}
	if len(notes) != 1 || !strings.Contains(notes[0], "also service shop/a's") {
		t.Errorf("notes %v", notes)
	}
}

// TestHostileServiceClusterIP: a ClusterIP that no API server allocates
// (unspecified, loopback, multicast, broadcast, link-local) is an error:
// translating it would hijack connections that are no Service's (a
// connect to 0.0.0.0 or 127.0.0.1 is one to the node itself).
func TestHostileServiceClusterIP(t *testing.T) {
	for _, ip := range []string{"0.0.0.0", "127.0.0.1", "224.0.0.1", "255.255.255.255", "169.254.169.254", "::", "::1", "::ffff:127.0.0.1"} {
		_, errs := Decode("svc.yaml", []byte(`apiVersion: v1
kind: Service
metadata: {name: a, namespace: d}
spec: {clusterIP: "`+ip+`", ports: [{port: 80}]}
`))
		if len(errs) == 0 || !strings.Contains(errs[0].Error(), "spec.clusterIPs[0]") {
			t.Errorf("clusterIP %s: errors %v, want one naming spec.clusterIPs[0]", ip, errs)
		}
	}
	if _, errs := Decode("svc.yaml", []byte(`apiVersion: v1
kind: Service
metadata: {name: a, namespace: d}
spec: {clusterIP: 198.19.0.1, ports: [{port: 80}]}
`)); len(errs) != 0 {
		t.Errorf("a plain ClusterIP: %v", errs)
	}
}

// TestTraceServiceFamily: a dual-stack Service is traced through its
// ClusterIP of the family asked for, to that family's backend addresses;
// a Service without a ClusterIP of that family is an error naming it.
func TestTraceServiceFamily(t *testing.T) {
	objs := mustDecode(t, `apiVersion: v1
kind: Pod
metadata: {name: ds-1, namespace: default, labels: {app: ds}}
status: {podIP: 198.18.30.1, podIPs: [{ip: 198.18.30.1}, {ip: "fd00:7e2e:1:1::1"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: ds-2, namespace: default, labels: {app: ds}}
status: {podIP: 198.18.30.2, podIPs: [{ip: 198.18.30.2}]}
---
apiVersion: v1
kind: Service
metadata: {name: ds, namespace: default}
spec: {clusterIP: 198.19.30.10, clusterIPs: [198.19.30.10, "fd00:7e2e:2::10"], ipFamilies: [IPv4, IPv6], selector: {app: ds}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: v4, namespace: default}
spec: {clusterIP: 198.19.30.11, selector: {app: ds}, ports: [{port: 80}]}
`)
	objs.DeriveEndpointSlices()
	src := TracePeer{Entity: "world"}
	for _, tc := range []struct {
		svc, family, frontend string
		backends              []string
	}{
		{"default/ds", "", "198.19.30.10:80", []string{"198.18.30.1:80", "198.18.30.2:80"}},
		{"default/ds", "IPv4", "198.19.30.10:80", []string{"198.18.30.1:80", "198.18.30.2:80"}},
		{"default/ds", "IPv6", "[fd00:7e2e:2::10]:80", []string{"[fd00:7e2e:1:1::1]:80"}},
	} {
		res, err := Trace(objs, TraceRequest{Src: src, Dst: TracePeer{Service: tc.svc, Family: tc.family}, DPort: 80})
		if err != nil {
			t.Fatalf("%s %q: %v", tc.svc, tc.family, err)
		}
		var backends []string
		for _, b := range res.Service.Backends {
			backends = append(backends, b.Backend.String())
		}
		if res.Service.Frontend.String() != tc.frontend || !slices.Equal(backends, tc.backends) {
			t.Errorf("%s %q: via %s to %v, want via %s to %v", tc.svc, tc.family, res.Service.Frontend, backends, tc.frontend, tc.backends)
		}
	}
	for _, tc := range []struct {
		dst  TracePeer
		want string
	}{
		{TracePeer{Service: "default/v4", Family: "IPv6"}, "service default/v4 has no IPv6 ClusterIP (it has 198.19.30.11)"},
		{TracePeer{Service: "default/ds", Family: "ipv6"}, `family "ipv6": want IPv4 or IPv6`},
		{TracePeer{Addr: mustAddr("198.18.30.1"), Family: "IPv6"}, "a family is only given with a Service"},
	} {
		if _, err := Trace(objs, TraceRequest{Src: src, Dst: tc.dst, DPort: 80}); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want an error naming %q", tc.dst, err, tc.want)
		}
	}
}
