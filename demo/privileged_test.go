package demo

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/l7gate/l7gate/internal/netns"
	"github.com/l7gate/l7gate/internal/testutil"
)

func needRoot(t *testing.T) {
	t.Helper()
	testutil.RequirePrivileged(t, "network namespaces, veths, bpffs", "ip")
}

// rootLinks lists the interfaces of the root network namespace.
func rootLinks(t *testing.T) map[string]bool {
	t.Helper()
	out, err := exec.Command("ip", "-o", "link", "show").Output()
	if err != nil {
		t.Fatal(err)
	}
	links := map[string]bool{}
	for line := range strings.SplitSeq(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 1 {
			links[strings.TrimSuffix(strings.SplitN(f[1], "@", 2)[0], ":")] = true
		}
	}
	return links
}

// assertGone checks that nothing of a topology is left: namespaces,
// links in the root namespace, mounts, the work dir.
func assertGone(t *testing.T, prefix, workDir string, mounts []string, before map[string]bool) {
	t.Helper()
	for _, ns := range netns.WithPrefix(prefix + "-") {
		t.Errorf("namespace %s left behind", ns)
	}
	for l := range rootLinks(t) {
		if !before[l] && (strings.HasPrefix(l, "lxc") || strings.HasPrefix(l, "ext") || l == "eth0") {
			t.Errorf("link %s appeared in the root namespace", l)
		}
	}
	for _, m := range mounts {
		if isMountPoint(m) {
			t.Errorf("%s still mounted", m)
		}
	}
	if _, err := os.Stat(workDir); !os.IsNotExist(err) {
		t.Errorf("work dir %s left behind (%v)", workDir, err)
	}
}

func allScenarios(t *testing.T) map[string]*Scenario {
	t.Helper()
	out := map[string]*Scenario{}
	sc, err := Builtin()
	if err != nil {
		t.Fatal(err)
	}
	out[BuiltinName] = sc
	for _, dir := range scenarioDirs(t) {
		sc, err := LoadScenarioDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(dir)] = sc
	}
	return out
}

// TestPrivilegedTopology builds each scenario's topology with its built-in
// servers and no agent (plain routing, no datapath): every check must be
// allowed. Then it tears the topology down (Close, or Down from the state
// file for one scenario) and checks nothing is left.
func TestPrivilegedTopology(t *testing.T) {
	needRoot(t)
	cmd, env := testServerCommand(t)
	for name, sc := range allScenarios(t) {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			before := rootLinks(t)
			workDir := filepath.Join(t.TempDir(), "work")
			if err := os.Mkdir(workDir, 0o700); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			topo, err := NewTopology(ctx, sc, TopologyConfig{
				WorkDir: workDir, ServerCommand: cmd, ServerEnv: env, Forwarding: true,
				Log: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("topology %s: %d hosts up in %s", topo.Prefix, len(topo.Hosts()), time.Since(start).Round(time.Millisecond))
			// A bpffs mount, as Run makes for the agent, must go too.
			bpffs := filepath.Join(workDir, "bpffs")
			if err := os.Mkdir(bpffs, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := unix.Mount("bpf", bpffs, "bpf", 0, "mode=0700"); err != nil {
				t.Fatal(err)
			}
			if err := topo.led.addMount(bpffs); err != nil {
				t.Fatal(err)
			}
			closed := false
			defer func() {
				if !closed {
					topo.Close(context.Background())
				}
			}()
			o := DefaultProbeOptions()
			n := 0
			for i, st := range sc.Steps {
				objs, err := sc.ObjectsAt(i)
				if err != nil {
					t.Fatal(err)
				}
				for _, c := range st.Checks {
					if to := sc.Host(c.To); to != nil && to.Service != nil {
						continue // needs the agent's socket load balancer
					}
					// no datapath: plain routing allows everything, and nothing decides
					c.Expect, c.DecidedBy = Allowed, ""
					r := Result{Step: i + 1, StepName: st.Name, Check: c, Observed: topo.Send(ctx, c, o), Trace: TraceCheck(objs, sc, c)}
					t.Log(r.Line())
					if !r.Passed() {
						t.Errorf("without a datapath every check is allowed: %s", r.Line())
					}
					n++
				}
			}
			t.Logf("%d checks in %s", n, time.Since(start).Round(time.Millisecond))
			servers := topo.servers
			closed = true
			if name == "multi-namespace-cidr" {
				err = Down(ctx, workDir, nil)
			} else {
				err = topo.Close(ctx)
			}
			if err != nil {
				t.Fatalf("teardown: %v", err)
			}
			for _, p := range servers {
				select {
				case <-p.done:
				case <-time.After(5 * time.Second):
					t.Errorf("%s still running after teardown", p.name)
				}
			}
			assertGone(t, topo.Prefix, workDir, []string{bpffs}, before)
		})
	}
}

// testWriter sends slog output to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// needAgent returns the l7gate binary TestMain built, or skips when it
// has no agent command.
func needAgent(t *testing.T) string {
	t.Helper()
	needRoot(t)
	bin := os.Getenv(binaryEnv)
	if bin == "" {
		t.Skip("needs the agent (cmd/l7gate agent): no l7gate binary was built")
	}
	if err := exec.Command(bin, "agent", "--help").Run(); err != nil {
		t.Skip("needs the agent (cmd/l7gate agent): not a subcommand of the binary yet")
	}
	return bin
}

// runScenario runs a scenario through the agent and checks every check
// passed and nothing is left behind.
func runScenario(t *testing.T, sc *Scenario) { runScenarioAfter(t, sc, nil) }

// runScenarioAfter is runScenario with a Config.AfterStep.
func runScenarioAfter(t *testing.T, sc *Scenario, after func(ctx context.Context, step int, topo *Topology) error) {
	bin := needAgent(t)
	cmd, env := testServerCommand(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	before := rootLinks(t)
	var out strings.Builder
	start := time.Now()
	// L7GATE_DEMO_KEEP=1 keeps the topology for a look (remove it with
	// `l7gate demo down WORKDIR`, printed at the end).
	keep := os.Getenv("L7GATE_DEMO_KEEP") == "1"
	tmp := t.TempDir()
	if keep {
		tmp = ""
	}
	sum, err := Run(ctx, Config{
		Scenario: sc, Executable: bin, ServerCommand: cmd, ServerEnv: env,
		TempDir: tmp, Out: &out, Keep: keep, AfterStep: after,
		Log: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	})
	for line := range strings.SplitSeq(strings.TrimRight(out.String(), "\n"), "\n") {
		t.Log(line)
	}
	t.Logf("ran in %s", time.Since(start).Round(time.Millisecond))
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if sum.Failed > 0 {
		t.Errorf("%d of %d checks failed", sum.Failed, len(sum.Results))
	}
	if keep {
		return
	}
	assertGone(t, sum.Prefix, sum.WorkDir, []string{filepath.Join(sum.WorkDir, "bpffs")}, before)
}

func scenarioByName(t *testing.T, name string) *Scenario {
	t.Helper()
	if name == BuiltinName {
		sc, err := Builtin()
		if err != nil {
			t.Fatal(err)
		}
		return sc
	}
	sc, err := LoadScenarioDir(filepath.Join("../examples/scenarios", name))
	if err != nil {
		t.Fatal(err)
	}
	return sc
}

func TestPrivilegedScenarioStarwars(t *testing.T) { runScenario(t, scenarioByName(t, BuiltinName)) }

// TestPrivilegedScenarioStarwarsDualStack: the starwars scenario on
// dual-stack pods, every check over IPv4 and again over IPv6 with the same
// verdict (L3/L4 drops and L7 denials through the proxy's IPv6 listener).
func TestPrivilegedScenarioStarwarsDualStack(t *testing.T) {
	runScenario(t, dualStackScenario(t, "starwars-dualstack", 14))
}

// dualStackScenario loads a scenario that must have v6 checks over IPv6.
func dualStackScenario(t *testing.T, name string, v6 int) *Scenario {
	t.Helper()
	sc := scenarioByName(t, name)
	n := 0
	for _, st := range sc.Steps {
		for _, c := range st.Checks {
			if c.Family == FamilyIPv6 {
				n++
			}
		}
	}
	if n != v6 {
		t.Fatalf("%s has %d checks over IPv6, want %d", name, n, v6)
	}
	return sc
}

func TestPrivilegedScenarioGRPC(t *testing.T) { runScenario(t, scenarioByName(t, "grpc")) }

// TestPrivilegedScenarioGRPCDualStack: the gRPC scenario on dual-stack
// pods, every check over IPv4 and again over IPv6 with the same verdict
// (method denials by the proxy's IPv6 listener, the intruder dropped).
func TestPrivilegedScenarioGRPCDualStack(t *testing.T) {
	runScenario(t, dualStackScenario(t, "grpc-dualstack", 10))
}

// TestPrivilegedScenarioKafkaDualStack: Cilium's Kafka guide on dual-stack
// pods, every check over IPv4 and again over IPv6 (the IPv6 client talks
// to the broker's IPv6 address only: the broker advertises it).
func TestPrivilegedScenarioKafkaDualStack(t *testing.T) {
	runScenario(t, dualStackScenario(t, "kafka-dualstack", 11))
}

func TestPrivilegedScenarioMultiNamespaceCIDR(t *testing.T) {
	runScenario(t, scenarioByName(t, "multi-namespace-cidr"))
}

func TestPrivilegedScenarioKafka(t *testing.T) { runScenario(t, scenarioByName(t, "kafka")) }

// Audit mode per policy (l7gate.io/audit): denied L3/L4 peers, HTTP paths,
// ingressDeny, gRPC methods and Kafka topics forwarded and recorded as
// audit with the policy; the annotation removed, enforced again.
func TestPrivilegedScenarioAudit(t *testing.T) { runScenario(t, scenarioByName(t, "audit")) }

func TestPrivilegedScenarioAuditGRPC(t *testing.T) { runScenario(t, scenarioByName(t, "audit-grpc")) }

func TestPrivilegedScenarioAuditKafka(t *testing.T) { runScenario(t, scenarioByName(t, "audit-kafka")) }

func TestPrivilegedScenarioAuditNamespace(t *testing.T) {
	runScenario(t, scenarioByName(t, "audit-namespace"))
}

func TestPrivilegedScenarioL3LiftsL7(t *testing.T) { runScenario(t, scenarioByName(t, "l3-lifts-l7")) }

func TestPrivilegedScenarioNodeProbes(t *testing.T) { runScenario(t, scenarioByName(t, "node-probes")) }

func TestPrivilegedScenarioServices(t *testing.T) { runScenario(t, scenarioByName(t, "services")) }

// TestPrivilegedScenarioDNS: rules.dns and toFQDNs end to end (the DNS
// proxy in the Go proxy, the answer held until the agent's datapath has
// the address).
func TestPrivilegedScenarioDNS(t *testing.T) { runScenario(t, scenarioByName(t, "dns")) }

// TestPrivilegedScenarioDNSDualStack: rules.dns and toFQDNs on dual-stack
// pods. DNS over IPv6 reaches the DNS proxy's [::1] sockets (UDP and TCP;
// before them it was dropped no-listener) and is decided like DNS over
// IPv4; an AAAA answer admits the name's IPv6 address, not its IPv4 one.
// After the policy step, the real dig asks over IPv6, UDP and TCP, from
// the app's namespace: the allowed name is answered by the server through
// the proxy, the denied one REFUSED.
func TestPrivilegedScenarioDNSDualStack(t *testing.T) {
	if _, err := exec.LookPath("dig"); err != nil {
		t.Fatal("dig is required (hack/install-deps.sh installs bind9-dnsutils)")
	}
	runScenarioAfter(t, scenarioByName(t, "dns-dualstack"), func(ctx context.Context, step int, topo *Topology) error {
		if step != 1 {
			return nil
		}
		app := topo.Host("default/app").NS
		for _, tcp := range []bool{false, true} {
			for _, q := range []struct{ name, status, answer string }{
				{"api.example.test", "status: NOERROR", "2001:db8:131::10"},
				{"www.other.test", "status: REFUSED", ""},
			} {
				args := []string{"netns", "exec", app, "dig", "-6", "@2001:db8:31::53", q.name, "AAAA", "+tries=2", "+time=2"}
				if tcp {
					args = append(args, "+tcp")
				}
				out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
				if err != nil || !strings.Contains(string(out), q.status) || !strings.Contains(string(out), q.answer) {
					t.Errorf("dig over IPv6 (tcp=%v) %s: %v, want %s %s:\n%s", tcp, q.name, err, q.status, q.answer, out)
				}
			}
		}
		return nil
	})
}

func TestPrivilegedScenarioEgressIngressChain(t *testing.T) {
	runScenario(t, scenarioByName(t, "egress-ingress-chain"))
}

// TestPrivilegedScenarioInterrupted cancels a run part way (as Ctrl-C
// does) and checks that everything is removed all the same.
func TestPrivilegedScenarioInterrupted(t *testing.T) {
	bin := needAgent(t)
	cmd, env := testServerCommand(t)
	for _, after := range []time.Duration{300 * time.Millisecond, 2500 * time.Millisecond} {
		t.Run(after.String(), func(t *testing.T) {
			before := rootLinks(t)
			ctx, cancel := context.WithTimeout(context.Background(), after)
			defer cancel()
			var out strings.Builder
			start := time.Now()
			sum, err := Run(ctx, Config{
				Scenario: scenarioByName(t, BuiltinName), Executable: bin, ServerCommand: cmd, ServerEnv: env,
				TempDir: t.TempDir(), Out: &out,
			})
			t.Logf("returned after %s: %v", time.Since(start).Round(time.Millisecond), err)
			if err == nil {
				t.Fatalf("no error from an interrupted run:\n%s", out.String())
			}
			if time.Since(start) > after+20*time.Second {
				t.Errorf("cleanup took %s", time.Since(start)-after)
			}
			assertGone(t, sum.Prefix, sum.WorkDir, []string{filepath.Join(sum.WorkDir, "bpffs")}, before)
		})
	}
}

// TestPrivilegedCheckByNameFromNode: a check by name from the node asks the
// scenario's DNS server from the node's namespace and sends to the answered
// address (before, it went straight to the zone's host without a query: its
// detail had no "NAME → ADDRESS").
func TestPrivilegedCheckByNameFromNode(t *testing.T) {
	runScenarioAfter(t, scenarioByName(t, "dns"), func(ctx context.Context, step int, topo *Topology) error {
		if step != 0 {
			return nil
		}
		c := Check{
			From: NodeHost, To: "external:api", Port: 80, HTTP: &HTTPRequest{Method: "GET", Path: "/"},
			Name: "api.example.test.", ResolvedBy: "kube-system/coredns", Expect: Allowed,
		}
		obs := topo.Send(ctx, c, DefaultProbeOptions())
		if obs.Verdict != Allowed || !strings.HasPrefix(obs.Detail, "api.example.test → 198.19.30.10: ") {
			t.Errorf("from node by name: %s %q, want allowed after resolving api.example.test → 198.19.30.10", obs.Verdict, obs.Detail)
		}
		return nil
	})
}
