//go:build !l7gate_proxyonly

package main

import (
	"testing"

	"github.com/spf13/pflag"
)

// The status-nodes limit given on the command line reaches the election
// that merges the nodes' reports (k8s.ElectionConfig), and its default
// leaves the package's own (32).
func TestStatusNodesLimitFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want int
	}{
		{nil, 0},
		{[]string{"--status-nodes-limit=-1"}, -1},
		{[]string{"--status-nodes-limit", "200"}, 200},
	} {
		f := defaultK8sFlags()
		fl := pflag.NewFlagSet("agent", pflag.ContinueOnError)
		f.addFlags(fl)
		if err := fl.Parse(tc.args); err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if got := f.election().StatusNodesLimit; got != tc.want {
			t.Errorf("%v: election StatusNodesLimit %d, want %d", tc.args, got, tc.want)
		}
	}
}

// The status node selector reaches the election (the chart passes the
// DaemonSet's nodeSelector; the last of repeated flags wins, so
// agent.extraArgs can override it); empty means every Node.
func TestStatusNodeSelectorFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, ""},
		{[]string{"--status-node-selector=kubernetes.io/os=linux"}, "kubernetes.io/os=linux"},
		{[]string{"--status-node-selector=kubernetes.io/os=linux", "--status-node-selector=pool in (a,b)"}, "pool in (a,b)"},
	} {
		f := defaultK8sFlags()
		fl := pflag.NewFlagSet("agent", pflag.ContinueOnError)
		f.addFlags(fl)
		if err := fl.Parse(tc.args); err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if got := f.election().StatusNodeSelector; got != tc.want {
			t.Errorf("%v: election StatusNodeSelector %q, want %q", tc.args, got, tc.want)
		}
	}
}

// The nodes' reports go to their own namespace by default (the chart
// creates it and grants ConfigMap writes only there), and the flag moves
// them.
func TestStatusNamespaceFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "l7gate-policy-status"},
		{[]string{"--status-namespace=gate-reports"}, "gate-reports"},
	} {
		f := defaultK8sFlags()
		fl := pflag.NewFlagSet("agent", pflag.ContinueOnError)
		f.addFlags(fl)
		if err := fl.Parse(tc.args); err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if got := f.election().ReportNamespace; got != tc.want {
			t.Errorf("%v: election ReportNamespace %q, want %q", tc.args, got, tc.want)
		}
	}
}
