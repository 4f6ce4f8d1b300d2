// Package layering holds the test that keeps l7gate's import graph the
// way ARCHITECTURE.md draws it: imports point one way (sources → policy →
// translation / bpf / xds → agent → cmd), no package below the agent
// imports it, and the proxy side (proxy, parsers, the Go proxy's xDS
// client, Envoy's packages) imports nothing of the control plane but the
// shared contracts. It has no code of its own.
package layering
