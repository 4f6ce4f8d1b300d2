package policy

import (
	"slices"
	"testing"
)

const evalObjects = `
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: ns, labels: {app: server}}
status: {podIP: 198.18.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: friend, namespace: ns, labels: {app: friend}}
status: {podIP: 198.18.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: intruder, namespace: ns, labels: {app: friend, role: intruder}}
status: {podIP: 198.18.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: admin, namespace: ns, labels: {app: admin}}
status: {podIP: 198.18.0.4}
---
apiVersion: v1
kind: Pod
metadata: {name: monitor, namespace: ns, labels: {app: monitor}}
status: {podIP: 198.18.0.5}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server, namespace: ns}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  # 0: friends on 8000-8100
  - fromEndpoints: [{matchLabels: {app: friend}}]
    toPorts: [{ports: [{port: "8000", endPort: 8100, protocol: TCP}]}]
  # 1: HTTP rules on 80 for every peer
  - toPorts:
    - ports: [{port: "80"}]
      rules: {http: [{method: GET, path: /public/.*}]}
  # 2: admin everywhere (L3 only)
  - fromEndpoints: [{matchLabels: {app: admin}}]
  # 3: monitor may send anything to 80 (an L4 allow on the redirected port)
  - fromEndpoints: [{matchLabels: {app: monitor}}]
    toPorts: [{ports: [{port: "80"}]}]
  # 4: world on UDP 53
  - fromEntities: [world]
    toPorts: [{ports: [{port: "53", protocol: UDP}]}]
  ingressDeny:
  # 0: the intruder never reaches 8080
  - fromEndpoints: [{matchLabels: {role: intruder}}]
    toPorts: [{ports: [{port: "8080"}]}]
`

func TestEvaluateL4Order(t *testing.T) {
	snap := mustCompute(t, mustDecode(t, evalObjects))
	id := func(ip string) Identity { return snap.IdentityOf(mustAddr(ip)) }
	server, friend, intruder, admin, monitor := id("198.18.0.1"), id("198.18.0.2"), id("198.18.0.3"), id("198.18.0.4"), id("198.18.0.5")
	in := &snap.Policy(server).Ingress
	if !in.Enforced {
		t.Fatal("server ingress not enforced")
	}
	tests := []struct {
		name  string
		peer  Identity
		proto Protocol
		port  uint16
		want  Decision
		path  string // path of the deciding rule
		kind  RuleKind
	}{
		{"range start", friend, ProtoTCP, 8000, DecisionAllowed, "spec.ingress[0]", KindAllow},
		{"range end", friend, ProtoTCP, 8100, DecisionAllowed, "spec.ingress[0]", KindAllow},
		{"past range", friend, ProtoTCP, 8101, DecisionDenied, "spec.ingress", KindDefaultDeny},
		{"range is TCP only", friend, ProtoUDP, 8050, DecisionDenied, "spec.ingress", KindDefaultDeny},
		{"deny beats allow", intruder, ProtoTCP, 8080, DecisionDenied, "spec.ingressDeny[0]", KindDeny},
		{"deny is port-specific", intruder, ProtoTCP, 8081, DecisionAllowed, "spec.ingress[0]", KindAllow},
		{"L4 wildcard peer redirects", friend, ProtoTCP, 80, DecisionRedirected, "spec.ingress[1]", KindAllow},
		{"an L3-only allow is still redirected", admin, ProtoTCP, 80, DecisionRedirected, "spec.ingress[1]", KindAllow},
		{"L3-only allow elsewhere", admin, ProtoUDP, 9999, DecisionAllowed, "spec.ingress[2]", KindAllow},
		{"world by entity", IdentityWorld, ProtoUDP, 53, DecisionAllowed, "spec.ingress[4]", KindAllow},
		{"world other port", IdentityWorld, ProtoTCP, 53, DecisionDenied, "spec.ingress", KindDefaultDeny},
		{"monitor redirected too", monitor, ProtoTCP, 80, DecisionRedirected, "spec.ingress[1]", KindAllow},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := in.EvaluateL4(tc.peer, tc.proto, tc.port)
			if r.Decision != tc.want {
				t.Fatalf("decision %s, want %s (%v)", r.Decision, tc.want, r.DecidedBy)
			}
			if !slices.ContainsFunc(r.DecidedBy, func(p Provenance) bool { return p.Path == tc.path && p.Kind == tc.kind && p.Policy == "ns/server" }) {
				t.Errorf("decidedBy %v, want %s %s", r.DecidedBy, tc.kind, tc.path)
			}
			if tc.want == DecisionRedirected && (r.Parser != ParserHTTP || r.L7 == nil) {
				t.Errorf("redirect without http rule set: %+v", r)
			}
		})
	}
	// Not enforced: the server's egress allows everything.
	if r := snap.Policy(server).Egress.EvaluateL4(IdentityWorld, ProtoTCP, 443); r.Decision != DecisionAllowed || r.Enforced {
		t.Errorf("egress not enforced: got %+v", r)
	}

	// L7 on the redirected port: the rule set is an allow-list; the monitor's
	// L4 allow on the same port and the admin's L3-only allow let them send
	// any request (Cilium's rule: an allow without L7 rules lifts them).
	rs := in.L7Set(ProtoTCP, 80)
	for _, tc := range []struct {
		peer   Identity
		method string
		path   string
		want   Decision
	}{
		{friend, "GET", "/public/index.html", DecisionAllowed},
		{friend, "POST", "/public/index.html", DecisionDenied},
		{friend, "GET", "/private", DecisionDenied},
		{admin, "GET", "/private", DecisionAllowed},
		{monitor, "DELETE", "/private", DecisionAllowed},
	} {
		r, err := rs.EvaluateHTTP(tc.peer, &HTTPRequest{Method: tc.method, Path: tc.path})
		if err != nil {
			t.Fatal(err)
		}
		if r.Decision != tc.want {
			t.Errorf("peer %d %s %s: %s, want %s", tc.peer, tc.method, tc.path, r.Decision, tc.want)
		}
	}
}

func TestDefaultDenyModes(t *testing.T) {
	snap := mustCompute(t, mustDecode(t, `
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: ns, labels: {app: a}}
status: {podIP: 198.18.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: ns, labels: {app: b}}
status: {podIP: 198.18.0.2}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-all-ingress, namespace: ns}
spec:
  endpointSelector: {matchLabels: {app: a}}
  ingress: [{}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: additive, namespace: ns}
spec:
  endpointSelector: {matchLabels: {app: b}}
  enableDefaultDeny: {ingress: false}
  ingress:
  - fromEntities: [world]
`))
	a, b := snap.IdentityOf(mustAddr("198.18.0.1")), snap.IdentityOf(mustAddr("198.18.0.2"))
	ra := snap.Policy(a).Ingress.EvaluateL4(b, ProtoTCP, 80)
	if ra.Decision != DecisionDenied || len(ra.DecidedBy) != 1 || ra.DecidedBy[0].Kind != KindDefaultDeny || ra.DecidedBy[0].Policy != "ns/deny-all-ingress" {
		t.Errorf(`"ingress: [{}]" should deny by default: %+v`, ra)
	}
	if snap.Policy(b).Ingress.Enforced {
		t.Error("enableDefaultDeny.ingress=false still enforced")
	}
	if r := snap.Policy(b).Ingress.EvaluateL4(a, ProtoTCP, 80); r.Decision != DecisionAllowed {
		t.Errorf("not enforced ingress denied: %+v", r)
	}
}

func TestStarwars(t *testing.T) {
	objs, errs := Load("testdata/in/starwars-l7.yaml")
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	tiefighter := TracePeer{Labels: map[string]string{"org": "empire", "class": "tiefighter"}}
	xwing := TracePeer{Labels: map[string]string{"org": "alliance", "class": "xwing"}}
	deathstar := TracePeer{Labels: map[string]string{"org": "empire", "class": "deathstar"}}
	want := Provenance{Policy: "default/rule1", PolicyKind: KindCNP, Direction: Ingress, Rule: 0}
	tests := []struct {
		name    string
		src     TracePeer
		http    *HTTPRequest
		verdict Decision
		kind    RuleKind
		l7      string
	}{
		{"tiefighter lands", tiefighter, &HTTPRequest{Method: "POST", Path: "/v1/request-landing"}, DecisionAllowed, KindAllow, "http[0]"},
		{"tiefighter exhaust port", tiefighter, &HTTPRequest{Method: "PUT", Path: "/v1/exhaust-port"}, DecisionDenied, KindDefaultDeny, ""},
		{"xwing at L4", xwing, nil, DecisionDenied, KindDefaultDeny, ""},
		{"xwing lands", xwing, &HTTPRequest{Method: "POST", Path: "/v1/request-landing"}, DecisionDenied, KindDefaultDeny, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, err := Trace(objs, TraceRequest{Src: tc.src, Dst: deathstar, Protocol: ProtoTCP, DPort: 80, HTTP: tc.http})
			if err != nil {
				t.Fatal(err)
			}
			if res.Verdict != tc.verdict {
				t.Fatalf("verdict %s, want %s", res.Verdict, tc.verdict)
			}
			if len(res.DecidedBy) != 1 {
				t.Fatalf("decidedBy %v, want one entry", res.DecidedBy)
			}
			got := res.DecidedBy[0]
			if got.Policy != want.Policy || got.Direction != Ingress || got.Rule != 0 || got.Kind != tc.kind || got.L7 != tc.l7 {
				t.Errorf("decidedBy %+v, want rule1 ingress rule 0 %s %s", got, tc.kind, tc.l7)
			}
		})
	}
}

func TestKafkaEvaluate(t *testing.T) {
	objs, errs := Load("testdata/in/l7.yaml")
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	snap := mustCompute(t, objs)
	kafka, api := snap.IdentityOf(mustAddr("198.18.6.4")), snap.IdentityOf(mustAddr("198.18.6.1"))
	rs := snap.Policy(kafka).Ingress.L7Set(ProtoTCP, 9092)
	if rs == nil || rs.Parser != ParserKafka {
		t.Fatalf("no kafka rule set: %+v", rs)
	}
	tests := []struct {
		name   string
		req    KafkaRequest
		want   Decision
		denied []string
	}{
		{"produce allowed topic", KafkaRequest{APIKey: KafkaProduce, APIVersion: 9, Topics: []string{"orders"}}, DecisionAllowed, nil},
		{"produce other topic", KafkaRequest{APIKey: KafkaProduce, APIVersion: 9, Topics: []string{"payments"}}, DecisionDenied, []string{"payments"}},
		{"produce mixed topics", KafkaRequest{APIKey: KafkaProduce, Topics: []string{"orders", "payments"}}, DecisionDenied, []string{"payments"}},
		{"fetch needs client id", KafkaRequest{APIKey: KafkaFetch, APIVersion: 11, Topics: []string{"orders"}}, DecisionDenied, []string{"orders"}},
		{"fetch with client id", KafkaRequest{APIKey: KafkaFetch, APIVersion: 11, ClientID: "billing", Topics: []string{"orders"}}, DecisionAllowed, nil},
		{"fetch version-pinned rule", KafkaRequest{APIKey: KafkaFetch, APIVersion: 17, Topics: []string{"payments"}}, DecisionAllowed, nil},
		{"fetch other version", KafkaRequest{APIKey: KafkaFetch, APIVersion: 16, Topics: []string{"payments"}}, DecisionDenied, []string{"payments"}},
		{"apiversions has no topic", KafkaRequest{APIKey: KafkaAPIVersions, APIVersion: 3}, DecisionAllowed, nil},
		{"join group matched on remaining fields", KafkaRequest{APIKey: KafkaJoinGroup, ClientID: "billing"}, DecisionAllowed, nil},
		{"join group other client", KafkaRequest{APIKey: KafkaJoinGroup, ClientID: "other"}, DecisionDenied, nil},
		{"create topics never allowed", KafkaRequest{APIKey: 19, Topics: []string{"orders"}}, DecisionDenied, []string{"orders"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := rs.EvaluateKafka(api, &tc.req)
			if r.Decision != tc.want || !slices.Equal(r.DeniedTopics, tc.denied) {
				t.Errorf("got %s denied %v, want %s denied %v", r.Decision, r.DeniedTopics, tc.want, tc.denied)
			}
			if len(r.DecidedBy) == 0 {
				t.Error("no decidedBy")
			}
		})
	}
	if r := rs.EvaluateKafka(IdentityWorld, &KafkaRequest{APIKey: KafkaAPIVersions}); r.Decision != DecisionDenied {
		t.Error("a peer without rules was allowed")
	}
}

func TestKafkaAPIKeys(t *testing.T) {
	for name, want := range map[string]int16{"produce": 0, "Fetch": 1, "offsets": 2, "listoffsets": 2, "metadata": 3,
		"findcoordinator": 10, "groupcoordinator": 10, "apiversions": 18, "createtopics": 19, "42": 42} {
		got, err := ParseKafkaAPIKey(name)
		if err != nil || got != want {
			t.Errorf("ParseKafkaAPIKey(%q) = %d, %v; want %d", name, got, err, want)
		}
	}
	if _, err := ParseKafkaAPIKey("teleport"); err == nil {
		t.Error("unknown name accepted")
	}
	if KafkaAPIName(18) != "apiversions" || KafkaAPIName(999) != "apikey-999" {
		t.Error("KafkaAPIName")
	}
}

// TestRemoteNode: Node addresses are the remote-node identity.
func TestRemoteNode(t *testing.T) {
	objs, errs := Load("testdata/in/cidr-entities.yaml")
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	res, err := Trace(objs, TraceRequest{Src: TracePeer{Labels: map[string]string{"app": "client"}},
		Dst: TracePeer{Addr: mustAddr("198.18.200.2")}, Protocol: ProtoTCP, DPort: 6443})
	if err != nil {
		t.Fatal(err)
	}
	if res.Destination.Identity != IdentityRemoteNode || res.Verdict != DecisionAllowed || res.DecidedBy[0].Path != "spec.egress[3]" {
		t.Fatalf("to a node address: %+v", res)
	}
}
