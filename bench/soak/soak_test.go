package soak

import (
	"bytes"
	"context"
	"flag"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/l7gate/l7gate/internal/testutil"
)

var (
	soakDuration = flag.Duration("soak.duration", 0, "run TestPrivilegedSoak for this long (make soak DURATION=10m); 0 skips it")
	soakOut      = flag.String("soak.out", "../results", "where TestPrivilegedSoak writes soak-<date>.md and .svg")
)

func build(t *testing.T) string {
	t.Helper()
	testutil.RequirePrivileged(t, "creates network namespaces, veths and a bpffs, and runs the agent", "ip", "go")
	bin := filepath.Join(t.TempDir(), "l7gate")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/l7gate/l7gate/cmd/l7gate").CombinedOutput(); err != nil {
		t.Fatalf("build l7gate: %v\n%s", err, out)
	}
	return bin
}

func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(b []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(b, "\n")))
	return len(b), nil
}

func logResult(t *testing.T, r *Result) {
	var md bytes.Buffer
	r.WriteMarkdown(&md, "chart.svg")
	t.Logf("\n%s", md.String())
}

// TestPrivilegedHandOverAllClients: HTTP/1.1 keep-alive, h2c, gRPC
// (grpc-go) and Kafka (franz-go against kfake) clients and a
// new-connection loop go through L7 policy in pod namespaces while the
// proxy is handed over to a new process (SIGHUP to the agent) four times:
// no allowed request fails, no denied request gets through (every client
// sends denied requests too), and every client carried traffic.
func TestPrivilegedHandOverAllClients(t *testing.T) {
	bin := build(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r, err := Run(ctx, Config{Executable: bin, Duration: 30 * time.Second, HandOverEvery: 6 * time.Second, TempDir: t.TempDir(), Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	logResult(t, r)
	_, clients, total := r.ByPhase()
	if n := r.EventCount("hand-over"); n < 4 {
		t.Errorf("%d hand-overs, want 4", n)
	}
	if total.Failed != 0 || total.Leaked != 0 || r.ServerBypass != 0 {
		t.Errorf("across the hand-overs: %d requests failed, %d denied requests got through, %d reached the servers: %v",
			total.Failed, total.Leaked, r.ServerBypass, r.Errors)
	}
	for _, c := range []int{cHTTP1, cH2C, cNewConn, cGRPC, cKafka} {
		if x := clients[c]; x.OK < 50 || x.Denied < 5 {
			t.Errorf("%s: %d allowed and %d denied requests answered; too little traffic to tell", clientNames[c], x.OK, x.Denied)
		}
	}
	if len(r.Problems) > 0 {
		t.Errorf("problems: %v", r.Problems)
	}
}

// TestPrivilegedSoak is `make soak DURATION=…`: see the package doc. It
// writes bench/results/soak-<date>.md and .svg and fails when a denied
// request got through, an allowed one failed outside a proxy crash or the
// agent kill, or an event or check could not run.
func TestPrivilegedSoak(t *testing.T) {
	if *soakDuration <= 0 {
		t.Skip("make soak runs it (-soak.duration)")
	}
	bin := build(t)
	ctx, cancel := context.WithTimeout(context.Background(), *soakDuration+5*time.Minute)
	defer cancel()
	r, err := Run(ctx, Config{
		Executable: bin, Duration: *soakDuration, HandOverEvery: 30 * time.Second, CrashEvery: 2 * time.Minute, KillAgent: true,
		PolicyUpdates: 10000, FlipEvery: 10 * time.Second, TempDir: t.TempDir(), Log: testLog(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(*soakOut, "soak-"+r.Started.UTC().Format("2006-01-02-1504"))
	var md, svg bytes.Buffer
	r.WriteMarkdown(&md, filepath.Base(base)+".svg")
	r.WriteSVG(&svg)
	if err := os.WriteFile(base+".md", md.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(base+".svg", svg.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("report: %s.md\n%s", base, md.String())
	if n := r.Leaked(); n != 0 {
		t.Errorf("%d denied requests got through", n)
	}
	if n := r.FailedOutsideCrashes(); n != 0 {
		t.Errorf("%d requests failed outside proxy crashes and the agent kill: %v", n, r.Errors)
	}
	if len(r.Problems) > 0 {
		t.Errorf("problems: %v", r.Problems)
	}
}
