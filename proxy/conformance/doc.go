// Package conformance runs protocols' own conformance suites (grpc-go's
// interop client and server, h2spec) and raw hostile traffic through the
// L7 proxy, on the real datapath, and compares each suite with the same
// suite run without the proxy. It holds tests only; they are named
// TestPrivileged… and skip without root.
//
// The topology (node_test.go): a node namespace running `l7gate agent`
// (which starts the datapath and the Go proxy), a client pod and a backend
// pod in namespaces of their own behind veths (demo.NewTopology), and a
// CiliumNetworkPolicy allowing every request from the client to the
// backend's port with an L7 rule, so every connection goes through the
// proxy. A suite fails when the proxy adds a failure the direct run does
// not have, or when the proxy's request counters show it did not carry the
// traffic.
//
// Suites are built from their Go modules with `go install module@version`
// into a cache outside the clone ($XDG_CACHE_HOME or ~/.cache, then
// l7gate/tools/<module>@<version>), so a warm run builds nothing. The
// dataplane is a parameter: Envoy mode needs an envoy binary (absent on
// the development machines, so those runs skip).
//
// To add a suite (Kafka's kgo tests, say): startNode with the parser and
// port, start the backend in n.Backend, run the suite from n.Client and
// through n.run, and compare with a direct run.
package conformance
