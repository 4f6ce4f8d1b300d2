package agent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	"google.golang.org/grpc"
	_ "google.golang.org/grpc/encoding/gzip" // the collector's OTLP exporter compresses
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/l7gate/l7gate/agentapi"
	flowpb "github.com/l7gate/l7gate/proto/hubble/flowpb"
	observerpb "github.com/l7gate/l7gate/proto/hubble/observerpb"
)

// HubbleCLI is where hack/build-components.sh hubble puts the hubble CLI
// (L7GATE_HUBBLE overrides).
func hubbleCLI() string {
	if p := os.Getenv("L7GATE_HUBBLE"); p != "" {
		return p
	}
	cache := os.Getenv("L7GATE_CACHE")
	if cache == "" {
		cache = "/var/cache/l7gate"
	}
	return filepath.Join(cache, "hubble-v1.20.2", "hubble")
}

// otlpSink is an in-process OTLP LogsService collecting log records.
type otlpSink struct {
	collogspb.UnimplementedLogsServiceServer
	mu   sync.Mutex
	reqs []*collogspb.ExportLogsServiceRequest
}

func (s *otlpSink) Export(_ context.Context, req *collogspb.ExportLogsServiceRequest) (*collogspb.ExportLogsServiceResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reqs = append(s.reqs, req)
	return &collogspb.ExportLogsServiceResponse{}, nil
}

// logs flattens what arrived: resource attributes and record attributes
// as strings.
func (s *otlpSink) logs() []map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]string
	for _, req := range s.reqs {
		for _, rl := range req.GetResourceLogs() {
			for _, sl := range rl.GetScopeLogs() {
				for _, lr := range sl.GetLogRecords() {
					m := map[string]string{"body": lr.GetBody().GetStringValue()}
					for _, kv := range append(rl.GetResource().GetAttributes(), lr.GetAttributes()...) {
						m[kv.GetKey()] = anyString(kv.GetValue())
					}
					out = append(out, m)
				}
			}
		}
	}
	return out
}

func anyString(v *commonpb.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_IntValue:
		return strconv.FormatInt(x.IntValue, 10)
	case *commonpb.AnyValue_ArrayValue:
		var parts []string
		for _, e := range x.ArrayValue.GetValues() {
			parts = append(parts, anyString(e))
		}
		return strings.Join(parts, ",")
	}
	return fmt.Sprint(v)
}

// otelcolBinary is where `hack/build-components.sh otelcol` puts an
// OpenTelemetry Collector (L7GATE_OTELCOL overrides).
func otelcolBinary() string {
	if p := os.Getenv("L7GATE_OTELCOL"); p != "" {
		return p
	}
	cache := os.Getenv("L7GATE_CACHE")
	if cache == "" {
		cache = "/var/cache/l7gate"
	}
	return filepath.Join(cache, "otelcol-v0.165.0", "otelcol")
}

// startCollector runs the OpenTelemetry Collector in a network namespace:
// OTLP/gRPC in on listen, OTLP/gRPC out to forward (logs pipeline); it
// returns once the collector is ready, with a stop function.
func startCollector(t *testing.T, ns, bin, listen, forward string) (stop func(), logPath string) {
	t.Helper()
	dir := t.TempDir()
	cfg := fmt.Sprintf(`receivers:
  otlp:
    protocols:
      grpc: {endpoint: "%s"}
exporters:
  otlp_grpc:
    endpoint: "%s"
    tls: {insecure: true}
    sending_queue: {enabled: false}
service:
  telemetry:
    logs: {level: info}
    metrics: {level: none}
  pipelines:
    logs: {receivers: [otlp], exporters: [otlp_grpc]}
`, listen, forward)
	if err := os.WriteFile(filepath.Join(dir, "otelcol.yaml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	logPath = filepath.Join(dir, "otelcol.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns, bin, "--config", "file:"+filepath.Join(dir, "otelcol.yaml"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop = func() { cmd.Process.Kill(); <-exited; logf.Close() }
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, _ := os.ReadFile(logPath)
		if bytes.Contains(out, []byte("Everything is ready")) {
			t.Logf("OTLP goes through a real OpenTelemetry Collector (%s)", bin)
			return stop, logPath
		}
		select {
		case <-exited:
			stop()
			t.Fatalf("collector exited:\n%s", out)
		default:
		}
		if time.Now().After(deadline) {
			stop()
			t.Fatalf("collector not ready:\n%s", out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// nsClient is an HTTP client whose connections are made in a network
// namespace (the transport dials on goroutines of its own, so the dial
// itself must enter the namespace).
func nsClient(ns string) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := inNS(ns, func() error {
				var d net.Dialer
				var err error
				c, err = d.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		}}}
}

// httpGetIn fetches a URL from inside a network namespace.
func httpGetIn(t *testing.T, ns, u string) []byte {
	t.Helper()
	resp, err := nsClient(ns).Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%s: %s %v: %s", u, resp.Status, err, body)
	}
	return body
}

// TestPrivilegedObservability runs the starwars scenario on the real
// datapath and Go proxy with every observability output on, and reads
// them with real clients: a grpc-go client of the Observer API (filters,
// follow, since), `l7gate observe`, the hubble CLI when it is built,
// promtool and a real Prometheus scraping the agent and the proxy, an OTLP
// LogsService receiving the access logs, and the JSON-lines export.
func TestPrivilegedObservability(t *testing.T) {
	requireRoot(t)
	n := newStarwarsNode(t)
	var ln net.Listener
	if err := inNS(n.prefix+"-deathstar", func() error {
		var err error
		ln, err = net.Listen("tcp", "198.18.1.10:80")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "Ship landed\n") })}
	go srv.Serve(ln)
	defer srv.Close()
	for _, f := range []string{"objects.yaml", "policy-l7.yaml"} {
		data, err := os.ReadFile(filepath.Join("../examples/starwars", f))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(n.src, f), data, 0o644)
	}
	// The agent exports to 127.0.0.1:4317 on the node: a real
	// OpenTelemetry Collector when one is built (its OTLP exporter
	// forwards to the sink on :4319), else the sink itself. The sink is an
	// in-process OTLP LogsService collecting what arrives.
	sinkAddr := "127.0.0.1:4317"
	collector := otelcolBinary()
	_, noCollector := os.Stat(collector)
	if noCollector == nil {
		sinkAddr = "127.0.0.1:4319"
	} else {
		t.Logf("OTLP goes straight to the in-process LogsService: no OpenTelemetry Collector (%v; bash hack/build-components.sh otelcol)", noCollector)
	}
	sink := &otlpSink{}
	var otlpLn net.Listener
	if err := inNS(n.node, func() error {
		var err error
		otlpLn, err = net.Listen("tcp", sinkAddr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	collogspb.RegisterLogsServiceServer(gs, sink)
	go gs.Serve(otlpLn)
	defer gs.Stop()
	collectorLog := ""
	if noCollector == nil { // after the sink listens: no reconnect backoff
		var stopCollector func()
		stopCollector, collectorLog = startCollector(t, n.node, collector, "127.0.0.1:4317", sinkAddr)
		defer stopCollector()
	}

	export := filepath.Join(n.run, "flows.json")
	n.startAgent(t, "--metrics-address", "127.0.0.1:9962", "--proxy-metrics-address", "127.0.0.1:9964",
		"--otlp-endpoint", "127.0.0.1:4317", "--otlp-insecure", "--otlp-resource-attribute", "k8s.cluster.name=test",
		"--flow-export-file", export)
	n.waitImplemented(t, 0)
	start := time.Now()

	// Traffic: tiefighter lands 5 times and tries the exhaust port 3
	// times (403 from the proxy); the xwing is dropped by default-deny.
	request := func(method, path string) int {
		req, _ := http.NewRequest(method, "http://198.18.1.10"+path, nil)
		resp, err := nsClient(n.prefix + "-tiefighter").Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	for range 5 {
		if c := request("POST", "/v1/request-landing"); c != 200 {
			plog, _ := os.ReadFile(filepath.Join(n.run, "proxy.log"))
			t.Fatalf("landing: %d\nproxy log:\n%s", c, plog)
		}
	}
	for range 3 {
		if c := request("PUT", "/v1/exhaust-port"); c != 403 {
			t.Fatalf("exhaust port: %d", c)
		}
	}
	inNS(n.prefix+"-xwing", func() error {
		if c, err := net.DialTimeout("tcp", "198.18.1.10:80", 500*time.Millisecond); err == nil {
			c.Close()
			t.Error("the xwing connected")
		}
		return nil
	})

	conn, err := agentapi.DialObserver(agentapi.ObserverTarget(n.run), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	get := func(req *observerpb.GetFlowsRequest) []*flowpb.Flow {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var out []*flowpb.Flow
		if err := conn.Flows(ctx, req, func(r *observerpb.GetFlowsResponse) error {
			if f := r.GetFlow(); f != nil {
				out = append(out, f)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return out
	}
	// The records travel asynchronously (proxy → agent intake): wait for
	// the 8 L7 flows.
	deadline := time.Now().Add(15 * time.Second)
	for len(get(&observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{EventType: []*flowpb.EventTypeFilter{{Type: 129}}}}})) < 8 {
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(n.run, "agent.log"))
			t.Fatalf("fewer than 8 L7 flows in the Observer API\nagent log:\n%s", log)
		}
		time.Sleep(100 * time.Millisecond)
	}

	t.Run("observer api", func(t *testing.T) {
		drops := get(&observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{Verdict: []flowpb.Verdict{flowpb.Verdict_DROPPED}}}})
		var xwingDrop, putDenied bool
		for _, f := range drops {
			if f.GetSource().GetPodName() == "xwing" && f.GetDestination().GetPodName() == "deathstar" &&
				f.GetDropReasonDesc() == flowpb.DropReason_POLICY_DENIED && f.GetType() == flowpb.FlowType_L3_L4 {
				for _, p := range f.GetIngressDeniedBy() {
					if p.GetName() == "rule1" && p.GetNamespace() == "default" && slices.Contains(p.GetLabels(), "l7gate:decision=default-deny") {
						xwingDrop = true
					}
				}
			}
			if h := f.GetL7().GetHttp(); h != nil && h.GetMethod() == "PUT" && h.GetCode() == 403 && f.GetSource().GetPodName() == "tiefighter" &&
				slices.Contains(f.GetSource().GetLabels(), "k8s:class=tiefighter") && f.GetNodeName() == "test" {
				putDenied = true
			}
		}
		if !xwingDrop || !putDenied {
			t.Errorf("dropped flows: xwing default-deny drop attributed to default/rule1: %v, PUT denial with pods and labels: %v\n%v", xwingDrop, putDenied, drops)
		}
		puts := get(&observerpb.GetFlowsRequest{Whitelist: []*flowpb.FlowFilter{{HttpMethod: []string{"PUT"}}}})
		if len(puts) != 3 {
			t.Errorf("http-method PUT: %d flows, want 3", len(puts))
		}
		since := get(&observerpb.GetFlowsRequest{Since: timestamppb.New(time.Now().Add(time.Hour))})
		if len(since) != 0 {
			t.Errorf("since an hour ahead: %d flows", len(since))
		}
		// follow: a new request arrives on an open stream
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		got := make(chan *flowpb.Flow, 1)
		go conn.Flows(ctx, &observerpb.GetFlowsRequest{Follow: true, Whitelist: []*flowpb.FlowFilter{{HttpPath: []string{"^/v1/follow-me$"}}}},
			func(r *observerpb.GetFlowsResponse) error {
				if r.GetFlow() != nil {
					got <- r.GetFlow()
					return io.EOF
				}
				return nil
			})
		time.Sleep(300 * time.Millisecond) // the stream is open
		request("PUT", "/v1/follow-me")
		select {
		case f := <-got:
			if f.GetVerdict() != flowpb.Verdict_DROPPED {
				t.Errorf("followed flow %v", f)
			}
		case <-ctx.Done():
			t.Error("follow: the new request never arrived")
		}
	})

	t.Run("l7gate observe", func(t *testing.T) {
		out, err := exec.Command(n.bin, "observe", "--run-dir", n.run, "--verdict", "DROPPED", "--from-pod", "xwing").CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		t.Logf("l7gate observe --verdict DROPPED --from-pod xwing:\n%s", out)
		if !strings.Contains(string(out), "default/xwing:") || !strings.Contains(string(out), "POLICY_DENIED DROPPED") ||
			!strings.Contains(string(out), "denied by CiliumNetworkPolicy default/rule1") {
			t.Errorf("output lacks the xwing drop and its policy:\n%s", out)
		}
		out, _ = exec.Command(n.bin, "observe", "--run-dir", n.run, "--http-method", "PUT", "--last", "3").CombinedOutput()
		t.Logf("l7gate observe --http-method PUT:\n%s", out)
	})

	t.Run("hubble cli", func(t *testing.T) {
		hubble := hubbleCLI()
		if _, err := os.Stat(hubble); err != nil {
			t.Skipf("hubble CLI not built (%v): run `bash hack/build-components.sh hubble` (~8 min cold)", err)
		}
		server := "unix://" + agentapi.HubbleSocket(n.run)
		out, err := exec.Command(hubble, "observe", "--server", server, "--verdict", "DROPPED", "-o", "json").CombinedOutput()
		if err != nil {
			t.Fatalf("hubble observe: %v: %s", err, out)
		}
		var sawXwing, sawPut bool
		sc := bufio.NewScanner(bytes.NewReader(out))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var resp observerpb.GetFlowsResponse
			if err := protojson.Unmarshal(sc.Bytes(), &resp); err != nil {
				t.Fatalf("hubble -o json line %q: %v", sc.Text(), err)
			}
			f := resp.GetFlow()
			if f.GetVerdict() != flowpb.Verdict_DROPPED {
				t.Errorf("--verdict DROPPED printed %v", f)
			}
			sawXwing = sawXwing || f.GetSource().GetPodName() == "xwing"
			sawPut = sawPut || f.GetL7().GetHttp().GetMethod() == "PUT"
		}
		if !sawXwing || !sawPut {
			t.Errorf("hubble observe --verdict DROPPED: xwing drop %v, PUT denial %v:\n%s", sawXwing, sawPut, out)
		}
		out, err = exec.Command(hubble, "observe", "--server", server, "--http-method", "PUT").CombinedOutput()
		if err != nil || strings.Count(string(out), "http-request DROPPED") < 3 || strings.Contains(string(out), "POST") {
			t.Errorf("hubble observe --http-method PUT: %v:\n%s", err, out)
		}
		t.Logf("hubble observe --http-method PUT:\n%s", out)
		out, _ = exec.Command(hubble, "observe", "--server", server, "--last", "6").CombinedOutput()
		t.Logf("hubble observe --last 6:\n%s", out)
		out, err = exec.Command(hubble, "status", "--server", server).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Ok") || !strings.Contains(string(out), "Connected Nodes: 1/1") {
			t.Errorf("hubble status: %v:\n%s", err, out)
		}
		t.Logf("hubble status:\n%s", out)
	})

	t.Run("prometheus", func(t *testing.T) {
		promtool, err1 := exec.LookPath("promtool")
		prom, err2 := exec.LookPath("prometheus")
		if err1 != nil || err2 != nil {
			t.Skip("needs promtool and prometheus (Debian package prometheus; hack/install-deps.sh installs it)")
		}
		for _, u := range []string{"http://127.0.0.1:9962/metrics", "http://127.0.0.1:9964/metrics"} {
			body := httpGetIn(t, n.node, u)
			cmd := exec.Command(promtool, "check", "metrics")
			cmd.Stdin = bytes.NewReader(body)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("promtool check metrics %s: %v:\n%s", u, err, out)
			}
		}
		dir := t.TempDir()
		cfg := `global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
- job_name: l7gate-agent
  static_configs: [{targets: ["127.0.0.1:9962"]}]
- job_name: l7gate-proxy
  static_configs: [{targets: ["127.0.0.1:9964"]}]
`
		os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644)
		logf, _ := os.Create(filepath.Join(dir, "prometheus.log"))
		defer logf.Close()
		cmd := exec.Command("ip", "netns", "exec", n.node, prom, "--config.file", filepath.Join(dir, "prometheus.yml"),
			"--storage.tsdb.path", filepath.Join(dir, "data"), "--web.listen-address", "127.0.0.1:9090")
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cmd.Process.Kill(); cmd.Wait() }()
		query := func(q string) map[string]float64 {
			var out map[string]float64
			func() error {
				resp, err := nsClient(n.node).Get("http://127.0.0.1:9090/api/v1/query?query=" + url.QueryEscape(q))
				if err != nil {
					return err
				}
				defer resp.Body.Close()
				var r struct {
					Data struct {
						Result []struct {
							Metric map[string]string `json:"metric"`
							Value  [2]any            `json:"value"`
						} `json:"result"`
					} `json:"data"`
				}
				if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
					return err
				}
				out = map[string]float64{}
				for _, s := range r.Data.Result {
					v, _ := strconv.ParseFloat(fmt.Sprint(s.Value[1]), 64)
					var key []string
					for _, k := range slices.Sorted(maps.Keys(s.Metric)) {
						key = append(key, k+"="+s.Metric[k])
					}
					out[strings.Join(key, ",")] = v
				}
				return nil
			}()
			return out
		}
		want := map[string]func(map[string]float64) bool{
			`sum(hubble_drop_total{reason="POLICY_DENIED",protocol="TCP"})`:   func(m map[string]float64) bool { return m[""] >= 1 },
			`sum by (status) (hubble_http_requests_total{reporter="server"})`: func(m map[string]float64) bool { return m["status=200"] >= 5 && m["status=403"] >= 3 },
			`sum by (action) (hubble_policy_verdicts_total{match="l7/http"})`: func(m map[string]float64) bool { return m["action=forwarded"] >= 5 && m["action=dropped"] >= 3 },
			`sum by (verdict) (l7gate_proxy_requests_total{protocol="http"})`: func(m map[string]float64) bool { return m["verdict=allowed"] >= 5 && m["verdict=denied"] >= 3 },
			`sum(l7gate_flows_delivered_total{sink="otlp"})`:                  func(m map[string]float64) bool { return m[""] >= 8 },
			`l7gate_endpoints{state="ready"}`:                                 func(m map[string]float64) bool { return len(m) == 1 && slices.Collect(maps.Values(m))[0] == 3 },
			`count(l7gate_policy_implement_duration_seconds_count)`:           func(m map[string]float64) bool { return m[""] >= 1 },
		}
		deadline := time.Now().Add(30 * time.Second)
		for len(want) > 0 {
			for q, ok := range want {
				if res := query(q); ok(res) {
					t.Logf("%s => %v", q, res)
					delete(want, q)
				}
			}
			if time.Now().After(deadline) {
				for q := range want {
					t.Errorf("prometheus: %s => %v", q, query(q))
				}
				log, _ := os.ReadFile(filepath.Join(dir, "prometheus.log"))
				t.Logf("prometheus log:\n%s", log)
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
	})

	t.Run("otlp", func(t *testing.T) {
		var denied map[string]string
		deadline := time.Now().Add(15 * time.Second)
		for denied == nil && time.Now().Before(deadline) {
			for _, l := range sink.logs() {
				if l["http.request.method"] == "PUT" && l["url.path"] == "/v1/exhaust-port" {
					denied = l
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		if denied == nil {
			var clog []byte
			if collectorLog != "" {
				clog, _ = os.ReadFile(collectorLog)
			}
			t.Fatalf("no PUT record among %d OTLP logs\ncollector log:\n%s", len(sink.logs()), clog)
		}
		for k, v := range map[string]string{"k8s.pod.name": "deathstar", "k8s.namespace.name": "default", "k8s.node.name": "test",
			"k8s.cluster.name": "test", "l7gate.verdict": "denied", "l7gate.policy.name": "default/rule1", "l7gate.source.pod": "tiefighter",
			"http.response.status_code": "403", "l7gate.observer": "proxy"} {
			if denied[k] != v {
				t.Errorf("OTLP log %s = %q, want %q (%v)", k, denied[k], v, denied)
			}
		}
		if denied["l7gate.source.identity"] == "0" || denied["l7gate.destination.identity"] == "0" {
			t.Errorf("identities missing: %v", denied)
		}
	})

	t.Run("export file", func(t *testing.T) {
		data, err := os.ReadFile(export)
		if err != nil {
			t.Fatal(err)
		}
		var n, drops int
		for _, line := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
			var resp observerpb.GetFlowsResponse
			if err := protojson.Unmarshal(line, &resp); err != nil {
				t.Fatalf("export line %q: %v", line, err)
			}
			n++
			if resp.GetFlow().GetVerdict() == flowpb.Verdict_DROPPED {
				drops++
			}
		}
		if n < 9 || drops < 4 {
			t.Errorf("export has %d flows, %d drops", n, drops)
		}
	})
	t.Logf("observability checks took %v", time.Since(start).Round(time.Millisecond))
}
