//go:build l7gate_proxyonly

package main

import "github.com/spf13/cobra"

// extraCommands: a proxy-only build (-tags l7gate_proxyonly) has the
// proxy command alone (and version, which the agent checks).
func (a *app) extraCommands() []*cobra.Command {
	return []*cobra.Command{a.proxyCommand(), a.versionCommand()}
}
