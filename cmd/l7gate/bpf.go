//go:build !l7gate_proxyonly

package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/l7gate/l7gate/bpf"
)

// newBPFCommand is `l7gate bpf …`: read-only views of the pinned datapath
// maps.
func newBPFCommand() *cobra.Command {
	var bpffs, output string
	cmd := &cobra.Command{
		Use:   "bpf",
		Short: "Inspect the eBPF datapath maps",
	}
	cmd.PersistentFlags().StringVar(&bpffs, "bpffs", bpf.DefaultBPFFSPath, "bpf filesystem directory holding the datapath pins")
	cmd.PersistentFlags().StringVarP(&output, "output", "o", "table", "output format: table or json")

	withMaps := func(f func(m *bpf.PinnedMaps, w io.Writer, json bool) error) func(*cobra.Command, []string) error {
		return func(c *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("unknown output format %q", output)
			}
			m, err := bpf.OpenPinnedMaps(bpffs)
			if err != nil {
				return err
			}
			defer m.Close()
			return f(m, c.OutOrStdout(), output == "json")
		}
	}

	var endpoint string
	policyCmd := &cobra.Command{Use: "policy", Short: "Policy map"}
	policyList := &cobra.Command{
		Use:   "list",
		Short: "List compiled policy entries",
		Args:  cobra.NoArgs,
		RunE: withMaps(func(m *bpf.PinnedMaps, w io.Writer, asJSON bool) error {
			return bpfPolicyList(m, w, asJSON, endpoint)
		}),
	}
	policyList.Flags().StringVar(&endpoint, "endpoint", "", "only this endpoint (id or IP address)")
	policyCmd.AddCommand(policyList)

	ipcacheCmd := &cobra.Command{Use: "ipcache", Short: "IP to identity map"}
	ipcacheCmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List ipcache prefixes",
		Args:  cobra.NoArgs,
		RunE:  withMaps(bpfIPCacheList),
	})

	ctCmd := &cobra.Command{Use: "ct", Short: "Conntrack table"}
	ctCmd.AddCommand(&cobra.Command{
		Use:   "list",
		Short: "List conntrack entries",
		Args:  cobra.NoArgs,
		RunE:  withMaps(bpfCTList),
	})

	cmd.AddCommand(policyCmd, ipcacheCmd, ctCmd, newBPFLBCommand(&bpffs, &output))
	return cmd
}

func bpfWriteJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// bpfResolveEndpoint turns an endpoint id or IP address into an id.
func bpfResolveEndpoint(m *bpf.PinnedMaps, s string) (uint32, error) {
	if id, err := strconv.ParseUint(s, 10, 32); err == nil {
		return uint32(id), nil
	}
	addr, err := netip.ParseAddr(s)
	if err != nil {
		return 0, fmt.Errorf("endpoint %q is neither an id nor an IP address", s)
	}
	eps, err := m.Endpoints()
	if err != nil {
		return 0, err
	}
	for _, ep := range eps {
		if ep.IPv4 == addr.Unmap() || ep.IPv6 == addr {
			return ep.ID, nil
		}
	}
	return 0, fmt.Errorf("no endpoint with address %s", addr)
}

func bpfPolicyList(m *bpf.PinnedMaps, w io.Writer, asJSON bool, endpoint string) error {
	entries, err := m.Policy()
	if err != nil {
		return err
	}
	dirs, err := m.EndpointDirections()
	if err != nil {
		return err
	}
	if endpoint != "" {
		id, err := bpfResolveEndpoint(m, endpoint)
		if err != nil {
			return err
		}
		entries = slices.DeleteFunc(entries, func(e bpf.PolicyMapEntry) bool { return e.Endpoint != id })
		dirs = slices.DeleteFunc(dirs, func(d bpf.EndpointDirection) bool { return d.Endpoint != id })
	}
	slices.SortFunc(entries, func(a, b bpf.PolicyMapEntry) int {
		return cmp.Or(cmp.Compare(a.Endpoint, b.Endpoint), cmp.Compare(a.Direction, b.Direction),
			cmp.Compare(a.Peer, b.Peer), cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port),
			cmp.Compare(a.PrefixLen, b.PrefixLen))
	})
	slices.SortFunc(dirs, func(a, b bpf.EndpointDirection) int {
		return cmp.Or(cmp.Compare(a.Endpoint, b.Endpoint), cmp.Compare(a.Direction, b.Direction))
	})
	if asJSON {
		return bpfWriteJSON(w, struct {
			Endpoints []bpf.EndpointDirection `json:"endpoints"`
			Entries   []bpf.PolicyMapEntry    `json:"entries"`
		}{dirs, entries})
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ENDPOINT\tDIRECTION\tENFORCED")
	for _, d := range dirs {
		fmt.Fprintf(tw, "%d\t%s\t%t\n", d.Endpoint, d.Direction, d.Enforced)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "ENDPOINT\tDIRECTION\tPEER\tPROTO\tPORTS\tVERDICT\tPROXY PORT\tRULE")
	for _, e := range entries {
		peer := "any"
		if e.Peer != bpf.IdentityAny {
			peer = strconv.FormatUint(uint64(e.Peer), 10)
		}
		proxy := "-"
		if e.ProxyPort != 0 {
			proxy = strconv.Itoa(int(e.ProxyPort))
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%d\n", e.Endpoint, e.Direction, peer,
			bpfProtoName(e.Protocol), bpfPortRange(e), e.Verdict, proxy, e.RuleID)
	}
	return tw.Flush()
}

func bpfPortRange(e bpf.PolicyMapEntry) string {
	if e.Protocol == bpf.ProtoAny || e.PrefixLen == 0 {
		return "any"
	}
	last := uint32(e.Port) + (1 << (16 - uint32(e.PrefixLen))) - 1
	if e.PrefixLen == 16 {
		return strconv.Itoa(int(e.Port))
	}
	return fmt.Sprintf("%d-%d", e.Port, last)
}

func bpfProtoName(p uint8) string {
	switch p {
	case bpf.ProtoAny:
		return "any"
	case bpf.ProtoTCP:
		return "tcp"
	case bpf.ProtoUDP:
		return "udp"
	case bpf.ProtoSCTP:
		return "sctp"
	case bpf.ProtoICMP:
		return "icmp"
	}
	return strconv.Itoa(int(p))
}

func bpfIPCacheList(m *bpf.PinnedMaps, w io.Writer, asJSON bool) error {
	entries, err := m.IPCache()
	if err != nil {
		return err
	}
	slices.SortFunc(entries, func(a, b bpf.IPCacheEntry) int {
		return cmp.Or(a.Prefix.Addr().Compare(b.Prefix.Addr()), cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits()))
	})
	if asJSON {
		return bpfWriteJSON(w, entries)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PREFIX\tIDENTITY")
	for _, e := range entries {
		fmt.Fprintf(tw, "%s\t%d\n", e.Prefix, e.Identity)
	}
	return tw.Flush()
}

func bpfCTList(m *bpf.PinnedMaps, w io.Writer, asJSON bool) error {
	entries, err := m.Conntrack()
	if err != nil {
		return err
	}
	slices.SortFunc(entries, func(a, b bpf.ConntrackEntry) int {
		return cmp.Or(cmp.Compare(a.Endpoint, b.Endpoint), cmp.Compare(a.Direction, b.Direction),
			a.Src.Compare(b.Src), a.Dst.Compare(b.Dst), cmp.Compare(a.Protocol, b.Protocol))
	})
	if asJSON {
		return bpfWriteJSON(w, entries)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ENDPOINT\tDIRECTION\tPROTO\tSOURCE\tDESTINATION\tPEER\tVERDICT\tPROXY PORT\tRULE\tFLAGS\tIDLE")
	for _, e := range entries {
		proxy := "-"
		if e.ProxyPort != 0 {
			proxy = strconv.Itoa(int(e.ProxyPort))
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%d\t%s\t%s\n", e.Endpoint, e.Direction,
			bpfProtoName(e.Protocol), e.Src, e.Dst, e.Peer, e.Verdict, proxy, e.RuleID,
			bpfCTFlags(e.Flags), e.Idle.Truncate(time.Second))
	}
	return tw.Flush()
}

func bpfCTFlags(f uint8) string {
	s := ""
	for _, fl := range []struct {
		bit  uint8
		name string
	}{{bpf.CTSeenReply, "replied"}, {bpf.CTClosing, "closing"}, {bpf.CTFromProxy, "from-proxy"}, {bpf.CTDefault, "default"}} {
		if f&fl.bit != 0 {
			if s != "" {
				s += ","
			}
			s += fl.name
		}
	}
	if s == "" {
		return "-"
	}
	return s
}
