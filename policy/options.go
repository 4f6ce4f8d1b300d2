package policy

import (
	"fmt"
	"net/netip"
)

// Options tune ComputeWith. The zero value is the default.
type Options struct {
	// AllowLocalhost: with LocalhostAlways (the default, also ""), the
	// host identity — the node itself, e.g. kubelet's probes — may reach
	// every local endpoint whatever its ingress policy says, as Cilium
	// admits reserved:host under Kubernetes (allow-localhost); deny rules
	// still win and L7 rules on a port still apply. With LocalhostPolicy
	// the host is a peer like any other.
	AllowLocalhost LocalhostMode
	// KubeAPIServer lists addresses of the kube-apiserver entity in
	// addition to those of the default/kubernetes EndpointSlice among the
	// objects (for sources without one, e.g. a folder).
	KubeAPIServer []netip.Addr
	// MaxEntries bounds the entries of one endpoint identity's policy in
	// one direction (0: DefaultMaxEntries). A policy that needs more is not
	// enforced in part: the endpoint is held in default-deny in that
	// direction, with a warning (fail closed).
	MaxEntries int
	// FQDNCache resolves toFQDNs selectors: the names DNS answers carried
	// (the DNS proxy's cache) and their addresses. Nil: no names are
	// known, so toFQDNs select nothing (fail closed).
	FQDNCache FQDNCache
	// AuditMode puts every policy in audit mode (the agent's
	// --policy-audit-mode, node-wide): what policy would drop or deny is
	// forwarded and recorded with verdict audit. Invalid policies and
	// l7gate's own fail-closed rules are enforced regardless.
	AuditMode bool
}

// FQDNName is one cached DNS name (normalised) and the addresses its
// answers carried, still within their TTL.
type FQDNName struct {
	Name string       `json:"name"`
	IPs  []netip.Addr `json:"ips"`
}

// FQDNCache is what policy needs of the DNS proxy's name cache.
type FQDNCache interface {
	// FQDNNames returns every live name with its addresses.
	FQDNNames() []FQDNName
}

// StaticFQDNCache is a fixed FQDNCache (tests, trace with a saved cache).
type StaticFQDNCache []FQDNName

// FQDNNames implements FQDNCache.
func (s StaticFQDNCache) FQDNNames() []FQDNName { return s }

// DefaultMaxEntries is the default of Options.MaxEntries: a quarter of the
// node's BPF policy map (bpf/c/datapath.c, 262144 entries).
const DefaultMaxEntries = 65536

// KindBuiltin is the policy kind of rules l7gate adds itself (see
// Options), in provenance.
const KindBuiltin PolicyKind = "l7gate"

// LocalhostMode is Options.AllowLocalhost (Cilium's --allow-localhost).
type LocalhostMode string

// Localhost modes.
const (
	LocalhostAlways LocalhostMode = "always"
	LocalhostPolicy LocalhostMode = "policy"
)

// ParseLocalhostMode parses "always" or "policy" ("" is always).
func ParseLocalhostMode(s string) (LocalhostMode, error) {
	switch LocalhostMode(s) {
	case "", LocalhostAlways:
		return LocalhostAlways, nil
	case LocalhostPolicy:
		return LocalhostPolicy, nil
	}
	return "", fmt.Errorf("allow-localhost: want always or policy, not %q", s)
}

// AllowLocalhostOrigin is the provenance of the host's allow
// (Options.AllowLocalhost): "allow allow-localhost (l7gate
// --allow-localhost=always)".
func AllowLocalhostOrigin() Provenance {
	return Provenance{Policy: "allow-localhost", PolicyKind: KindBuiltin, Direction: Ingress, Kind: KindAllow, Path: "--allow-localhost=always"}
}
