//go:build l7gate_component

// Command coredns is CoreDNS with the plugins the e2e cluster's Corefile uses
// (a kubeadm Corefile without forward: the cluster has no upstream DNS). The
// stock binary links every plugin, cloud SDKs included; this one compiles in
// a fraction of the time. hack/build-components.sh builds it in a throwaway
// module under the cache directory.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/whoami"
)

func main() {
	// The plugin chain's order is the directives' order (upstream's order,
	// restricted to what is compiled in).
	dnsserver.Directives = []string{"ready", "health", "errors", "log", "loadbalance", "cache", "kubernetes", "whoami"}
	coremain.Run()
}
