//go:build !l7gate_proxyonly

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/l7gate/l7gate/agent"
	"github.com/l7gate/l7gate/agent/node"
	"github.com/l7gate/l7gate/agent/supervisor"
	"github.com/l7gate/l7gate/agentapi"
	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/observe/metrics"
	"github.com/l7gate/l7gate/policy"
	dnsproxy "github.com/l7gate/l7gate/proxy/dns"
	"github.com/l7gate/l7gate/redirect"
	"github.com/l7gate/l7gate/source"
	"github.com/l7gate/l7gate/xds/server"
)

// agentFlags are the agent's settings; a --config file (YAML with the same
// names) sets defaults that flags override.
type agentFlags struct {
	Source     string `json:"source"`
	BPFFS      string `json:"bpffs"`
	RunDir     string `json:"runDir"`
	StateDir   string `json:"stateDir"`
	Node       string `json:"node"`
	PortRange  string `json:"proxyPortRange"`
	SetupNode  bool   `json:"setupNode"`
	StartProxy bool   `json:"startProxy"`
	// TakeOver: take the run dir's sockets over from an agent still
	// running (a rolling update's new pod); the old one stands by.
	TakeOver   bool   `json:"takeOver"`
	ACKTimeout string `json:"ackTimeout"`
	HTTPProxy  string `json:"httpProxy"`
	EnvoyName  string `json:"envoyProcessName"`
	SourceKind string `json:"sourceKind"`
	// AllowLocalhost: always (the host reaches every local endpoint) or
	// policy (the host is a peer like any other).
	AllowLocalhost string `json:"allowLocalhost"`
	// KubeAPIServer: addresses of the kube-apiserver entity (for the
	// folder source; the k8s source reads default/kubernetes).
	KubeAPIServer []string `json:"kubeAPIServer"`
	// EscapedSlashes: reject, keep or unescape %2F/%5C in request paths
	// (the Go proxy's and Envoy's setting).
	EscapedSlashes string `json:"httpEscapedSlashes"`
	// ProxyArgs are extra arguments for the Go proxy the agent starts.
	ProxyArgs []string `json:"proxyArgs"`
	// ProxyExecutable is the binary the agent starts the Go proxy from
	// (empty: the proxy-only build l7gate-proxy next to this binary when
	// it exists, else this binary); its version must be the agent's.
	ProxyExecutable string `json:"proxyExecutable"`
	// Observability: metrics, the Observer API, flow export, OTLP.
	obsFlags
	// SocketLB: load-balance Services in cgroup hooks (connect, sendmsg)
	// of the processes in SocketLBCgroup, a path under the cgroup v2 root.
	SocketLB       bool   `json:"socketLB"`
	SocketLBCgroup string `json:"socketLBCgroup"`
	// SocketLBCgroupRoot is where that cgroup v2 hierarchy is mounted
	// (default: this process's cgroup2 mount). In a container, the host's
	// hierarchy mounted from a hostPath: the container's own cgroup2 mount
	// shows only its own cgroup, never the pods'.
	SocketLBCgroupRoot string `json:"socketLBCgroupRoot"`
	// PolicyAuditMode puts every policy on this node in audit mode: what
	// policy would drop or deny is forwarded and recorded as audit.
	PolicyAuditMode bool `json:"policyAuditMode"`
}

func (a *app) agentCommand() *cobra.Command {
	f := agentFlags{BPFFS: bpf.DefaultBPFFSPath, RunDir: "/run/l7gate", StateDir: "/var/lib/l7gate", Node: hostname(),
		PortRange: "10000-20000", SetupNode: true, StartProxy: true, ACKTimeout: "30s", HTTPProxy: agent.HTTPProxyGo, EnvoyName: "envoy", SourceKind: "folder",
		AllowLocalhost: string(policy.LocalhostAlways), EscapedSlashes: string(policy.EscapedSlashesReject), obsFlags: defaultObsFlags(),
		SocketLB: true, SocketLBCgroup: "/"}
	k8sf := defaultK8sFlags()
	var configFile string
	cmd := &cobra.Command{
		Use:   "agent --source DIR | --source-kind k8s",
		Short: "Run the per-node agent: policy → proxy (xDS) → eBPF datapath",
		Long: `agent is l7gate's per-node daemon. It reads Namespaces, Pods, CiliumNetworkPolicy,
CiliumClusterwideNetworkPolicy and NetworkPolicy from --source (a folder of
Kubernetes YAML/JSON, watched for changes) or, with --source-kind k8s, from the
Kubernetes API (informers; policy status conditions and Events written back
unless --policy-status=false), computes each endpoint's policy,
allocates proxy ports, pushes listeners and L7 rules to the proxy over xDS
(socket RUN_DIR/xds.sock) and, only after every proxy ACKed, syncs the eBPF
datapath. Then — and only then — the revision is "implemented".

Pods are endpoints of this node when their IP routes to a veth here; the
datapath is attached to that veth. The agent starts the Go proxy (or adopts
a running one); the proxy and the pinned datapath outlive the agent, so
restarting the agent drops no connection. It starts the proxy from
l7gate-proxy next to its own binary (the proxy-only build make build and the
image ship) when that file exists, else from its own binary, and logs which
and why; it never starts one whose 'version' differs from its own.
SIGHUP hands the proxy over to a new process of that executable.

Files: RUN_DIR/agent.sock (status API, used by 'l7gate status'),
RUN_DIR/xds.sock, RUN_DIR/proxy-admin.sock, RUN_DIR/proxy.log,
STATE_DIR/proxy-ports.json (port allocations, reused after a restart).`,
		Example: `  l7gate agent --source /etc/l7gate/objects
  ip netns exec node l7gate agent --source objs --bpffs /run/l7gate-demo/bpffs --run-dir /run/l7gate-demo`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if configFile != "" {
				data, err := os.ReadFile(configFile)
				if err != nil {
					return usageErrorf("--config: %v", err)
				}
				fromFile := f
				if err := yaml.UnmarshalStrict(data, &fromFile); err != nil {
					return usageErrorf("--config %s: %v", configFile, err)
				}
				// flags given on the command line win over the file
				ch := cmd.Flags().Changed
				pick := func(flag string, dst *string, v string) {
					if !ch(flag) {
						*dst = v
					}
				}
				pick("source", &f.Source, fromFile.Source)
				pick("bpffs", &f.BPFFS, fromFile.BPFFS)
				pick("run-dir", &f.RunDir, fromFile.RunDir)
				pick("state-dir", &f.StateDir, fromFile.StateDir)
				pick("node", &f.Node, fromFile.Node)
				pick("proxy-port-range", &f.PortRange, fromFile.PortRange)
				pick("ack-timeout", &f.ACKTimeout, fromFile.ACKTimeout)
				pick("http-proxy", &f.HTTPProxy, fromFile.HTTPProxy)
				pick("envoy-process-name", &f.EnvoyName, fromFile.EnvoyName)
				pick("source-kind", &f.SourceKind, fromFile.SourceKind)
				pick("allow-localhost", &f.AllowLocalhost, fromFile.AllowLocalhost)
				pick("http-escaped-slashes", &f.EscapedSlashes, fromFile.EscapedSlashes)
				pick("proxy-executable", &f.ProxyExecutable, fromFile.ProxyExecutable)
				if !ch("kube-apiserver") {
					f.KubeAPIServer = fromFile.KubeAPIServer
				}
				if !ch("proxy-arg") {
					f.ProxyArgs = fromFile.ProxyArgs
				}
				if !ch("setup-node") {
					f.SetupNode = fromFile.SetupNode
				}
				if !ch("start-proxy") {
					f.StartProxy = fromFile.StartProxy
				}
				if !ch("policy-audit-mode") {
					f.PolicyAuditMode = fromFile.PolicyAuditMode
				}
				if !ch("take-over") {
					f.TakeOver = fromFile.TakeOver
				}
				f.obsFlags.merge(fromFile.obsFlags, ch)
				if !ch("socket-lb") {
					f.SocketLB = fromFile.SocketLB
				}
				pick("socket-lb-cgroup", &f.SocketLBCgroup, fromFile.SocketLBCgroup)
				pick("socket-lb-cgroup-root", &f.SocketLBCgroupRoot, fromFile.SocketLBCgroupRoot)
			}
			var src source.Source
			var reporter source.PolicyReporter
			switch f.SourceKind {
			case "folder":
				if f.Source == "" {
					return usageErrorf("--source is required: a folder of Kubernetes YAML (or --source-kind k8s)")
				}
				if st, err := os.Stat(f.Source); err != nil || !st.IsDir() {
					return usageErrorf("--source %s: not a folder", f.Source)
				}
				src = &source.Folder{Dir: f.Source, Logger: a.log}
			case "k8s":
				s, w, err := a.agentK8sSource(cmd.Context(), k8sf, f.Node)
				if err != nil {
					return err
				}
				src = s
				if w != nil {
					go w.Run(cmd.Context()) // returns when the context ends
					reporter = w
				}
			default:
				return usageErrorf("--source-kind: want folder or k8s, not %q", f.SourceKind)
			}
			if f.HTTPProxy != agent.HTTPProxyGo && f.HTTPProxy != agent.HTTPProxyEnvoy {
				return usageErrorf("--http-proxy: want go or envoy, not %q", f.HTTPProxy)
			}
			lo, hi, err := parsePortRange(f.PortRange)
			if err != nil {
				return usageErrorf("--proxy-port-range: %v", err)
			}
			ackTimeout, err := time.ParseDuration(f.ACKTimeout)
			if err != nil || ackTimeout <= 0 {
				return usageErrorf("--ack-timeout: want a duration such as 30s, not %q", f.ACKTimeout)
			}
			popts, err := agentPolicyOptions(f)
			if err != nil {
				return err
			}
			slashes, err := policy.ParseEscapedSlashAction(f.EscapedSlashes)
			if err != nil {
				return usageErrorf("--http-escaped-slashes: %v", err)
			}
			return a.runAgent(cmd.Context(), f, src, reporter, lo, hi, ackTimeout, popts, slashes)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&configFile, "config", "", "YAML file with any of: sourceKind, source, bpffs, runDir, stateDir, node, proxyPortRange, setupNode, startProxy, ackTimeout, httpProxy, envoyProcessName, allowLocalhost, kubeAPIServer, httpEscapedSlashes, proxyArgs, proxyExecutable, socketLB, socketLBCgroup, socketLBCgroupRoot (flags win)")
	fl.BoolVar(&f.SocketLB, "socket-lb", f.SocketLB, "load-balance Services (ClusterIP, TCP and UDP) at connect()/sendmsg() in eBPF, so egress policy and the proxies see the backend pod; kube-proxy keeps the rest (NodePort, external traffic); false detaches it")
	fl.StringVar(&f.SocketLBCgroup, "socket-lb-cgroup", f.SocketLBCgroup, "cgroup v2 directory whose processes (the pods) are load-balanced, relative to the cgroup v2 root (default the root: every process)")
	fl.StringVar(&f.SocketLBCgroupRoot, "socket-lb-cgroup-root", "", "where the cgroup v2 hierarchy of --socket-lb-cgroup is mounted (default: this process's cgroup2 mount, else one mounted under the run dir); in a container, the host's /sys/fs/cgroup from a hostPath (of a hybrid host, its unified/ is used)")
	fl.StringVar(&f.SourceKind, "source-kind", f.SourceKind, "where objects come from: folder (--source DIR) or k8s (the API server: --kubeconfig or in-cluster)")
	fl.StringVar(&f.Source, "source", "", "with --source-kind folder: folder of Kubernetes YAML/JSON to enforce (watched)")
	k8sf.addFlags(fl)
	fl.StringVar(&f.BPFFS, "bpffs", f.BPFFS, "bpf filesystem directory for the datapath's pinned maps and links")
	fl.StringVar(&f.RunDir, "run-dir", f.RunDir, "directory for sockets (xds.sock, agent.sock, proxy-admin.sock)")
	fl.StringVar(&f.StateDir, "state-dir", f.StateDir, "directory for persisted state (proxy port allocations)")
	fl.StringVar(&f.Node, "node", f.Node, "this node's name")
	fl.StringVar(&f.PortRange, "proxy-port-range", f.PortRange, "range for proxy ports, MIN-MAX")
	fl.BoolVar(&f.SetupNode, "setup-node", f.SetupNode, "set the sysctls and policy routing redirects need")
	fl.BoolVar(&f.StartProxy, "start-proxy", f.StartProxy, "start (and restart) the Go proxy, or adopt a running one")
	fl.BoolVar(&f.TakeOver, "take-over", f.TakeOver, "take the run dir's sockets over from an agent that still runs (a DaemonSet's rolling update with maxSurge: the new pod's agent serves, the old one stands by, writing nothing, until it is stopped); off: refuse to start beside a running agent")
	fl.StringVar(&f.ACKTimeout, "ack-timeout", f.ACKTimeout, "how long to wait for proxies to ACK a push")
	fl.StringVar(&f.HTTPProxy, "http-proxy", f.HTTPProxy, "who enforces HTTP/gRPC rules: go (the Go proxy) or envoy (a stock Envoy configured over xDS; the Go proxy keeps Kafka)")
	fl.StringVar(&f.AllowLocalhost, "allow-localhost", f.AllowLocalhost, "always: the node itself (reserved:host, e.g. kubelet probes) reaches every local endpoint whatever its ingress policy says (deny rules still win, L7 rules still apply), as Cilium does under Kubernetes; policy: the host is a peer like any other")
	fl.StringSliceVar(&f.KubeAPIServer, "kube-apiserver", nil, "address of the kube-apiserver entity (repeatable; the k8s source reads them from the default/kubernetes EndpointSlice)")
	fl.StringVar(&f.EscapedSlashes, "http-escaped-slashes", f.EscapedSlashes, "request paths with %2F or %5C, in the Go proxy and in Envoy: reject (400), keep (match and forward encoded) or unescape (decode to /)")
	fl.StringVar(&f.ProxyExecutable, "proxy-executable", "", "binary to start the Go proxy from (empty: l7gate-proxy next to this binary, the proxy-only build make build and the image ship, which links none of the agent's packages and idles at about a third of the RSS; without it, this binary); one whose `version` differs from this binary's is never started")
	fl.StringArrayVar(&f.ProxyArgs, "proxy-arg", nil, "extra argument for the Go proxy the agent starts (repeatable), e.g. --proxy-arg=--kafka-topic-ids")
	f.obsFlags.addFlags(fl)
	fl.BoolVar(&f.PolicyAuditMode, "policy-audit-mode", f.PolicyAuditMode, "audit mode for every policy on this node: what policy would drop or deny is forwarded and recorded with verdict audit (per policy or namespace: the annotation l7gate.io/audit: \"true\")")
	fl.StringVar(&f.EnvoyName, "envoy-process-name", f.EnvoyName, "with --http-proxy envoy: Envoy's process name; its listeners are taken into the datapath with pidfd_getfd (needs a shared PID namespace and CAP_SYS_PTRACE)")
	return cmd
}

// runAgent composes the agent: node setup, the proxy-port allocator, the
// pinned datapath, the xDS server, then agent.Run with them.
// agentPolicyOptions parses the policy options among the agent's flags.
func agentPolicyOptions(f agentFlags) (policy.Options, error) {
	o := policy.Options{AuditMode: f.PolicyAuditMode}
	var err error
	if o.AllowLocalhost, err = policy.ParseLocalhostMode(f.AllowLocalhost); err != nil {
		return o, usageErrorf("--allow-localhost: %v", err)
	}
	for _, s := range f.KubeAPIServer {
		ip, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil {
			return o, usageErrorf("--kube-apiserver: want an IP address, not %q", s)
		}
		o.KubeAPIServer = append(o.KubeAPIServer, ip)
	}
	return o, nil
}

func (a *app) runAgent(ctx context.Context, f agentFlags, src source.Source, reporter source.PolicyReporter, lo, hi uint16, ackTimeout time.Duration,
	popts policy.Options, slashes policy.EscapedSlashAction) error {
	for _, d := range []string{f.RunDir, f.StateDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create %s: %w", d, err)
		}
	}
	if f.SetupNode {
		if err := node.Setup(ctx); err != nil {
			return fmt.Errorf("node setup: %w", err)
		}
	}
	ports, err := redirect.NewPortAllocator(redirect.PortAllocatorConfig{Min: lo, Max: hi,
		StatePath: filepath.Join(f.StateDir, "proxy-ports.json")})
	if err != nil {
		return err
	}
	dp, err := bpf.Open(ctx, bpf.Config{BPFFSPath: f.BPFFS, Logger: a.log})
	if err != nil {
		return fmt.Errorf("open datapath: %w", err)
	}
	defer dp.Close() // pins and links stay
	if err := dp.AttachSocketLookup("/proc/self/ns/net"); err != nil {
		return fmt.Errorf("attach socket lookup: %w", err)
	}
	// The proxy upstream pre-filter only saves the socket lookup's cost:
	// if it cannot be turned on, tc looks every candidate up.
	if err := enableUpstreamFilter(dp, f); err != nil {
		a.log.Warn("proxy upstream pre-filter off: every untracked ACK into a proxied pod is looked up", "err", err)
	}
	lb, lbWhere, err := openSocketLB(ctx, f, a.log)
	if err != nil {
		return err
	}
	if lb != nil {
		defer lb.Close() // pins and links stay
	}
	xs, err := agent.NewXDSServer(agentapi.XDSSocket(f.RunDir), ackTimeout, f.TakeOver, a.log)
	if err != nil {
		return fmt.Errorf("xds server: %w", err)
	}
	ob, err := f.obsFlags.build(f.Node, a.log)
	if err != nil {
		return err
	}
	ob.registry.MustRegister(
		metrics.FuncCounter("l7gate_datapath_events_total", "Datapath events (drops, new-flow verdicts) by outcome: emitted to the ring buffer, or suppressed by the per-CPU rate limit.",
			"outcome", "emitted", func() float64 { e, _, _ := dp.EventStats(); return float64(e) }),
		metrics.FuncCounter("l7gate_datapath_events_total", "Datapath events (drops, new-flow verdicts) by outcome: emitted to the ring buffer, or suppressed by the per-CPU rate limit.",
			"outcome", "suppressed", func() float64 { _, s, _ := dp.EventStats(); return float64(s) }))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if f.MetricsAddress != "" {
		go func() {
			if err := serveMetrics(ctx, f.MetricsAddress, ob.registry); err != nil {
				a.log.Error("metrics", "error", err)
			}
		}()
	}
	xdsDone := make(chan error, 1)
	standBy := make(chan bool, 1)
	go func() { xdsDone <- serveXDS(ctx, xs, f.TakeOver, standBy, a.log) }()
	cfg := agent.Config{
		Node: f.Node, Source: src, Reporter: reporter,
		Datapath: dp, XDS: agent.ServerXDS{Server: xs}, Ports: ports,
		RunDir: f.RunDir, StateDir: f.StateDir, ACKTimeout: ackTimeout, Logger: a.log,
		HTTPProxy: f.HTTPProxy, Envoy: agent.EnvoyConfig{ProcessName: f.EnvoyName, EscapedSlashes: slashes,
			AccessLog: ob.envoyAccessLog, OTLPCollector: ob.envoyCollector, OTLPResource: ob.envoyResource,
			IPv6: node.IPv6Enabled()},
		Policy: popts, Flows: ob.flows, Metrics: ob.agent, SocketLB: lbWhere,
	}
	if lb != nil {
		cfg.ServiceLB = lb
	}
	if f.TakeOver {
		// Standing by, the xDS server stops (serveXDS); only with
		// --take-over, whose listener leaves the socket file (the new
		// agent's) in place when it closes.
		cfg.StandBy = func(standing bool) {
			select {
			case <-standBy: // only the latest matters
			default:
			}
			standBy <- standing
		}
	}
	// toFQDNs resolve through the names the Go proxy's DNS proxy reports
	// (POST /fqdn); kept in the state dir across restarts.
	fqdnCache, err := dnsproxy.NewCache(dnsproxy.CacheConfig{StatePath: filepath.Join(f.StateDir, fqdnCacheFile)})
	if err != nil {
		a.log.Warn("fqdn cache not restored; starting empty", "error", err)
	}
	go fqdnCache.Run(ctx, 10*time.Second, a.log)
	cfg.FQDN = fqdnCache
	if f.StartProxy {
		args := []string{"--http-escaped-slashes", string(slashes)}
		if f.ProxyMetricsAddress != "" {
			args = append(args, "--metrics-address", f.ProxyMetricsAddress)
		}
		args = append(args, f.ProxyArgs...)
		cfg.Proxy = &supervisor.Config{Executable: f.ProxyExecutable, Version: buildStamp(), Cgroup: proxyCgroup(f.RunDir, a.log), Args: args, Restart: restartOnSIGHUP(ctx, a.log)}
	}
	runErr := make(chan error, 1)
	go func() { runErr <- agent.Run(ctx, cfg) }()
	select {
	case err = <-runErr:
		cancel()
		<-xdsDone
	case err = <-xdsDone:
		if ctx.Err() == nil {
			err = fmt.Errorf("xds server: %w", err)
		}
		cancel()
		<-runErr
	}
	return err
}

// serveXDS serves the agent's xDS server until ctx ends, except while the
// agent stands by (standBy: true): a rolling update's new agent serves the
// run dir, and the proxies subscribed to this one (the new pod's proxy
// too, when it started before the new agent took the socket over) must
// reconnect to it, so this server stops (their streams end; its socket
// file, the new agent's now, stays). It serves again, taking the socket
// over, when the agent resumes (false).
func serveXDS(ctx context.Context, xs *server.Server[agent.XDSState], takeOver bool, standBy <-chan bool, log *slog.Logger) error {
	for {
		sctx, stop := context.WithCancel(ctx)
		errc := make(chan error, 1)
		go func() { errc <- xs.ListenAndServe(sctx) }()
	serving:
		for {
			select {
			case err := <-errc:
				stop()
				return err
			case s := <-standBy:
				if s && takeOver {
					stop()
					<-errc
					log.Warn("standing by: xds server stopped, its proxies reconnect to the serving agent")
					break serving
				}
			}
		}
		for resume := false; !resume; {
			select {
			case <-ctx.Done():
				return nil
			case s := <-standBy:
				resume = !s
			}
		}
		log.Info("resuming: serving xds again")
	}
}

func parsePortRange(s string) (uint16, uint16, error) {
	lo, hi, ok := strings.Cut(s, "-")
	if !ok {
		return 0, 0, fmt.Errorf("want MIN-MAX, not %q", s)
	}
	l, err1 := strconv.ParseUint(lo, 10, 16)
	h, err2 := strconv.ParseUint(hi, 10, 16)
	if err1 != nil || err2 != nil || l == 0 || h < l {
		return 0, 0, fmt.Errorf("invalid range %q", s)
	}
	return uint16(l), uint16(h), nil
}

func (a *app) statusCommand() *cobra.Command {
	var runDir, output string
	var ready bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the agent's health, endpoints, policies and proxy ACK state",
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := agentapi.FetchStatus(cmd.Context(), runDir)
			if err != nil {
				return err
			}
			if ready {
				// for readiness probes: exit 1 until a revision is implemented
				// and while the newest one is not, and while the agent that
				// answers is not this pod's (a rolling update's old pod shares
				// the run dir and answers until the new agent binds it).
				if pid, err := redirect.PeerPID(agentapi.StatusSocket(runDir)); err == nil && pid == 0 {
					return &exitError{code: 1, err: errors.New("not ready: the agent answering runs in another PID namespace (an old pod's; this pod's agent has not bound the run dir yet)")}
				}
				if !st.Ready || st.ImplementedRevision != st.Revision {
					return &exitError{code: 1, err: fmt.Errorf("not ready: revision %d, implemented %d", st.Revision, st.ImplementedRevision)}
				}
				fmt.Fprintln(a.stdout, "ready")
				return nil
			}
			if output == "json" {
				return writeJSON(a.stdout, st)
			}
			w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintf(w, "Node:\t%s\n", st.Node)
			fmt.Fprintf(w, "Ready:\t%v\n", st.Ready)
			fmt.Fprintf(w, "Revision:\t%d (implemented %d)\n", st.Revision, st.ImplementedRevision)
			local := 0
			for _, e := range st.Endpoints {
				if e.Local {
					local++
				}
			}
			fmt.Fprintf(w, "Endpoints:\t%d local, %d in the cluster\n", local, len(st.Endpoints))
			fmt.Fprintf(w, "Identities:\t%d\n", len(st.Identities))
			if st.SocketLB != "" {
				failing := 0
				for _, s := range st.Services {
					if s.Error != "" {
						failing++
					}
				}
				fmt.Fprintf(w, "Services:\t%d frontend(s), %d not synced; socket LB %s (l7gate service list)\n", len(st.Services), failing, st.SocketLB)
			}
			for _, p := range st.ProxyPorts {
				fmt.Fprintf(w, "Proxy port:\t%s/%s → %d\n", p.Direction, p.Parser, p.Port)
			}
			for _, p := range st.Proxies {
				acked := []string{}
				for t, ok := range p.Acked {
					acked = append(acked, fmt.Sprintf("%s=%v", t[strings.LastIndex(t, ".")+1:], ok))
				}
				fmt.Fprintf(w, "Proxy:\t%s (%d stream(s)) acked %s\n", p.ID, p.Streams, strings.Join(acked, " "))
			}
			for _, p := range st.Policies {
				fmt.Fprintf(w, "Policy:\t%s %s implemented at revision %d\n", p.Kind, p.Name, p.ImplementedRevision)
			}
			if st.AuditMode {
				fmt.Fprintf(w, "Audit mode:\tnode-wide (--policy-audit-mode): every policy is audited, not enforced\n")
			}
			for _, p := range st.Audit {
				fmt.Fprintf(w, "In audit:\t%s %s for %s\n", p.PolicyKind, p.Policy, strings.Join(p.Endpoints, ", "))
			}
			if st.LastError != "" {
				fmt.Fprintf(w, "Last error:\t%s\n", st.LastError)
			}
			for _, f := range st.Failures {
				fmt.Fprintf(w, "Fails closed:\t%s (%s): %s: %s\n", f.Endpoint, strings.Join(f.Directions, ","), f.Step, f.Error)
			}
			for _, e := range st.Errors {
				fmt.Fprintf(w, "Invalid object:\t%s\n", e)
			}
			return w.Flush()
		},
	}
	cmd.Flags().StringVar(&runDir, "run-dir", "/run/l7gate", "the agent's run directory")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	cmd.Flags().BoolVar(&ready, "ready", false, "only check readiness: exit 0 when the newest revision is implemented by an agent in this PID namespace, 1 otherwise (for probes)")
	return cmd
}

func (a *app) endpointCommand() *cobra.Command {
	var runDir, output string
	list := &cobra.Command{
		Use:   "list",
		Short: "List endpoints (pods) with identity, IPs and whether they are on this node",
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := agentapi.FetchStatus(cmd.Context(), runDir)
			if err != nil {
				return err
			}
			if output == "json" {
				return writeJSON(a.stdout, st.Endpoints)
			}
			w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "NAMESPACE\tNAME\tIDENTITY\tIPS\tLOCAL\tDEVICE")
			for _, e := range st.Endpoints {
				ips := make([]string, len(e.IPs))
				for i, ip := range e.IPs {
					ips[i] = ip.String()
				}
				fmt.Fprintf(w, "%s\t%s\t%d\t%s\t%v\t%s\n", e.Namespace, e.Name, e.Identity, strings.Join(ips, ","), e.Local, e.Device)
			}
			return w.Flush()
		},
	}
	list.Flags().StringVar(&runDir, "run-dir", "/run/l7gate", "the agent's run directory")
	list.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	cmd := &cobra.Command{Use: "endpoint", Short: "Inspect endpoints"}
	cmd.AddCommand(list)
	return cmd
}

func (a *app) identityCommand() *cobra.Command {
	var runDir, output string
	list := &cobra.Command{
		Use:   "list",
		Short: "List security identities and their labels",
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := agentapi.FetchStatus(cmd.Context(), runDir)
			if err != nil {
				return err
			}
			if output == "json" {
				return writeJSON(a.stdout, st.Identities)
			}
			w := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(w, "IDENTITY\tLABELS")
			for _, id := range st.Identities {
				fmt.Fprintf(w, "%d\t%s\n", id.ID, strings.Join(id.Labels, " "))
			}
			return w.Flush()
		},
	}
	list.Flags().StringVar(&runDir, "run-dir", "/run/l7gate", "the agent's run directory")
	list.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	cmd := &cobra.Command{Use: "identity", Short: "Inspect identities"}
	cmd.AddCommand(list)
	return cmd
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// proxyCgroup creates the cgroup the agent starts its Go proxy in (the
// datapath believes from-proxy marks only from the proxies' cgroups).
// Without one (no writable cgroup v2) the proxy starts in the agent's
// cgroup, which the agent then trusts if it is not the root; in the root
// cgroup the proxy's redirects stay drops (fail closed), and the log says
// why.
func proxyCgroup(runDir string, log *slog.Logger) string {
	mount, err := bpf.EnsureCgroup2(filepath.Join(runDir, "cgroup2"))
	if err == nil {
		var path string
		if path, _, err = bpf.CreateProxyCgroup(mount, agentapi.ProxyCgroupName(runDir)); err == nil {
			return path
		}
	}
	log.Warn("no cgroup of its own for the Go proxy; it shares the agent's", "error", err)
	return ""
}
