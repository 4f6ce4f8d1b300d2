package demo

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	// serverEnv makes the test binary a built-in server process (what
	// `l7gate demo serve` is for the command).
	serverEnv = "L7GATE_DEMO_TEST_SERVER"
	// binaryEnv carries the path of the l7gate binary TestMain built.
	binaryEnv = "L7GATE_DEMO_TEST_BINARY"
)

func TestMain(m *testing.M) {
	if os.Getenv(serverEnv) == "1" {
		os.Exit(serverMain())
	}

	flag.Parse()
	code := func() int {
		if os.Geteuid() == 0 && runs("TestPrivilegedScenarioStarwars", "TestPrivilegedScenarioStarwarsDualStack", "TestPrivilegedScenarioGRPC", "TestPrivilegedScenarioGRPCDualStack", "TestPrivilegedScenarioKafkaDualStack", "TestPrivilegedScenarioMultiNamespaceCIDR", "TestPrivilegedScenarioKafka", "TestPrivilegedScenarioL3LiftsL7", "TestPrivilegedScenarioNodeProbes", "TestPrivilegedScenarioEgressIngressChain", "TestPrivilegedScenarioServices", "TestPrivilegedScenarioDNS", "TestPrivilegedScenarioDNSDualStack", "TestPrivilegedCheckByNameFromNode", "TestPrivilegedDNSProxyCrashHeldSockets", "TestPrivilegedScenarioInterrupted", "TestPrivilegedKgoSuite", "TestPrivilegedServiceMapStarwars", "TestPrivilegedScenarioAudit", "TestPrivilegedScenarioAuditGRPC", "TestPrivilegedScenarioAuditKafka", "TestPrivilegedScenarioAuditNamespace") {
			dir, err := os.MkdirTemp("", "l7gate-demo-test-bin-")
			if err != nil {
				fmt.Fprintln(os.Stderr, "temp dir:", err)
				return 1
			}
			defer os.RemoveAll(dir)
			bin := filepath.Join(dir, "l7gate")
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			start := time.Now()
			if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "../cmd/l7gate").CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "build l7gate: %v\n%s", err, out)
				return 1
			}
			fmt.Fprintf(os.Stderr, "built %s in %s\n", bin, time.Since(start).Round(time.Millisecond))
			os.Setenv(binaryEnv, bin)
		}
		return m.Run()
	}()
	os.Exit(code)
}

// runs reports whether -test.run would select any of the named tests.
func runs(names ...string) bool {
	f := flag.Lookup("test.run")
	if f == nil || f.Value.String() == "" {
		return true
	}
	top, _, _ := strings.Cut(f.Value.String(), "/")
	re, err := regexp.Compile(top)
	return err != nil || slices.ContainsFunc(names, re.MatchString)
}

func serverMain() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	cfg, err := ParseServerArgs(os.Args[1:])
	if err != nil {
		log.Error("server", "err", err)
		return 2
	}
	if err := Serve(ctx, cfg, log, func() { fmt.Println("ready") }); err != nil {
		log.Error("server", "err", err)
		return 1
	}
	return 0
}

// testServerCommand starts built-in servers from this test binary.
func testServerCommand(t *testing.T) ([]string, []string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return []string{exe}, []string{serverEnv + "=1"}
}
