package translate

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/netip"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/l7gate/l7gate/internal/testutil"
	"github.com/l7gate/l7gate/policy"
	l7gatev1 "github.com/l7gate/l7gate/proto/l7gatev1"
	"github.com/l7gate/l7gate/xds"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"
)

// goldenInputs are the policy package's own golden inputs.
func goldenInputs(t *testing.T) []string {
	t.Helper()
	in, err := filepath.Glob("../../policy/testdata/in/*")
	if err != nil || len(in) == 0 {
		t.Fatalf("no golden inputs: %v", err)
	}
	return in
}

// inputFor loads a golden input; every endpoint is local and each needed
// listener gets a port from 10000 up, in RequiredListeners order.
func inputFor(t *testing.T, path string) Input {
	t.Helper()
	objs, _ := policy.Load(path) // invalid objects are reported and skipped by policy
	snap, err := policy.Compute(objs, policy.NewIdentityAllocator())
	if err != nil {
		t.Fatalf("compute: %v", err)
	}
	in := Input{Node: "node-1", Snapshot: snap, LocalEndpoints: snap.Endpoints}
	for i, l := range RequiredListeners(snap, snap.Endpoints) {
		l.ProxyPort = uint16(10000 + i)
		in.Listeners = append(in.Listeners, l)
	}
	return in
}

func render(t *testing.T, r *Resources) []byte {
	t.Helper()
	doc := map[string][]json.RawMessage{}
	add := func(key string, m proto.Message) {
		b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		doc[key] = append(doc[key], b)
	}
	for _, m := range r.Listeners {
		add("listeners", m)
	}
	for _, m := range r.Policies {
		add("policies", m)
	}
	for _, m := range r.Identities {
		add("identities", m)
	}
	j, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	// protojson varies its whitespace on purpose; YAML from the parsed
	// JSON is stable (keys sorted).
	y, err := yaml.JSONToYAML(j)
	if err != nil {
		t.Fatal(err)
	}
	return y
}

// TestGolden translates every policy golden input and compares the
// resources to testdata/out/<name>.yaml. Run with -update to rewrite.
func TestGolden(t *testing.T) {
	for _, path := range goldenInputs(t) {
		name := strings.TrimSuffix(filepath.Base(path), filepath.Ext(path))
		t.Run(name, func(t *testing.T) {
			res, err := L7Proxy(inputFor(t, path))
			if err != nil {
				t.Fatal(err)
			}
			got := render(t, res)
			out := filepath.Join("testdata", "out", name+".yaml")
			testutil.Golden(t, out, got)
		})
	}
}

func firstDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := 0; i < len(al) || i < len(bl); i++ {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			return "- " + x + "\n+ " + y
		}
	}
	return ""
}

// TestDeterministic: the same policy computed twice, with local endpoints
// in another order, gives byte-identical resources.
func TestDeterministic(t *testing.T) {
	for _, path := range goldenInputs(t) {
		a, b := inputFor(t, path), inputFor(t, path)
		slices.Reverse(b.LocalEndpoints)
		slices.Reverse(b.Listeners)
		ra, err := L7Proxy(a)
		if err != nil {
			t.Fatal(err)
		}
		rb, err := L7Proxy(b)
		if err != nil {
			t.Fatal(err)
		}
		ta, tb := ra.ByType(), rb.ByType()
		for typ := range ta {
			if len(ta[typ]) != len(tb[typ]) {
				t.Fatalf("%s: %s: %d vs %d resources", path, typ, len(ta[typ]), len(tb[typ]))
			}
			for i := range ta[typ] {
				x, _ := proto.MarshalOptions{Deterministic: true}.Marshal(ta[typ][i])
				y, _ := proto.MarshalOptions{Deterministic: true}.Marshal(tb[typ][i])
				if !bytes.Equal(x, y) {
					t.Errorf("%s: %s[%d] differs between runs", path, typ, i)
				}
			}
		}
	}
}

// TestRoundTrip: IR → proto → IR gives back the IR for every golden
// input, and the rebuilt rule sets compile into HTTP matchers.
func TestRoundTrip(t *testing.T) {
	for _, path := range goldenInputs(t) {
		in := inputFor(t, path)
		res, err := L7Proxy(in)
		if err != nil {
			t.Fatal(err)
		}
		byName := map[string]policy.Endpoint{}
		for _, ep := range in.LocalEndpoints {
			if len(ep.IPs) > 0 {
				byName[ep.IPs[0].String()] = ep
			}
		}
		if len(res.Policies) != len(byName) {
			t.Errorf("%s: %d policies for %d endpoints", path, len(res.Policies), len(byName))
		}
		for _, np := range res.Policies {
			// through the wire format, as the proxy receives it
			wire, err := proto.Marshal(np)
			if err != nil {
				t.Fatal(err)
			}
			var got l7gatev1.NetworkPolicy
			if err := proto.Unmarshal(wire, &got); err != nil {
				t.Fatal(err)
			}
			ep, pol, err := xds.PolicyFromProto(&got)
			if err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			want := byName[np.Name]
			if ep.Namespace != want.Namespace || ep.Name != want.Name || ep.Identity != want.Identity || !slices.Equal(ep.IPs, want.IPs) {
				t.Errorf("%s: endpoint %+v, want %+v", path, ep, want)
			}
			wantPol := in.Snapshot.Policy(want.Identity)
			if !reflect.DeepEqual(pol, wantPol) {
				a, _ := json.MarshalIndent(wantPol, "", " ")
				b, _ := json.MarshalIndent(pol, "", " ")
				t.Errorf("%s: %s: policy differs after round trip:\n%s", path, np.Name, firstDiff(string(a), string(b)))
			}
			for _, d := range []policy.Direction{policy.Ingress, policy.Egress} {
				for i := range pol.Direction(d).L7 {
					if _, err := pol.Direction(d).L7[i].HTTPMatcher(); err != nil {
						t.Errorf("%s: HTTPMatcher: %v", path, err)
					}
				}
			}
		}
		var cache []policy.IPCacheEntry
		for _, m := range res.Identities {
			info, entries, err := xds.MembershipFromProto(m)
			if err != nil {
				t.Fatal(err)
			}
			if len(info.Labels) > 0 && !slices.Equal(info.Labels, in.Snapshot.Labels(info.ID).Strings()) {
				t.Errorf("%s: identity %d labels %v, want %v", path, info.ID, info.Labels, in.Snapshot.Labels(info.ID).Strings())
			}
			cache = append(cache, entries...)
		}
		wantCache := slices.Clone(in.Snapshot.IPCache)
		sortCache := func(c []policy.IPCacheEntry) {
			slices.SortFunc(c, func(a, b policy.IPCacheEntry) int { return comparePrefix(a.Prefix, b.Prefix) })
		}
		sortCache(cache)
		sortCache(wantCache)
		if !reflect.DeepEqual(cache, wantCache) {
			t.Errorf("%s: ipcache after round trip %v, want %v", path, cache, wantCache)
		}
		for _, l := range res.Listeners {
			spec, err := xds.ListenerFromProto(l)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Contains(in.Listeners, spec) {
				t.Errorf("%s: listener %+v not in input", path, spec)
			}
		}
	}
}

// TestEvaluateAfterRoundTrip: the proxy's view decides like the agent's.
func TestEvaluateAfterRoundTrip(t *testing.T) {
	in := inputFor(t, "../../policy/testdata/in/l7.yaml")
	res, err := L7Proxy(in)
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, np := range res.Policies {
		_, pol, err := xds.PolicyFromProto(np)
		if err != nil {
			t.Fatal(err)
		}
		orig := in.Snapshot.Policy(policy.Identity(np.EndpointIdentity))
		for i, rs := range pol.Ingress.L7 {
			o := orig.Ingress.L7[i]
			for _, peer := range []policy.Identity{256, 257, 258, 259, 2} {
				switch rs.Parser {
				case "http":
					for _, req := range []policy.HTTPRequest{
						{Method: "GET", Path: "/api/v1/items/7"},
						{Method: "POST", Path: "/api/v1/items", Host: "shop.example.com"},
						{Method: "GET", Path: "/healthz", Headers: []policy.HTTPHeader{{Name: "X-Probe", Value: "true"}, {Name: "X-Trace", Value: "1"}}},
						{Method: "DELETE", Path: "/x"},
					} {
						a, err1 := o.EvaluateHTTP(peer, &req)
						b, err2 := rs.EvaluateHTTP(peer, &req)
						if err1 != nil || err2 != nil || !reflect.DeepEqual(a, b) {
							t.Errorf("http %v %v: agent %+v, proxy %+v (%v %v)", peer, req, a, b, err1, err2)
						}
						checked++
					}
				case "kafka":
					for _, req := range []policy.KafkaRequest{
						{APIKey: policy.KafkaProduce, Topics: []string{"orders"}},
						{APIKey: policy.KafkaFetch, Topics: []string{"orders", "secrets"}},
						{APIKey: policy.KafkaMetadata},
					} {
						a, b := o.EvaluateKafka(peer, &req), rs.EvaluateKafka(peer, &req)
						if !reflect.DeepEqual(a, b) {
							t.Errorf("kafka %v %v: agent %+v, proxy %+v", peer, req, a, b)
						}
						checked++
					}
				}
			}
		}
	}
	if checked == 0 {
		t.Fatal("no L7 rule sets in l7.yaml")
	}
}

func TestMissingListener(t *testing.T) {
	in := inputFor(t, "../../policy/testdata/in/l7.yaml")
	in.Listeners = in.Listeners[1:]
	if _, err := L7Proxy(in); !errors.Is(err, ErrMissingListener) {
		t.Fatalf("err = %v, want ErrMissingListener", err)
	}
}

// TestL3OnlyAllowThroughProxy: the Go proxy's view of an L7 rule set lifted
// by an L3-only allow (policy's l3-lifts-l7 input) lets the peer's
// non-matching request through and names the L3 rule, in both directions.
func TestL3OnlyAllowThroughProxy(t *testing.T) {
	in := inputFor(t, "../../policy/testdata/in/l3-lifts-l7.yaml")
	res, err := L7Proxy(in)
	if err != nil {
		t.Fatal(err)
	}
	byIP := map[string]*policy.EndpointPolicy{}
	for _, np := range res.Policies {
		wire, err := proto.Marshal(np)
		if err != nil {
			t.Fatal(err)
		}
		var got l7gatev1.NetworkPolicy
		if err := proto.Unmarshal(wire, &got); err != nil {
			t.Fatal(err)
		}
		_, pol, err := xds.PolicyFromProto(&got)
		if err != nil {
			t.Fatal(err)
		}
		byIP[np.Name] = pol
	}
	id := func(ip string) policy.Identity { return in.Snapshot.IdentityOf(netip.MustParseAddr(ip)) }
	req := &policy.HTTPRequest{Method: "DELETE", Path: "/private"}
	for _, tc := range []struct {
		endpoint string
		dir      policy.Direction
		peer     policy.Identity
		want     policy.Decision
		path     string
	}{
		{"198.18.0.1", policy.Ingress, id("198.18.0.2"), policy.DecisionAllowed, "spec.ingress[0]"}, // admin: L3-only allow
		{"198.18.0.1", policy.Ingress, id("198.18.0.3"), policy.DecisionDenied, "spec.ingress[1]"},  // friend: L7 rules
		{"198.18.0.4", policy.Egress, id("203.0.113.9"), policy.DecisionAllowed, "spec.egress[0]"},  // CIDR with an L3-only allow
		{"198.18.0.4", policy.Egress, id("198.51.100.9"), policy.DecisionDenied, "spec.egress[2]"},  // CIDR without
	} {
		pol := byIP[tc.endpoint]
		if pol == nil {
			t.Fatalf("no policy for %s", tc.endpoint)
		}
		rs := pol.Direction(tc.dir).L7Set(policy.ProtoTCP, 80)
		if rs == nil {
			t.Fatalf("%s %s: no rule set on port 80", tc.endpoint, tc.dir)
		}
		r, err := rs.EvaluateHTTP(tc.peer, req)
		if err != nil {
			t.Fatal(err)
		}
		if r.Decision != tc.want || len(r.DecidedBy) != 1 || r.DecidedBy[0].Path != tc.path {
			t.Errorf("%s %s peer %d: %s by %v, want %s by %s", tc.endpoint, tc.dir, tc.peer, r.Decision, r.DecidedBy, tc.want, tc.path)
		}
	}
}
