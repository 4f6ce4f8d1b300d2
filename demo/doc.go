// Package demo runs l7gate scenarios on one machine: it builds a node
// network namespace with one namespace per pod behind a veth (pods as in the
// scenario's Kubernetes objects), starts built-in servers in them (an HTTP
// "deathstar", a gRPC health service, a Kafka-protocol broker), starts
// `l7gate agent` inside the node namespace on a folder it fills with the
// scenario's objects and, step by step, its policies, and sends each check's
// request from inside the source pod over the real datapath and proxy.
//
// A scenario is a folder: objects/ (Namespaces and Pods) and steps.yaml (see
// LoadScenario and README.md beside this file). The Star Wars scenario of
// Cilium's getting-started guide is built in (Builtin).
//
// The observed verdict of a check comes from real traffic only; the "decided
// by" column comes from policy.Trace on the same objects and is labelled as
// such. Everything the package creates (namespaces, veths, processes, the
// bpffs mount, temporary folders) is recorded in a Topology and removed by
// Topology.Close, or left in place and described when the caller keeps it.
//
// The package is used by cmd/l7gate only; it imports policy, flow and the
// agent's API client (agentapi), and no agent, datapath, xDS or proxy code
// (it drives the agent as a child process).
package demo
