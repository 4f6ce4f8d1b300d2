package layering

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/l7gate/l7gate/"

// allowed lists, for every package of the module, the module's packages
// it may import (directly; tests excluded). "*" allows any. A package
// missing here fails the test: place it in a layer (and in
// ARCHITECTURE.md) when you add it.
var allowed = map[string][]string{
	// Shared contracts: imported by both sides.
	"proto":          {},
	"proto/l7gatev1": {},
	// Hubble's flow/observer/relay protos (generated from Cilium's .proto).
	"proto/hubble/flowpb":     {},
	"proto/hubble/relaypb":    {},
	"proto/hubble/observerpb": {"proto/hubble/flowpb", "proto/hubble/relaypb"},
	"flow":                    {},
	"policy":                  {"flow"},
	"source":                  {"policy", "flow"},
	"xds":                     {"policy", "proto/l7gatev1", "flow"},
	"envoy":                   {"flow"},
	"agentapi":                {"policy", "flow", "source", "proto/hubble/observerpb", "agentapi/proxyapi"},
	// What the proxy-only build needs of agentapi and bpf, as leaves it
	// can link without them: the agent's FQDN client and ListenTCP; the
	// mark encoding.
	"agentapi/proxyapi": {},
	"bpf/marks":         {},
	"redirect":          {},
	// Accept loops' back-off on EMFILE and the like (proxy and agent).
	"internal/acceptretry": {},

	// Sources.
	"k8s": {"policy", "source", "flow", "deploy"},

	// Tools on the shared contracts: policy suggestions from flows.
	"suggest": {"policy", "flow"},

	// Translation, datapath, xDS serving (the control plane's middle).
	"bpf":                {"flow", "bpf/marks"},
	"bpftranslate":       {"bpf", "policy", "flow"},
	"xds/translate":      {"xds", "policy", "proto/l7gatev1", "flow"},
	"xds/envoytranslate": {"envoy", "policy", "flow"},
	"xds/server":         {"xds"},
	"envoy/bootstrap":    {"envoy", "flow"},
	"envoy/admin":        {"envoy", "flow", "proto/l7gatev1", "xds"},

	// The proxy side.
	"parsers/http":                     {"policy", "flow"},
	"parsers/kafka":                    {"policy", "flow"},
	"parsers/kafka/internal/schemagen": {},
	"parsers/dns":                      {"policy"},
	"proxy/dns":                        {"parsers/dns", "policy", "flow", "internal/acceptretry"},
	"xds/client":                       {"xds", "proto/l7gatev1", "flow"},
	"envoy/als":                        {"envoy", "flow"},
	"proxy":                            {"parsers/http", "parsers/kafka", "policy", "flow", "proto/l7gatev1", "redirect", "xds", "xds/client", "proxy/dns", "internal/acceptretry"},

	// The agent and its parts.
	"agent/endpoints":          {"bpftranslate", "policy", "flow"},
	"agent/node":               {"bpf"},
	"agent/supervisor":         {"agentapi"},
	"agent/internal/fakeenvoy": {},
	"agent": {"agent/endpoints", "agent/node", "agent/supervisor", "agentapi", "bpf", "bpftranslate", "envoy", "envoy/als",
		"envoy/bootstrap", "flow", "observe", "observe/hubble", "observe/metrics", "observe/otlp", "observe/servicemap", "policy", "redirect", "source", "xds",
		"xds/envoytranslate", "xds/server", "xds/translate", "internal/acceptretry"},

	// The agent's flow pipeline and the formats it speaks.
	"observe":         {"flow"},
	"observe/hubble":  {"flow", "observe", "proto/hubble/flowpb", "proto/hubble/observerpb", "proto/hubble/relaypb"},
	"observe/otlp":    {"flow", "observe"},
	"observe/metrics": {"flow", "observe", "observe/hubble"},
	// The live service map page (policy for its stable-label rule).
	"observe/servicemap": {"flow", "observe", "policy"},

	// Above the agent.
	"demo":                 {"agentapi", "bpf", "policy", "flow", "source", "internal/netns"},
	"deploy":               {},
	"proxy/conformance":    {}, // test-only: peer suites through the real node
	"e2e":                  {}, // test-only (build tag e2e): the suite on a real cluster
	"deploy/cmd/render":    {"deploy"},
	"internal/layering":    {},
	"internal/testutil":    {}, // test-only: golden files, the privileged-test rule
	"internal/browsertest": {}, // test-only: pages in headless chromium (chromedp)
	// The one network-namespace topology builder (node + hosts behind
	// veths): below bpf and demo, imports nothing of the module.
	"internal/netns":         {},
	"bench/cmd/l7gate-bench": {"*"},
	// make scale: the k8s source and status writer against a real API
	// server; nothing but bench/ and k8s/ may import it.
	"bench/scale": {"k8s", "policy", "source", "deploy"},
	// make soak: the real agent and proxy on a node in namespaces.
	"bench/soak": {"agentapi", "demo", "policy"},
	"cmd/l7gate": {"*"},
}

// controlPlane are the packages the proxy side must not import.
var controlPlane = []string{"agent", "agentapi", "bpf", "bpftranslate", "k8s", "source", "xds/translate", "xds/envoytranslate", "xds/server"}

var proxySide = []string{"proxy", "parsers/http", "parsers/kafka", "parsers/dns", "proxy/dns", "xds/client", "envoy", "envoy/als"}

// goList maps packages to the module's packages they import (field
// Imports) or depend on (Deps).
func goList(t *testing.T, field string, args ...string) map[string][]string {
	t.Helper()
	out, err := exec.Command("go", append([]string{"list", "-f", "{{.ImportPath}}:{{join ." + field + " \" \"}}"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	graph := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, imports, _ := strings.Cut(line, ":")
		var own []string
		for _, imp := range strings.Fields(imports) {
			if rel, ok := strings.CutPrefix(imp, module); ok {
				own = append(own, rel)
			}
		}
		graph[strings.TrimPrefix(pkg, module)] = own
	}
	return graph
}

// TestImportRules: every package imports only what its layer allows.
func TestImportRules(t *testing.T) {
	for pkg, imports := range goList(t, "Imports", module+"...") {
		allow, known := allowed[pkg]
		if !known {
			t.Errorf("package %s is not in the layering table: place it in a layer (layering_test.go, ARCHITECTURE.md)", pkg)
			continue
		}
		if slices.Contains(allow, "*") {
			continue
		}
		for _, imp := range imports {
			if !slices.Contains(allow, imp) {
				t.Errorf("%s imports %s, which its layer does not allow", pkg, imp)
			}
		}
	}
}

// TestNothingBelowTheAgentImportsIt: only the command (and the agent's
// own parts, through it) depends on the agent.
func TestNothingBelowTheAgentImportsIt(t *testing.T) {
	for pkg, deps := range goList(t, "Deps", module+"...") {
		if pkg == "cmd/l7gate" || pkg == "bench/cmd/l7gate-bench" || pkg == "agent" {
			continue
		}
		if slices.Contains(deps, "agent") {
			t.Errorf("%s depends on the agent", pkg)
		}
	}
}

// TestProxySideIndependent: the proxy side depends on nothing of the
// control plane, directly or not.
func TestProxySideIndependent(t *testing.T) {
	graph := goList(t, "Deps", module+"...")
	for _, pkg := range proxySide {
		for _, dep := range graph[pkg] {
			if slices.Contains(controlPlane, dep) || strings.HasPrefix(dep, "agent/") {
				t.Errorf("proxy-side package %s depends on control-plane package %s", pkg, dep)
			}
		}
	}
}

// TestSourceDepsSmall: a source (k8s) depends on the source contract and
// policy, not on the agent or what it composes.
func TestSourceDepsSmall(t *testing.T) {
	deps := goList(t, "Deps", module+"k8s")["k8s"]
	for _, dep := range deps {
		switch dep {
		case "policy", "source", "flow", "deploy":
		default:
			t.Errorf("k8s depends on %s", dep)
		}
	}
}
