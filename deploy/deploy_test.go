package deploy

import (
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/l7gate/l7gate/envoy/bootstrap"
)

// TestRenderGolden: the committed manifests are Helm's own render of the
// chart (`make manifests` runs helm template and helm show crds), and
// Render, the in-process renderer the tests use, gives the same objects in
// the same order.
func TestRenderGolden(t *testing.T) {
	manifests, err := Render(Chart(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	crdYAML, err := CRDs()
	if err != nil {
		t.Fatal(err)
	}
	for file, got := range map[string][]byte{"l7gate.yaml": manifests, "crds.yaml": crdYAML} {
		want, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		g, w := documents(t, got), documents(t, want)
		if !reflect.DeepEqual(g, w) {
			gy, _ := yaml.Marshal(g)
			wy, _ := yaml.Marshal(w)
			t.Errorf("deploy.Render differs from Helm's render in deploy/%s (run make manifests; fix Render if the chart uses more of Helm):\n--- Render\n%s\n--- helm\n%s", file, gy, wy)
		}
	}
}

func documents(t *testing.T, stream []byte) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, d := range strings.Split(string(stream), "\n---\n") {
		var m map[string]any
		if err := yaml.UnmarshalStrict([]byte(d), &m); err != nil {
			t.Fatalf("invalid YAML: %v\n%s", err, d)
		}
		if m != nil {
			out = append(out, m)
		}
	}
	return out
}

func find(docs []map[string]any, kind string) map[string]any {
	for _, d := range docs {
		if d["kind"] == kind {
			return d
		}
	}
	return nil
}

// TestRenderValues: the values change what they say.
func TestRenderValues(t *testing.T) {
	out, err := Render(Chart(), Options{Namespace: "net", ReleaseName: "gate", Values: map[string]any{
		"envoy":          map[string]any{"enabled": false},
		"image":          map[string]any{"tag": "9.9.9"},
		"proxyPortRange": "30000-31000",
		"bpffs":          map[string]any{"path": "/run/bpf"},
		"logLevel":       "debug",
		"crds":           map[string]any{"agentCreates": true},
	}})
	if err != nil {
		t.Fatal(err)
	}
	docs := documents(t, out)
	if find(docs, "ConfigMap") != nil {
		t.Error("envoy.enabled=false still renders Envoy's bootstrap")
	}
	ds := find(docs, "DaemonSet")
	s := string(out)
	for _, want := range []string{"ghcr.io/l7gate/l7gate:9.9.9", "--proxy-port-range=30000-31000", "--bpffs=/run/bpf/l7gate",
		"--log-level=debug", "--http-proxy=go", "--ensure-crds=true", "customresourcedefinitions", "namespace: net", "name: gate-agent"} {
		if !strings.Contains(s, want) {
			t.Errorf("render lacks %q", want)
		}
	}
	podSpec := ds["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
	// the agent takes the Go proxy's listeners (pidfd_getfd), Envoy or not
	if podSpec["shareProcessNamespace"] != true {
		t.Errorf("envoy.enabled=false: shareProcessNamespace %v, want true (the agent takes the Go proxy's listener sockets)", podSpec["shareProcessNamespace"])
	}
	containers := podSpec["containers"].([]any)
	if len(containers) != 2 {
		t.Errorf("%d containers, want agent and proxy", len(containers))
	}
	def, err := Render(Chart(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(def), "customresourcedefinitions") {
		t.Error("default RBAC may create CRDs")
	}
	if n := len(find(documents(t, def), "DaemonSet")["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)["containers"].([]any)); n != 3 {
		t.Errorf("%d containers by default, want agent, proxy and envoy", n)
	}
}

// TestRenderStatusNodeSelector: the agent's --status-node-selector is the
// DaemonSet's own nodeSelector (policy status counts the nodes the agent
// runs on), and is left out without policy status.
func TestRenderStatusNodeSelector(t *testing.T) {
	out, err := Render(Chart(), Options{Values: map[string]any{"nodeSelector": map[string]any{"pool": "l7"}}})
	if err != nil {
		t.Fatal(err)
	}
	podSpec := find(documents(t, out), "DaemonSet")["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)
	var sel []string
	for k, v := range podSpec["nodeSelector"].(map[string]any) {
		sel = append(sel, fmt.Sprintf("%s=%v", k, v))
	}
	slices.Sort(sel)
	want := "--status-node-selector=" + strings.Join(sel, ",")
	if want != "--status-node-selector=kubernetes.io/os=linux,pool=l7" {
		t.Fatalf("DaemonSet nodeSelector %v: want the default's and pool=l7", podSpec["nodeSelector"])
	}
	var args []any
	for _, c := range podSpec["containers"].([]any) {
		if c.(map[string]any)["name"] == "agent" {
			args = c.(map[string]any)["args"].([]any)
		}
	}
	if !slices.Contains(args, any(want)) {
		t.Errorf("agent args %v: want %q", args, want)
	}
	off, err := Render(Chart(), Options{Values: map[string]any{"policyStatus": false}})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(off), "--status-node-selector") {
		t.Error("policyStatus=false still passes --status-node-selector")
	}
}

// TestEnvoyBootstrapMatches: the chart's bootstrap is what
// `l7gate envoy bootstrap` generates.
func TestEnvoyBootstrapMatches(t *testing.T) {
	out, err := Render(Chart(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	cm := find(documents(t, out), "ConfigMap")
	var got any
	if err := yaml.Unmarshal([]byte(cm["data"].(map[string]any)["envoy.yaml"].(string)), &got); err != nil {
		t.Fatal(err)
	}
	b, err := bootstrap.Generate(bootstrap.Config{Node: "NODE"})
	if err != nil {
		t.Fatal(err)
	}
	y, err := bootstrap.Marshal(b, "yaml")
	if err != nil {
		t.Fatal(err)
	}
	var want any
	if err := yaml.Unmarshal(y, &want); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("chart bootstrap differs from bootstrap.Generate:\nchart:\n%s\ngenerated:\n%s", cm["data"].(map[string]any)["envoy.yaml"], y)
	}
}

// TestRenderAgentConfigMapWritesOnlyInReportNamespace: the agent's
// service account may write ConfigMaps only in the namespace of the nodes'
// policy status reports, a Namespace the chart creates that holds nothing
// else (every agent, a root process on a node an attacker may own, can
// write every ConfigMap there). Writing ConfigMaps in the release
// namespace would let one node's agent rewrite the chart's Envoy bootstrap
// (every node's Envoy at a rogue xDS server) or, in kube-system, CoreDNS's
// and kube-proxy's configuration.
func TestRenderAgentConfigMapWritesOnlyInReportNamespace(t *testing.T) {
	for _, opts := range []Options{{}, {Namespace: "net", ReleaseName: "gate"},
		{Namespace: "net", ReleaseName: "gate", Values: map[string]any{"policyStatusNamespace": "gate-reports"}}} {
		out, err := Render(Chart(), opts)
		if err != nil {
			t.Fatal(err)
		}
		docs := documents(t, out)
		releaseNS := cmpOr(opts.Namespace, "kube-system")
		reportNS := "l7gate-policy-status"
		if v, ok := opts.Values["policyStatusNamespace"].(string); ok {
			reportNS = v
		}
		agentArgs := fmt.Sprint(find(docs, "DaemonSet")["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)["containers"].([]any)[0].(map[string]any)["args"])
		if !strings.Contains(agentArgs, "--status-namespace="+reportNS) {
			t.Errorf("%s: the agent's args %s lack --status-namespace=%s", releaseNS, agentArgs, reportNS)
		}
		nsCreated := false
		for _, d := range docs {
			if d["kind"] == "Namespace" && d["metadata"].(map[string]any)["name"] == reportNS {
				nsCreated = true
			}
		}
		if !nsCreated {
			t.Errorf("%s: the chart creates no Namespace %s for the reports", releaseNS, reportNS)
		}
		// Where the agent may write ConfigMaps: "" is cluster-wide.
		writable := map[string]bool{}
		roleRules := func(kind, name, ns string) []any {
			for _, d := range docs {
				md := d["metadata"].(map[string]any)
				if d["kind"] == kind && md["name"] == name && (kind == "ClusterRole" || md["namespace"] == ns) {
					rules, _ := d["rules"].([]any)
					return rules
				}
			}
			t.Fatalf("%s: binding to %s %s/%s, which the chart does not render", releaseNS, kind, ns, name)
			return nil
		}
		for _, d := range docs {
			if d["kind"] != "RoleBinding" && d["kind"] != "ClusterRoleBinding" {
				continue
			}
			agent := false
			for _, s := range d["subjects"].([]any) {
				s := s.(map[string]any)
				agent = agent || (s["kind"] == "ServiceAccount" && s["name"] == "l7gate" && s["namespace"] == releaseNS)
			}
			if !agent {
				continue
			}
			scope, _ := d["metadata"].(map[string]any)["namespace"].(string)
			if d["kind"] == "ClusterRoleBinding" {
				scope = ""
			}
			ref := d["roleRef"].(map[string]any)
			for _, r := range roleRules(ref["kind"].(string), ref["name"].(string), scope) {
				r := r.(map[string]any)
				if !anyOf(r["apiGroups"], "", "*") || !anyOf(r["resources"], "configmaps", "*") {
					continue
				}
				if anyOf(r["verbs"], "create", "update", "patch", "delete", "deletecollection", "*") {
					writable[scope] = true
				}
			}
		}
		for scope := range writable {
			if scope != reportNS {
				where := "namespace " + scope
				if scope == "" {
					where = "every namespace"
				}
				t.Errorf("release namespace %s: the agent's service account may write ConfigMaps in %s, want only in %s (the reports' namespace)", releaseNS, where, reportNS)
			}
		}
		if !writable[reportNS] {
			t.Errorf("release namespace %s: the agent's service account may not write ConfigMaps in %s: it cannot report", releaseNS, reportNS)
		}
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// anyOf: list (a YAML list of strings) holds one of want.
func anyOf(list any, want ...string) bool {
	l, _ := list.([]any)
	for _, v := range l {
		if slices.Contains(want, fmt.Sprint(v)) {
			return true
		}
	}
	return false
}

// TestRenderReportNamespaceNotReleaseNamespace: reports in the release
// namespace would give every agent ConfigMap writes next to the chart's
// own (and kube-system's): the chart refuses to render.
func TestRenderReportNamespaceNotReleaseNamespace(t *testing.T) {
	_, err := Render(Chart(), Options{Namespace: "net", Values: map[string]any{"policyStatusNamespace": "net"}})
	if err == nil || !strings.Contains(err.Error(), "policyStatusNamespace must differ from the release namespace") {
		t.Errorf("policyStatusNamespace = the release namespace: render error %v, want a refusal", err)
	}
	if _, err := Render(Chart(), Options{Namespace: "net", Values: map[string]any{"policyStatusNamespace": "net", "policyStatus": false}}); err != nil {
		t.Errorf("policyStatus=false: %v (no reports, nothing to refuse)", err)
	}
}
