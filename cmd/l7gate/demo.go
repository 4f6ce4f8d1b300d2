//go:build !l7gate_proxyonly

package main

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/l7gate/l7gate/demo"
)

func (a *app) demoCommand() *cobra.Command {
	var (
		scenarioDir string
		keep        bool
		cfg         demo.Config
		agentLevel  string
		serviceMap  string
	)
	cfg.Probe = demo.DefaultProbeOptions()
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a policy scenario on this machine in network namespaces (root)",
		Long: `demo builds a node network namespace with one namespace per pod of a
scenario behind a veth, starts built-in servers in the pods, runs
l7gate agent in the node namespace and, step by step, applies the
scenario's policies and sends each check's request from inside the source
pod over the real datapath and proxy.

Without --scenario it runs the built-in Star Wars scenario of Cilium's
getting-started guide. A scenario folder holds objects/ (Namespaces and
Pods; status.podIP in 198.18.0.0/15; the annotation l7gate.io/serve, e.g.
"http:80,grpc:50051,kafka:9092", starts built-in servers) and steps.yaml
(see demo/README.md).

Each check prints one line: step, source → destination, request,
expected and observed verdict (from real traffic: allowed, denied by L7
policy, or dropped = no connection), and the rules policy.Trace names for
it. Everything the demo creates is removed at exit, also on Ctrl-C and on
failure, unless --keep; a kept topology is removed with
"l7gate demo down WORKDIR". With --keep the agent also serves the live
service map (the scenario's workloads and flows, coloured by verdict) and
its URL is printed.

Exit status: 0 when every check observed what it expected, 1 otherwise or
when the scenario could not run, 2 for an invalid scenario.`,
		Example: `  sudo l7gate demo
  sudo l7gate demo --scenario examples/scenarios/grpc
  sudo l7gate demo --keep`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var sc *demo.Scenario
			var err error
			if scenarioDir == "" {
				sc, err = demo.Builtin()
			} else {
				sc, err = demo.LoadScenarioDir(scenarioDir)
			}
			if err != nil {
				return &exitError{code: 2, err: fmt.Errorf("invalid scenario:\n%w", err)}
			}
			if os.Geteuid() != 0 {
				return &exitError{code: 1, err: errors.New("demo needs root (network namespaces, veths, bpffs)")}
			}
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find own executable: %w", err)
			}
			cfg.Scenario, cfg.Executable, cfg.Keep = sc, exe, keep
			cfg.AgentLogLevel = agentLevel
			cfg.Out, cfg.Log = a.stdout, a.log
			// The service map: on with --keep (or an explicit address), on
			// a loopback socket of this (the host's) network namespace
			// that the agent inherits.
			if keep || cmd.Flags().Changed("service-map-address") {
				if serviceMap != "" {
					ln, err := listenServiceMap(serviceMap)
					if err != nil {
						return err
					}
					defer ln.Close()
					cfg.ServiceMap = ln
				}
			}
			sum, err := demo.Run(cmd.Context(), cfg)
			if err != nil {
				if cmd.Context().Err() != nil {
					return &exitError{code: 1, err: fmt.Errorf("interrupted (%w)", err)}
				}
				return &exitError{code: 1, err: err}
			}
			if sum.Failed > 0 {
				return &exitError{code: 1, err: fmt.Errorf("%d of %d checks failed", sum.Failed, len(sum.Results))}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&scenarioDir, "scenario", "", "scenario folder (objects/ and steps.yaml); default: the built-in starwars")
	f.BoolVar(&keep, "keep", false, "leave the topology, servers and agent running and print how to reach them")
	f.DurationVar(&cfg.Probe.ConnectTimeout, "connect-timeout", cfg.Probe.ConnectTimeout, "a check's connection not established by then counts as dropped")
	f.DurationVar(&cfg.Probe.Timeout, "request-timeout", cfg.Probe.Timeout, "bound on each check's request")
	f.DurationVar(&cfg.StepTimeout, "step-timeout", 30*time.Second, "bound on the wait for the agent to implement a step's policies")
	f.StringVar(&agentLevel, "agent-log-level", "", "log level passed to the agent (its log is in the work dir)")
	f.StringVar(&serviceMap, "service-map-address", "127.0.0.1:0", "with --keep (or when given): where the agent serves the live service map, a loopback address (port 0: any free port); its URL is printed; empty: off")
	cmd.AddCommand(a.demoServeCommand(), a.demoDownCommand(), demoProbeCommand())
	return cmd
}

// demoServeCommand is the built-in server process the demo starts inside
// a pod's namespace.
func (a *app) demoServeCommand() *cobra.Command {
	var config string
	cmd := &cobra.Command{
		Use:    "serve --config JSON",
		Short:  "Run a pod's built-in servers (started by demo inside the pod's namespace)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			sc, err := demo.ParseServerConfig(config)
			if err != nil {
				return usageErrorf("--config: %v", err)
			}
			return demo.Serve(cmd.Context(), sc, a.log, func() { fmt.Fprintln(a.stdout, "ready") })
		},
	}
	cmd.Flags().StringVar(&config, "config", "", "server config (JSON)")
	return cmd
}

// demoProbeCommand is the process the demo starts, in its socket-LB
// cgroup, for a check to a Service.
func demoProbeCommand() *cobra.Command {
	return &cobra.Command{
		Use:                "probe --spec JSON",
		Short:              "Send one check's request and print what happened (started by demo for checks to Services)",
		Hidden:             true,
		DisableFlagParsing: true,
		RunE: func(_ *cobra.Command, args []string) error {
			if code := demo.ProbeMain(args); code != 0 {
				return &exitError{code: code, err: errors.New("probe failed")}
			}
			return nil
		},
	}
}

func (a *app) demoDownCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "down WORKDIR",
		Short: "Remove a topology left by demo --keep: its processes, namespaces, mounts and work dir",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := demo.Down(cmd.Context(), args[0], a.log); err != nil {
				return &exitError{code: 1, err: err}
			}
			fmt.Fprintf(a.stdout, "removed %s\n", args[0])
			return nil
		},
	}
}
