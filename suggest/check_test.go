package suggest

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/l7gate/l7gate/policy"
)

func loadPolicies(t *testing.T, paths ...string) []policy.Policy {
	t.Helper()
	objs, errs := policy.Load(paths...)
	if len(errs) > 0 {
		t.Fatalf("load policies: %v", errs)
	}
	return objs.Policies
}

// TestCheckDiff: --diff against the scenarios' own policies lists exactly
// the observed flows those policies deny, with the rule that decides.
func TestCheckDiff(t *testing.T) {
	tests := []struct {
		scenario, policy string
		want             []string // Denial.String() prefixes, in order
	}{
		// The Star Wars L7 policy: only POST /v1/request-landing from
		// empire ships. The recorded GETs and everything from the xwing
		// (whose connections it drops at L3/L4) would be denied.
		{"starwars", "l7.yaml", []string{
			"ingress default/tiefighter → default/deathstar TCP/80 HTTP GET /v1/ships/0a1b2c3d-4e5f-4a6b-8c7d-9e8f7a6b5c4d/status (1 flow): default-deny default/rule1 (CiliumNetworkPolicy spec.ingress[0])",
			"ingress default/tiefighter → default/deathstar TCP/80 HTTP GET /v1/ships/1337 (1 flow): default-deny default/rule1",
			"ingress default/tiefighter → default/deathstar TCP/80 HTTP GET /v1/ships/3f2b8c1e-9d4a-4e2b-8f3c-1a2b3c4d5e6f/status (1 flow)",
			"ingress default/tiefighter → default/deathstar TCP/80 HTTP GET /v1/ships/42 (1 flow)",
			"ingress default/tiefighter → default/deathstar TCP/80 HTTP GET /v1/ships/7 (1 flow)",
			"ingress default/xwing → default/deathstar TCP/80 (1 flow): default-deny default/rule1 (CiliumNetworkPolicy spec.ingress)",
			"ingress default/xwing → default/deathstar TCP/80 HTTP GET /v1/ships/9 (1 flow): default-deny default/rule1 (CiliumNetworkPolicy spec.ingress)",
			"ingress default/xwing → default/deathstar TCP/80 HTTP POST /v1/request-landing (1 flow): default-deny default/rule1 (CiliumNetworkPolicy spec.ingress)",
		}},
		// The Kafka guide's policy allowed every request the recording
		// saw let through: nothing new is denied.
		{"kafka", "kafka-security.yaml", nil},
		// The gRPC policy keeps the intruder out; its connection of the
		// first step (no policy yet) would be denied.
		{"grpc", "grpc-methods.yaml", []string{
			"ingress shop/intruder → shop/backend TCP/50051 (1 flow): default-deny shop/backend-grpc (CiliumNetworkPolicy spec.ingress)",
		}},
	}
	for _, tc := range tests {
		t.Run(tc.scenario, func(t *testing.T) {
			objs, recs := loadScenario(t, tc.scenario)
			pols := loadPolicies(t, filepath.Join("testdata", tc.scenario, "policies", tc.policy))
			denials, _, err := Check(objs, pols, recs, Options{})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, d := range denials {
				got = append(got, d.String())
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %d denials, want %d:\n%s", len(got), len(tc.want), strings.Join(got, "\n"))
			}
			for i := range got {
				if !strings.HasPrefix(got[i], tc.want[i]) {
					t.Errorf("denial %d:\n got %s\nwant %s…", i, got[i], tc.want[i])
				}
			}
		})
	}
}

// TestCheckDeniesWhatSuggestionLeavesOut: the round trip is not vacuous —
// a suggestion made from part of the traffic (the tiefighter's only) denies
// the rest (the xwing's).
func TestCheckDeniesWhatSuggestionLeavesOut(t *testing.T) {
	objs, recs := loadScenario(t, "starwars")
	var tie = recs[:0:0]
	for _, r := range recs {
		if r.Source.Addr().String() != "198.18.1.12" {
			tie = append(tie, r)
		}
	}
	res, err := Suggest(objs, tie, Options{})
	if err != nil {
		t.Fatal(err)
	}
	dec, errs := policy.Decode("suggested.yaml", res.YAML())
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	denials, _, err := Check(objs, dec.Policies, recs, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range denials {
		got = append(got, d.Flow)
	}
	want := []string{
		"ingress default/xwing → default/deathstar TCP/80",
		"ingress default/xwing → default/deathstar TCP/80 HTTP GET /v1/ships/9",
		"ingress default/xwing → default/deathstar TCP/80 HTTP POST /v1/request-landing",
	}
	if !slices.Equal(got, want) {
		t.Errorf("denials:\n got %q\nwant %q", got, want)
	}
}

// TestRoundTripAudit: the suggestion applied in audit mode (annotated,
// as an operator rolls it out) audits none of the flows it came from; a
// suggestion from part of the flows, applied in audit mode, audits exactly
// what it leaves out (and denies nothing: the rules are in audit).
func TestRoundTripAudit(t *testing.T) {
	for _, sc := range scenarios {
		t.Run(sc, func(t *testing.T) {
			objs, recs := loadScenario(t, sc)
			res, err := Suggest(objs, recs, Options{})
			if err != nil {
				t.Fatal(err)
			}
			dec, errs := policy.Decode("suggested.yaml", annotateAudit(res.YAML()))
			if len(errs) > 0 {
				t.Fatal(errs)
			}
			for _, p := range dec.Policies {
				if !p.Audit {
					t.Fatalf("%s not in audit", p.Name())
				}
			}
			denials, st, err := Check(objs, dec.Policies, recs, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if st.Used == 0 {
				t.Fatal("nothing checked")
			}
			for _, d := range denials {
				t.Errorf("audited: %s", d)
			}
		})
	}
	objs, recs := loadScenario(t, "starwars")
	var tie = recs[:0:0]
	for _, r := range recs {
		if r.Source.Addr().String() != "198.18.1.12" {
			tie = append(tie, r)
		}
	}
	res, err := Suggest(objs, tie, Options{})
	if err != nil {
		t.Fatal(err)
	}
	dec, errs := policy.Decode("suggested.yaml", annotateAudit(res.YAML()))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	denials, _, err := Check(objs, dec.Policies, recs, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if len(denials) != 3 {
		t.Fatalf("want the 3 left-out flows audited, got %v", denials)
	}
	for _, d := range denials {
		if !d.Audit {
			t.Errorf("not audit: %s", d)
		}
	}
}

// annotateAudit adds the audit annotation to every suggested policy.
func annotateAudit(yaml []byte) []byte {
	return []byte(strings.ReplaceAll(string(yaml), "\nmetadata:\n", "\nmetadata:\n  annotations:\n    l7gate.io/audit: \"true\"\n"))
}
