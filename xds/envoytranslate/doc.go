// Package envoytranslate turns the policy IR (a policy.Snapshot) into the
// xDS resources a stock upstream Envoy needs to enforce HTTP and gRPC rule
// sets: the consumers with node id "envoy~<node>". It is a pure function of
// its input and produces sorted, deterministic output; serving the
// resources is the xds server's job, not this package's.
//
// Shape (see README "Running with Envoy"):
//
//   - One transparent Listener per HTTP proxy port, named
//     "l7gate/<direction>/http/<port>", with the original_dst listener
//     filter (the accepted socket's local address is the original
//     destination) and original_src (upstream connections keep the pod's
//     source address and carry the from-proxy SO_MARK, see Marks).
//   - One FilterChain per (local endpoint identity, destination port) with
//     an L7 rule set: destination_port plus the endpoint's IPs as
//     destination prefixes (ingress) or source prefixes (egress). Its HTTP
//     connection manager fetches its routes over RDS (ADS) and runs the
//     RBAC filter, whose listener-level config denies everything, then the
//     router.
//   - One RouteConfiguration per filter chain, named
//     "l7gate/<direction>/<identity>/<port>", whose single route carries the
//     rule set as an RBACPerRoute and forwards to the ORIGINAL_DST cluster.
//     Peer identities become IP principals from the ipcache, so peer churn
//     changes only RouteConfigurations: listeners (and connections) stay.
//   - One ORIGINAL_DST Cluster that speaks the downstream's protocol.
//
// Rule sets travel over RDS rather than ECDS: RBACPerRoute is upstream's
// own per-route override, a listener does not serve before its routes
// arrived (fail closed), and grpc-go, the independent data plane the tests
// use, implements RDS and RBACPerRoute but not ECDS.
//
// Denials: RBAC's local 403 gets the body "Access denied" from a local
// reply mapper; for gRPC requests Envoy sends it as a trailers-only reply
// with grpc-status 7 (its mapping of 403).
//
// The package imports policy, the Envoy protos and the names it shares
// with Envoy's access logs (package envoy: route names, RBAC policy ids).
package envoytranslate
