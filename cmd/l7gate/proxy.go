package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/l7gate/l7gate/agentapi/proxyapi"
	"github.com/l7gate/l7gate/bpf/marks"
	"github.com/l7gate/l7gate/flow"
	httpparser "github.com/l7gate/l7gate/parsers/http"
	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/proxy"
	"github.com/l7gate/l7gate/redirect"
	"github.com/l7gate/l7gate/xds/client"
)

// accessLogDelay bounds how long an access record waits in the proxy's
// buffer before it is written to --access-log.
const accessLogDelay = 100 * time.Millisecond

// flowLinger is how long the first access record of a batch waits for
// more before the batch goes to the agent's flow intake (short: the
// forwarder's queue of 8192 records must absorb what arrives meanwhile).
const flowLinger = 20 * time.Millisecond

// trimWhenQuiet's settings: a second with less than this allocated is
// quiet (an idle proxy allocates a few KiB a second, a request about
// 1 KiB), and a trim runs at most every trimMinGap (its cost is a full
// collection, about 20 ms of CPU with a small heap). After a load, or a
// config change, the free heap goes back to the kernel at once instead of
// over the minutes the runtime's scavenger takes.
const (
	trimTick        = time.Second
	trimMinGap      = 10 * time.Second
	trimQuietAllocs = 64 << 10
)

func (a *app) proxyCommand() *cobra.Command {
	var (
		xdsSocket, adminSocket, node, bpffs, accessLog string
		flowSocket, metricsAddr                        string
		listenAddr, escapedSlashes                     string
		http2Path, listenAddr6                         string
		keepSource, noSockmap                          bool
		maxConns, maxConnsPerSource                    int
		maxHeaderBytes, kafkaMaxFrame                  int
		headerTimeout, idleTimeout, bodyTimeout        time.Duration
		kafkaTopicIDs                                  bool
		kafkaBudget                                    int64
		kafkaIdle, kafkaFrame                          time.Duration
		dropCaps                                       bool
		drainTimeout                                   time.Duration
		handOverSocket                                 string
		checkReady                                     bool
		waitSuccessor                                  time.Duration
		waitAfterDrain                                 bool
		inheritListeners                               []string
		agentSocket, dnsDeny                           string
		dnsHold                                        time.Duration
		dnsFastPath                                    bool
	)
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Run the l7gate Go L7 proxy (normally started by the agent)",
		Long: `proxy is the per-node L7 proxy. It is an xDS client of the agent (over the
agent's Unix socket), serves transparent listeners on the proxy ports the
agent assigns, and enforces HTTP/1.1, HTTP/2, gRPC and Kafka rules on the
connections the datapath redirects to it.

It keeps enforcing the last accepted config while the agent is away and
reconnects when it returns; with no config yet it has no listeners, so
redirected connections are refused, never passed. It needs no access to the
datapath: the agent takes its listener sockets into the datapath's socket
map (pidfd_getfd) once it ACKed them, finding the proxy through its admin
socket.

The admin socket serves /ready, /config_dump (Envoy's ConfigDump shape),
/stats/prometheus and POST /drain. Access logs are JSON lines (one per
request).

Restarts are hitless: a new proxy started while one runs takes the running
one's listener sockets over the hand-over socket (SCM_RIGHTS; the datapath's
socket map holds the same sockets, so no connection finds no listener),
applies its config, takes over the admin socket and tells the old one, which
drains and exits. SIGTERM (or POST /drain) drains: the proxy stops
accepting, finishes requests in flight, closes idle HTTP/1.1 connections
between requests, sends HTTP/2 GOAWAY, closes Kafka connections between
request/response pairs, and exits when all ended or --drain-timeout passed.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if waitSuccessor > 0 {
				return waitForSuccessor(ctx, adminSocket, waitSuccessor, a.stdout)
			}
			if checkReady {
				if err := probeProxyReady(ctx, adminSocket); err != nil {
					return &exitError{code: 1, err: err}
				}
				fmt.Fprintln(a.stdout, "ready")
				return nil
			}
			if dropCaps && a.argv != nil && os.Geteuid() == 0 {
				// Before anything is opened: the process re-executes
				// itself (same PID) holding CAP_NET_ADMIN and
				// CAP_NET_BIND_SERVICE only.
				if err := restrictCapabilities(proxyCapabilities(), a.argv); err != nil {
					return err
				}
			}
			if kafkaMaxFrame <= 0 || kafkaMaxFrame > 1<<30 {
				return usageErrorf("--kafka-max-frame-size: want 1 to %d bytes", 1<<30)
			}
			if kafkaBudget < int64(kafkaMaxFrame) {
				return usageErrorf("--kafka-memory-budget: %d is below --kafka-max-frame-size %d (a largest frame could never be read)", kafkaBudget, kafkaMaxFrame)
			}
			slashes, err := policy.ParseEscapedSlashAction(escapedSlashes)
			if err != nil {
				return usageErrorf("--http-escaped-slashes: %v", err)
			}
			if http2Path != "frames" && http2Path != "nethttp" {
				return usageErrorf("--http2-path: want frames or nethttp, not %q", http2Path)
			}
			if ip := net.ParseIP(listenAddr); ip == nil {
				return usageErrorf("--listen-address: want an IP address, not %q", listenAddr)
			}
			if ip, err := netip.ParseAddr(listenAddr6); listenAddr6 != "" && (err != nil || !ip.Is6() || ip.Is4In6()) {
				return usageErrorf("--listen-address6: want an IPv6 address, not %q", listenAddr6)
			}
			keepSource = upstreamKeepsSource(keepSource, cmd.Flags().Changed("keep-source"), noSockmap)
			maxConns = maxConnections(maxConns, a.log)
			opts := proxy.Options{Logger: a.log, MaxConnections: maxConns, MaxConnectionsPerSource: maxConnsPerSource, KeepSource: keepSource,
				KafkaMaxFrameSize: int32(kafkaMaxFrame), KafkaTopicIDs: kafkaTopicIDs, KafkaMemoryBudget: kafkaBudget,
				KafkaIdleTimeout: kafkaIdle, KafkaFrameTimeout: kafkaFrame, ListenHost: listenAddr, ListenHost6: listenAddr6,
				HTTP: httpparser.Config{Limits: httpparser.Limits{MaxHeaderBytes: maxHeaderBytes}, HeaderTimeout: headerTimeout, IdleTimeout: idleTimeout,
					BodyTimeout: bodyTimeout, EscapedSlashes: slashes, LegacyHTTP2: http2Path == "nethttp"}}
			opts.Version = buildStamp() // GET /version on the admin socket: the agent replaces an adopted proxy of another version
			// Access records are written in batches (one write per
			// accessLogDelay, not per request: on a busy Kafka or HTTP
			// connection the per-record write was the proxy's largest cost
			// after the sockets themselves), flushed on exit; with a flow
			// socket every record also goes to the agent's flow pipeline,
			// encoded once for both.
			var fwd *flow.Forwarder
			if flowSocket != "" {
				fwd = flow.NewForwarder(flowSocket, 0, a.log)
				fwd.Linger = flowLinger
			}
			switch accessLog {
			case "", "-", "stderr":
				var flush func()
				opts.AccessLog, flush = flow.BufferedJSONLinesForward(a.stderr, accessLogDelay, fwd)
				defer flush()
			case "none":
				if fwd != nil {
					opts.AccessLog, _ = flow.BufferedJSONLinesForward(nil, 0, fwd)
				}
			default:
				f, err := os.OpenFile(accessLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
				if err != nil {
					return usageErrorf("--access-log: %v", err)
				}
				defer f.Close()
				var flush func()
				opts.AccessLog, flush = flow.BufferedJSONLinesForward(f, accessLogDelay, fwd)
				defer flush()
			}
			var extra []prometheus.Collector
			if fwd != nil {
				extra = append(extra,
					funcCounter("l7gate_proxy_flow_records_total", "Access records streamed to the agent's flow pipeline (sent), or dropped while it was away or slow (dropped).",
						"outcome", "sent", func() float64 { s, _ := fwd.Stats(); return float64(s) }),
					funcCounter("l7gate_proxy_flow_records_total", "Access records streamed to the agent's flow pipeline (sent), or dropped while it was away or slow (dropped).",
						"outcome", "dropped", func() float64 { _, d := fwd.Stats(); return float64(d) }))
				// Until the proxy stopped (after its drain, whose records
				// it forwards too), then what is queued is written.
				fctx, fstop := context.WithCancel(context.Background())
				fdone := make(chan struct{})
				go func() { fwd.Run(fctx); close(fdone) }()
				defer func() { fstop(); <-fdone }()
			}
			if !noSockmap {
				// The upstream SO_MARK tells the datapath the connection is
				// the proxy's (bpf owns the encoding; setting it needs
				// CAP_NET_ADMIN, not the datapath's maps).
				opts.Mark = func(src policy.Identity, dir policy.Direction) uint32 {
					return marks.Proxy(dir == policy.Egress, uint32(src))
				}
			}
			if handOverSocket == "" {
				handOverSocket = filepath.Join(filepath.Dir(adminSocket), "proxy-handover.sock")
			}
			opts.DrainTimeout = drainTimeout
			switch dnsDeny {
			case "refused":
			case "nxdomain":
				opts.DNS.DenyRcode = 3 // NXDOMAIN
			default:
				return usageErrorf("--dns-deny-response: want refused or nxdomain, not %q", dnsDeny)
			}
			opts.DNS.HoldTimeout = dnsHold
			if !dnsFastPath {
				opts.DNS.FastPathNames = -1
			}
			if agentSocket != "" {
				fc := proxyapi.NewFQDNClient(agentSocket)
				opts.DNS.Learn = func(ctx context.Context, name string, ips []netip.Addr, ttl time.Duration) error {
					return fc.Learn(ctx, proxyapi.FQDNAnswer{Name: name, IPs: ips, TTLSeconds: uint32(ttl / time.Second)})
				}
				opts.DNS.AgentEpoch = fc.Epoch
			}
			// A proxy running already hands its listeners over.
			hctx, hcancel := context.WithTimeout(ctx, 10*time.Second)
			ho, err := proxy.ReceiveHandOver(hctx, handOverSocket)
			hcancel()
			if err != nil {
				return err // the running proxy keeps serving; try again
			}
			inherited, err := inheritedListeners(inheritListeners)
			if err != nil {
				return usageErrorf("--inherit-listener: %v", err)
			}
			switch {
			case ho != nil:
				inherited.Close() // the running proxy's are the same sockets
				opts.Inherited = ho.Sockets
				a.log.Info("taking over from the running proxy", "listeners", len(ho.TCP), "ipv6", len(ho.TCP6), "udp", len(ho.UDP), "udp6", len(ho.UDP6))
			case inherited.Len() > 0:
				opts.Inherited = inherited
				a.log.Info("serving sockets the agent held (connections and datagrams queued meanwhile are served)",
					"listeners", len(inherited.TCP), "ipv6", len(inherited.TCP6), "udp", len(inherited.UDP), "udp6", len(inherited.UDP6))
			}
			p := proxy.New(opts)
			defer p.Close()
			extra = append(extra, dnsMetrics(p)...)
			runCtx, stopRun := context.WithCancel(ctx)
			defer stopRun()
			// Memory a load grew is given back once traffic stops.
			go trimWhenQuiet(runCtx, trimTick, trimMinGap, trimQuietAllocs, func() { trimMemory(a.log) })
			go func() {
				select {
				case <-p.Drained():
					stopRun() // drained (POST /drain, or handed over): exit
				case <-runCtx.Done():
				}
			}()
			startAdmin := func() {
				go func() {
					if err := p.ServeAdmin(runCtx, adminSocket, extra...); err != nil {
						a.log.Error("admin socket", "error", err)
					}
				}()
			}
			serveAdmin := func() {
				if metricsAddr != "" {
					reg := p.Registry(extra...)
					go func() {
						// After a hand-over the old proxy holds the address
						// until it drained: retry while it is in use.
						for {
							err := serveMetrics(runCtx, metricsAddr, reg)
							if !errors.Is(err, syscall.EADDRINUSE) || runCtx.Err() != nil {
								if err != nil {
									a.log.Error("metrics", "error", err)
								}
								return
							}
							select {
							case <-runCtx.Done():
								return
							case <-time.After(500 * time.Millisecond):
							}
						}
					}()
				}
				go func() {
					if err := p.ServeHandOver(runCtx, handOverSocket); err != nil {
						a.log.Error("hand-over socket", "error", err)
					}
				}()
			}
			var handedOver sync.Once
			agentSeen := false // a successor's own agent serves (waitForOwnAgent)
			// A successor takes the admin socket at once, before it serves
			// any connection (its /ready answers 503 until its first config):
			// the agent finds it there and trusts its cgroup, so its
			// upstream connections are believed from the first. (Taken
			// after its first config, a successor in a cgroup of its own —
			// a rolling update's new pod — served connections the datapath
			// did not believe until the agent found it: they failed.)
			startAdmin()
			if ho == nil {
				serveAdmin()
			}
			var version atomic.Uint64
			c, err := client.New(client.Config{SocketPath: xdsSocket, Node: node, Logger: a.log,
				Handler: func(_ context.Context, u client.Update) error {
					if !u.Resources.Complete() {
						return nil // warming: apply once every resource type arrived
					}
					cfg, err := p.ConfigFromXDS(u.Resources, strconv.FormatUint(version.Add(1), 10))
					if err != nil {
						return err
					}
					if ho != nil && agentSocket != "" && !agentSeen {
						waitForOwnAgent(ctx, agentSocket, 10*time.Second, a.log)
						agentSeen = true
					}
					if err := p.Apply(cfg); err != nil {
						return err
					}
					if ho != nil {
						// Serving the handed-over sockets with a config: let
						// the old one drain, and serve the hand-over socket.
						handedOver.Do(func() {
							serveAdmin()
							if err := ho.Ready(); err != nil {
								a.log.Warn("hand-over", "error", err)
							}
						})
					}
					return nil
				}})
			if err != nil {
				return err
			}
			a.log.Info("proxy starting", "xds", xdsSocket, "admin", adminSocket, "node", node, "hand-over", handOverSocket)
			err = c.Run(runCtx)
			// SIGTERM, or a drain that ended: drain (at once if done).
			dctx, dcancel := context.WithTimeout(context.Background(), drainTimeout)
			defer dcancel()
			st := p.Drain(dctx)
			a.log.Info("proxy stopped", "drain", st.Took.Round(time.Millisecond), "cut", st.Cut)
			if ctx.Err() == nil && runCtx.Err() != nil && waitAfterDrain {
				// Handed over (or POST /drain): in a pod, exiting would have
				// the kubelet restart this container, and its new proxy
				// would take the listeners back from the successor.
				a.log.Info("drained; waiting for SIGTERM (--wait-after-drain)")
				<-ctx.Done()
			}
			if ctx.Err() != nil || runCtx.Err() != nil {
				return nil
			}
			return err
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&xdsSocket, "xds-socket", "/run/l7gate/xds.sock", "the agent's xDS Unix socket")
	fl.StringVar(&adminSocket, "admin-socket", "/run/l7gate/proxy-admin.sock", "admin Unix socket (/ready, /config_dump, /stats/prometheus)")
	fl.StringVar(&node, "node", hostname(), "node name (the xDS node id is l7proxy~NODE)")
	fl.StringVar(&bpffs, "bpffs", defaultBPFFS, "unused: the agent registers the proxy's listeners")
	fl.MarkDeprecated("bpffs", "the agent registers the proxy's listeners; the proxy needs no bpffs")
	fl.StringVar(&accessLog, "access-log", "stderr", "where access logs go: stderr, a file path, or none (written in batches, at most 100 ms after the request)")
	fl.StringVar(&metricsAddr, "metrics-address", "", "serve Prometheus metrics on GET /metrics at this TCP address, e.g. :9964 (empty: off; the admin socket's /stats/prometheus serves them too)")
	fl.StringVar(&agentSocket, "agent-socket", "", "the agent's API socket (RUN_DIR/agent.sock): DNS answers for names a toFQDNs selector matches are reported there and held until the agent's datapath admits their addresses (at most --dns-hold-timeout; empty: not reported, so toFQDNs allow nothing new)")
	fl.BoolVar(&dnsFastPath, "dns-fast-path", true, "release a DNS answer at once when the agent confirmed its addresses for this name and client identity, for at least the answer's TTL, before (refreshed in the background at most once a second per name; any agent error, reconnect or config change clears it); false: hold every answer for the agent")
	fl.DurationVar(&dnsHold, "dns-hold-timeout", time.Second, "longest a DNS answer waits for the agent to admit its addresses; then it is released anyway and counted (l7gate_proxy_dns_hold_timeouts_total)")
	fl.StringVar(&dnsDeny, "dns-deny-response", "refused", "answer to a query rules.dns deny: refused or nxdomain")
	fl.StringVar(&flowSocket, "flow-socket", "", "the agent's flow intake (RUN_DIR/flows.sock): access records also stream there for the agent's flow pipeline (Observer API, metrics, OTLP); dropped and counted while the agent is away")
	fl.BoolVar(&keepSource, "keep-source", true, "connect upstream from the client's address (IP_TRANSPARENT, a fresh port) so servers see the client and a same-node ingress proxy sees the pod behind the egress proxy; the datapath steers the replies back (false: from the node's address; --no-sockmap makes false the default)")
	fl.BoolVar(&dropCaps, "drop-capabilities", true, "as root, re-execute holding CAP_NET_ADMIN (SO_MARK, IP_TRANSPARENT) and CAP_NET_BIND_SERVICE (DNS answers from the server's port 53) only: the proxy parses untrusted input and needs no other privilege")
	fl.DurationVar(&drainTimeout, "drain-timeout", 30*time.Second, "on SIGTERM, POST /drain or a hand-over to a new proxy: how long connections may take to end (between requests) before they are closed")
	fl.StringVar(&handOverSocket, "handover-socket", "", "Unix socket a new proxy takes the listeners over from (default: proxy-handover.sock next to --admin-socket)")
	fl.BoolVar(&waitAfterDrain, "wait-after-drain", false, "after handing over to a new proxy (or POST /drain), stay (serving nothing) until SIGTERM instead of exiting: in a pod, an exit would have the kubelet restart the container, whose new proxy would take the listeners back")
	fl.DurationVar(&waitSuccessor, "wait-successor", 0, "only wait (a preStop hook): until a proxy of another PID namespace (the next pod's) serves --admin-socket, at most this long; exits 0 either way")
	fl.BoolVar(&checkReady, "check-ready", false, "only check readiness (a probe): exit 0 when the proxy serving --admin-socket runs in this PID namespace and answers /ready with 200, 1 otherwise")
	fl.StringSliceVar(&inheritListeners, "inherit-listener", nil, "PORT:FD: serve proxy port PORT with the socket inherited as file descriptor FD: a TCP listener or a dns port's UDP socket, IPv4 or IPv6 (the agent passes the sockets it held across a proxy crash)")
	fl.BoolVar(&noSockmap, "no-sockmap", false, "run without the datapath: no SO_MARK on upstream connections")
	fl.StringVar(&listenAddr, "listen-address", "127.0.0.1", "address the proxy listeners bind; redirected connections reach them through the datapath whatever it is")
	fl.StringVar(&listenAddr6, "listen-address6", "::1", "IPv6 address of each proxy port's second listener, the datapath's socket for IPv6 redirects (empty: none, IPv6 redirects to the proxy drop no-listener)")
	fl.IntVar(&maxConns, "max-connections", 0, "concurrent client connections; beyond it new ones are reset at accept (0: from RLIMIT_NOFILE, two descriptors per connection: (limit - 640) / 2, at most 65536; a larger explicit value is kept but warned about; the choice is logged)")
	fl.IntVar(&maxConnsPerSource, "max-connections-per-source", 8192, "concurrent client connections of one source identity (of one address for world/CIDR sources); beyond it new ones are reset at accept")
	fl.IntVar(&maxHeaderBytes, "http-max-header-bytes", 64<<10, "HTTP/1 request line plus headers; larger requests get 431")
	fl.DurationVar(&headerTimeout, "http-header-timeout", 30*time.Second, "time to receive an HTTP/1 request head (408 after it)")
	fl.DurationVar(&idleTimeout, "http-idle-timeout", 5*time.Minute, "idle time before a kept-alive client connection is closed")
	fl.DurationVar(&bodyTimeout, "http-body-timeout", 30*time.Second, "longest wait for the next bytes of a request body; then an HTTP/1 connection is closed, an HTTP/2 stream (also a gRPC client stream) reset")
	fl.StringVar(&http2Path, "http2-path", "frames", "how HTTP/2 with prior knowledge (gRPC included) is proxied: frames (frame-level, HPACK re-encoded per stream) or nethttp (net/http's server and ReverseProxy, the earlier path)")
	fl.StringVar(&escapedSlashes, "http-escaped-slashes", "reject", "request paths with %2F or %5C: reject (400), keep (match and forward encoded) or unescape (decode to /)")
	fl.IntVar(&kafkaMaxFrame, "kafka-max-frame-size", 100<<20, "largest Kafka frame accepted; a larger one closes the connection")
	fl.Int64Var(&kafkaBudget, "kafka-memory-budget", 256<<20, "bytes all Kafka connections together may hold in frame buffers; a connection that needs more waits (up to --kafka-frame-timeout) or is closed")
	fl.DurationVar(&kafkaIdle, "kafka-idle-timeout", 10*time.Minute, "close a Kafka client connection idle this long (nothing sent, nothing awaited; negative: never)")
	fl.DurationVar(&kafkaFrame, "kafka-frame-timeout", 30*time.Second, "time from a Kafka request frame's first byte to its last (slow frames are cut; negative: never)")
	fl.BoolVar(&kafkaTopicIDs, "kafka-topic-ids", false, "admit Kafka requests that address topics by ID (resolved per upstream cluster and identity); off: clients are offered topic-name versions only and ID requests are denied")
	return cmd
}

// inheritedListeners turns PORT:FD pairs into sockets, told apart by
// their type (a TCP listener or a UDP socket) and family (the address
// they are bound to); one per port of each kind.
func inheritedListeners(specs []string) (proxy.Sockets, error) {
	out := proxy.NewSockets()
	fail := func(err error) (proxy.Sockets, error) {
		out.Close()
		return proxy.Sockets{}, err
	}
	for _, spec := range specs {
		ps, fs, ok := strings.Cut(spec, ":")
		port, perr := strconv.ParseUint(ps, 10, 16)
		fd, ferr := strconv.Atoi(fs)
		if !ok || perr != nil || ferr != nil || port == 0 || fd < 3 {
			return fail(fmt.Errorf("%q: want PORT:FD", spec))
		}
		typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
		if err != nil {
			return fail(fmt.Errorf("fd %d is not a socket: %w", fd, err))
		}
		f := os.NewFile(uintptr(fd), "inherited-listener-"+ps)
		p := uint16(port)
		if typ == unix.SOCK_DGRAM {
			pc, err := net.FilePacketConn(f)
			f.Close()
			if err != nil {
				return fail(fmt.Errorf("fd %d: %w", fd, err))
			}
			uc, ok := pc.(*net.UDPConn)
			if !ok {
				pc.Close()
				return fail(fmt.Errorf("fd %d is not a UDP socket", fd))
			}
			m := out.UDP
			if uc.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap().Is6() {
				m = out.UDP6
			}
			if m[p] != nil {
				uc.Close()
				return fail(fmt.Errorf("fd %d: a second UDP socket of one family for port %d", fd, p))
			}
			m[p] = uc
			continue
		}
		ln, err := net.FileListener(f)
		f.Close()
		if err != nil {
			return fail(fmt.Errorf("fd %d: %w", fd, err))
		}
		tl, ok := ln.(*net.TCPListener)
		if !ok {
			ln.Close()
			return fail(fmt.Errorf("fd %d is not a TCP listener", fd))
		}
		m := out.TCP
		if tl.Addr().(*net.TCPAddr).AddrPort().Addr().Unmap().Is6() {
			m = out.TCP6
		}
		if m[p] != nil {
			tl.Close()
			return fail(fmt.Errorf("fd %d: a second listener of one family for port %d", fd, p))
		}
		m[p] = tl
	}
	return out, nil
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}

// upstreamKeepsSource: --keep-source needs the datapath, which recognises
// the upstream connection by its SO_MARK and steers its replies back to the
// proxy; without it (--no-sockmap) the replies would go to the client, so
// the default turns to false. An explicit --keep-source stays (say, for a
// node routed for TPROXY by other means).
func upstreamKeepsSource(keep, explicit, noSockmap bool) bool {
	if noSockmap && !explicit {
		return false
	}
	return keep
}

// probeProxyReady is the proxy container's readiness probe: the proxy
// serving the admin socket must run in this PID namespace and answer
// /ready 200 (not draining, a config applied). During a rolling update the
// old pod's proxy shares the run dir and serves the admin socket until this
// pod's proxy took its listeners over: SO_PEERCRED reports pid 0 for a
// process of another PID namespace, so this pod is not ready until then.
func probeProxyReady(ctx context.Context, adminSocket string) error {
	pid, err := redirect.PeerPID(adminSocket)
	if err != nil {
		return fmt.Errorf("not ready: proxy admin socket: %w", err)
	}
	if pid == 0 {
		return errors.New("not ready: the proxy serving the admin socket runs in another PID namespace (this pod's proxy has not taken over)")
	}
	return adminReady(ctx, adminSocket)
}

// adminReady asks the proxy serving adminSocket for /ready.
func adminReady(ctx context.Context, adminSocket string) error {
	c := http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", adminSocket)
		}}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://proxy/ready", nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("not ready: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
		return fmt.Errorf("not ready: /ready answered %d %s", resp.StatusCode, strings.TrimSpace(string(body)))
	}
	return nil
}

// waitForOwnAgent waits (at most limit, once) until the agent serving
// agentSocket runs in this process's PID namespace before a successor
// serves the handed-over sockets: only that agent can find this proxy
// (SO_PEERCRED on the admin socket, pidfd_getfd) and trust its cgroup. In
// a rolling update the old pod's agent may still serve; it cannot see
// this pod's processes, and connections this proxy served before the new
// pod's agent took over would carry from-proxy marks the datapath does
// not believe (they fail, closed).
func waitForOwnAgent(ctx context.Context, agentSocket string, limit time.Duration, log *slog.Logger) {
	deadline := time.Now().Add(limit)
	for {
		pid, err := redirect.PeerPID(agentSocket)
		if err == nil && pid != 0 {
			return
		}
		if time.Now().After(deadline) {
			log.Warn("the agent serving the run dir is not this pod's; serving anyway", "waited", limit)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// waitForSuccessor is the proxy container's preStop hook: it returns once a
// proxy in another PID namespace (the successor pod's, which took the
// listeners over) serves the admin socket, or after limit, so a
// terminating pod's proxy serves until its successor does.
func waitForSuccessor(ctx context.Context, adminSocket string, limit time.Duration, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for {
		// The successor takes the admin socket before its first config:
		// wait until it answers /ready too.
		if pid, err := redirect.PeerPID(adminSocket); err == nil && pid == 0 && adminReady(ctx, adminSocket) == nil {
			fmt.Fprintln(out, "a successor serves the admin socket")
			return nil
		}
		select {
		case <-ctx.Done():
			fmt.Fprintf(out, "no successor within %s\n", limit)
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// defaultBPFFS is bpf.DefaultBPFFSPath, the deprecated --bpffs's default
// (the proxy-only build does not link package bpf).
const defaultBPFFS = "/sys/fs/bpf/l7gate"

// funcCounter is a counter read from f with one constant label
// (metrics.FuncCounter's; observe/metrics links the Hubble exporter).
func funcCounter(name, help, labelName, labelValue string, f func() float64) prometheus.Collector {
	return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help, ConstLabels: prometheus.Labels{labelName: labelValue}}, f)
}

// dnsMetrics are the DNS proxy's counters.
func dnsMetrics(p *proxy.Proxy) []prometheus.Collector {
	const qHelp = "DNS queries the DNS proxy decided, by outcome (allowed, denied by rules.dns, malformed, answered SERVFAIL for an unusable upstream answer, dropped over the in-flight limit)."
	const hHelp = "DNS answers for toFQDNs names, by outcome: held until the agent's datapath admitted their addresses, released after --dns-hold-timeout (timeout), or released at once because the agent confirmed their addresses for the whole TTL before (known: the fast path)."
	const lHelp = "Round trips to the agent (POST /fqdn) for DNS answers: held answers and the fast path's background refreshes."
	return []prometheus.Collector{
		funcCounter("l7gate_proxy_dns_queries_total", qHelp, "outcome", "allowed", func() float64 { return float64(p.DNSStats().Allowed) }),
		funcCounter("l7gate_proxy_dns_queries_total", qHelp, "outcome", "denied", func() float64 { return float64(p.DNSStats().Denied) }),
		funcCounter("l7gate_proxy_dns_queries_total", qHelp, "outcome", "malformed", func() float64 { return float64(p.DNSStats().Malformed) }),
		funcCounter("l7gate_proxy_dns_queries_total", qHelp, "outcome", "upstream_error", func() float64 { return float64(p.DNSStats().UpstreamErrors) }),
		funcCounter("l7gate_proxy_dns_queries_total", qHelp, "outcome", "dropped", func() float64 { return float64(p.DNSStats().Dropped) }),
		funcCounter("l7gate_proxy_dns_answers_held_total", hHelp, "outcome", "held", func() float64 { return float64(p.DNSStats().Held) }),
		funcCounter("l7gate_proxy_dns_answers_held_total", hHelp, "outcome", "timeout", func() float64 { return float64(p.DNSStats().HoldTimeouts) }),
		funcCounter("l7gate_proxy_dns_answers_held_total", hHelp, "outcome", "known", func() float64 { return float64(p.DNSStats().Known) }),
		funcCounter("l7gate_proxy_dns_agent_learns_total", lHelp, "path", "fqdn", func() float64 { return float64(p.DNSStats().Learns) }),
	}
}
