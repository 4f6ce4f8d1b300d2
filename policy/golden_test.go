package policy

import (
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/out")

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
			var opts Options
			if b, err := os.ReadFile(filepath.Join("testdata", "fqdn", name+".yaml")); err == nil {
				var cache StaticFQDNCache
				if err := yaml.Unmarshal(b, &cache); err != nil {
					t.Fatal(err)
				}
				opts.FQDNCache = cache
			}
			snap, err := ComputeWith(objs, NewIdentityAllocator(), opts)
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
			snap2, _ := ComputeWith(objs2, NewIdentityAllocator(), opts)
			out.Snapshot = snap2
			again, _ := yaml.Marshal(out)
			if string(again) != string(got) {
				t.Fatal("output is not deterministic")
			}
			path := filepath.Join("testdata", "out", name+".yaml")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("read golden file (run go test ./policy -run TestGolden -update): %v", err)
			}
			if string(want) != string(got) {
				t.Errorf("%s differs from the computed output; diff with -update and review:\n%s", path, lineDiff(string(want), string(got)))
			}
		})
	}
}

// lineDiff shows the first differing lines.
func lineDiff(a, b string) string {
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
			return "line " + strconv.Itoa(i+1) + ":\n- " + x + "\n+ " + y
		}
	}
	return ""
}
