package main

import (
	"fmt"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// buildVersion is the version stamp `make build` and hack/images.sh link
// in (-ldflags "-X main.buildVersion=..."; hack/version.sh). Set by the
// linker only, never at run time.
var buildVersion string

// buildStamp is this binary's version: the linked stamp, else what the Go
// toolchain recorded (a module version, or the commit with "-dirty" for a
// modified tree), else "dev". The agent starts a proxy executable only if
// it reports the same (`l7gate version`).
func buildStamp() string {
	if buildVersion != "" {
		return buildVersion
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "dev"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, modified string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			modified = s.Value
		}
	}
	if rev == "" {
		return "dev"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if modified == "true" {
		rev += "-dirty"
	}
	return "dev-" + rev
}

func (a *app) versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print this binary's version stamp",
		Long: `version prints the version stamp linked into this binary (make build:
hack/version.sh), else the commit it was built from ("dev-<commit>", with
"-dirty" for a modified tree). The agent starts a proxy executable only if
its version is the agent's own.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintln(a.stdout, buildStamp())
			return err
		},
	}
}
