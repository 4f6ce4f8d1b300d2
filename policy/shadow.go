package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
)

// shadowRecord says that an allow without L7 rules (allow) gave its peers
// an allow-all L7 rule on a port where another rule's L7 rules (l7, the
// section's provenance) apply to the same peers.
type shadowRecord struct {
	allow, l7 Provenance
	proto     Protocol
	port      uint16
}

// ShadowWarnings lists every allow without L7 rules (an L3-only allow, or
// an L4 allow naming the port) that lifts the L7 rules of another rule for
// the same peers: those peers may send any request on that port (Cilium's
// semantics), which users rarely mean. Each warning names both rules.
//
// Two sources are combined: snap (what Compute found for the endpoints in
// the inputs; may be nil) and a static comparison of the policies that
// needs no pods (rules with the same endpointSelector whose peer fields
// overlap).
func ShadowWarnings(objs *Objects, snap *Snapshot) []Warning {
	recs := staticShadows(objs)
	if snap != nil {
		for r := range snap.shadows {
			recs = append(recs, r)
		}
	}
	seen := map[string]bool{}
	var out []Warning
	for _, r := range recs {
		pol := findPolicy(objs, r.allow)
		if pol == nil {
			continue
		}
		what := "L3-only allow"
		if s := findSection(pol, r.allow.Path); s != nil && s.Ports != nil {
			what = "allow without L7 rules on this port"
		}
		port := r.proto.String() + "/" + strconv.Itoa(int(r.port))
		if r.l7.L7 != "" { // static: a named port
			port = r.proto.String() + "/" + r.l7.L7
		}
		msg := fmt.Sprintf("%s lifts the L7 rules of %s %s (port %s) for the same peers: their requests are not checked against those rules",
			what, r.l7.Policy, r.l7.Path, port)
		w := Warning{Object: pol.Ref, Path: r.allow.Path, Message: msg}
		if k := w.String(); !seen[k] {
			seen[k] = true
			out = append(out, w)
		}
	}
	slices.SortFunc(out, func(a, b Warning) int {
		return cmpStrings(a.Object.String(), b.Object.String(), a.Path, b.Path, a.Message, b.Message)
	})
	return out
}

func findPolicy(objs *Objects, p Provenance) *Policy {
	for i := range objs.Policies {
		if objs.Policies[i].Name() == p.Policy && objs.Policies[i].Kind == p.PolicyKind {
			return &objs.Policies[i]
		}
	}
	return nil
}

func findSection(pol *Policy, path string) *Section {
	for ri := range pol.Rules {
		r := &pol.Rules[ri]
		for _, list := range [][]Section{r.Allow[Ingress], r.Allow[Egress], r.Deny[Ingress], r.Deny[Egress]} {
			for si := range list {
				if list[si].Path == path {
					return &list[si]
				}
			}
		}
	}
	return nil
}

// staticShadows compares allow sections of rules with the same subject.
// A named port is reported by name (in the record's l7.L7 field).
func staticShadows(objs *Objects) []shadowRecord {
	type sec struct {
		pol *Policy
		s   *Section
		dir Direction
	}
	bySubject := map[string][]sec{}
	for pi := range objs.Policies {
		pol := &objs.Policies[pi]
		for ri := range pol.Rules {
			r := &pol.Rules[ri]
			for _, dir := range []Direction{Ingress, Egress} {
				for si := range r.Allow[dir] {
					if s := &r.Allow[dir][si]; s.Dropped == "" {
						k := dir.String() + " " + r.Subject.String()
						bySubject[k] = append(bySubject[k], sec{pol, s, dir})
					}
				}
			}
		}
	}
	var out []shadowRecord
	budget := maxStaticShadowPairs
	for _, subject := range sortedKeys(bySubject) {
		secs := bySubject[subject]
		// sections with L7 rules, the only ones that can be shadowed
		var l7 []sec
		for _, b := range secs {
			if slices.ContainsFunc(b.s.Ports, func(pr PortRule) bool { return pr.L7 != nil && pr.Dropped == "" }) {
				l7 = append(l7, b)
			}
		}
		if budget -= len(secs) * len(l7); budget < 0 {
			break // a huge policy: the computed comparison still applies
		}
		for _, a := range secs {
			for _, b := range l7 {
				if a.s == b.s || !peersOverlap(&a.s.Peers, &b.s.Peers) {
					continue
				}
				for _, pr := range b.s.Ports {
					if pr.L7 == nil || pr.Dropped != "" {
						continue
					}
					for _, ps := range pr.Ports {
						if !liftsPort(a.s, ps) {
							continue
						}
						rec := shadowRecord{
							allow: Provenance{Policy: a.pol.Name(), PolicyKind: a.pol.Kind, Direction: a.dir, Rule: a.s.Index, Kind: KindAllow, Path: a.s.Path},
							l7:    Provenance{Policy: b.pol.Name(), PolicyKind: b.pol.Kind, Direction: b.dir, Rule: b.s.Index, Kind: KindAllow, Path: b.s.Path},
							proto: ProtoTCP, port: ps.Port,
						}
						if ps.Name != "" {
							rec.l7.L7 = ps.Name
						}
						out = append(out, rec)
					}
				}
			}
		}
	}
	return out
}

// maxStaticShadowPairs bounds the section pairs the static comparison
// looks at (hostile policies have tens of thousands of sections).
const maxStaticShadowPairs = 1 << 20

// liftsPort reports whether section a allows port ps without L7 rules:
// an L3-only section, or a port rule without L7 rules covering ps.
func liftsPort(a *Section, ps PortSpec) bool {
	if a.Ports == nil {
		return true
	}
	for _, pr := range a.Ports {
		if pr.L7 != nil || pr.Dropped != "" {
			continue
		}
		for _, x := range pr.Ports {
			if x.Protocol != ProtoAny && x.Protocol != ProtoTCP {
				continue
			}
			switch {
			case ps.Name != "" || x.Name != "":
				if x.Name == ps.Name {
					return true
				}
			case x.Port == 0 || (ps.Port >= x.Port && ps.Port <= x.EndPort):
				return true
			}
		}
	}
	return false
}

// peersOverlap reports whether two peer sets may select a common peer, as
// far as the policy text tells without the identities.
func peersOverlap(a, b *Peers) bool {
	if a.Any || b.Any {
		return true
	}
	for _, x := range a.Selectors {
		if slices.ContainsFunc(b.Selectors, func(y Selector) bool { return x.String() == y.String() }) {
			return true
		}
	}
	for _, x := range a.CIDRs {
		for _, y := range b.CIDRs {
			if x.Prefix.Overlaps(y.Prefix) && !cidrExcluded(x, y.Prefix) && !cidrExcluded(y, x.Prefix) {
				return true
			}
		}
	}
	for _, x := range a.Services {
		if slices.ContainsFunc(b.Services, func(y ServiceSelector) bool { return x.sameAs(y) }) {
			return true
		}
	}
	for _, e := range a.Entities {
		if slices.Contains(b.Entities, e) || e == "world" && len(b.CIDRs) > 0 || e == "cluster" && len(b.Selectors) > 0 {
			return true
		}
	}
	for _, e := range b.Entities {
		if e == "world" && len(a.CIDRs) > 0 || e == "cluster" && len(a.Selectors) > 0 {
			return true
		}
	}
	return false
}

// cidrExcluded reports whether p lies entirely in one of s's excepts.
func cidrExcluded(s CIDRSelector, p netip.Prefix) bool {
	for _, e := range s.Except {
		if e.Bits() <= p.Bits() && e.Contains(p.Addr()) {
			return true
		}
	}
	return false
}
