package envoytranslate

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	"github.com/l7gate/l7gate/envoy"
	"github.com/l7gate/l7gate/internal/testutil"
	"github.com/l7gate/l7gate/policy"
)

// testConfig is the fixed proxy-port assignment of the golden files.
func testConfig() Config {
	return Config{
		ProxyPorts: []ProxyPort{
			{Direction: policy.Ingress, Parser: ParserHTTP, Port: 15001},
			{Direction: policy.Egress, Parser: ParserHTTP, Port: 15002},
			{Direction: policy.Ingress, Parser: "kafka", Port: 15003},
			{Direction: policy.Egress, Parser: "kafka", Port: 15004},
		},
		AccessLogCluster: "l7gate/accesslog",
		Node:             "node-a",
		IPv6:             true,
		// the datapath's from-proxy marks (bpf.ProxyMark(dir, 0); the agent
		// passes them)
		Marks: Marks{Ingress: 0xA00, Egress: 0xB00},
	}
}

func loadSnapshot(t *testing.T, path string) *policy.Snapshot {
	t.Helper()
	objs, _ := policy.Load(path) // invalid objects are part of some inputs
	snap, err := policy.Compute(objs, policy.NewIdentityAllocator())
	if err != nil {
		t.Fatalf("compute: %v", err)
	}
	return snap
}

// validateDeep runs ValidateAll on m and on every message packed in an Any
// inside it, which ValidateAll itself does not look into.
func validateDeep(m proto.Message) error {
	if v, ok := m.(validator); ok {
		if err := v.ValidateAll(); err != nil {
			return fmt.Errorf("%s: %w", m.ProtoReflect().Descriptor().FullName(), err)
		}
	}
	var errs []error
	var walk func(protoreflect.Message)
	walk = func(msg protoreflect.Message) {
		if a, ok := msg.Interface().(*anypb.Any); ok {
			inner, err := a.UnmarshalNew()
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", a.TypeUrl, err))
				return
			}
			errs = append(errs, validateDeep(inner))
			return
		}
		msg.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch {
			case fd.IsMap() && fd.MapValue().Message() != nil:
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool { walk(mv.Message()); return true })
			case fd.IsList() && fd.Message() != nil:
				for i := 0; i < v.List().Len(); i++ {
					walk(v.List().Get(i).Message())
				}
			case !fd.IsList() && !fd.IsMap() && fd.Message() != nil:
				walk(v.Message())
			}
			return true
		})
	}
	walk(m.ProtoReflect())
	return errors.Join(errs...)
}

// protoValue renders a message as plain JSON values for YAML output.
func protoValue(t *testing.T, m proto.Message) any {
	t.Helper()
	b, err := protojson.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func renderGolden(t *testing.T, res *Resources) []byte {
	t.Helper()
	out := map[string]any{}
	ls, rs, cs := []any{}, []any{}, []any{}
	for _, l := range res.Listeners {
		ls = append(ls, protoValue(t, l))
	}
	for _, r := range res.Routes {
		rs = append(rs, protoValue(t, r))
	}
	for _, c := range res.Clusters {
		cs = append(cs, protoValue(t, c))
	}
	out["listeners"], out["routes"], out["clusters"] = ls, rs, cs
	if len(res.Warnings) > 0 {
		out["warnings"] = res.Warnings
	}
	b, err := yaml.Marshal(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestGolden translates every policy golden input and compares the
// resources with testdata/out/<name>.yaml (-update rewrites them).
func TestGolden(t *testing.T) {
	// The policy package's inputs plus Envoy-specific ones of our own.
	inputs, err := filepath.Glob("../../policy/testdata/in/*")
	own, err2 := filepath.Glob("testdata/in/*.yaml")
	inputs = append(inputs, own...)
	if err != nil || err2 != nil || len(inputs) == 0 {
		t.Fatalf("no golden inputs: %v %v", err, err2)
	}
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), filepath.Ext(in))
		t.Run(name, func(t *testing.T) {
			res, err := Translate(loadSnapshot(t, in), testConfig())
			if err != nil {
				t.Fatalf("translate: %v", err)
			}
			var msgs []proto.Message
			for _, l := range res.Listeners {
				msgs = append(msgs, l)
			}
			for _, r := range res.Routes {
				msgs = append(msgs, r)
			}
			for _, c := range res.Clusters {
				msgs = append(msgs, c)
			}
			for _, m := range msgs {
				if err := validateDeep(m); err != nil {
					t.Errorf("invalid resource: %v", err)
				}
			}
			// go-control-plane accepts it: every listener's routes exist.
			xsnap, err := cachev3.NewSnapshot("1", res.ByType())
			if err != nil {
				t.Fatal(err)
			}
			if err := xsnap.Consistent(); err != nil {
				t.Errorf("snapshot not consistent: %v", err)
			}
			got := renderGolden(t, res)
			res2, _ := Translate(loadSnapshot(t, in), testConfig())
			if again := renderGolden(t, res2); string(again) != string(got) {
				t.Fatal("output is not deterministic")
			}
			path := filepath.Join("testdata", "out", name+".yaml")
			testutil.Golden(t, path, got)
		})
	}
}

// TestMarksRequired: the from-proxy marks come from the datapath (their
// one owner); a translation without them is refused, not defaulted.
func TestMarksRequired(t *testing.T) {
	cfg := testConfig()
	cfg.Marks = Marks{}
	if _, err := Translate(loadSnapshot(t, "../../policy/testdata/in/l7.yaml"), cfg); err == nil {
		t.Fatal("translated without from-proxy marks")
	}
}

func TestMissingProxyPort(t *testing.T) {
	snap := loadSnapshot(t, "../../policy/testdata/in/l7.yaml")
	_, err := Translate(snap, Config{Marks: testConfig().Marks})
	if !errors.Is(err, ErrNoProxyPort) {
		t.Fatalf("err = %v, want ErrNoProxyPort", err)
	}
}

func TestPolicyID(t *testing.T) {
	got := envoy.PolicyID(policy.Provenance{Policy: "shop/http-rules", PolicyKind: policy.KindCNP, Path: "spec.ingress[0]", L7: "http[1]"})
	if want := "cnp:shop/http-rules:spec.ingress[0].http[1]"; got != want {
		t.Fatalf("PolicyID = %q, want %q", got, want)
	}
}

// TestPeerChurnKeepsListeners: a peer pod coming (on another node) changes
// only the RouteConfiguration that names it; listeners stay identical, so
// Envoy drains nothing.
func TestPeerChurnKeepsListeners(t *testing.T) {
	base := `
apiVersion: v1
kind: Pod
metadata: {name: api, namespace: shop, labels: {app: api}}
spec: {nodeName: node-a}
status: {podIP: 198.18.6.1}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend-1, namespace: shop, labels: {app: frontend}}
spec: {nodeName: node-b}
status: {podIP: 198.18.6.2}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: http-rules, namespace: shop}
spec:
  endpointSelector:
    matchLabels: {app: api}
  ingress:
  - fromEndpoints: [{matchLabels: {app: frontend}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: /items}
`
	more := base + `---
apiVersion: v1
kind: Pod
metadata: {name: frontend-2, namespace: shop, labels: {app: frontend}}
spec: {nodeName: node-c}
status: {podIP: 198.18.6.3}
`
	translate := func(doc string) *Resources {
		path := filepath.Join(t.TempDir(), "in.yaml")
		if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		res, err := Translate(loadSnapshot(t, path), testConfig())
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	before, after := translate(base), translate(more)
	if len(before.Listeners) != 1 || len(after.Listeners) != 1 || !proto.Equal(before.Listeners[0], after.Listeners[0]) {
		t.Error("peer churn changed the listeners")
	}
	if len(before.Routes) != 1 || len(after.Routes) != 1 || proto.Equal(before.Routes[0], after.Routes[0]) {
		t.Error("peer churn did not reach the route configuration")
	}
}

// TestHCMPathNormalization: Envoy normalizes paths as the Go proxy does
// (RFC 3986, merged slashes, escaped slashes rejected unless configured).
func TestHCMPathNormalization(t *testing.T) {
	for _, tc := range []struct {
		set  policy.EscapedSlashAction
		want hcmv3.HttpConnectionManager_PathWithEscapedSlashesAction
	}{
		{"", hcmv3.HttpConnectionManager_REJECT_REQUEST},
		{policy.EscapedSlashesReject, hcmv3.HttpConnectionManager_REJECT_REQUEST},
		{policy.EscapedSlashesKeep, hcmv3.HttpConnectionManager_KEEP_UNCHANGED},
		{policy.EscapedSlashesUnescape, hcmv3.HttpConnectionManager_UNESCAPE_AND_FORWARD},
	} {
		cfg := testConfig()
		cfg.EscapedSlashes = tc.set
		res, err := Translate(loadSnapshot(t, "../../policy/testdata/in/l7.yaml"), cfg)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, l := range res.Listeners {
			for _, fc := range l.FilterChains {
				for _, f := range fc.Filters {
					var h hcmv3.HttpConnectionManager
					if f.GetTypedConfig().UnmarshalTo(&h) != nil {
						continue
					}
					n++
					if !h.GetNormalizePath().GetValue() || !h.MergeSlashes || h.PathWithEscapedSlashesAction != tc.want {
						t.Errorf("%q: filter chain %s: normalize_path %v, merge_slashes %v, escaped slashes %v; want true, true, %v",
							tc.set, fc.Name, h.GetNormalizePath(), h.MergeSlashes, h.PathWithEscapedSlashesAction, tc.want)
					}
				}
			}
		}
		if n == 0 {
			t.Fatal("no HTTP connection manager in the output")
		}
	}
}
