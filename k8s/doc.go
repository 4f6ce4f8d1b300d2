// Package k8s is the Kubernetes side of the agent: a Source that watches
// Pods, Namespaces, Nodes, NetworkPolicy, CiliumNetworkPolicy,
// CiliumClusterwideNetworkPolicy and the default/kubernetes EndpointSlice
// (the kube-apiserver entity) with client-go informers and hands the
// agent the same policy.Objects the folder source does (through a
// policy.Tracker: an invalid update keeps the last valid version), and a StatusWriter
// that reports, per policy, whether it is valid and which revision this
// node implemented.
//
// Every object goes through policy.Decode as JSON, so validation and error
// paths are the folder source's. Cilium's Go types are not used: the Cilium
// CRDs are read with the dynamic client.
//
// It imports policy and the source contract (package source) only; the
// agent and policy never import it.
package k8s
