// Package policy turns Kubernetes objects (Pods, Namespaces,
// CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy) into
// l7gate's intermediate representation: security identities and, for each
// endpoint identity, an EndpointPolicy that every other part of l7gate
// enforces (the eBPF datapath, the xDS translators, the Go proxy).
//
// The pipeline is one-way: Decode/Load (untrusted YAML or JSON → validated
// Policy, Pod and Namespace values, with errors naming file, object and field
// path) → Compute (labels → identities, selectors → identity sets, rules →
// per-identity entries with provenance) → Evaluate/Trace (what a given flow
// or request gets, and which rule decided it).
//
// Invalid input never widens access: an invalid new policy holds the
// endpoints it selects in default-deny (its fail-closed stand-in), and
// Tracker keeps the last valid version of an object whose update is
// invalid; sources call Tracker.Apply on every view they decode.
//
// Semantics follow Cilium's CiliumNetworkPolicy v2 and are written down in
// EVALUATION.md beside this file. The package imports no bpf, xds, envoy or
// redirect code and keeps no package-level mutable state.
package policy
