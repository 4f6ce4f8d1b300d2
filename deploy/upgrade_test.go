package deploy

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"testing/fstest"

	"sigs.k8s.io/yaml"
)

// The values file of the chart's first release (0.1.0, commit 26ffc0e):
// every value added since is missing from a release installed with it.
const firstValues = "testdata/values-0.1.0.yaml"

// reuseValuesChart is the chart as `helm upgrade --reuse-values` renders
// it: Helm replaces the new chart's values.yaml by the old release's
// values (action.Upgrade.reuseValues sets chart.Values to them), so a
// value the new chart added is simply absent.
func reuseValuesChart(t *testing.T, oldValues []byte) fs.FS {
	t.Helper()
	m := fstest.MapFS{}
	err := fs.WalkDir(Chart(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(Chart(), p)
		m[p] = &fstest.MapFile{Data: b}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	m["values.yaml"] = &fstest.MapFile{Data: oldValues}
	return m
}

// TestUpgradeReuseValuesFromFirstRelease: `helm upgrade --reuse-values`
// from a release made with the first chart's values renders, and renders
// what a fresh install with those values gives: every value added since
// (socketLB, metrics, otlp, allowLocalhost, ...) takes the chart's
// default.
func TestUpgradeReuseValuesFromFirstRelease(t *testing.T) {
	old, err := os.ReadFile(firstValues)
	if err != nil {
		t.Fatal(err)
	}
	var oldValues map[string]any
	if err := yaml.Unmarshal(old, &oldValues); err != nil {
		t.Fatal(err)
	}
	got, err := Render(reuseValuesChart(t, old), Options{})
	if err != nil {
		t.Fatalf("upgrade with --reuse-values from %s: %v", firstValues, err)
	}
	want, err := Render(Chart(), Options{Values: oldValues})
	if err != nil {
		t.Fatal(err)
	}
	if g, w := documents(t, got), documents(t, want); !reflect.DeepEqual(g, w) {
		gy, _ := yaml.Marshal(g)
		wy, _ := yaml.Marshal(w)
		t.Errorf("--reuse-values render differs from a fresh install with the same values:\n--- reuse\n%s\n--- fresh\n%s", gy, wy)
	}
}

// TestUpgradeReuseValuesEachNewValue: a release from any chart between the
// first and this one lacks some of the values added since; each of them
// missing alone (the whole top-level key) renders as the default does.
func TestUpgradeReuseValuesEachNewValue(t *testing.T) {
	var cur, first map[string]any
	for file, v := range map[string]*map[string]any{"helm/l7gate/values.yaml": &cur, firstValues: &first} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(b, v); err != nil {
			t.Fatal(err)
		}
	}
	want, err := Render(Chart(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	var added []string
	for k := range cur {
		if _, ok := first[k]; !ok {
			added = append(added, k)
		}
	}
	slices.Sort(added)
	if len(added) == 0 {
		t.Fatal("no value added since the first release: the test checks nothing")
	}
	for _, k := range added {
		t.Run(k, func(t *testing.T) {
			without := map[string]any{}
			for kk, v := range cur {
				if kk != k {
					without[kk] = v
				}
			}
			b, err := yaml.Marshal(without)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Render(reuseValuesChart(t, b), Options{})
			if err != nil {
				t.Fatalf("release without %s: %v", k, err)
			}
			if g, w := documents(t, got), documents(t, want); !reflect.DeepEqual(g, w) {
				gy, _ := yaml.Marshal(g)
				wy, _ := yaml.Marshal(w)
				t.Errorf("release without %s renders differently from the defaults:\n--- without\n%s\n--- default\n%s", k, gy, wy)
			}
		})
	}
}

// helmBinary is Helm from $HELM or hack/build-components.sh's cache, or "".
func helmBinary() string {
	if h := os.Getenv("HELM"); h != "" {
		return h
	}
	if m, _ := filepath.Glob("/var/cache/l7gate/helm-*/helm"); len(m) > 0 {
		slices.Sort(m)
		return m[len(m)-1]
	}
	if p, err := exec.LookPath("helm"); err == nil {
		return p
	}
	return ""
}

// TestHelmUpgradeReuseValuesFromFirstRelease: the same with Helm itself:
// `helm template` of the chart whose values.yaml is the first release's
// (what --reuse-values renders) equals `helm template -f` those values.
func TestHelmUpgradeReuseValuesFromFirstRelease(t *testing.T) {
	helm := helmBinary()
	if helm == "" {
		t.Skip("no helm binary ($HELM, /var/cache/l7gate/helm-*/helm or PATH; hack/build-components.sh helm builds it)")
	}
	dir := t.TempDir()
	if err := os.CopyFS(dir, Chart()); err != nil {
		t.Fatal(err)
	}
	old, err := os.ReadFile(firstValues)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "values.yaml"), old, 0o644); err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(firstValues)
	template := func(args ...string) []byte {
		t.Helper()
		out, err := exec.Command(helm, append([]string{"template", "l7gate", "--namespace", "kube-system", "--kube-version", "1.34.0"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("helm template %v: %v\n%s", args, err, out)
		}
		return out
	}
	got := template(dir)
	want := template("helm/l7gate", "-f", abs)
	if g, w := documents(t, got), documents(t, want); !reflect.DeepEqual(g, w) {
		gy, _ := yaml.Marshal(g)
		wy, _ := yaml.Marshal(w)
		t.Errorf("helm: --reuse-values render differs from a fresh install with the same values:\n--- reuse\n%s\n--- fresh\n%s", gy, wy)
	}
}
