package suggest

import (
	"strconv"
	"strings"
	"testing"

	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/policy"
)

func suggestAndCheck(t *testing.T, objs *policy.Objects, recs []*flow.Record, opts Options, extra ...*flow.Record) (string, []Denial) {
	t.Helper()
	res, err := Suggest(objs, recs, opts)
	if err != nil {
		t.Fatal(err)
	}
	dec, errs := policy.Decode("suggested.yaml", res.YAML())
	if len(errs) > 0 {
		t.Fatalf("%v\n%s", errs, res.YAML())
	}
	denials, _, err := Check(objs, dec.Policies, append(recs, extra...), opts)
	if err != nil {
		t.Fatal(err)
	}
	return string(res.YAML()), denials
}

// TestPeersEntitiesAndAddresses: a reserved identity becomes an entity,
// any other address outside the pods a /32, a peer in another namespace
// carries its namespace; egress rules go to the sender's policy.
func TestPeersEntitiesAndAddresses(t *testing.T) {
	objs, errs := policy.Decode("rollout.yaml", []byte(rolloutObjects+`
---
apiVersion: v1
kind: Namespace
metadata: {name: ops}
---
apiVersion: v1
kind: Pod
metadata: {name: prober, namespace: ops, labels: {app: prober}}
status: {podIP: 198.18.9.20}
`))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	host := rec("198.18.255.254", "198.18.9.10", 8080, "", "")
	host.SrcIdentity = flow.IdentityHost
	world := rec("203.0.113.7", "198.18.9.10", 443, "", "")
	world.SrcIdentity = flow.IdentityWorld
	cross := rec("198.18.9.20", "198.18.9.10", 8080, "GET", "/healthz")
	out := rec("198.18.9.10", "192.0.2.1", 5432, "", "")
	out.Direction, out.DstIdentity = flow.Egress, flow.IdentityWorld
	y, denials := suggestAndCheck(t, objs, []*flow.Record{host, world, cross, out}, Options{Egress: true})
	for _, d := range denials {
		t.Errorf("would deny: %s", d)
	}
	for _, want := range []string{
		"  - fromEndpoints:\n    - matchLabels:\n        app: prober\n        \"k8s:io.kubernetes.pod.namespace\": ops\n",
		"  - fromEntities:\n    - host\n",
		"  - fromCIDR:\n    - \"203.0.113.7/32\"\n    toPorts:\n    - ports:\n      - port: \"443\"\n",
		"  egress:\n  # 192.0.2.1/32: 1 flow (1 connection)\n",
		"  - toCIDR:\n    - \"192.0.2.1/32\"\n",
	} {
		if !strings.Contains(y, want) {
			t.Errorf("lacks %q:\n%s", want, y)
		}
	}
	// and nothing wider: another address, another port, another path
	other := rec("203.0.113.8", "198.18.9.10", 443, "", "")
	port := rec("203.0.113.7", "198.18.9.10", 444, "", "")
	path := rec("198.18.9.20", "198.18.9.10", 8080, "GET", "/admin")
	_, denials = suggestAndCheck(t, objs, []*flow.Record{host, world, cross, out}, Options{Egress: true}, other, port, path)
	if len(denials) != 3 {
		t.Errorf("want the 3 unobserved flows denied, got %q", denials)
	}
}

// TestHostileRecordsNotWidened: a method or path holding regex syntax is
// matched literally: the suggestion from "G.T /v1/.*" does not allow
// GET /v1/anything; a method that is not an HTTP token makes no rule.
func TestHostileRecordsNotWidened(t *testing.T) {
	objs, errs := policy.Decode("rollout.yaml", []byte(rolloutObjects))
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	seen := []*flow.Record{
		rec("198.18.9.11", "198.18.9.10", 80, "G.T", "/v1/.*"),
		rec("198.18.9.11", "198.18.9.10", 80, "GE(T", "/x"),
		rec("198.18.9.11", "198.18.9.10", 80, "GET", "/y\n"),
	}
	y, denials := suggestAndCheck(t, objs, seen, Options{},
		rec("198.18.9.11", "198.18.9.10", 80, "GET", "/v1/anything"),
		rec("198.18.9.11", "198.18.9.10", 80, "GAT", "/v1/.*"))
	if len(denials) != 2 {
		t.Errorf("want GET /v1/anything and GAT /v1/.* denied, got %q\n%s", denials, y)
	}
	if strings.Contains(y, "GE(T") || strings.Contains(y, `/y`) {
		t.Errorf("invalid method or path made a rule:\n%s", y)
	}
	res, _ := Suggest(objs, seen, Options{})
	if res.Stats.Skipped["HTTP records with an invalid method"] != 1 || res.Stats.Skipped["HTTP records with an invalid path"] != 1 {
		t.Errorf("skipped: %v", res.Stats.Skipped)
	}
}

func TestKafkaRules(t *testing.T) {
	tests := []struct {
		name string
		seen map[string]map[int16]int
		want string
	}{
		{"produce", map[string]map[int16]int{"a": {policy.KafkaProduce: 2, policy.KafkaMetadata: 1}, "": {policy.KafkaAPIVersions: 3}},
			"role=produce topic=a n=6"},
		{"consume and produce on one topic", map[string]map[int16]int{"a": {policy.KafkaProduce: 1, policy.KafkaFetch: 1, policy.KafkaOffsetCommit: 1}},
			"role=produce topic=a n=1; role=consume topic=a n=2"},
		{"metadata only: no role", map[string]map[int16]int{"a": {policy.KafkaMetadata: 1}},
			"apiKey=metadata topic=a n=1"},
		{"topic-less keys no rule admits", map[string]map[int16]int{"a": {policy.KafkaProduce: 1}, "": {policy.KafkaFindCoordinator: 1, policy.KafkaAPIVersions: 1}},
			"role=produce topic=a n=2; apiKey=findcoordinator n=1"},
		{"other API", map[string]map[int16]int{"a": {19: 1}},
			"apiKey=createtopics topic=a n=1"},
	}
	for _, tc := range tests {
		var got []string
		for _, r := range kafkaRules(tc.seen) {
			s := "role=" + r.role
			if r.role == "" {
				s = "apiKey=" + policy.KafkaAPIName(r.apiKey)
			}
			if r.topic != "" {
				s += " topic=" + r.topic
			}
			got = append(got, s+" n="+strconv.Itoa(r.count))
		}
		if g := strings.Join(got, "; "); g != tc.want {
			t.Errorf("%s: got %s, want %s", tc.name, g, tc.want)
		}
	}
}
