package otlp

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/l7gate/l7gate/observe"
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

func freePort(t testing.TB) string {
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
	grpcAddr, httpAddr, out := startCollector(t, bin, "detailed")

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

// startCollector runs the OpenTelemetry Collector at bin (OTLP receiver
// on loopback, debug exporter at verbosity) until the test ends; out is
// what it prints.
func startCollector(t testing.TB, bin, verbosity string) (grpcAddr, httpAddr string, out *lockedBuffer) {
	t.Helper()
	grpcAddr, httpAddr = freePort(t), freePort(t)
	cfg := fmt.Sprintf(`receivers:
  otlp:
    protocols:
      grpc: {endpoint: "%s"}
      http: {endpoint: "%s"}
exporters:
  debug:
    verbosity: %s
    use_internal_logger: false
service:
  telemetry:
    logs: {level: info}
    metrics: {level: none}
  pipelines:
    logs: {receivers: [otlp], exporters: [debug]}
`, grpcAddr, httpAddr, verbosity)
	path := filepath.Join(t.TempDir(), "otelcol.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	out = &lockedBuffer{}
	cmd := exec.Command(bin, "--config", "file:"+path)
	cmd.Stdout, cmd.Stderr = out, out
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
	return grpcAddr, httpAddr, out
}

// BenchmarkExportToOTelCollector: access records through the exporter to
// a real OpenTelemetry Collector (another process: this process's CPU is
// the exporter's alone) over OTLP/gRPC. paced offers 20000 records/s (the
// proxy's keep-alive peak on the idle machine) to the default queue and
// reports the share lost; unpaced waits for the queue and reports the
// exporter's CPU per record.
func BenchmarkExportToOTelCollector(b *testing.B) {
	bin := otelcolBinary()
	if _, err := os.Stat(bin); err != nil {
		b.Skipf("OpenTelemetry Collector not built (%v): run `bash hack/build-components.sh otelcol`", err)
	}
	grpcAddr, _, _ := startCollector(b, bin, "basic")
	cpu := func() time.Duration {
		var ru syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	recs := records()
	for _, paced := range []bool{false, true} {
		name := map[bool]string{false: "unpaced", true: "paced-20k"}[paced]
		b.Run(name, func(b *testing.B) {
			cfg := Config{Endpoint: grpcAddr, Insecure: true}
			if !paced {
				cfg.Queue = 1 << 16
			}
			e, err := New(cfg)
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- e.Run(ctx) }()
			defer func() { cancel(); <-done }()
			b.ResetTimer()
			cpu0, t0 := cpu(), time.Now()
			for i := 0; i < b.N; i++ {
				r := recs[0]
				if i%2 == 1 {
					r = recs[2]
				}
				if paced {
					if due := t0.Add(time.Duration(i) * 50 * time.Microsecond); time.Until(due) > time.Millisecond {
						time.Sleep(time.Until(due))
					}
				} else {
					for {
						d, lost := e.Stats()
						if uint64(i)-d-lost < 1<<15 {
							break
						}
						time.Sleep(100 * time.Microsecond)
					}
				}
				e.Consume(observe.Event{Seq: uint64(i), Record: r})
			}
			for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(time.Millisecond) {
				if d, lost := e.Stats(); d+lost >= uint64(b.N) || time.Now().After(deadline) {
					break
				}
			}
			d, lost := e.Stats()
			b.ReportMetric(float64((cpu()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/record")
			b.ReportMetric(float64(lost)/float64(b.N)*100, "%lost")
			if d+lost < uint64(b.N) {
				b.Errorf("%d records neither delivered nor counted lost", uint64(b.N)-d-lost)
			}
		})
	}
}
