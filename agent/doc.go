// Package agent is the per-node pipeline of l7gate: it takes each view of
// the cluster from a source (package source), computes policy (package
// policy), allocates proxy ports, and implements the result on this node
// in a fixed order:
//
//  1. Endpoints first: local endpoints (found by package agent/endpoints)
//     get their L3/L4 entries (package bpftranslate) and are attached to
//     the datapath. A redirect goes to a proxy port only if that proxy has
//     ACKed the listener and the endpoint's L7 policy; otherwise it is a
//     drop.
//  2. The proxies: listeners and L7 policy are pushed over xDS and the
//     agent waits for every proxy's ACK (bounded).
//  3. Redirects: the datapath is synced again, now redirecting to the
//     listeners and endpoint policies the proxies ACKed.
//
// A failure is confined to the endpoints it concerns, which fail closed:
// an endpoint direction whose entries the datapath rejects becomes
// default-deny (every flow in that direction dropped); an endpoint whose
// xDS resources a proxy rejected (NACK) or did not ACK in time, or whose
// listener is not ACKed, has its redirects dropped (its L3/L4 entries stay
// in force); an endpoint that cannot be attached is retried. Each such
// failure is named per endpoint in the status API (`l7gate status`) and
// given to the source's PolicyReporter; every other endpoint, and every
// later revision, proceeds. A revision is "implemented" when that chain
// completed for it.
//
// New pods are attached when netlink reports their veth or route (with a
// slow resync as a safety net), without recomputing policy. Identities,
// and what the proxies have in force, are persisted in the state
// directory, so a restart renumbers nothing and drops no redirect.
//
// The proxies need no access to the datapath: once a proxy ACKed a
// listener, the agent takes the listener socket (pidfd_getfd) into the
// datapath's socket map, and takes it again when the proxy restarts. It
// keeps its duplicate of the Go proxy's sockets: if the proxy dies they
// stay listening (connections queue in the backlog, nothing passes
// unproxied) and the supervisor hands them to the restarted proxy. A
// restart on SIGHUP is a hand-over: the new proxy takes the sockets from
// the running one, which drains (package proxy).
//
// The agent does not build its dependencies: cmd/l7gate (the composition
// root) hands it the datapath, the xDS server and the proxy-port allocator
// behind the small interfaces in this package, so the ordering and the
// confinement are unit-tested with fakes. Only cmd imports this package.
package agent
