//go:build l7gate_proxyonly

package main

import "github.com/spf13/cobra"

// extraCommands: a proxy-only build (-tags l7gate_proxyonly) has the
// proxy command alone.
func (a *app) extraCommands() []*cobra.Command {
	return []*cobra.Command{a.proxyCommand()}
}
