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
// Nothing outside bench/ and k8s/ may import this package.
package scale
