package deploy

import (
	"slices"
	"testing"
)

// daemonSetPod returns the DaemonSet's pod template: its annotations and
// each container's args by container name.
func daemonSetPod(t *testing.T, docs []map[string]any) (map[string]any, map[string][]string) {
	t.Helper()
	ds := find(docs, "DaemonSet")
	if ds == nil {
		t.Fatal("no DaemonSet")
	}
	tmpl := ds["spec"].(map[string]any)["template"].(map[string]any)
	ann, _ := tmpl["metadata"].(map[string]any)["annotations"].(map[string]any)
	args := map[string][]string{}
	for _, c := range tmpl["spec"].(map[string]any)["containers"].([]any) {
		c := c.(map[string]any)
		for _, a := range c["args"].([]any) {
			args[c["name"].(string)] = append(args[c["name"].(string)], a.(string))
		}
	}
	return ann, args
}

// TestChartObservability: by default the agent and the Go proxy serve
// Prometheus metrics on their ports with the prometheus.io annotations,
// the proxy streams its access records to the agent's flow intake, and no
// ServiceMonitor is rendered; serviceMonitor.enabled adds a headless
// Service and a ServiceMonitor for both ports; metrics.enabled=false
// turns metrics off; otlp.endpoint exports access logs (and points
// Envoy's OpenTelemetry logger at the collector with otlp.envoyDirect).
func TestChartObservability(t *testing.T) {
	out, err := Render(Chart(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	docs := documents(t, out)
	ann, args := daemonSetPod(t, docs)
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != "9962" || ann["prometheus.io/path"] != "/metrics" {
		t.Errorf("pod annotations %v", ann)
	}
	if !slices.Contains(args["agent"], "--metrics-address=:9962") {
		t.Errorf("agent args %v lack the metrics address", args["agent"])
	}
	if !slices.Contains(args["proxy"], "--metrics-address=:9964") || !slices.Contains(args["proxy"], "--flow-socket=/run/l7gate/flows.sock") {
		t.Errorf("proxy args %v lack the metrics address or the flow socket", args["proxy"])
	}
	if find(docs, "ServiceMonitor") != nil || find(docs, "Service") != nil {
		t.Error("a ServiceMonitor or Service by default")
	}
	for _, a := range args["agent"] {
		if len(a) > 6 && a[:6] == "--otlp" {
			t.Errorf("OTLP export on by default: %s", a)
		}
	}

	out, err = Render(Chart(), Options{Values: map[string]any{
		"metrics": map[string]any{"serviceMonitor": map[string]any{"enabled": true, "labels": map[string]any{"release": "kube-prometheus"}}},
		"otlp":    map[string]any{"endpoint": "otel-collector.observability:4317", "insecure": true, "envoyDirect": true},
	}})
	if err != nil {
		t.Fatal(err)
	}
	docs = documents(t, out)
	sm, svc := find(docs, "ServiceMonitor"), find(docs, "Service")
	if sm == nil || svc == nil {
		t.Fatal("serviceMonitor.enabled renders no ServiceMonitor or Service")
	}
	if sm["metadata"].(map[string]any)["labels"].(map[string]any)["release"] != "kube-prometheus" {
		t.Errorf("ServiceMonitor labels %v", sm["metadata"])
	}
	var ports []string
	for _, e := range sm["spec"].(map[string]any)["endpoints"].([]any) {
		ports = append(ports, e.(map[string]any)["port"].(string))
	}
	var svcPorts []string
	for _, p := range svc["spec"].(map[string]any)["ports"].([]any) {
		svcPorts = append(svcPorts, p.(map[string]any)["name"].(string))
	}
	if !slices.Equal(ports, []string{"agent-metrics", "proxy-metrics"}) || !slices.Equal(svcPorts, ports) {
		t.Errorf("ServiceMonitor endpoints %v, Service ports %v", ports, svcPorts)
	}
	_, args = daemonSetPod(t, docs)
	for _, want := range []string{"--otlp-endpoint=otel-collector.observability:4317", "--otlp-protocol=grpc", "--otlp-insecure=true",
		"--envoy-otlp-collector=otel-collector.observability:4317"} {
		if !slices.Contains(args["agent"], want) {
			t.Errorf("agent args %v lack %s", args["agent"], want)
		}
	}

	out, err = Render(Chart(), Options{Values: map[string]any{"metrics": map[string]any{"enabled": false}}})
	if err != nil {
		t.Fatal(err)
	}
	ann, args = daemonSetPod(t, documents(t, out))
	if len(ann) != 0 || slices.ContainsFunc(append(args["agent"], args["proxy"]...), func(a string) bool { return len(a) > 17 && a[:17] == "--metrics-address" }) {
		t.Errorf("metrics.enabled=false: annotations %v, args %v", ann, args)
	}
	if !slices.Contains(args["proxy"], "--flow-socket=/run/l7gate/flows.sock") {
		t.Error("the flow socket depends on metrics")
	}
}
