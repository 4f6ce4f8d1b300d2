// Package scale is the `make scale` harness: a real kube-apiserver and
// etcd (started in the test process, as k8s/cluster_test.go does) and N
// simulated agents in a child process — each the agent's real Kubernetes
// source, policy computation and status writer, with the datapath and
// proxies replaced by a stub that implements every revision at once.
//
// It writes P pods over the N nodes, changes policies and pods one at a
// time and measures, per N: convergence (change written → every agent
// implemented it; for policies also → the policy's status shows every
// node), API requests by verb and resource from the API server's own
// apiserver_request_total, 409 conflicts and retried writes, watch events
// and bytes each agent received per change, and the agents' CPU and memory.
// Results go to bench/results/scale-<time>.{json,md}.
//
// Full and light agents. On this machine's 2 cores, N full agents would
// each keep the whole cluster in informer caches (~160 MiB at P = 10k) and
// re-assemble the whole view on every change one after another: the
// simulation, not the cluster, would set the numbers (N = 200 × 10k did not
// fit in memory; N = 200 at 1k ran out of time). So K agents (default 2;
// -scale.nodes=N/K) are full, and the others are light agents (light.go):
// each has its own connection, its own watches of every resource the
// source watches (same clients and encodings, counted like a full agent's:
// its watch bytes are real), its own status writer and election, but no
// cache: it implements agent 0's view once its own watch delivered the
// changes in it. Left out is each light agent's own view assembly and
// policy computation, which on a real node run on that node's CPU in
// parallel; agent 0's are in the times, and N/N runs (every agent full)
// give the per-agent CPU and memory.
//
// Nothing outside bench/ and k8s/ may import this package.
package scale
