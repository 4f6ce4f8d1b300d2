package policy

import (
	"fmt"
	"slices"
	"strings"
)

// Operator of a selector requirement.
type Operator string

// Selector operators (Kubernetes label selector semantics).
const (
	OpIn           Operator = "In"
	OpNotIn        Operator = "NotIn"
	OpExists       Operator = "Exists"
	OpDoesNotExist Operator = "DoesNotExist"
)

// Requirement is one condition of a Selector.
type Requirement struct {
	Source   string
	Key      string
	Operator Operator
	Values   []string // sorted
}

// Selector is a conjunction of requirements over identity labels. The zero
// Selector (no requirements) matches every identity it is offered; callers
// decide which identities are in scope.
type Selector struct {
	Requirements []Requirement
}

// String is a canonical rendering, used as the selector-cache key.
func (s Selector) String() string {
	if len(s.Requirements) == 0 {
		return "{}"
	}
	parts := make([]string, len(s.Requirements))
	for i, r := range s.Requirements {
		k := r.Source + ":" + r.Key
		switch r.Operator {
		case OpIn:
			if len(r.Values) == 1 {
				parts[i] = k + "=" + r.Values[0]
			} else {
				parts[i] = k + " in (" + strings.Join(r.Values, ",") + ")"
			}
		case OpNotIn:
			parts[i] = k + " notin (" + strings.Join(r.Values, ",") + ")"
		case OpExists:
			parts[i] = k
		case OpDoesNotExist:
			parts[i] = "!" + k
		}
	}
	return strings.Join(parts, ",")
}

// Matches reports whether the labels satisfy every requirement.
func (s Selector) Matches(ls Labels) bool {
	for _, r := range s.Requirements {
		if !r.matches(ls) {
			return false
		}
	}
	return true
}

func (r Requirement) matches(ls Labels) bool {
	switch r.Operator {
	case OpIn:
		return ls.anyValue(r.Source, r.Key, func(v string) bool { return slices.Contains(r.Values, v) })
	case OpNotIn:
		return !ls.anyValue(r.Source, r.Key, func(v string) bool { return slices.Contains(r.Values, v) })
	case OpExists:
		_, ok := ls.get(r.Source, r.Key)
		return ok
	case OpDoesNotExist:
		_, ok := ls.get(r.Source, r.Key)
		return !ok
	}
	return false
}

// hasKey reports whether any requirement names key (from any source).
func (s Selector) hasKey(key string) bool {
	for _, r := range s.Requirements {
		if r.Key == key {
			return true
		}
	}
	return false
}

// hasSource reports whether any requirement names a key of this source.
func (s Selector) hasSource(source string) bool {
	for _, r := range s.Requirements {
		if r.Source == source {
			return true
		}
	}
	return false
}

// and returns a selector requiring both s and o.
func (s Selector) and(o Selector) Selector {
	out := Selector{Requirements: append(slices.Clip(slices.Clone(s.Requirements)), o.Requirements...)}
	out.normalize()
	return out
}

// withRequirement returns s plus one more requirement.
func (s Selector) withRequirement(r Requirement) Selector {
	return s.and(Selector{Requirements: []Requirement{r}})
}

func (s *Selector) normalize() {
	slices.SortFunc(s.Requirements, func(a, b Requirement) int {
		if c := strings.Compare(a.Key, b.Key); c != 0 {
			return c
		}
		if c := strings.Compare(a.Source, b.Source); c != 0 {
			return c
		}
		if c := strings.Compare(string(a.Operator), string(b.Operator)); c != 0 {
			return c
		}
		return slices.Compare(a.Values, b.Values)
	})
	s.Requirements = slices.CompactFunc(s.Requirements, func(a, b Requirement) bool {
		return a.Key == b.Key && a.Source == b.Source && a.Operator == b.Operator && slices.Equal(a.Values, b.Values)
	})
}

// LabelSelector is the wire form of a Kubernetes/Cilium label selector.
type LabelSelector struct {
	MatchLabels      map[string]string          `json:"matchLabels,omitempty"`
	MatchExpressions []LabelSelectorRequirement `json:"matchExpressions,omitempty"`
}

// LabelSelectorRequirement is the wire form of one matchExpressions entry.
type LabelSelectorRequirement struct {
	Key      string   `json:"key"`
	Operator string   `json:"operator"`
	Values   []string `json:"values,omitempty"`
}

// compileSelector validates a wire selector and turns it into a Selector.
// keyPrefix is prepended to every key (used for NetworkPolicy
// namespaceSelector, whose keys name namespace labels); defaultSource is the
// source of unprefixed keys.
func compileSelector(ls *LabelSelector, keyPrefix, defaultSource string, path fieldPath) (Selector, error) {
	var sel Selector
	if ls == nil {
		return sel, nil
	}
	keys := make([]string, 0, len(ls.MatchLabels))
	for k := range ls.MatchLabels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if err := validLabelKey(k); err != nil {
			return sel, path.child("matchLabels").key(k).errorf("%w", err)
		}
		src, key := splitKey(k, keyPrefix, defaultSource)
		sel.Requirements = append(sel.Requirements, Requirement{Source: src, Key: key, Operator: OpIn, Values: []string{ls.MatchLabels[k]}})
	}
	for i, e := range ls.MatchExpressions {
		p := path.child("matchExpressions").index(i)
		if e.Key == "" {
			return sel, p.child("key").errorf("must not be empty")
		}
		if err := validLabelKey(e.Key); err != nil {
			return sel, p.child("key").errorf("%w", err)
		}
		src, key := splitKey(e.Key, keyPrefix, defaultSource)
		op := Operator(e.Operator)
		vals := slices.Clone(e.Values)
		slices.Sort(vals)
		vals = slices.Compact(vals)
		switch op {
		case OpIn, OpNotIn:
			if len(vals) == 0 {
				return sel, p.child("values").errorf("operator %s needs at least one value", op)
			}
		case OpExists, OpDoesNotExist:
			if len(vals) != 0 {
				return sel, p.child("values").errorf("operator %s takes no values", op)
			}
		default:
			for _, known := range []Operator{OpIn, OpNotIn, OpExists, OpDoesNotExist} {
				if strings.EqualFold(e.Operator, string(known)) {
					return sel, p.child("operator").errorf("unknown operator %q: operators are case-sensitive, did you mean %s? (Cilium's CRD and Kubernetes reject %q too)", e.Operator, known, e.Operator)
				}
			}
			return sel, p.child("operator").errorf("unknown operator %q (want In, NotIn, Exists or DoesNotExist)", e.Operator)
		}
		sel.Requirements = append(sel.Requirements, Requirement{Source: src, Key: key, Operator: op, Values: vals})
	}
	sel.normalize()
	return sel, nil
}

func splitKey(k, keyPrefix, defaultSource string) (string, string) {
	src, key := parseLabelKey(k)
	if keyPrefix != "" {
		// namespace labels always come from Kubernetes
		return SourceK8s, keyPrefix + key
	}
	if src == SourceAny && !strings.HasPrefix(k, SourceAny+":") {
		src = defaultSource
	}
	return src, key
}

// namespaceRequirement selects endpoints of one namespace.
func namespaceRequirement(ns string) Requirement {
	return Requirement{Source: SourceK8s, Key: LabelPodNamespace, Operator: OpIn, Values: []string{ns}}
}

// String of a requirement for messages.
func (r Requirement) String() string {
	return fmt.Sprint(Selector{Requirements: []Requirement{r}})
}
