//go:build !l7gate_proxyonly

package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/l7gate/l7gate/policy"
	dnsproxy "github.com/l7gate/l7gate/proxy/dns"
)

// fqdnCacheFile is the DNS proxy's FQDN cache in the state dir.
const fqdnCacheFile = "fqdn-cache.json"

func (a *app) fqdnCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "fqdn", Short: "Inspect the FQDN cache that toFQDNs rules resolve through"}
	cacheCmd := &cobra.Command{Use: "cache", Short: "The DNS proxy's name → address cache"}
	var stateDir, file, output string
	list := &cobra.Command{
		Use:   "list",
		Short: "List cached names, their addresses and when each expires",
		Long: `list reads the DNS proxy's saved FQDN cache (` + fqdnCacheFile + ` in the state
dir, or --file) and prints every name with its addresses and their expiry.
Expired entries are shown as such: policy no longer uses them.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "text" && output != "json" {
				return usageErrorf("-o: want text or json, not %q", output)
			}
			path := file
			if path == "" {
				path = filepath.Join(stateDir, fqdnCacheFile)
			}
			st, err := dnsproxy.ReadState(path)
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(a.stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			now := time.Now()
			w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAME\tADDRESS\tEXPIRES")
			for _, n := range st.Names {
				for _, ip := range n.IPs {
					left := ip.Expires.Sub(now).Round(time.Second)
					when := "in " + left.String()
					if left <= 0 {
						when = "expired"
					}
					fmt.Fprintf(w, "%s\t%s\t%s\n", n.Name, ip.IP, when)
				}
			}
			return w.Flush()
		},
	}
	list.Flags().StringVar(&stateDir, "state-dir", "/var/lib/l7gate", "the agent's state directory")
	list.Flags().StringVar(&file, "file", "", "an FQDN cache file (instead of the state dir's)")
	list.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	cacheCmd.AddCommand(list)
	cmd.AddCommand(cacheCmd)
	return cmd
}

// fqdnCacheFromFile reads a saved FQDN cache (the DNS proxy's state file)
// with the entries live now, for trace.
func fqdnCacheFromFile(path string) (policy.FQDNCache, error) {
	st, err := dnsproxy.ReadState(path)
	if err != nil {
		return nil, err
	}
	return st.FQDNNames(time.Now()), nil
}
