//go:build l7gate_component

// Command kube is one binary for kube-apiserver, kube-controller-manager,
// kube-scheduler, kubelet, kube-proxy and kubectl (like the old hyperkube),
// so the e2e cluster pays Kubernetes' compile and link once. The component is
// chosen by the name it is called by (symlinks) or by the first argument:
// `kube kubelet --config ...`. hack/build-components.sh builds it in a
// throwaway module under the cache directory, never in the main module (the
// build tag keeps `go build ./...` of l7gate away from it).
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/component-base/logs"
	kubectl "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"

	_ "k8s.io/client-go/plugin/pkg/client/auth"
	_ "time/tzdata"
)

var names = []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl"}

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	if !slices.Contains(names, name) {
		if len(args) == 0 || !slices.Contains(names, args[0]) {
			fmt.Fprintf(os.Stderr, "usage: %s {%v} [flags]\n", name, names)
			os.Exit(2)
		}
		name, args = args[0], args[1:]
	}
	os.Args = append([]string{name}, args...) // kubectl's plugin handler reads os.Args
	if name == "kubectl" {
		logs.GlogSetter(kubectl.GetLogVerbosity(append([]string{name}, args...))) //nolint:errcheck
		c := kubectl.NewDefaultKubectlCommand()
		c.SetArgs(args)
		if err := cli.RunNoErrOutput(c); err != nil {
			kubectlutil.CheckErr(err)
		}
		return
	}
	var c *cobra.Command
	switch name {
	case "kube-apiserver":
		c = apiserver.NewAPIServerCommand()
	case "kube-controller-manager":
		c = controllermanager.NewControllerManagerCommand()
	case "kube-scheduler":
		c = scheduler.NewSchedulerCommand()
	case "kubelet":
		c = kubelet.NewKubeletCommand(context.Background())
	case "kube-proxy":
		c = proxy.NewProxyCommand()
	}
	c.SetArgs(args)
	os.Exit(cli.Run(c))
}
