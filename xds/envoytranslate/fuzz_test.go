package envoytranslate

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/l7gate/l7gate/policy"
)

// FuzzTranslate runs arbitrary policy YAML through decode, compute and
// translation: whatever policy accepts must translate into valid
// resources (or a named error), never a panic.
func FuzzTranslate(f *testing.F) {
	for _, glob := range []string{"../../policy/testdata/in/*", "testdata/in/*.yaml"} {
		files, _ := filepath.Glob(glob)
		for _, file := range files {
			if b, err := os.ReadFile(file); err == nil {
				f.Add(b)
			}
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, _ := policy.Decode("fuzz.yaml", data)
		snap, err := policy.Compute(objs, policy.NewIdentityAllocator())
		if err != nil {
			return
		}
		res, err := Translate(snap, testConfig())
		if err != nil {
			t.Fatalf("translate: %v", err)
		}
		for _, l := range res.Listeners {
			if err := validateDeep(l); err != nil {
				t.Fatal(err)
			}
		}
		for _, r := range res.Routes {
			if err := validateDeep(r); err != nil {
				t.Fatal(err)
			}
		}
	})
}
