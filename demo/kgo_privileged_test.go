package demo

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"
	"time"
)

// franz-go's own client tests (package kgo: produce, consume, group ETL
// with every balancer, transactions, regex, share groups, ...) are a
// conformance suite for a Kafka proxy: TestPrivilegedKgoSuite runs them from
// a pod namespace against two kfake brokers in other pods, one reached
// directly (no policy selects it) and one behind an allow-all Kafka rule
// (datapath redirect → Go proxy), and fails when the proxy adds a failure
// or did not carry the traffic.
//
// The suite is pointed at a broker with KGO_SEEDS and sized with
// KGO_TEST_RF (1: one broker) and KGO_TEST_RECORDS (records per ETL test;
// franz-go's default 500000 takes far too long here). L7GATE_KGO_RECORDS
// overrides the record count, L7GATE_KGO_ROUNDS runs the proxied suite more
// than once.

const kgoObjects = `
apiVersion: v1
kind: Namespace
metadata: {name: kgo}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: kgo, labels: {app: kgo-client}}
status: {podIP: 198.18.7.10}
---
apiVersion: v1
kind: Pod
metadata:
  name: kafka-direct
  namespace: kgo
  labels: {app: kafka-direct}
  annotations: {l7gate.io/serve: "kafka:9092"}
status: {podIP: 198.18.7.20}
---
apiVersion: v1
kind: Pod
metadata:
  name: kafka-proxied
  namespace: kgo
  labels: {app: kafka-proxied}
  annotations: {l7gate.io/serve: "kafka:9092"}
status: {podIP: 198.18.7.21}
`

const kgoPolicy = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: kafka-allow-all, namespace: kgo}
spec:
  endpointSelector: {matchLabels: {app: kafka-proxied}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: kgo-client}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka: [{}]
`

const kgoSteps = `
description: franz-go's kgo test suite, directly and through the Go proxy
steps:
- name: kafka-proxied behind an allow-all Kafka rule
  apply: [policies/allow-all.yaml]
  checks:
  - {from: kgo/client, to: kgo/kafka-direct, port: 9092, kafka: {produce: kgo-check}, expect: allowed}
  - {from: kgo/client, to: kgo/kafka-proxied, port: 9092, kafka: {produce: kgo-check}, expect: allowed}
`

// kgoResult is what one run of the kgo test binary did.
type kgoResult struct {
	Passed, Failed, Skipped int      // top-level tests
	Failures                []string // every failed test and subtest
	Skips                   []string // skipped top-level tests
	Took                    time.Duration
	Exit                    error
	Output                  string
}

var kgoLine = regexp.MustCompile(`^(\s*)--- (PASS|FAIL|SKIP): (\S+)`)

func parseKgoOutput(out string) kgoResult {
	var r kgoResult
	for line := range strings.SplitSeq(out, "\n") {
		m := kgoLine.FindStringSubmatch(line)
		if m == nil {
			if strings.HasPrefix(line, "panic: ") {
				r.Failures = append(r.Failures, "panic: "+strings.TrimPrefix(line, "panic: "))
			}
			continue
		}
		if m[2] == "FAIL" {
			r.Failures = append(r.Failures, m[3])
		}
		if m[1] != "" {
			continue // subtest
		}
		switch m[2] {
		case "PASS":
			r.Passed++
		case "FAIL":
			r.Failed++
		case "SKIP":
			r.Skipped++
			r.Skips = append(r.Skips, m[3])
		}
	}
	return r
}

// kgoTestBinary returns franz-go's kgo test binary at the version go.mod
// requires (built once per version into the user cache, outside the clone)
// and the package's source folder, where it must run (a test parses
// config.go).
func kgoTestBinary(t *testing.T) (bin, dir string) {
	t.Helper()
	out, err := exec.Command("go", "mod", "download", "-json", "github.com/twmb/franz-go").Output()
	if err != nil {
		t.Fatalf("locate franz-go: %v", err)
	}
	var mod struct{ Version, Dir string }
	if err := json.Unmarshal(out, &mod); err != nil || mod.Dir == "" {
		t.Fatalf("locate franz-go: %s", out)
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	bin = filepath.Join(cache, "l7gate", fmt.Sprintf("kgo-test-%s-%s-%s", mod.Version, runtime.GOOS, runtime.GOARCH), "kgo.test")
	dir = filepath.Join(mod.Dir, "pkg", "kgo")
	if _, err := os.Stat(bin); err == nil {
		t.Logf("kgo test binary (franz-go %s): %s (cached)", mod.Version, bin)
		return bin, dir
	}
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	tmp := bin + ".tmp"
	build := exec.Command("go", "test", "-c", "-o", tmp, "github.com/twmb/franz-go/pkg/kgo")
	build.Dir = ".." // the module root: go.mod pins the version
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the kgo test binary: %v\n%s", err, out)
	}
	if err := os.Rename(tmp, bin); err != nil {
		t.Fatal(err)
	}
	t.Logf("built the kgo test binary (franz-go %s) in %s: %s", mod.Version, time.Since(start).Round(time.Second), bin)
	return bin, dir
}

// runKgo runs the kgo suite inside a namespace against seed.
func runKgo(ctx context.Context, t *testing.T, bin, dir, ns, seed string, records int, timeout time.Duration) kgoResult {
	args := []string{"netns", "exec", ns, "env",
		"KGO_SEEDS=" + seed, "KGO_TEST_RF=1", "KGO_TEST_RECORDS=" + strconv.Itoa(records), "KGO_LOG_LEVEL=none",
		bin, "-test.v", "-test.timeout", timeout.String()}
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 10 * time.Second
	start := time.Now()
	err := cmd.Run()
	r := parseKgoOutput(out.String())
	r.Took, r.Exit, r.Output = time.Since(start), err, out.String()
	if err != nil && len(r.Failures) == 0 {
		r.Failures = append(r.Failures, fmt.Sprintf("suite exited: %v", err))
	}
	return r
}

// proxyKafkaRequests reads the Go proxy's Kafka request counters from its
// admin socket.
func proxyKafkaRequests(t *testing.T, sock string) (allowed, denied int64) {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	resp, err := c.Get("http://proxy/stats/prometheus")
	if err != nil {
		t.Fatalf("proxy stats: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		for _, v := range []struct {
			verdict string
			n       *int64
		}{{"allowed", &allowed}, {"denied", &denied}} {
			if rest, ok := strings.CutPrefix(line, `l7gate_proxy_requests_total{protocol="kafka",verdict="`+v.verdict+`"} `); ok {
				*v.n, _ = strconv.ParseInt(rest, 10, 64)
			}
		}
	}
	return allowed, denied
}

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

func TestPrivilegedKgoSuite(t *testing.T) {
	exe := needAgent(t)
	kgoBin, kgoDir := kgoTestBinary(t)
	records := envInt("L7GATE_KGO_RECORDS", 10000)
	rounds := envInt("L7GATE_KGO_ROUNDS", 1)
	const suiteTimeout = 8 * time.Minute
	sc, err := LoadScenario(fstest.MapFS{
		"objects/kgo.yaml":        {Data: []byte(kgoObjects)},
		"policies/allow-all.yaml": {Data: []byte(kgoPolicy)},
		"steps.yaml":              {Data: []byte(kgoSteps)},
	}, "kgo")
	if err != nil {
		t.Fatal(err)
	}
	cmd, env := testServerCommand(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(1+rounds)*suiteTimeout+3*time.Minute)
	defer cancel()
	before := rootLinks(t)
	var direct kgoResult
	var proxied []kgoResult
	var out strings.Builder
	sum, err := Run(ctx, Config{
		Scenario: sc, Executable: exe, ServerCommand: cmd, ServerEnv: env, TempDir: t.TempDir(), Out: &out,
		Log: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
		AfterStep: func(ctx context.Context, _ int, topo *Topology) error {
			client := topo.Host("kgo/client").NS
			sock := filepath.Join(topo.WorkDir(), "run", "proxy-admin.sock")
			a0, d0 := proxyKafkaRequests(t, sock)
			direct = runKgo(ctx, t, kgoBin, kgoDir, client, "198.18.7.20:9092", records, suiteTimeout)
			a1, d1 := proxyKafkaRequests(t, sock)
			t.Logf("direct:  %d passed, %d failed, %d skipped in %s; proxy Kafka requests during it: %d allowed, %d denied",
				direct.Passed, direct.Failed, direct.Skipped, direct.Took.Round(time.Second), a1-a0, d1-d0)
			if a1 != a0 || d1 != d0 {
				t.Errorf("the direct run went through the proxy (%d requests): the baseline is not direct", a1-a0+d1-d0)
			}
			for i := range rounds {
				r := runKgo(ctx, t, kgoBin, kgoDir, client, "198.18.7.21:9092", records, suiteTimeout)
				a2, d2 := proxyKafkaRequests(t, sock)
				t.Logf("proxied (round %d): %d passed, %d failed, %d skipped in %s; proxy Kafka requests: %d allowed, %d denied",
					i+1, r.Passed, r.Failed, r.Skipped, r.Took.Round(time.Second), a2-a1, d2-d1)
				if a2-a1 < 1000 {
					t.Errorf("round %d: the proxy carried only %d Kafka requests: the suite did not go through it", i+1, a2-a1)
				}
				if d2 != d1 {
					t.Errorf("round %d: %d requests denied under an allow-all rule", i+1, d2-d1)
				}
				a1, d1 = a2, d2
				proxied = append(proxied, r)
			}
			return nil
		},
	})
	for line := range strings.SplitSeq(strings.TrimRight(out.String(), "\n"), "\n") {
		t.Log(line)
	}
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if sum.Failed > 0 {
		t.Fatalf("%d of %d checks failed", sum.Failed, len(sum.Results))
	}
	if len(direct.Failures) > 0 {
		t.Logf("direct run failures (kfake or the suite, not the proxy): %v", direct.Failures)
	}
	for i, r := range proxied {
		var added []string
		for _, f := range r.Failures {
			if !slices.Contains(direct.Failures, f) {
				added = append(added, f)
			}
		}
		if len(added) > 0 {
			t.Errorf("round %d: the proxy added failures %v; output tail:\n%s", i+1, added, tailString(r.Output, 60))
		}
		if r.Passed == 0 {
			t.Errorf("round %d: no kgo test passed through the proxy", i+1)
		}
		var onlyProxied []string
		for _, s := range r.Skips {
			if !slices.Contains(direct.Skips, s) {
				onlyProxied = append(onlyProxied, s)
			}
		}
		if len(onlyProxied) > 0 {
			// The proxy does not offer APIs it does not parse (share
			// groups, KIP-848 consumer groups): the suite skips their tests.
			t.Logf("round %d: skipped only through the proxy: %v", i+1, onlyProxied)
		}
	}
	assertGone(t, sum.Prefix, sum.WorkDir, []string{filepath.Join(sum.WorkDir, "bpffs")}, before)
}

func tailString(s string, lines int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(l[max(0, len(l)-lines):], "\n")
}
