//go:build !l7gate_proxyonly

package main

import (
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"

	"github.com/l7gate/l7gate/deploy"
	"github.com/l7gate/l7gate/policy"
)

// TestChartCommandLines: every command line the Helm chart gives a
// container (its command and args, and its exec probes) is one this
// binary accepts: a known subcommand, known flags, none deprecated, and
// the enum flags' values ones the agent and proxy parse. A chart that
// drifted from the binary would crash-loop the DaemonSet or run on a
// default the operator did not choose.
func TestChartCommandLines(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values map[string]any
	}{
		{"defaults", nil},
		{"go proxy only", map[string]any{"envoy": map[string]any{"enabled": false}}},
		{"operator settings", map[string]any{
			"envoy":              map[string]any{"enabled": false},
			"allowLocalhost":     "policy",
			"httpEscapedSlashes": "unescape",
			"ackTimeout":         "45s",
			"serviceMap":         map[string]any{"enabled": true, "port": 9977},
			"policyAuditMode":    true,
			"agent":              map[string]any{"extraArgs": []any{"--kube-api-qps=50", "--kube-api-burst=100"}},
			"proxy":              map[string]any{"extraArgs": []any{"--kafka-topic-ids", "--http-max-header-bytes=32768"}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := deploy.Render(deploy.Chart(), deploy.Options{Values: tc.values})
			if err != nil {
				t.Fatal(err)
			}
			lines := chartCommandLines(t, out)
			if len(lines) == 0 {
				t.Fatal("no l7gate command line in the chart's DaemonSet")
			}
			for where, argv := range lines {
				checkCommandLine(t, where, argv)
			}
			// The Go proxy runs from the proxy-only build the image ships
			// beside l7gate, and so do its hooks and probes that run the
			// proxy command.
			for where, argv := range lines {
				if (where == "proxy" || strings.HasPrefix(where, "proxy ")) && argv[1] == "proxy" && argv[0] != "l7gate-proxy" {
					t.Errorf("%s runs %s, want l7gate-proxy (the proxy-only build): %q", where, argv[0], argv)
				}
			}
			if _, ok := lines["proxy"]; !ok {
				t.Errorf("no proxy container command line")
			}
			if tc.name == "operator settings" {
				agent := strings.Join(lines["agent"][1:], " ")
				proxy := strings.Join(lines["proxy"][1:], " ")
				for _, want := range []string{"--allow-localhost=policy", "--http-escaped-slashes=unescape", "--ack-timeout=45s", "--kube-api-qps=50", "--service-map-address=127.0.0.1:9977", "--policy-audit-mode=true"} {
					if !strings.Contains(agent, want) {
						t.Errorf("agent command line lacks %s: %s", want, agent)
					}
				}
				for _, want := range []string{"--http-escaped-slashes=unescape", "--kafka-topic-ids", "--http-max-header-bytes=32768"} {
					if !strings.Contains(proxy, want) {
						t.Errorf("proxy command line lacks %s: %s", want, proxy)
					}
				}
			}
		})
	}
}

// chartCommandLines returns the l7gate and l7gate-proxy command lines
// (the binary first) of the rendered DaemonSet by where they run: "agent",
// "proxy", "agent startupProbe", "proxy preStop", ... ($(NODE_NAME) stands
// for the node).
func chartCommandLines(t *testing.T, manifests []byte) map[string][]string {
	t.Helper()
	type container struct {
		Name           string   `json:"name"`
		Command        []string `json:"command"`
		Args           []string `json:"args"`
		StartupProbe   *probe   `json:"startupProbe"`
		LivenessProbe  *probe   `json:"livenessProbe"`
		ReadinessProbe *probe   `json:"readinessProbe"`
		Lifecycle      *struct {
			PreStop *probe `json:"preStop"`
		} `json:"lifecycle"`
	}
	ours := func(argv []string) bool { return len(argv) > 0 && (argv[0] == "l7gate" || argv[0] == "l7gate-proxy") }
	lines := map[string][]string{}
	for _, doc := range strings.Split(string(manifests), "\n---\n") {
		var ds struct {
			Kind string `json:"kind"`
			Spec struct {
				Template struct {
					Spec struct {
						Containers []container `json:"containers"`
					} `json:"spec"`
				} `json:"template"`
			} `json:"spec"`
		}
		if err := yaml.Unmarshal([]byte(doc), &ds); err != nil {
			t.Fatalf("rendered chart: %v", err)
		}
		if ds.Kind != "DaemonSet" {
			continue
		}
		for _, c := range ds.Spec.Template.Spec.Containers {
			if !ours(c.Command) {
				continue // Envoy
			}
			lines[c.Name] = append(append([]string{}, c.Command...), c.Args...)
			hooks := map[string]*probe{"startupProbe": c.StartupProbe, "livenessProbe": c.LivenessProbe, "readinessProbe": c.ReadinessProbe}
			if c.Lifecycle != nil {
				hooks["preStop"] = c.Lifecycle.PreStop
			}
			for kind, p := range hooks {
				if p != nil && p.Exec != nil && ours(p.Exec.Command) {
					lines[c.Name+" "+kind] = p.Exec.Command
				}
			}
		}
	}
	return lines
}

type probe struct {
	Exec *struct {
		Command []string `json:"command"`
	} `json:"exec"`
}

// proxyOnlyCommands are the commands of the proxy-only build
// (extra_proxyonly.go; TestProxyOnlyBuild checks its --help lists them):
// all an l7gate-proxy command line may use.
var proxyOnlyCommands = []string{"proxy", "version"}

// checkCommandLine parses argv (the binary first) with the real command
// tree; l7gate-proxy's only with the proxy-only build's commands.
func checkCommandLine(t *testing.T, where string, argv []string) {
	t.Helper()
	binary := argv[0]
	argv = append([]string{}, argv[1:]...)
	if binary == "l7gate-proxy" && (len(argv) == 0 || !slices.Contains(proxyOnlyCommands, argv[0])) {
		t.Errorf("%s: %q is no command of l7gate-proxy (the proxy-only build has %v)", where, argv, proxyOnlyCommands)
		return
	}
	for i, a := range argv {
		argv[i] = strings.ReplaceAll(a, "$(NODE_NAME)", "node1")
	}
	a := &app{stdout: io.Discard, stderr: io.Discard}
	root := a.rootCommand()
	cmd, rest, err := root.Find(argv)
	if err != nil || cmd == root {
		t.Errorf("%s: %q is no l7gate command: %v", where, argv, err)
		return
	}
	cmd.Flags().SetOutput(io.Discard) // deprecations are reported below
	if err := cmd.ParseFlags(rest); err != nil {
		t.Errorf("%s: l7gate %s: %v", where, strings.Join(argv, " "), err)
		return
	}
	cmd.Flags().Visit(func(f *pflag.Flag) {
		if f.Deprecated != "" {
			t.Errorf("%s: --%s is deprecated: %s", where, f.Name, f.Deprecated)
		}
		var err error
		switch f.Name {
		case "allow-localhost":
			_, err = policy.ParseLocalhostMode(f.Value.String())
		case "http-escaped-slashes":
			_, err = policy.ParseEscapedSlashAction(f.Value.String())
		}
		if err != nil {
			t.Errorf("%s: --%s=%s: %v", where, f.Name, f.Value, err)
		}
	})
}
