package demo

import (
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/l7gate/l7gate/policy"
)

func TestParseStepsValid(t *testing.T) {
	sf, err := parseSteps("steps.yaml", []byte(`
description: d
externals:
- {name: internet, ip: 198.19.0.10, serve: "http:80"}
steps:
- name: L3/L4 policy
  apply: [policies/l3-l4.yaml]
  checks:
  - from: default/tiefighter
    to: default/deathstar
    port: 80
    http: {method: POST, path: /v1/request-landing, headers: {X-Token: 1}}
    expect: allowed
  - {from: default/xwing, to: external:internet, port: 80, http: {}, expect: dropped}
  - {from: a/b, to: a/c, port: 50051, grpc: {method: /grpc.health.v1.Health/Check}, expect: denied}
  - {from: a/b, to: a/c, port: 9092, kafka: {consume: deathstar-plans}, expect: denied}
- name: nothing applied
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(sf.Steps) != 2 || len(sf.Steps[0].Checks) != 4 || len(sf.Externals) != 1 {
		t.Fatalf("got %+v", sf)
	}
	c := sf.Steps[0].Checks[0]
	if c.HTTP == nil || c.HTTP.Method != "POST" || c.HTTP.Headers["X-Token"] != "1" || c.Port != 80 || c.Expect != Allowed {
		t.Errorf("check 0: %+v %+v", c, c.HTTP)
	}
	if h := sf.Steps[0].Checks[1].HTTP; h.Method != "GET" || h.Path != "/" {
		t.Errorf("http defaults: %+v", h)
	}
	if k := sf.Steps[0].Checks[3].Kafka; k.Topic() != "deathstar-plans" || k.Produce != "" {
		t.Errorf("kafka: %+v", k)
	}
	if x := sf.Externals[0]; x.Name != "internet" || x.IP.String() != "198.19.0.10" || len(x.Serve) != 1 {
		t.Errorf("external: %+v", x)
	}
}

func TestParseStepsErrors(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{`steps: []`, "steps.yaml: steps: give at least one step"},
		{`{}`, "steps.yaml: steps: missing"},
		{`stepz: []`, `steps.yaml: stepz: unknown field`},
		{"steps:\n- name: a\n  aply: [x]", "steps.yaml: steps[0].aply: unknown field"},
		{"steps:\n- {apply: [x]}", "steps.yaml: steps[0].name: missing"},
		{"steps:\n- {name: a, apply: [../x.yaml]}", `steps.yaml: steps[0].apply[0]: want a clean path inside the scenario folder, not "../x.yaml"`},
		{"steps:\n- {name: a, apply: x}", "steps.yaml: steps[0].apply: want a list, got a string"},
		{"steps:\n- name: a\n  checks:\n  - {from: a/b, to: a/c, port: 80, http: {}, expect: ok}",
			`steps.yaml: steps[0].checks[0].expect: want allowed, denied, dropped or audit, not "ok"`},
		{"steps:\n- name: a\n  checks:\n  - {from: a/b, to: a/c, http: {}, expect: allowed}",
			"steps.yaml: steps[0].checks[0].port: missing"},
		{"steps:\n- name: a\n  checks:\n  - {from: a/b, to: a/c, port: 70000, http: {}, expect: allowed}",
			"steps.yaml: steps[0].checks[0].port: want a port number (1-65535), not 70000"},
		{"steps:\n- name: a\n  checks:\n  - {from: a, to: a/c, port: 80, http: {}, expect: allowed}",
			`steps.yaml: steps[0].checks[0].from: want namespace/pod, svc/namespace/name, external:name or node, not "a"`},
		{"steps:\n- name: a\n  checks:\n  - {from: a/b, to: a/c, port: 80, http: {}, grpc: {method: /a.B/C}, expect: allowed}",
			"steps.yaml: steps[0].checks[0]: give exactly one of http, grpc, kafka and dns"},
		{"steps:\n- name: a\n  checks:\n  - {from: a/b, to: a/c, port: 80, expect: allowed}",
			"steps.yaml: steps[0].checks[0]: give exactly one of http, grpc, kafka and dns"},
		{"steps:\n- name: a\n  checks:\n  - {from: a/b, to: \"name:api.example.test\", port: 53, dns: {query: x.test}, expect: allowed}",
			"steps.yaml: steps[0].checks[0].to: a check by name (name:api.example.test) is an HTTP check"},
		{"steps:\n- name: a\n  checks:\n  - {from: a/b, to: \"name:a..b\", port: 80, http: {}, expect: allowed}",
			"steps.yaml: steps[0].checks[0].to: "},
		{"steps:\n- name: a\n  checks:\n  - {from: a/b, to: a/c, port: 80, http: {path: x}, expect: allowed}",
			`steps.yaml: steps[0].checks[0].http.path: want a request path starting with '/', not "x"`},
		{"steps:\n- name: a\n  checks:\n  - {from: a/b, to: a/c, port: 80, http: {verb: GET}, expect: allowed}",
			"steps.yaml: steps[0].checks[0].http.verb: unknown field"},
		{"steps:\n- name: a\n  checks:\n  - {from: a/b, to: a/c, port: 80, grpc: {method: Check}, expect: allowed}",
			`steps.yaml: steps[0].checks[0].grpc.method: want /package.Service/Method, not "Check"`},
		{"steps:\n- name: a\n  checks:\n  - {from: a/b, to: a/c, port: 80, kafka: {produce: a, consume: b}, expect: allowed}",
			"steps.yaml: steps[0].checks[0].kafka: give exactly one of produce and consume"},
		{"steps:\n- name: a\n  checks:\n  - {from: a/b, to: a/c, port: 80, kafka: {produce: 'a b'}, expect: allowed}",
			`steps.yaml: steps[0].checks[0].kafka: invalid topic name "a b"`},
		{"externals:\n- {name: x, ip: 10.0.0.1}\nsteps:\n- {name: a}", "steps.yaml: externals[0].ip: 10.0.0.1 is outside 198.18.0.0/15"},
		{"externals:\n- {name: X_1, ip: 198.19.0.1}\nsteps:\n- {name: a}", `steps.yaml: externals[0].name: want a DNS label`},
		{"externals:\n- {name: x, ip: 198.19.0.1, serve: 'ftp:21'}\nsteps:\n- {name: a}", `steps.yaml: externals[0].serve: unknown protocol "ftp"`},
		{"steps:\n- {name: a}\nsteps:\n- {name: b}", "steps.yaml: parse yaml"},
		{"steps:\n- name: a\n  checks:\n  - {from: a/b, to: a/c, port: 80, http: {}, expect: allowed, decidedBy: ''}",
			"steps.yaml: steps[0].checks[0].decidedBy: must not be empty"},
		{"steps:\n- name: a\n  checks:\n  - {from: a/b, to: a/c, port: 80, http: {}, expect: allowed, decidedBy: [x]}",
			"steps.yaml: steps[0].checks[0].decidedBy: want a string, got a list"},
		{"steps:\n- name: a\n  checks:\n  - {from: a/b, to: a/c, port: 80, http: {}, expect: allowed, family: inet6}",
			`steps.yaml: steps[0].checks[0].family: want ipv4 or ipv6, not "inet6"`},
	} {
		_, err := parseSteps("steps.yaml", []byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q:\n got %v\nwant %s", tc.yaml, err, tc.want)
		}
	}
}

func TestParseServe(t *testing.T) {
	got, err := ParseServe("http:80, grpc:50051,KAFKA:9092")
	if err != nil {
		t.Fatal(err)
	}
	want := []Service{{ProtoHTTP, 80}, {ProtoGRPC, 50051}, {ProtoKafka, 9092}}
	if len(got) != len(want) {
		t.Fatalf("got %v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("[%d] = %v, want %v", i, got[i], want[i])
		}
	}
	for _, bad := range []string{"", "http", "http:0", "http:x", "smtp:25", "http:80,grpc:80", "kafka:1,kafka:2", "http:65536"} {
		if _, err := ParseServe(bad); err == nil {
			t.Errorf("ParseServe(%q): no error", bad)
		}
	}
	cfg := ServerConfig{Host: "default/deathstar", IP: mustAddr("198.18.1.10"), Serve: got, Topics: []string{"t"}}
	back, err := ParseServerArgs(cfg.Args())
	if err != nil || back.Host != cfg.Host || back.IP != cfg.IP || len(back.Serve) != 3 || back.Serve[2] != want[2] || back.Topics[0] != "t" {
		t.Errorf("round trip: %+v, %v", back, err)
	}
}

func TestResultLine(t *testing.T) {
	r := Result{
		Step: 3, StepName: "L7 policy",
		Check:    Check{From: "default/tiefighter", To: "default/deathstar", Port: 80, HTTP: &HTTPRequest{Method: "PUT", Path: "/v1/exhaust-port", Headers: map[string]string{"X-Token": "1"}}, Expect: Denied},
		Observed: Observation{Verdict: Denied, Detail: "403 Access denied"},
		Trace:    TraceSummary{Verdict: Denied, DecidedBy: []string{"default-deny default/rule1 (CiliumNetworkPolicy spec.ingress[0])"}},
	}
	want := `PASS step 3 "L7 policy" | default/tiefighter → default/deathstar:80 | HTTP PUT /v1/exhaust-port [X-Token: 1] | expected denied | observed denied (403 Access denied) | policy.Trace: denied by default-deny default/rule1 (CiliumNetworkPolicy spec.ingress[0])`
	if got := r.Line(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	r.Observed = Observation{Verdict: Allowed, Detail: "503 Panic: deathstar exploded"}
	r.Trace = TraceSummary{Verdict: Allowed}
	if got := r.Line(); !strings.HasPrefix(got, "FAIL ") || !strings.HasSuffix(got, "observed allowed (503 Panic: deathstar exploded) | policy.Trace: allowed (no policy applies)") {
		t.Errorf("got %s", got)
	}
	for c, want := range map[*Check]string{
		{GRPC: &GRPCRequest{Method: "/a.B/C"}}:             "gRPC /a.B/C",
		{Kafka: &KafkaRequest{Produce: "deathstar-plans"}}: "Kafka produce deathstar-plans",
		{Kafka: &KafkaRequest{Consume: "empire-announce"}}: "Kafka consume empire-announce",
	} {
		if got := c.RequestString(); got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
}

// scenarioDirs lists every scenario folder under examples/scenarios.
func scenarioDirs(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir("../examples/scenarios")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if e.IsDir() {
			out = append(out, filepath.Join("../examples/scenarios", e.Name()))
		}
	}
	if len(out) < 3 {
		t.Fatalf("want at least 3 example scenarios, found %v", out)
	}
	return out
}

// TestScenariosLoad: the built-in and every example scenario validate, and
// at each step the folder the agent gets (objects + policies in force)
// loads with policy.Load without errors; the checks' expectations agree
// with policy.Trace.
func TestScenariosLoad(t *testing.T) {
	type named struct {
		name string
		sc   *Scenario
	}
	var all []named
	sc, err := Builtin()
	if err != nil {
		t.Fatal(err)
	}
	all = append(all, named{"builtin", sc})
	for _, dir := range scenarioDirs(t) {
		sc, err := LoadScenarioDir(dir)
		if err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		all = append(all, named{dir, sc})
	}
	for _, n := range all {
		t.Run(filepath.Base(n.name), func(t *testing.T) {
			sc := n.sc
			for i, st := range sc.Steps {
				dir := t.TempDir()
				for j, f := range sc.ObjectFiles {
					if err := os.WriteFile(filepath.Join(dir, "objects-"+string(rune('a'+j))+".yaml"), f.Data, 0o644); err != nil {
						t.Fatal(err)
					}
				}
				if pf := sc.PolicyFile(i); pf != nil {
					if err := os.WriteFile(filepath.Join(dir, "policies.yaml"), pf, 0o644); err != nil {
						t.Fatal(err)
					}
				} else if i > 0 || len(st.Apply) > 0 {
					t.Errorf("step %d: no policy file", i+1)
				}
				objs, errs := policy.Load(dir)
				if len(errs) > 0 {
					t.Fatalf("step %d: policy.Load: %v", i+1, errs)
				}
				objs.DeriveEndpointSlices() // as the folder source does
				for _, c := range st.Checks {
					for _, h := range []string{c.From, c.To} {
						if sc.Host(h) == nil {
							t.Errorf("step %d: no host %s", i+1, h)
						}
					}
					tr := TraceCheck(objs, sc, c)
					if tr.Err != nil || tr.Verdict != c.Expect {
						t.Errorf("step %d: %s → %s %s: policy.Trace says %s, the check expects %s", i+1, c.From, c.To, c.RequestString(), tr, c.Expect)
					}
					if c.DecidedBy != "" && !namesRule(tr.DecidedBy, c.DecidedBy) {
						t.Errorf("step %d: %s → %s %s: policy.Trace says %s, the check expects it decided by %s", i+1, c.From, c.To, c.RequestString(), tr, c.DecidedBy)
					}
				}
			}
		})
	}
}

// TestCheckByName: an HTTP check "to: name:NAME" goes to the host at the
// address of NAME in a DNS server's zone, resolved by that server; policy
// trace sees the name resolved from that check on; a name in no zone is
// an error.
func TestCheckByName(t *testing.T) {
	sc, err := LoadScenarioDir("../examples/scenarios/dns")
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, st := range sc.Steps {
		for _, c := range st.Checks {
			if c.Name != "api2.example.test." {
				continue
			}
			found = true
			if c.To != "external:api2" || c.ResolvedBy != "kube-system/coredns" {
				t.Errorf("name check: to %q resolved by %q, want external:api2 by kube-system/coredns", c.To, c.ResolvedBy)
			}
			if !slices.ContainsFunc(c.Resolved, func(n policy.FQDNName) bool { return n.Name == "api2.example.test." }) {
				t.Errorf("name check: trace cache %v lacks its own name", c.Resolved)
			}
		}
	}
	if !found {
		t.Fatal("the dns scenario has no check by name")
	}
	fsys := fstest.MapFS{
		"objects/p.yaml": {Data: []byte("apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: default}\nstatus: {podIP: 198.18.0.1}\n")},
		"steps.yaml":     {Data: []byte("steps:\n- name: x\n  checks:\n  - {from: default/a, to: \"name:nowhere.test\", port: 80, http: {}, expect: allowed}\n")},
	}
	if _, err := LoadScenario(fsys, "s"); err == nil || !strings.Contains(err.Error(), "no DNS server of the scenario (serve dns:53) has nowhere.test in its zone") {
		t.Errorf("a name in no zone: %v", err)
	}
}

func TestScenarioErrors(t *testing.T) {
	pod := func(name, ip, serve string) string {
		s := "apiVersion: v1\nkind: Pod\nmetadata:\n  name: " + name + "\n  namespace: default\n"
		if serve != "" {
			s += "  annotations:\n    l7gate.io/serve: " + serve + "\n"
		}
		return s + "status:\n  podIP: " + ip + "\n---\n"
	}
	dual := func(name, ip, ip6, serve string) string {
		return strings.TrimSuffix(pod(name, ip, serve), "---\n") + "  podIPs:\n  - ip: " + ip + "\n  - ip: " + ip6 + "\n---\n"
	}
	cnp := "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: p\n  namespace: default\nspec:\n  endpointSelector: {}\n  ingress:\n  - {}\n"
	base := pod("a", "198.18.0.1", `"http:80"`) + pod("b", "198.18.0.2", "")
	check := "checks:\n  - {from: default/b, to: default/a, port: 80, http: {}, expect: allowed}\n"
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"no steps file", map[string]string{"objects/p.yaml": base}, "s/steps.yaml: open steps.yaml"},
		{"pod outside subnet", map[string]string{"objects/p.yaml": pod("a", "10.0.0.1", ""), "steps.yaml": "steps:\n- {name: x}"},
			"status.podIP: 10.0.0.1 is outside 198.18.0.0/15"},
		{"pod without ip", map[string]string{"objects/p.yaml": "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: default}\n", "steps.yaml": "steps:\n- {name: x}"},
			"status.podIP: missing"},
		{"duplicate ip", map[string]string{"objects/p.yaml": pod("a", "198.18.0.1", "") + pod("c", "198.18.0.1", ""), "steps.yaml": "steps:\n- {name: x}"},
			"address 198.18.0.1 is also default/a's"},
		{"bad serve", map[string]string{"objects/p.yaml": pod("a", "198.18.0.1", `"http"`), "steps.yaml": "steps:\n- {name: x}"},
			"metadata.annotations[l7gate.io/serve]: want proto:port"},
		{"policy in objects", map[string]string{"objects/p.yaml": base + cnp, "steps.yaml": "steps:\n- {name: x}"},
			"objects/ holds Pods, Namespaces, Services and EndpointSlices only"},
		{"unknown pod", map[string]string{"objects/p.yaml": base, "steps.yaml": "steps:\n- name: x\n  checks:\n  - {from: default/z, to: default/a, port: 80, http: {}, expect: allowed}"},
			`s/steps.yaml: steps[0].checks[0].from: no pod or external host "default/z"`},
		{"not served", map[string]string{"objects/p.yaml": base, "steps.yaml": "steps:\n- name: x\n  checks:\n  - {from: default/b, to: default/a, port: 81, http: {}, expect: allowed}"},
			"default/a serves no http on port 81"},
		{"missing apply", map[string]string{"objects/p.yaml": base, "steps.yaml": "steps:\n- name: x\n  apply: [p.yaml]\n  " + check},
			"s/steps.yaml: steps[0].apply[0]: read s/p.yaml"},
		{"pod in apply", map[string]string{"objects/p.yaml": base, "p.yaml": pod("z", "198.18.0.9", ""), "steps.yaml": "steps:\n- name: x\n  apply: [p.yaml]\n  " + check},
			"want exactly one policy"},
		{"invalid policy", map[string]string{"objects/p.yaml": base, "p.yaml": strings.Replace(cnp, "ingress:", "ingres:", 1), "steps.yaml": "steps:\n- name: x\n  apply: [p.yaml]\n  " + check},
			"s/p.yaml"},
		{"ipv6 outside range", map[string]string{"objects/p.yaml": dual("a", "198.18.0.1", "fd00::1", `"http:80"`), "steps.yaml": "steps:\n- {name: x}"},
			"status.podIPs: fd00::1 is outside 2001:db8::/32"},
		{"ipv6 is the node's", map[string]string{"objects/p.yaml": dual("a", "198.18.0.1", "2001:db8::fffe", `"http:80"`), "steps.yaml": "steps:\n- {name: x}"},
			"status.podIPs: 2001:db8::fffe is the node's address"},
		{"duplicate ipv6", map[string]string{"objects/p.yaml": dual("a", "198.18.0.1", "2001:db8:1::1", "") + dual("c", "198.18.0.3", "2001:db8:1::1", ""), "steps.yaml": "steps:\n- {name: x}"},
			"address 2001:db8:1::1 is also default/a's"},
		{"ipv6 check to a host without ipv6", map[string]string{"objects/p.yaml": base + dual("c", "198.18.0.3", "2001:db8:1::3", ""),
			"steps.yaml": "steps:\n- name: x\n  checks:\n  - {from: default/c, to: default/a, port: 80, http: {}, family: ipv6, expect: allowed}"},
			"steps[0].checks[0]: family: ipv6: default/a has no IPv6 address"},
		{"ipv6 grpc check to a host without ipv6", map[string]string{"objects/p.yaml": pod("a", "198.18.0.1", `"grpc:50051"`) + dual("c", "198.18.0.3", "2001:db8:1::3", ""),
			"steps.yaml": "steps:\n- name: x\n  checks:\n  - {from: default/c, to: default/a, port: 50051, grpc: {method: /a.B/C}, family: ipv6, expect: allowed}"},
			"steps[0].checks[0]: family: ipv6: default/a has no IPv6 address"},
		{"ipv6 check to an ipv4-only service", map[string]string{"objects/p.yaml": dual("a", "198.18.0.1", "2001:db8:1::1", `"http:80"`) + dual("c", "198.18.0.3", "2001:db8:1::3", "") +
			"apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  clusterIP: 198.19.0.80\n  selector: {app: web}\n  ports:\n  - {port: 80}\n",
			"steps.yaml": "steps:\n- name: x\n  checks:\n  - {from: default/c, to: svc/default/web, port: 80, http: {}, family: ipv6, expect: allowed}"},
			"steps[0].checks[0]: service svc/default/web has no IPv6 ClusterIP"},
		{"ipv4 check to an ipv6-only service", map[string]string{"objects/p.yaml": dual("a", "198.18.0.1", "2001:db8:1::1", `"http:80"`) + dual("c", "198.18.0.3", "2001:db8:1::3", "") +
			"apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  clusterIPs: [\"2001:db8:f::80\"]\n  selector: {app: web}\n  ports:\n  - {port: 80}\n",
			"steps.yaml": "steps:\n- name: x\n  checks:\n  - {from: default/c, to: svc/default/web, port: 80, http: {}, expect: allowed}"},
			"steps[0].checks[0]: service svc/default/web has no IPv4 ClusterIP"},
		{"ipv6 check to a service from a host without ipv6", map[string]string{"objects/p.yaml": dual("a", "198.18.0.1", "2001:db8:1::1", `"http:80"`) + pod("c", "198.18.0.3", "") +
			"apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  clusterIPs: [198.19.0.80, \"2001:db8:f::80\"]\n  selector: {app: web}\n  ports:\n  - {port: 80}\n",
			"steps.yaml": "steps:\n- name: x\n  checks:\n  - {from: default/c, to: svc/default/web, port: 80, http: {}, family: ipv6, expect: allowed}"},
			"steps[0].checks[0]: family: ipv6: default/c has no IPv6 address"},
		{"service ipv6 outside range", map[string]string{"objects/p.yaml": base +
			"apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  clusterIPs: [198.19.0.80, \"fd00::80\"]\n  ports:\n  - {port: 80}\n",
			"steps.yaml": "steps:\n- {name: x}"},
			"spec.clusterIPs: fd00::80 is outside 2001:db8::/32"},
		{"dns query type", map[string]string{"objects/p.yaml": dual("a", "198.18.0.1", "2001:db8:1::1", `"dns:53"`) + dual("c", "198.18.0.3", "2001:db8:1::3", ""),
			"steps.yaml": "steps:\n- name: x\n  checks:\n  - {from: default/c, to: default/a, port: 53, dns: {query: a.test, type: MX}, expect: allowed}"},
			`steps[0].checks[0].dns.type: want A or AAAA, not "MX"`},
	} {
		fsys := fstest.MapFS{}
		for k, v := range tc.files {
			fsys[k] = &fstest.MapFile{Data: []byte(v)}
		}
		_, err := LoadScenario(fsys, "s")
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s:\n got %v\nwant %s", tc.name, err, tc.want)
		}
	}
}

// TestCumulativeApply: a re-applied policy replaces the earlier object of
// the same kind, namespace and name (as kubectl apply).
func TestCumulativeApply(t *testing.T) {
	sc, err := Builtin()
	if err != nil {
		t.Fatal(err)
	}
	if sc.PolicyFile(0) != nil {
		t.Error("step 1 has policies")
	}
	for i, want := range []string{"", "# from policies/l3-l4.yaml", "# from policies/l7.yaml"} {
		pf := string(sc.PolicyFile(i))
		if !strings.HasPrefix(pf, want) || strings.Count(pf, "kind: CiliumNetworkPolicy") > 1 {
			t.Errorf("step %d: policy file:\n%s", i+1, pf)
		}
		objs, err := sc.ObjectsAt(i)
		if err != nil || len(objs.Pods) != 3 {
			t.Fatalf("step %d: %v", i+1, err)
		}
	}
}

func TestKeptDescription(t *testing.T) {
	sc, err := Builtin()
	if err != nil {
		t.Fatal(err)
	}
	topo := &Topology{Prefix: "l7dabcdef", Node: "l7dabcdef-node", sc: sc, hosts: map[string]*HostNS{}, cfg: TopologyConfig{WorkDir: "/tmp/w"}}
	used := map[string]bool{}
	for i, h := range sc.Hosts {
		hn := &HostNS{Host: h, NS: "l7dabcdef-default-" + h.Pod.Name, HostDev: devName("lxc", h.Pod.Name, i, used)}
		topo.hosts[h.Name], topo.order = hn, append(topo.order, hn)
	}
	var b strings.Builder
	topo.Kept(&b, "l7gate demo down /tmp/w")
	for _, want := range []string{
		"Node namespace: l7dabcdef-node",
		"default/deathstar            198.18.1.10     netns l7dabcdef-default-deathstar (node side lxcdeathstar) serves http:80",
		"ip netns exec l7dabcdef-default-xwing curl -s -m 3 -X POST http://198.18.1.10:80/v1/request-landing",
		"l7gate demo down /tmp/w",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("missing %q in:\n%s", want, b.String())
		}
	}
	if n := devName("lxc", "a-very-long-pod-name", 7, used); n != "lxc7" {
		t.Errorf("long name: %s", n)
	}
	if n := devName("lxc", "deathstar", 8, used); n != "lxc8" {
		t.Errorf("duplicate name: %s", n)
	}
}

// TestDecidedByCheck: a check naming its deciding rule passes only when the
// datapath or the proxy reported that rule.
func TestDecidedByCheck(t *testing.T) {
	sf, err := parseSteps("steps.yaml", []byte(`
steps:
- name: a
  checks:
  - {from: shop/ops, to: shop/backend, port: 80, http: {method: DELETE}, expect: allowed,
     decidedBy: "allow shop/ops-anywhere (CiliumNetworkPolicy spec.ingress[0])"}
`))
	if err != nil {
		t.Fatal(err)
	}
	c := sf.Steps[0].Checks[0]
	r := Result{Step: 1, StepName: "a", Check: c, Observed: Observation{Verdict: Allowed, Detail: "200"}}
	r.DecidedBy = []string{"allow shop/backend-http (CiliumNetworkPolicy spec.ingress[0].http[0]) [proxy]"}
	if r.Passed() {
		t.Errorf("passed with another rule reported: %s", r.Line())
	}
	if !strings.Contains(r.Line(), "expected allowed by allow shop/ops-anywhere (CiliumNetworkPolicy spec.ingress[0])") {
		t.Errorf("line does not show the expected rule: %s", r.Line())
	}
	r.DecidedBy = []string{"allow shop/ops-anywhere (CiliumNetworkPolicy spec.ingress[0]) [proxy]"}
	if !r.Passed() {
		t.Errorf("failed with the rule reported: %s", r.Line())
	}
	r.Observed.Verdict = Denied
	if r.Passed() {
		t.Errorf("passed with the wrong verdict: %s", r.Line())
	}
}

// TestFromNode (issue 12 item 9): a check may come from the node itself;
// policy.Trace sees the host identity; the node is never a destination.
func TestFromNode(t *testing.T) {
	files := fstest.MapFS{
		"objects/pods.yaml": {Data: []byte("apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: default, annotations: {l7gate.io/serve: \"http:80\"}}\nstatus: {podIP: 198.18.0.1}\n")},
		"p.yaml":            {Data: []byte("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: default}\nspec: {endpointSelector: {}, ingress: [{}]}\n")},
		"steps.yaml": {Data: []byte(`steps:
- name: s
  apply: [p.yaml]
  checks:
  - {from: node, to: default/a, port: 80, http: {}, expect: allowed, decidedBy: "allow allow-localhost"}
`)},
	}
	sc, err := LoadScenario(files, "t")
	if err != nil {
		t.Fatal(err)
	}
	objs, err := sc.ObjectsAt(0)
	if err != nil {
		t.Fatal(err)
	}
	tr := TraceCheck(objs, sc, sc.Steps[0].Checks[0])
	if tr.Verdict != Allowed || !namesRule(tr.DecidedBy, "allow allow-localhost") {
		t.Errorf("trace from the node: %s", tr)
	}
	if len(sc.Hosts) != 1 {
		t.Errorf("the node became a host of the topology: %v", sc.Hosts)
	}
	files["steps.yaml"] = &fstest.MapFile{Data: []byte("steps:\n- name: s\n  checks:\n  - {from: default/a, to: node, port: 80, http: {}, expect: allowed}\n")}
	if _, err := LoadScenario(files, "t"); err == nil || !strings.Contains(err.Error(), "checks[0].to: the node serves nothing") {
		t.Errorf("to: node: %v", err)
	}
}

// TestDualStackScenario: status.podIPs gives a pod its IPv6 address, and a
// check with family: ipv6 is traced (and sent) between the IPv6 addresses
// with the same verdict as over IPv4.
func TestDualStackScenario(t *testing.T) {
	sc := scenarioByName(t, "starwars-dualstack")
	ds := sc.Host("default/deathstar")
	if ds.IP.String() != "198.18.1.10" || ds.IP6.String() != "2001:db8:1::10" || ds.Addr(FamilyIPv6) != ds.IP6 || ds.Addr(FamilyIPv4) != ds.IP {
		t.Fatalf("deathstar: %v %v", ds.IP, ds.IP6)
	}
	for _, name := range []string{"starwars-dualstack", "grpc-dualstack", "kafka-dualstack"} {
		t.Run(name, func(t *testing.T) { checkDualStackPairs(t, scenarioByName(t, name)) })
	}
}

// checkDualStackPairs: every check is an IPv4 check followed by the same
// check over IPv6, traced with the same (expected) verdict.
func checkDualStackPairs(t *testing.T, sc *Scenario) {
	t.Helper()
	for i, st := range sc.Steps {
		objs, err := sc.ObjectsAt(i)
		if err != nil {
			t.Fatal(err)
		}
		for j := 0; j+1 < len(st.Checks); j += 2 {
			v4, v6 := st.Checks[j], st.Checks[j+1]
			same := v6
			same.Family = FamilyIPv4
			if v4.Family != FamilyIPv4 || v6.Family != FamilyIPv6 || !reflect.DeepEqual(v4, same) {
				t.Fatalf("step %d checks %d, %d: want an IPv4 check and the same check over IPv6", i+1, j, j+1)
			}
			t4, t6 := TraceCheck(objs, sc, v4), TraceCheck(objs, sc, v6)
			if t4.Err != nil || t6.Err != nil || t4.Verdict != v4.Expect || t6.Verdict != v6.Expect {
				t.Errorf("step %d check %d: trace IPv4 %+v, IPv6 %+v, want %s", i+1, j, t4, t6, v4.Expect)
			}
		}
	}
}

// TestParseZone: IPv4 addresses are A records, IPv6 addresses AAAA
// records, at most one of each per name.
func TestParseZone(t *testing.T) {
	z, err := ParseZone("api.example.test=198.18.20.10, api.example.test=2001:db8:20::10,v6.example.test=2001:db8:20::11")
	if err != nil {
		t.Fatal(err)
	}
	if z.A["api.example.test."].String() != "198.18.20.10" || z.AAAA["api.example.test."].String() != "2001:db8:20::10" ||
		len(z.A) != 1 || z.AAAA["v6.example.test."].String() != "2001:db8:20::11" || !z.Has("v6.example.test.") || z.Has("x.test.") {
		t.Errorf("zone %+v", z)
	}
	for in, want := range map[string]string{
		"a.test=198.18.0.1,a.test=198.18.0.2": "two addresses of one family",
		"a.test=::ffff:198.18.0.1":            "want an IPv4 or IPv6 address",
		"a.test=fe80::1%eth0":                 "want an IPv4 or IPv6 address",
		"a.test":                              "want name=address",
	} {
		if _, err := ParseZone(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %s", in, err, want)
		}
	}
}

// TestCheckByNameIPv6: a check by name over IPv6 resolves through the
// name's AAAA record to the host with that IPv6 address, asks its DNS
// server over IPv6, and the trace cache holds the IPv6 address only; the
// trace follows the query first (a name outside rules.dns is denied).
// Without an AAAA record, or with a DNS server that has no IPv6 address,
// the scenario does not load.
func TestCheckByNameIPv6(t *testing.T) {
	sc := scenarioByName(t, "dns-dualstack")
	want := map[string]Verdict{"api2.example.test.": Allowed, "other.example.test.": Dropped, "www.other.test.": Denied}
	for i, st := range sc.Steps {
		objs, err := sc.ObjectsAt(i)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range st.Checks {
			if c.Name == "" || c.Family != FamilyIPv6 {
				continue
			}
			v, ok := want[c.Name]
			if !ok {
				t.Errorf("unexpected check by name %s", c.Name)
				continue
			}
			delete(want, c.Name)
			to := sc.Host(c.To)
			if to == nil || c.ResolvedBy != "kube-system/coredns" || to.IP6 != sc.Host("kube-system/coredns").Zone.AAAA[c.Name] {
				t.Errorf("%s: to %q resolved by %q, want the host of its AAAA record by kube-system/coredns", c.Name, c.To, c.ResolvedBy)
			}
			if tr := TraceCheck(objs, sc, c); tr.Err != nil || tr.Verdict != v || c.Expect != v {
				t.Errorf("%s: trace %s, expect %s, want %s", c.Name, tr, c.Expect, v)
			}
			if c.Name == "api2.example.test." {
				i := slices.IndexFunc(c.Resolved, func(n policy.FQDNName) bool { return n.Name == c.Name })
				if i < 0 || len(c.Resolved[i].IPs) != 1 || c.Resolved[i].IPs[0] != to.IP6 {
					t.Errorf("%s: trace cache %v, want its IPv6 address only", c.Name, c.Resolved)
				}
			}
		}
	}
	if len(want) > 0 {
		t.Errorf("dns-dualstack lacks checks by name over IPv6 for %v", slices.Sorted(maps.Keys(want)))
	}

	pod := func(name, ip, ip6, extra string) string {
		s := "apiVersion: v1\nkind: Pod\nmetadata:\n  name: " + name + "\n  namespace: default\n" + extra + "status:\n  podIP: " + ip + "\n"
		if ip6 != "" {
			s += "  podIPs:\n  - ip: " + ip + "\n  - ip: " + ip6 + "\n"
		}
		return s + "---\n"
	}
	dns := func(zone string) string {
		return "  annotations:\n    l7gate.io/serve: dns:53\n    l7gate.io/dns-zone: \"" + zone + "\"\n"
	}
	check := "steps:\n- name: x\n  checks:\n  - {from: default/a, to: \"name:web.test\", port: 80, http: {}, family: ipv6, expect: allowed}\n"
	for _, tc := range []struct{ name, objects, want string }{
		{"no AAAA record", pod("a", "198.18.0.1", "2001:db8:1::1", "") + pod("dns", "198.18.0.53", "2001:db8:1::53", dns("web.test=198.18.0.2")) +
			pod("web", "198.18.0.2", "2001:db8:1::2", "  annotations:\n    l7gate.io/serve: http:80\n"),
			"no DNS server of the scenario (serve dns:53) has an AAAA record of web.test in its zone"},
		{"DNS server without IPv6", pod("a", "198.18.0.1", "2001:db8:1::1", "") + pod("dns", "198.18.0.53", "", dns("web.test=2001:db8:1::2")) +
			pod("web", "198.18.0.2", "2001:db8:1::2", "  annotations:\n    l7gate.io/serve: http:80\n"),
			"family: ipv6: the DNS server of web.test has no IPv6 address"},
	} {
		fsys := fstest.MapFS{"objects/p.yaml": {Data: []byte(tc.objects)}, "steps.yaml": {Data: []byte(check)}}
		if _, err := LoadScenario(fsys, "s"); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s:\n got %v\nwant %s", tc.name, err, tc.want)
		}
	}
}
