// Package agent is the per-node l7gate agent: it reads Kubernetes objects
// from a source, computes policy (package policy), allocates proxy ports
// (package redirect), pushes listeners and L7 policy to the proxies over
// xDS (package xds) and — only after every proxy ACKed — syncs the eBPF
// datapath (package bpf). A policy is "implemented" when that chain
// completed for the revision that carries it.
//
// Like cmd/l7gate it composes the other packages; nothing imports it but
// the command line.
package agent
