package policy

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
)

// Fallback says what l7gate enforces in place of an object that failed to
// decode. Invalid or unsupported input never widens access.
type Fallback string

// Fallbacks.
const (
	// FallbackNone: nothing stands in for the object (it cannot be
	// confined: its endpointSelector did not decode, or it is not a
	// policy).
	FallbackNone Fallback = ""
	// FallbackDefaultDeny: a new policy that failed to decode holds the
	// endpoints it selects in default-deny in the directions it names.
	FallbackDefaultDeny Fallback = "default-deny"
	// FallbackLastValid: the last valid version of the object stays in
	// force (Tracker).
	FallbackLastValid Fallback = "last-valid"
)

// InvalidObjectError is the error of an object that failed to decode,
// with what l7gate enforces in its place.
type InvalidObjectError struct {
	Err      error
	Fallback Fallback
	// Directions: for FallbackDefaultDeny, the directions held in
	// default-deny.
	Directions []Direction
	// Kept: for a file that no longer parses, the objects whose last valid
	// versions stay in force.
	Kept []ObjectRef
}

func (e *InvalidObjectError) Error() string {
	switch e.Fallback {
	case FallbackDefaultDeny:
		dirs := make([]string, len(e.Directions))
		for i, d := range e.Directions {
			dirs[i] = d.String()
		}
		if len(dirs) == 0 {
			return e.Err.Error() + "\n(not applied; it names no direction to hold in default-deny)"
		}
		return e.Err.Error() + "\n(not applied; until it is fixed, the endpoints it selects are held in default-deny (" + strings.Join(dirs, ", ") + "))"
	case FallbackLastValid:
		if len(e.Kept) > 0 {
			names := make([]string, len(e.Kept))
			for i, r := range e.Kept {
				names[i] = r.String()
			}
			return e.Err.Error() + "\n(the last valid versions of the objects it held stay in force: " + strings.Join(names, ", ") + ")"
		}
		return e.Err.Error() + "\n(not applied; the last valid version stays in force)"
	}
	return e.Err.Error()
}

func (e *InvalidObjectError) Unwrap() error { return e.Err }

// FallbackOf returns what is enforced in place of the object an error is
// about (FallbackNone when the error says nothing of it).
func FallbackOf(err error) Fallback {
	for err != nil {
		if ie, ok := err.(*InvalidObjectError); ok {
			return ie.Fallback
		}
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return FallbackNone
		}
		err = u.Unwrap()
	}
	return FallbackNone
}

// failClosed builds the stand-in of a policy object m that failed to
// decode: for every rule whose endpointSelector (podSelector for a
// NetworkPolicy) decodes, a rule that holds the endpoints it selects in
// default-deny in the directions the rule names (ingress/ingressDeny,
// egress/egressDeny; a NetworkPolicy's policyTypes or their default), and
// allows nothing. enableDefaultDeny, when it decodes, is honoured: a rule
// that only adds allows (enableDefaultDeny false) holds nothing. It
// returns nil when no rule can be confined.
func failClosed(kind PolicyKind, ref ObjectRef, m map[string]any) *Policy {
	p := &Policy{Ref: ref, Kind: kind, Invalid: "invalid"}
	yes := true
	spec, _ := m["spec"].(map[string]any)
	if kind == KindNP {
		if spec == nil {
			return nil
		}
		sel, ok := decodeSelector(spec["podSelector"], SourceK8s, true)
		if !ok {
			return nil
		}
		r := Rule{Path: "spec", Subject: sel.withRequirement(namespaceRequirement(ref.Namespace))}
		var types []string
		var d structDecoder
		d.decode("", spec["policyTypes"], reflect.ValueOf(&types).Elem())
		valid := len(d.errs) == 0 && len(types) > 0
		for _, t := range types {
			valid = valid && (t == "Ingress" || t == "Egress")
		}
		switch {
		case valid:
		case spec["policyTypes"] == nil: // the API server's default
			types = []string{"Ingress"}
			if spec["egress"] != nil {
				types = append(types, "Egress")
			}
		default: // policyTypes that do not decode: both
			types = []string{"Ingress", "Egress"}
		}
		for _, t := range types {
			if t == "Egress" {
				r.DefaultDeny[Egress] = &yes
			} else {
				r.DefaultDeny[Ingress] = &yes
			}
		}
		p.Rules = append(p.Rules, r)
		return p
	}
	var rules []map[string]any
	var paths []string
	if spec != nil {
		rules, paths = append(rules, spec), append(paths, "spec")
	}
	if specs, ok := m["specs"].([]any); ok {
		for i, s := range specs {
			if rm, ok := s.(map[string]any); ok {
				rules, paths = append(rules, rm), append(paths, fmt.Sprintf("specs[%d]", i))
			}
		}
	}
	for i, rm := range rules {
		if rm["nodeSelector"] != nil {
			continue // host policies are not enforced
		}
		sel, ok := decodeSelector(rm["endpointSelector"], SourceAny, false)
		if !ok {
			continue
		}
		if ref.Namespace != "" {
			sel = sel.withRequirement(namespaceRequirement(ref.Namespace))
		}
		r := Rule{Path: paths[i], Subject: sel}
		var dd wireDefaultDeny
		var d structDecoder
		d.decode("", rm["enableDefaultDeny"], reflect.ValueOf(&dd).Elem())
		explicit := [2]*bool{}
		if len(d.errs) == 0 {
			explicit = [2]*bool{dd.Ingress, dd.Egress}
		}
		named := [2]bool{rm["ingress"] != nil || rm["ingressDeny"] != nil, rm["egress"] != nil || rm["egressDeny"] != nil}
		held := false
		for _, dir := range []Direction{Ingress, Egress} {
			on := named[dir]
			if explicit[dir] != nil {
				on = *explicit[dir]
			}
			if on {
				r.DefaultDeny[dir] = &yes
				held = true
			}
		}
		if held {
			p.Rules = append(p.Rules, r)
		}
	}
	if len(p.Rules) == 0 {
		return nil
	}
	return p
}

// decodeSelector decodes and compiles a wire selector; a missing one is
// the empty selector only when allowEmpty.
func decodeSelector(v any, source string, allowEmpty bool) (Selector, bool) {
	if v == nil {
		return Selector{}, allowEmpty
	}
	var ls LabelSelector
	var d structDecoder
	d.decode("", v, reflect.ValueOf(&ls).Elem())
	if len(d.errs) > 0 {
		return Selector{}, false
	}
	sel, err := compileSelector(&ls, "", source, "")
	return sel, err == nil
}

// stubDirections lists the directions a fail-closed stand-in holds.
func (p *Policy) stubDirections() []Direction {
	var out []Direction
	for _, dir := range []Direction{Ingress, Egress} {
		if slices.ContainsFunc(p.Rules, func(r Rule) bool { return r.DefaultDeny[dir] != nil && *r.DefaultDeny[dir] }) {
			out = append(out, dir)
		}
	}
	return out
}
