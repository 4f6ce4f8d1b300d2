package otlp

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// otelcolBinary is where `hack/build-components.sh otelcol` puts the
// OpenTelemetry Collector (OTLP receiver + debug exporter, built from the
// go.opentelemetry.io/collector modules); L7GATE_OTELCOL overrides.
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

// lockedBuffer collects a process's output while it runs.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestExportToOTelCollector: a real OpenTelemetry Collector (OTLP
// receiver, debug exporter at detailed verbosity) takes the exporter's
// logs over OTLP/gRPC and OTLP/HTTP and prints them with their resource
// and record attributes.
func TestExportToOTelCollector(t *testing.T) {
	bin := otelcolBinary()
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("OpenTelemetry Collector not built (%v): run `bash hack/build-components.sh otelcol`", err)
	}
	grpcAddr, httpAddr := freePort(t), freePort(t)
	cfg := fmt.Sprintf(`receivers:
  otlp:
    protocols:
      grpc: {endpoint: "%s"}
      http: {endpoint: "%s"}
exporters:
  debug:
    verbosity: detailed
    use_internal_logger: false
service:
  telemetry:
    logs: {level: info}
    metrics: {level: none}
  pipelines:
    logs: {receivers: [otlp], exporters: [debug]}
`, grpcAddr, httpAddr)
	path := filepath.Join(t.TempDir(), "otelcol.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	var out lockedBuffer
	cmd := exec.Command(bin, "--config", "file:"+path)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), "Everything is ready") {
		select {
		case <-exited:
			t.Fatalf("collector exited:\n%s", out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("collector did not start:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"grpc", Config{Endpoint: grpcAddr, Insecure: true}},
		{"http", Config{Endpoint: "http://" + httpAddr, Protocol: ProtocolHTTP}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(out.String())
			tc.cfg.Resource = map[string]string{"k8s.cluster.name": "c-" + tc.name}
			tc.cfg.FlushInterval = 20 * time.Millisecond
			e := export(t, tc.cfg, records())
			waitDelivered(t, e, 3)
			deadline := time.Now().Add(10 * time.Second)
			var got string
			for {
				got = out.String()[before:]
				if strings.Count(got, "LogRecord #") >= 3 || time.Now().After(deadline) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			for _, want := range []string{
				"-> k8s.cluster.name: Str(c-" + tc.name + ")",
				"-> k8s.pod.name: Str(deathstar-0)",
				"-> k8s.namespace.name: Str(default)",
				"-> k8s.statefulset.name: Str(deathstar)",
				"-> k8s.node.name: Str(n1)",
				"Body: Str(PUT deathstar/v1/exhaust-port 403 denied)",
				"-> " + AttrVerdict + ": Str(denied)",
				"-> http.request.method: Str(PUT)",
				"-> http.response.status_code: Int(403)",
				"-> " + AttrSrcIdentity + ": Int(258)",
				"-> " + AttrSrcPod + ": Str(tiefighter)",
				"-> l7gate.kafka.error_code: Int(29)",
			} {
				if !strings.Contains(got, want) {
					t.Errorf("the collector's output lacks %q", want)
				}
			}
			if t.Failed() {
				t.Logf("collector output:\n%s", got)
			}
		})
	}
}
