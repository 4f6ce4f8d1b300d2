package main

import "github.com/spf13/cobra"

// extraCommands lists the command groups that live in their own files.
func (a *app) extraCommands() []*cobra.Command {
	return []*cobra.Command{newBPFCommand()}
}
