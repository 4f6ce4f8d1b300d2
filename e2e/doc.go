// Package e2e is l7gate's end-to-end suite on a real Kubernetes cluster:
// kube-apiserver, controller-manager, scheduler, kubelet, kube-proxy
// (iptables and ip6tables: the cluster is dual-stack, IPv4 primary) and
// kubectl built from k8s.io/kubernetes, containerd and runc,
// the CNI plugins and etcd from Debian, CoreDNS, and l7gate installed with
// `helm install deploy/helm/l7gate`, all on this machine in namespaces of
// their own (hack/cluster.sh).
//
// The tests carry the build tag e2e and expect the environment
// hack/cluster.sh exports (KUBECONFIG, KUBECTL, HELM, E2E_WORK, E2E_NODES,
// IMAGE_TAG); run them with `make e2e`, which brings the cluster up, runs
// the suite and removes everything again. Each step is asserted from
// outside the cluster, with kubectl and real clients (curl, kcat) in pods.
package e2e
