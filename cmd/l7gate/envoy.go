//go:build !l7gate_proxyonly

package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"

	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/envoy/admin"
	"github.com/l7gate/l7gate/envoy/als"
	"github.com/l7gate/l7gate/envoy/bootstrap"
	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/xds/envoytranslate"
)

func (a *app) envoyCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "envoy",
		Short: "Run stock upstream Envoy as l7gate's HTTP/gRPC proxy",
		Long: `Commands for the per-node stock upstream Envoy that the agent configures over
xDS: its bootstrap, a view of what it runs (config-dump), a preview of the
resources the agent sends it (translate) and a stand-alone access-log service.`,
	}
	cmd.AddCommand(a.envoyBootstrapCommand(), a.envoyConfigDumpCommand(), a.envoyTranslateCommand(), a.envoyAccessLogCommand())
	return cmd
}

func (a *app) envoyBootstrapCommand() *cobra.Command {
	var cfg bootstrap.Config
	var output string
	cmd := &cobra.Command{
		Use:   "bootstrap --node NAME [-o yaml|json]",
		Short: "Print the Envoy bootstrap for a node",
		Long: `bootstrap prints the bootstrap Envoy starts with: node id envoy~<node>, ADS
over the agent's xDS Unix socket (HTTP/2), the admin endpoint on a Unix
socket and the static cluster of the agent's access-log service. Listeners,
routes and clusters then arrive over xDS.

--node defaults to $NODE_NAME (set it from spec.nodeName in the DaemonSet).`,
		Example: `  l7gate envoy bootstrap --node worker-1 > /etc/envoy/envoy.yaml
  envoy -c /etc/envoy/envoy.yaml`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.Node == "" {
				cfg.Node = os.Getenv("NODE_NAME")
			}
			if cfg.Node == "" {
				return usageErrorf("--node: required (or set NODE_NAME)")
			}
			if output != "yaml" && output != "json" {
				return usageErrorf("-o: want yaml or json, not %q", output)
			}
			b, err := bootstrap.Generate(cfg)
			if err != nil {
				return fmt.Errorf("bootstrap: %w", err)
			}
			out, err := bootstrap.Marshal(b, output)
			if err != nil {
				return err
			}
			_, err = a.stdout.Write(out)
			return err
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&cfg.Node, "node", "", "Kubernetes node name (node id envoy~NAME)")
	fl.StringVar(&cfg.XDSSocket, "xds-socket", bootstrap.DefaultXDSSocket, "the agent's xDS Unix socket")
	fl.StringVar(&cfg.AccessLogSocket, "access-log-socket", bootstrap.DefaultAccessLogSocket, "the agent's access-log service Unix socket")
	fl.StringVar(&cfg.AdminSocket, "admin-socket", bootstrap.DefaultAdminSocket, "Unix socket for Envoy's admin endpoint")
	fl.BoolVar(&cfg.Delta, "delta", false, "use incremental (delta) xDS instead of state of the world")
	fl.StringVarP(&output, "output", "o", "yaml", "output format: yaml or json")
	return cmd
}

func (a *app) envoyConfigDumpCommand() *cobra.Command {
	var addr, resource, output string
	cmd := &cobra.Command{
		Use:   "config-dump [--admin unix:PATH] [--resource TYPE] [-o summary|json|yaml]",
		Short: "Show what an Envoy runs: listeners, filter chains per endpoint, RBAC rules",
		Long: `config-dump fetches /config_dump from an Envoy admin endpoint and decodes it.
The default summary lists each listener (address, transparency, original_src
mark), its filter chains with the endpoint each selects (destination
addresses on ingress, source addresses on egress) and its route name, then
each route configuration's RBAC policies: the policy and rule they came
from, the peers they admit and the requests they match.

-o json and -o yaml print the whole decoded dump. --resource passes
Envoy's ?resource= filter (e.g. dynamic_listeners, dynamic_route_configs).`,
		Example: `  l7gate envoy config-dump
  l7gate envoy config-dump --admin unix:/run/l7gate/envoy-admin.sock -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch output {
			case "summary", "json", "yaml":
			default:
				return usageErrorf("-o: want summary, json or yaml, not %q", output)
			}
			c, err := admin.NewClient(addr)
			if err != nil {
				return usageErrorf("--admin: %v", err)
			}
			body, err := c.ConfigDump(cmd.Context(), resource)
			if err != nil {
				return err
			}
			d, err := admin.Decode(body)
			if err != nil {
				return err
			}
			if output == "summary" {
				return admin.Summarize(d).WriteText(a.stdout)
			}
			js, err := d.MarshalJSON()
			if err != nil {
				return fmt.Errorf("encode: %w", err)
			}
			return a.writeJSONOrYAML(js, output)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&addr, "admin", "unix:"+bootstrap.DefaultAdminSocket, "Envoy admin endpoint: unix:PATH or http://HOST:PORT")
	fl.StringVar(&resource, "resource", "", "only this resource type (Envoy's ?resource=)")
	fl.StringVarP(&output, "output", "o", "summary", "output format: summary, json or yaml")
	return cmd
}

// writeJSONOrYAML prints compact JSON indented, or as YAML.
func (a *app) writeJSONOrYAML(js []byte, output string) error {
	if output == "yaml" {
		y, err := yaml.JSONToYAML(js)
		if err != nil {
			return fmt.Errorf("encode: %w", err)
		}
		_, err = a.stdout.Write(y)
		return err
	}
	var v any
	if err := json.Unmarshal(js, &v); err != nil {
		return fmt.Errorf("encode: %w", err)
	}
	out, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Errorf("encode: %w", err)
	}
	_, err = fmt.Fprintf(a.stdout, "%s\n", out)
	return err
}

func (a *app) envoyTranslateCommand() *cobra.Command {
	var files []string
	var node, output string
	var ingressPort, egressPort uint16
	var ipv6 bool
	cmd := &cobra.Command{
		Use:   "translate -f PATH... [--node NAME] [-o yaml|json]",
		Short: "Print the xDS resources the agent sends Envoy for some policy",
		Long: `translate computes the policy of the given objects and prints the listeners,
routes and clusters an Envoy on --node receives (all endpoints when --node
is empty), with the given proxy ports. Warnings name what stock Envoy cannot
enforce as written.`,
		Example: `  l7gate envoy translate -f examples/starwars --ingress-port 15001`,
		RunE: func(cmd *cobra.Command, args []string) error {
			files = append(files, args...)
			if len(files) == 0 {
				return usageErrorf("give at least one file or folder with -f")
			}
			if output != "yaml" && output != "json" {
				return usageErrorf("-o: want yaml or json, not %q", output)
			}
			objs, errs := a.loadObjects(files)
			for _, e := range errs {
				fmt.Fprintln(a.stderr, "error:", e)
			}
			if len(errs) > 0 {
				return &exitError{code: 2, err: fmt.Errorf("%d invalid object(s)", len(errs))}
			}
			snap, err := policy.Compute(objs, policy.NewIdentityAllocator())
			if err != nil {
				return err
			}
			res, err := envoytranslate.Translate(snap, envoytranslate.Config{
				Node:             node,
				IPv6:             ipv6,
				AccessLogCluster: bootstrap.AccessLogCluster,
				Marks:            envoytranslate.Marks{Ingress: bpf.ProxyMark(bpf.Ingress, 0), Egress: bpf.ProxyMark(bpf.Egress, 0)},
				ProxyPorts: []envoytranslate.ProxyPort{
					{Direction: policy.Ingress, Parser: envoytranslate.ParserHTTP, Port: ingressPort},
					{Direction: policy.Egress, Parser: envoytranslate.ParserHTTP, Port: egressPort},
				},
			})
			if err != nil {
				return fmt.Errorf("translate: %w", err)
			}
			for _, w := range res.Warnings {
				fmt.Fprintln(a.stderr, "warning:", w)
			}
			var parts []string
			add := func(kind string, m proto.Message) error {
				b, err := bootstrap.Marshal(m, "json")
				if err != nil {
					return err
				}
				parts = append(parts, fmt.Sprintf(`{"kind":%q,"resource":%s}`, kind, b))
				return nil
			}
			for _, l := range res.Listeners {
				if err := add("Listener", l); err != nil {
					return err
				}
			}
			for _, r := range res.Routes {
				if err := add("RouteConfiguration", r); err != nil {
					return err
				}
			}
			for _, c := range res.Clusters {
				if err := add("Cluster", c); err != nil {
					return err
				}
			}
			return a.writeJSONOrYAML([]byte("["+strings.Join(parts, ",")+"]"), output)
		},
	}
	fl := cmd.Flags()
	fl.StringArrayVarP(&files, "filename", "f", nil, "file or folder of Kubernetes YAML/JSON (repeatable)")
	fl.StringVar(&node, "node", "", "only endpoints on this node")
	fl.Uint16Var(&ingressPort, "ingress-port", 15001, "ingress HTTP proxy port")
	fl.Uint16Var(&egressPort, "egress-port", 15002, "egress HTTP proxy port")
	fl.BoolVar(&ipv6, "ipv6", false, "dual-stack node: listeners also bind [::] and match IPv6 endpoints")
	fl.StringVarP(&output, "output", "o", "yaml", "output format: yaml or json")
	return cmd
}

func (a *app) envoyAccessLogCommand() *cobra.Command {
	var socket string
	cmd := &cobra.Command{
		Use:   "access-log-server [--socket PATH]",
		Short: "Serve Envoy's gRPC access logs and print one JSON record per request",
		Long: `access-log-server runs the access-log service (envoy.service.accesslog.v3) the
bootstrap points Envoy at, without the agent, and prints each request as a
JSON record: addresses, method, path, host, status, verdict and the policy
rule that decided. It stops on SIGINT/SIGTERM.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			enc := json.NewEncoder(a.stdout)
			return als.Serve(cmd.Context(), als.Config{Socket: socket, Log: a.log, Sink: func(r *flow.Record) {
				if err := enc.Encode(r); err != nil {
					a.log.Warn("write access-log record", "err", err)
				}
			}})
		},
	}
	cmd.Flags().StringVar(&socket, "socket", bootstrap.DefaultAccessLogSocket, "Unix socket to listen on")
	return cmd
}
