package suggest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/internal/testutil"
	"github.com/l7gate/l7gate/policy"
)

// The recorded scenarios: flows.jsonl is `l7gate observe -o json` of the
// demo's agent, proxy.log the Go proxy's access log (with its own log
// lines), objects.yaml the scenario's Pods and Namespaces (testdata/README.md).
var scenarios = []string{"starwars", "kafka", "grpc"}

func loadScenario(t *testing.T, name string) (*policy.Objects, []*flow.Record) {
	t.Helper()
	dir := filepath.Join("testdata", name)
	objs, errs := policy.Load(filepath.Join(dir, "objects.yaml"))
	if len(errs) > 0 {
		t.Fatalf("load objects: %v", errs)
	}
	var recs []*flow.Record
	for _, f := range []string{"flows.jsonl", "proxy.log"} {
		fh, err := os.Open(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		r := NewJSONLines(fh)
		got, err := ReadAll(r)
		fh.Close()
		if err != nil || r.Malformed > 0 {
			t.Fatalf("read %s: %v (malformed %d: %v)", f, err, r.Malformed, r.FirstError)
		}
		recs = append(recs, got...)
	}
	return objs, recs
}

func variants() []struct {
	name string
	opts Options
} {
	return []struct {
		name string
		opts Options
	}{
		{"ingress", Options{}},
		{"egress", Options{Egress: true}},
	}
}

func summary(res *Result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "read %d, used %d\n", res.Stats.Read, res.Stats.Used)
	for _, r := range res.Stats.Reasons() {
		fmt.Fprintf(&b, "skipped %s\n", r)
	}
	for _, w := range res.Warnings {
		fmt.Fprintf(&b, "warning: %s\n", w)
	}
	return b.String()
}

// TestGoldenSuggest: the policies suggested from the recorded scenarios.
func TestGoldenSuggest(t *testing.T) {
	for _, sc := range scenarios {
		objs, recs := loadScenario(t, sc)
		for _, v := range variants() {
			t.Run(sc+"/"+v.name, func(t *testing.T) {
				res, err := Suggest(objs, recs, v.opts)
				if err != nil {
					t.Fatal(err)
				}
				testutil.Golden(t, filepath.Join("testdata", sc, "suggested-"+v.name+".yaml"), res.YAML())
				testutil.Golden(t, filepath.Join("testdata", sc, "suggested-"+v.name+".txt"), []byte(summary(res)))
			})
		}
	}
}

// TestRoundTrip: the suggested policies, computed with policy.Compute and
// evaluated as policy trace does, deny none of the flows they came from.
func TestRoundTrip(t *testing.T) {
	for _, sc := range scenarios {
		objs, recs := loadScenario(t, sc)
		for _, v := range variants() {
			t.Run(sc+"/"+v.name, func(t *testing.T) {
				res, err := Suggest(objs, recs, v.opts)
				if err != nil {
					t.Fatal(err)
				}
				if len(res.Policies) == 0 {
					t.Fatal("no policy suggested")
				}
				dec, errs := policy.Decode("suggested.yaml", res.YAML())
				if len(errs) > 0 {
					t.Fatalf("suggested policies do not load: %v", errs)
				}
				if len(dec.Policies) != len(res.Policies) {
					t.Fatalf("decoded %d policies, suggested %d", len(dec.Policies), len(res.Policies))
				}
				denials, st, err := Check(objs, dec.Policies, recs, v.opts)
				if err != nil {
					t.Fatal(err)
				}
				if st.Used+st.Skipped["redirected to a proxy (checked through the proxy's records of the requests)"] != res.Stats.Used || st.Used == 0 {
					t.Fatalf("checked %d records, suggestion used %d", st.Used, res.Stats.Used)
				}
				for _, d := range denials {
					t.Errorf("would deny: %s", d)
				}
			})
		}
	}
}
