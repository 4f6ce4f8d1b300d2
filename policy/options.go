package policy

// Options tune ComputeWith. The zero value is the default.
type Options struct {
	// MaxEntries bounds the entries of one endpoint identity's policy in
	// one direction (0: DefaultMaxEntries). A policy that needs more is not
	// enforced in part: the endpoint is held in default-deny in that
	// direction, with a warning (fail closed).
	MaxEntries int
}

// DefaultMaxEntries is the default of Options.MaxEntries: a quarter of the
// node's BPF policy map (bpf/c/datapath.c, 262144 entries).
const DefaultMaxEntries = 65536

// KindBuiltin is the policy kind of rules l7gate adds itself (see
// Options), in provenance.
const KindBuiltin PolicyKind = "l7gate"
