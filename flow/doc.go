// Package flow is the vocabulary every part of l7gate uses to talk about
// traffic and the decisions on it: security identities (Identity and the
// reserved ones), the direction relative to an endpoint, the rule a
// decision came from (Provenance), the verdict on a flow or request
// (Verdict), and Record, the one record a datapath flow event, a Go-proxy
// access-log entry and an Envoy access-log entry all become.
//
// It is the shared contract between the control plane (policy, agent) and
// the data plane (proxy, parsers, envoy): it imports nothing of l7gate, so
// any package may import it. policy re-exports Identity, Direction,
// Provenance and their constants as aliases.
package flow
