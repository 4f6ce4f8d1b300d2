// Package deploy holds l7gate's Kubernetes manifests: the Helm chart in
// helm/l7gate (CRDs in its crds/ directory, installed only when absent),
// the plain manifests Helm renders from it (l7gate.yaml, crds.yaml, written
// by `make manifests` with the helm binary), and Render, a small in-process
// renderer for that chart that tests use without Helm; TestRenderGolden
// checks it gives the same objects as Helm.
//
// The chart's templates use only what Render implements: .Values,
// .Release.Name, .Release.Namespace, .Chart.Name, .Chart.Version,
// .Chart.AppVersion, and the functions toYaml, indent, nindent, quote and
// default, with Helm's meaning. It imports nothing of l7gate.
package deploy

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"path"
	"slices"
	"strings"
	"text/template"

	"sigs.k8s.io/yaml"
)

//go:embed helm/l7gate
var chartFS embed.FS

// ChartDir is the chart's directory inside Chart().
const ChartDir = "helm/l7gate"

// Chart is the embedded chart (read-only).
func Chart() fs.FS {
	sub, err := fs.Sub(chartFS, ChartDir)
	if err != nil {
		panic(err) // the embed pattern guarantees the directory
	}
	return sub
}

// CRDs returns the chart's CustomResourceDefinitions as one YAML stream.
func CRDs() ([]byte, error) {
	return crds(Chart())
}

func crds(chart fs.FS) ([]byte, error) {
	names, err := fs.Glob(chart, "crds/*.yaml")
	if err != nil {
		return nil, fmt.Errorf("list crds: %w", err)
	}
	slices.Sort(names)
	var out bytes.Buffer
	for i, n := range names {
		b, err := fs.ReadFile(chart, n)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", n, err)
		}
		if i > 0 {
			out.WriteString("---\n")
		}
		out.Write(b)
	}
	return out.Bytes(), nil
}

// Options select what Render renders.
type Options struct {
	ReleaseName string // default l7gate
	Namespace   string // default kube-system
	// Values override the chart's values.yaml (merged like helm --set:
	// maps merge key by key, anything else replaces).
	Values map[string]any
}

// Render renders the chart's templates (not its CRDs) to one YAML stream,
// documents in template file order.
func Render(chart fs.FS, opts Options) ([]byte, error) {
	if opts.ReleaseName == "" {
		opts.ReleaseName = "l7gate"
	}
	if opts.Namespace == "" {
		opts.Namespace = "kube-system"
	}
	var values, meta map[string]any
	if err := readYAML(chart, "values.yaml", &values); err != nil {
		return nil, err
	}
	if err := readYAML(chart, "Chart.yaml", &meta); err != nil {
		return nil, err
	}
	values = mergeValues(values, opts.Values)
	data := map[string]any{
		"Values":  values,
		"Release": map[string]any{"Name": opts.ReleaseName, "Namespace": opts.Namespace, "Service": "Helm"},
		"Chart":   map[string]any{"Name": meta["name"], "Version": meta["version"], "AppVersion": meta["appVersion"]},
	}
	names, err := fs.Glob(chart, "templates/*.yaml")
	if err != nil {
		return nil, fmt.Errorf("list templates: %w", err)
	}
	slices.Sort(names)
	type rendered struct{ file, kind, doc string }
	var docs []rendered
	for _, n := range names {
		src, err := fs.ReadFile(chart, n)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", n, err)
		}
		t, err := template.New(path.Base(n)).Option("missingkey=error").Funcs(funcs()).Parse(string(src))
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", n, err)
		}
		var b bytes.Buffer
		if err := t.Execute(&b, data); err != nil {
			return nil, fmt.Errorf("render %s: %w", n, err)
		}
		for _, doc := range strings.Split(b.String(), "\n---\n") {
			if !hasContent(doc) {
				continue
			}
			docs = append(docs, rendered{n, kindOf(doc), strings.Trim(doc, "\n")})
		}
	}
	// Helm's install order: what others refer to comes first.
	slices.SortStableFunc(docs, func(a, b rendered) int { return installRank(a.kind) - installRank(b.kind) })
	var out bytes.Buffer
	for _, d := range docs {
		fmt.Fprintf(&out, "---\n# Source: l7gate/%s\n%s\n", d.file, d.doc)
	}
	return out.Bytes(), nil
}

func kindOf(doc string) string {
	for _, l := range strings.Split(doc, "\n") {
		if k, ok := strings.CutPrefix(l, "kind:"); ok {
			return strings.TrimSpace(k)
		}
	}
	return ""
}

// installRank orders kinds as Helm installs them (a subset of its list).
func installRank(kind string) int {
	order := []string{"Namespace", "ServiceAccount", "Secret", "ConfigMap", "ClusterRole", "ClusterRoleBinding",
		"Role", "RoleBinding", "Service", "DaemonSet", "Deployment"}
	if i := slices.Index(order, kind); i >= 0 {
		return i
	}
	return len(order)
}

// hasContent: a document with more than comments and blank lines.
func hasContent(doc string) bool {
	for _, l := range strings.Split(doc, "\n") {
		l = strings.TrimSpace(l)
		if l != "" && !strings.HasPrefix(l, "#") && l != "---" {
			return true
		}
	}
	return false
}

func readYAML(chart fs.FS, name string, v any) error {
	b, err := fs.ReadFile(chart, name)
	if err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		return fmt.Errorf("parse %s: %w", name, err)
	}
	return nil
}

func mergeValues(base, over map[string]any) map[string]any {
	out := maps.Clone(base)
	if out == nil {
		out = map[string]any{}
	}
	for k, v := range over {
		if bm, ok := out[k].(map[string]any); ok {
			if om, ok := v.(map[string]any); ok {
				out[k] = mergeValues(bm, om)
				continue
			}
		}
		out[k] = v
	}
	return out
}

// funcs are the Helm (Sprig) functions the chart uses, with Helm's
// semantics.
func funcs() template.FuncMap {
	indent := func(n int, s string) string {
		pad := strings.Repeat(" ", n)
		return pad + strings.ReplaceAll(s, "\n", "\n"+pad)
	}
	return template.FuncMap{
		"toYaml": func(v any) (string, error) {
			b, err := yaml.Marshal(v)
			if err != nil {
				return "", err
			}
			return strings.TrimSuffix(string(b), "\n"), nil
		},
		"indent":  indent,
		"nindent": func(n int, s string) string { return "\n" + indent(n, s) },
		"quote": func(vs ...any) string {
			var out []string
			for _, v := range vs {
				if v != nil {
					out = append(out, fmt.Sprintf("%q", fmt.Sprint(v)))
				}
			}
			return strings.Join(out, " ")
		},
		// dict and hasKey as Sprig's: dict "k" v ... builds a map,
		// hasKey reports whether a map has a key.
		"dict": func(kv ...any) map[string]any {
			m := map[string]any{}
			for i := 0; i+1 < len(kv); i += 2 {
				m[fmt.Sprint(kv[i])] = kv[i+1]
			}
			return m
		},
		"hasKey": func(m map[string]any, k string) bool {
			_, ok := m[k]
			return ok
		},
		"fail": func(msg string) (string, error) { return "", errors.New(msg) },
		"default": func(d any, given ...any) any {
			if len(given) == 0 || empty(given[0]) {
				return d
			}
			return given[0]
		},
	}
}

func empty(v any) bool {
	switch x := v.(type) {
	case nil:
		return true
	case string:
		return x == ""
	case bool:
		return !x
	case float64:
		return x == 0
	case int:
		return x == 0
	case map[string]any:
		return len(x) == 0
	case []any:
		return len(x) == 0
	}
	return false
}
