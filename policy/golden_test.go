package policy

import (
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/l7gate/l7gate/internal/testutil"
)

type goldenOutput struct {
	Errors   []string  `json:"errors,omitempty"`
	Warnings []string  `json:"warnings,omitempty"`
	Objects  []string  `json:"objects"`
	Snapshot *Snapshot `json:"snapshot"`
}

// TestGolden decodes every testdata/in file, computes the IR and compares
// it (with errors and warnings) to testdata/out/<name>.yaml. Run with
// -update to rewrite the expected files after an intended change.
func TestGolden(t *testing.T) {
	inputs, err := filepath.Glob("testdata/in/*")
	if err != nil {
		t.Fatal(err)
	}
	if len(inputs) == 0 {
		t.Fatal("no golden inputs")
	}
	for _, in := range inputs {
		name := strings.TrimSuffix(filepath.Base(in), filepath.Ext(in))
		t.Run(name, func(t *testing.T) {
			objs, errs := Load(in)
			out := goldenOutput{Objects: objs.Summaries}
			for _, e := range errs {
				out.Errors = append(out.Errors, e.Error())
			}
			for _, w := range objs.Warnings {
				out.Warnings = append(out.Warnings, w.String())
			}
			snap, err := Compute(objs, NewIdentityAllocator())
			if err != nil {
				t.Fatalf("compute: %v", err)
			}
			out.Snapshot = snap
			got, err := yaml.Marshal(out)
			if err != nil {
				t.Fatal(err)
			}
			// The same input must give the same bytes twice.
			objs2, _ := Load(in)
			snap2, _ := Compute(objs2, NewIdentityAllocator())
			out.Snapshot = snap2
			again, _ := yaml.Marshal(out)
			if string(again) != string(got) {
				t.Fatal("output is not deterministic")
			}
			path := filepath.Join("testdata", "out", name+".yaml")
			testutil.Golden(t, path, got)
		})
	}
}
