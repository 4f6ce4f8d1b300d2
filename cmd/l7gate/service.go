//go:build !l7gate_proxyonly

package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/l7gate/l7gate/agentapi"
	"github.com/l7gate/l7gate/bpf"
)

// serviceCommand is `l7gate service list`: the Service frontends the
// agent load-balances, from its status API.
func (a *app) serviceCommand() *cobra.Command {
	var runDir, output string
	list := &cobra.Command{
		Use:   "list",
		Short: "List Service frontends (ClusterIP, port) with their backends on this node and state",
		Long: `list shows every Service frontend (ClusterIP, port, protocol) the agent gives
its socket load balancer, with the backends a connection from this node goes
to and the state: ready, terminating (no ready endpoint: serving terminating
ones are used), no-backends or no-local-backends (connections are refused),
conflict (another Service has the address and port). ERROR names a frontend
the load balancer could not write (it refuses connections).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return usageErrorf("-o: want table or json, not %q", output)
			}
			st, err := agentapi.FetchStatus(cmd.Context(), runDir)
			if err != nil {
				return err
			}
			if output == "json" {
				return writeJSON(a.stdout, st.Services)
			}
			return printServices(a.stdout, st)
		},
	}
	list.Flags().StringVar(&runDir, "run-dir", "/run/l7gate", "the agent's run directory")
	list.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	cmd := &cobra.Command{Use: "service", Short: "Inspect Services as the socket load balancer sees them"}
	cmd.AddCommand(list)
	return cmd
}

func printServices(w io.Writer, st *agentapi.Status) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if st.SocketLB != "" {
		fmt.Fprintf(tw, "Socket LB:\t%s\n\n", st.SocketLB)
	}
	fmt.Fprintln(tw, "SERVICE\tFRONTEND\tPROTO\tSTATE\tBACKENDS\tAFFINITY\tERROR")
	for _, s := range st.Services {
		bs := make([]string, len(s.Backends))
		for i, b := range s.Backends {
			bs[i] = b.Address.String()
		}
		backends := strings.Join(bs, ",")
		if backends == "" {
			backends = "-"
		}
		aff := "-"
		if s.Affinity > 0 {
			aff = s.Affinity.String()
		}
		state := s.State
		if s.Local {
			state += " (local)"
		}
		errs := s.Error
		if errs == "" {
			errs = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Service, s.Address, s.Protocol, state, backends, aff, errs)
	}
	return tw.Flush()
}

// newBPFLBCommand is `l7gate bpf lb list`: the socket load balancer's
// pinned maps.
func newBPFLBCommand(bpffs, output *string) *cobra.Command {
	cmd := &cobra.Command{Use: "lb", Short: "Socket load-balancer maps (Service frontends and backends)"}
	cmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List Service frontends as the socket-LB maps hold them",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if *output != "table" && *output != "json" {
				return fmt.Errorf("unknown output format %q", *output)
			}
			m, err := bpf.OpenPinnedLBMaps(*bpffs)
			if err != nil {
				return err
			}
			defer m.Close()
			svcs, err := m.Services()
			if err != nil {
				return err
			}
			w := c.OutOrStdout()
			if *output == "json" {
				return bpfWriteJSON(w, svcs)
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "FRONTEND\tPROTO\tID\tGEN\tAFFINITY\tBACKENDS")
			for _, s := range svcs {
				bs := make([]string, len(s.Backends))
				for i, b := range s.Backends {
					bs[i] = b.String()
				}
				backends := strings.Join(bs, ",")
				if backends == "" {
					backends = "- (refuses)"
				}
				if s.Missing > 0 {
					backends += fmt.Sprintf(" (%d slot(s) missing)", s.Missing)
				}
				aff := "-"
				if s.Affinity > 0 {
					aff = s.Affinity.String()
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\n", s.Frontend, s.Protocol, s.ID, s.Generation, aff, backends)
			}
			return tw.Flush()
		},
	})
	return cmd
}

// openSocketLB opens the socket load balancer on the agent's bpffs and
// attaches it to the configured cgroup (a path under the cgroup v2 root;
// `ip netns exec` hides /sys/fs/cgroup, so the hierarchy is mounted under
// the run dir when needed), or, when disabled, detaches what a previous
// run attached: a stale translation must not outlive the setting. It
// returns the load balancer (nil when disabled) and a description for the
// status.
func openSocketLB(ctx context.Context, f agentFlags, log *slog.Logger) (*bpf.SocketLB, string, error) {
	lb, err := bpf.OpenSocketLB(ctx, bpf.SocketLBConfig{BPFFSPath: f.BPFFS, Logger: log})
	if err != nil {
		return nil, "", fmt.Errorf("open socket load balancer: %w", err)
	}
	if !f.SocketLB {
		if err := lb.SetCgroup(""); err != nil {
			lb.Close()
			return nil, "", err
		}
		if _, err := lb.SyncServices(nil); err != nil {
			lb.Close()
			return nil, "", err
		}
		lb.Close()
		return nil, "off", nil
	}
	var mount string
	if f.SocketLBCgroupRoot != "" {
		mount, err = cgroup2Root(f.SocketLBCgroupRoot)
	} else {
		mount, err = bpf.EnsureCgroup2(filepath.Join(f.RunDir, "cgroup2"))
	}
	if err != nil {
		lb.Close()
		return nil, "", fmt.Errorf("socket load balancer: %w", err)
	}
	rel := filepath.Clean("/" + f.SocketLBCgroup)
	path := filepath.Join(mount, rel)
	if err := lb.SetCgroup(path); err != nil {
		lb.Close()
		return nil, "", err
	}
	return lb, "cgroup " + rel, nil
}

// enableUpstreamFilter turns the datapath's proxy upstream pre-filter on
// for the node's namespace, with the recorder on the cgroup v2 root (the
// hierarchy the socket load balancer uses).
func enableUpstreamFilter(dp *bpf.Datapath, f agentFlags) error {
	var mount string
	var err error
	if f.SocketLBCgroupRoot != "" {
		mount, err = cgroup2Root(f.SocketLBCgroupRoot)
	} else {
		mount, err = bpf.EnsureCgroup2(filepath.Join(f.RunDir, "cgroup2"))
	}
	if err != nil {
		return err
	}
	return dp.EnableUpstreamFilter("/proc/self/ns/net", mount)
}

// cgroup2Root returns dir if a cgroup v2 hierarchy is mounted there, or
// dir/unified if dir is a hybrid host's /sys/fs/cgroup (cgroup v1
// controllers beside a unified v2 hierarchy). Anything else is an error:
// attaching to a directory that is no cgroup would translate nothing.
func cgroup2Root(dir string) (string, error) {
	for _, d := range []string{dir, filepath.Join(dir, "unified")} {
		var st unix.Statfs_t
		if err := unix.Statfs(d, &st); err != nil {
			if d == dir {
				return "", fmt.Errorf("cgroup root %s: %w", dir, err)
			}
			continue
		}
		if st.Type == unix.CGROUP2_SUPER_MAGIC {
			return d, nil
		}
	}
	return "", fmt.Errorf("cgroup root %s: no cgroup v2 hierarchy there (nor at unified/)", dir)
}
