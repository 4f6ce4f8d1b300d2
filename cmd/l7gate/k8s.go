//go:build !l7gate_proxyonly

package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/l7gate/l7gate/deploy"
	"github.com/l7gate/l7gate/k8s"
)

// k8sFlags configure `l7gate agent --source-kind k8s`: where the API server
// is and what the agent writes back. The node name is the agent's --node.
type k8sFlags struct {
	Kubeconfig   string  `json:"kubeconfig"`
	Context      string  `json:"kubeContext"`
	QPS          float32 `json:"kubeAPIQPS"`
	Burst        int     `json:"kubeAPIBurst"`
	PolicyStatus bool    `json:"policyStatus"`
	EnsureCRDs   bool    `json:"ensureCRDs"`
	// StatusNodesLimit: see k8s.ElectionConfig (0: its default).
	StatusNodesLimit int `json:"statusNodesLimit"`
	// StatusNodeSelector: see k8s.ElectionConfig.
	StatusNodeSelector string `json:"statusNodeSelector"`
	// StatusNamespace: the nodes' report ConfigMaps (see
	// k8s.ElectionConfig.ReportNamespace).
	StatusNamespace string `json:"statusNamespace"`
}

func defaultK8sFlags() k8sFlags {
	return k8sFlags{QPS: 20, Burst: 40, PolicyStatus: true, StatusNamespace: k8s.DefaultReportNamespace}
}

// election is the status-merge election the flags configure.
func (f k8sFlags) election() k8s.ElectionConfig {
	return k8s.ElectionConfig{StatusNodesLimit: f.StatusNodesLimit, StatusNodeSelector: f.StatusNodeSelector, ReportNamespace: f.StatusNamespace}
}

// addFlags registers the flags on an agent command's flag set.
func (f *k8sFlags) addFlags(fl *pflag.FlagSet) {
	fl.StringVar(&f.Kubeconfig, "kubeconfig", f.Kubeconfig, "with --source-kind k8s: kubeconfig file (default: in-cluster config, else $KUBECONFIG or ~/.kube/config)")
	fl.StringVar(&f.Context, "kube-context", f.Context, "with --source-kind k8s: kubeconfig context (default: the current one)")
	fl.Float32Var(&f.QPS, "kube-api-qps", f.QPS, "with --source-kind k8s: API requests per second (sustained)")
	fl.IntVar(&f.Burst, "kube-api-burst", f.Burst, "with --source-kind k8s: API request burst")
	fl.BoolVar(&f.PolicyStatus, "policy-status", f.PolicyStatus, "with --source-kind k8s: write policy status (Valid/Supported conditions, status.nodes[NODE].revision) and Events")
	fl.IntVar(&f.StatusNodesLimit, "status-nodes-limit", f.StatusNodesLimit, "with --source-kind k8s: up to this many nodes a policy's status.nodes lists every node; on larger clusters only nodes with an error or behind (at most this many) and an Implemented condition counts the rest (each node's full report stays in its report ConfigMap); 0: the default 32, -1: list every node")
	fl.StringVar(&f.StatusNodeSelector, "status-node-selector", f.StatusNodeSelector, "with --source-kind k8s: label selector of the Nodes that should run an agent (the agent DaemonSet's nodeSelector, e.g. kubernetes.io/os=linux; empty: every Node); a policy's status counts these nodes and any other Node with a report, lists a node without a report as pending, and ignores reports of deleted Nodes")
	fl.StringVar(&f.StatusNamespace, "status-namespace", f.StatusNamespace, "with --source-kind k8s and --policy-status: namespace of the nodes' policy status reports (one ConfigMap per node; the Lease stays in the agent's namespace); it must hold nothing but l7gate's reports, because every agent can write every ConfigMap in it (the chart creates it and grants ConfigMap writes only there)")
	fl.BoolVar(&f.EnsureCRDs, "ensure-crds", f.EnsureCRDs, "with --source-kind k8s: create the cilium.io/v2 policy CRDs if absent (never modifies existing ones; needs RBAC to create CRDs)")
}

// restConfig loads the client configuration: --kubeconfig, else in-cluster,
// else the usual kubeconfig locations.
func (f *k8sFlags) restConfig() (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	if f.Kubeconfig == "" && f.Context == "" {
		cfg, err = rest.InClusterConfig()
	}
	if cfg == nil {
		rules := clientcmd.NewDefaultClientConfigLoadingRules()
		rules.ExplicitPath = f.Kubeconfig
		cfg, err = clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules,
			&clientcmd.ConfigOverrides{CurrentContext: f.Context}).ClientConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	cfg.UserAgent = "l7gate-agent"
	cfg.QPS, cfg.Burst = f.QPS, f.Burst
	return cfg, nil
}

// agentK8sSource builds the Kubernetes source for the agent on node, and
// (with --policy-status) the status writer: the caller runs
// writer.Run(ctx) and hands writer.Implemented the updates it implemented.
// With --ensure-crds it first creates missing policy CRDs.
func (a *app) agentK8sSource(ctx context.Context, f k8sFlags, node string) (*k8s.Source, *k8s.StatusWriter, error) {
	// client-go logs through klog; send it to the agent's logger (klog is
	// process-global, so this belongs in the composition root).
	klog.SetSlogLogger(a.log)
	cfg, err := f.restConfig()
	if err != nil {
		return nil, nil, err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes dynamic client: %w", err)
	}
	if f.EnsureCRDs {
		crds, err := deploy.CRDs()
		if err != nil {
			return nil, nil, err
		}
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		err = k8s.EnsureCRDs(cctx, dyn, crds, a.log)
		cancel()
		if err != nil {
			return nil, nil, fmt.Errorf("ensure crds: %w", err)
		}
	}
	src, err := k8s.NewSource(k8s.SourceConfig{Client: client, Dynamic: dyn, Node: node, Logger: a.log})
	if err != nil {
		return nil, nil, err
	}
	if !f.PolicyStatus {
		return src, nil, nil
	}
	w, err := k8s.NewStatusWriter(k8s.StatusWriterConfig{Client: client, Dynamic: dyn, Node: node, Source: src, Logger: a.log,
		Election: f.election()})
	if err != nil {
		return nil, nil, err
	}
	return src, w, nil
}
