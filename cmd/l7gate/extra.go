//go:build !l7gate_proxyonly

package main

import "github.com/spf13/cobra"

// extraCommands lists the command groups that live in their own files.
func (a *app) extraCommands() []*cobra.Command {
	return []*cobra.Command{a.policyCommand(), newBPFCommand(), a.agentCommand(), a.proxyCommand(), a.statusCommand(), a.endpointCommand(), a.identityCommand(), a.observeCommand(), a.envoyCommand(), a.demoCommand(), a.fqdnCommand(), a.serviceCommand(), a.versionCommand()}
}
