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
