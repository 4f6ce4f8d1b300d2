package policy

import (
	"fmt"
	"slices"
	"strings"
)

// Label sources, as Cilium spells them in "source:key=value".
const (
	SourceK8s      = "k8s"
	SourceAny      = "any"
	SourceReserved = "reserved"
	SourceCIDR     = "cidr"
	// SourceFQDN labels FQDN identities: fqdn:<selector> for every
	// toFQDNs selector that selects a name the address answered for.
	SourceFQDN = "fqdn"
)

// Well-known label keys that Cilium derives for every pod.
const (
	LabelPodNamespace     = "io.kubernetes.pod.namespace"
	LabelServiceAccount   = "io.cilium.k8s.policy.serviceaccount"
	LabelCluster          = "io.cilium.k8s.policy.cluster"
	LabelNamespacePrefix  = "io.cilium.k8s.namespace.labels."
	LabelNamespaceNameK8s = "kubernetes.io/metadata.name"
	defaultClusterName    = "default"
)

// Label is one security-relevant label of an identity.
type Label struct {
	Source string
	Key    string
	Value  string
}

// String renders the label as "source:key=value" (or "source:key" when the
// value is empty).
func (l Label) String() string {
	if l.Value == "" {
		return l.Source + ":" + l.Key
	}
	return l.Source + ":" + l.Key + "=" + l.Value
}

// Labels is a sorted, duplicate-free set of labels.
type Labels []Label

// NewLabels sorts and de-duplicates ls (by source and key; the last value wins).
func NewLabels(ls ...Label) Labels {
	out := slices.Clone(ls)
	slices.SortStableFunc(out, compareLabel)
	// keep the last of each (source, key)
	res := out[:0]
	for i, l := range out {
		if i+1 < len(out) && out[i+1].Source == l.Source && out[i+1].Key == l.Key {
			continue
		}
		res = append(res, l)
	}
	return Labels(res)
}

func compareLabel(a, b Label) int {
	if c := strings.Compare(a.Source, b.Source); c != 0 {
		return c
	}
	return strings.Compare(a.Key, b.Key)
}

// Key returns a canonical string for the whole set, usable as a map key.
func (ls Labels) Key() string {
	n := 0
	for _, l := range ls {
		n += len(l.Source) + len(l.Key) + len(l.Value) + 3
	}
	var b strings.Builder
	b.Grow(n)
	for i, l := range ls {
		if i > 0 {
			b.WriteByte(';')
		}
		// l.String(), without a string per label
		b.WriteString(l.Source)
		b.WriteByte(':')
		b.WriteString(l.Key)
		if l.Value != "" {
			b.WriteByte('=')
			b.WriteString(l.Value)
		}
	}
	return b.String()
}

// Strings renders every label as "source:key=value".
func (ls Labels) Strings() []string {
	out := make([]string, len(ls))
	for i, l := range ls {
		out[i] = l.String()
	}
	return out
}

// Has reports whether a label with this source (or any source when source is
// SourceAny) and key exists, and returns its value.
func (ls Labels) get(source, key string) (string, bool) {
	for _, l := range ls {
		if l.Key == key && (source == SourceAny || l.Source == source) {
			return l.Value, true
		}
	}
	return "", false
}

// values returns every value of key from matching sources.
func (ls Labels) anyValue(source, key string, pred func(string) bool) bool {
	for _, l := range ls {
		if l.Key == key && (source == SourceAny || l.Source == source) && pred(l.Value) {
			return true
		}
	}
	return false
}

// parseLabelKey splits "source:key" into its parts. A key without a known
// source prefix matches any source (Cilium's "any:"). Keys such as
// "app.kubernetes.io/name" contain no colon; a colon whose prefix is not a
// known source is part of the key.
func parseLabelKey(s string) (source, key string) {
	if i := strings.IndexByte(s, ':'); i > 0 {
		switch s[:i] {
		case SourceK8s, SourceAny, SourceReserved, SourceCIDR, SourceFQDN, "unspec", "container", "k8s-ns":
			src := s[:i]
			if src == "unspec" {
				src = SourceAny
			}
			return src, s[i+1:]
		}
	}
	return SourceAny, s
}

// ParseLabels parses "k=v,k2=v2" (each key may carry a source prefix; the
// default source is k8s) as the trace command's --src-labels takes them.
func ParseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, _ := strings.Cut(part, "=")
		k = strings.TrimSpace(k)
		if k == "" {
			return nil, fmt.Errorf("label %q: empty key", part)
		}
		if err := validLabelKey(k); err != nil {
			return nil, fmt.Errorf("label %q: %w", part, err)
		}
		out[k] = strings.TrimSpace(v)
	}
	return out, nil
}

// validLabelKey performs the light syntax check Kubernetes applies to label
// keys: an optional DNS prefix and a name of at most 63 characters.
func validLabelKey(k string) error {
	_, key := parseLabelKey(k)
	name := key
	if i := strings.LastIndexByte(key, '/'); i >= 0 {
		if i == 0 || len(key[:i]) > 253 {
			return fmt.Errorf("invalid label key prefix %q", key[:i])
		}
		name = key[i+1:]
	}
	if name == "" || len(name) > 63 {
		return fmt.Errorf("invalid label key %q: name must be 1-63 characters", k)
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("invalid label key %q: character %q not allowed", k, c)
		}
	}
	return nil
}

// identityExcludedLabel reports pod labels that Kubernetes controllers set
// per replica or per rollout; including them would give every pod of a
// Deployment its own identity. Mirrors Cilium's default label filter.
func identityExcludedLabel(key string) bool {
	switch key {
	case "pod-template-hash", "controller-revision-hash", "pod-template-generation",
		"statefulset.kubernetes.io/pod-name", "controller-uid", "job-name",
		"batch.kubernetes.io/controller-uid", "batch.kubernetes.io/job-name",
		"apps.kubernetes.io/pod-index", "statefulset.kubernetes.io/pod-index":
		return true
	}
	return false
}
