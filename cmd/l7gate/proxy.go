package main

import (
	"context"
	"net"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/flow"
	httpparser "github.com/l7gate/l7gate/parsers/http"
	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/proxy"
	"github.com/l7gate/l7gate/xds/client"
)

func (a *app) proxyCommand() *cobra.Command {
	var (
		xdsSocket, adminSocket, node, bpffs, accessLog string
		listenAddr, escapedSlashes                     string
		keepSource, noSockmap                          bool
		maxConns, maxConnsPerSource                    int
		maxHeaderBytes, kafkaMaxFrame                  int
		headerTimeout, idleTimeout, bodyTimeout        time.Duration
		kafkaTopicIDs                                  bool
		kafkaBudget                                    int64
		kafkaIdle, kafkaFrame                          time.Duration
		dropCaps                                       bool
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

The admin socket serves /ready, /config_dump (Envoy's ConfigDump shape) and
/stats/prometheus. Access logs are JSON lines (one per request).`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx := cmd.Context()
			if dropCaps && a.argv != nil && os.Geteuid() == 0 {
				// Before anything is opened: the process re-executes
				// itself (same PID) holding CAP_NET_ADMIN only.
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
			if ip := net.ParseIP(listenAddr); ip == nil {
				return usageErrorf("--listen-address: want an IP address, not %q", listenAddr)
			}
			keepSource = upstreamKeepsSource(keepSource, cmd.Flags().Changed("keep-source"), noSockmap)
			opts := proxy.Options{Logger: a.log, MaxConnections: maxConns, MaxConnectionsPerSource: maxConnsPerSource, KeepSource: keepSource,
				KafkaMaxFrameSize: int32(kafkaMaxFrame), KafkaTopicIDs: kafkaTopicIDs, KafkaMemoryBudget: kafkaBudget,
				KafkaIdleTimeout: kafkaIdle, KafkaFrameTimeout: kafkaFrame, ListenHost: listenAddr,
				HTTP: httpparser.Config{Limits: httpparser.Limits{MaxHeaderBytes: maxHeaderBytes}, HeaderTimeout: headerTimeout, IdleTimeout: idleTimeout,
					BodyTimeout: bodyTimeout, EscapedSlashes: slashes}}
			switch accessLog {
			case "", "-", "stderr":
				opts.AccessLog = flow.JSONLines(a.stderr)
			case "none":
			default:
				f, err := os.OpenFile(accessLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
				if err != nil {
					return usageErrorf("--access-log: %v", err)
				}
				defer f.Close()
				opts.AccessLog = flow.JSONLines(f)
			}
			if !noSockmap {
				// The upstream SO_MARK tells the datapath the connection is
				// the proxy's (bpf owns the encoding; setting it needs
				// CAP_NET_ADMIN, not the datapath's maps).
				opts.Mark = func(src policy.Identity, dir policy.Direction) uint32 {
					d := bpf.Ingress
					if dir == policy.Egress {
						d = bpf.Egress
					}
					return bpf.ProxyMark(d, bpf.Identity(src))
				}
			}
			p := proxy.New(opts)
			defer p.Close()
			go func() {
				if err := p.ServeAdmin(ctx, adminSocket); err != nil {
					a.log.Error("admin socket", "error", err)
				}
			}()
			var version atomic.Uint64
			c, err := client.New(client.Config{SocketPath: xdsSocket, Node: node, Logger: a.log,
				Handler: func(_ context.Context, u client.Update) error {
					if !u.Resources.Complete() {
						return nil // warming: apply once every resource type arrived
					}
					cfg, err := proxy.ConfigFromXDS(u.Resources, strconv.FormatUint(version.Add(1), 10))
					if err != nil {
						return err
					}
					return p.Apply(cfg)
				}})
			if err != nil {
				return err
			}
			a.log.Info("proxy starting", "xds", xdsSocket, "admin", adminSocket, "node", node)
			return c.Run(ctx)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&xdsSocket, "xds-socket", "/run/l7gate/xds.sock", "the agent's xDS Unix socket")
	fl.StringVar(&adminSocket, "admin-socket", "/run/l7gate/proxy-admin.sock", "admin Unix socket (/ready, /config_dump, /stats/prometheus)")
	fl.StringVar(&node, "node", hostname(), "node name (the xDS node id is l7proxy~NODE)")
	fl.StringVar(&bpffs, "bpffs", bpf.DefaultBPFFSPath, "unused: the agent registers the proxy's listeners")
	fl.MarkDeprecated("bpffs", "the agent registers the proxy's listeners; the proxy needs no bpffs")
	fl.StringVar(&accessLog, "access-log", "stderr", "where access logs go: stderr, a file path, or none")
	fl.BoolVar(&keepSource, "keep-source", true, "connect upstream from the client's address (IP_TRANSPARENT, a fresh port) so servers see the client and a same-node ingress proxy sees the pod behind the egress proxy; the datapath steers the replies back (false: from the node's address; --no-sockmap makes false the default)")
	fl.BoolVar(&dropCaps, "drop-capabilities", true, "as root, re-execute holding CAP_NET_ADMIN only (SO_MARK, IP_TRANSPARENT): the proxy parses untrusted input and needs no other privilege")
	fl.BoolVar(&noSockmap, "no-sockmap", false, "run without the datapath: no SO_MARK on upstream connections")
	fl.StringVar(&listenAddr, "listen-address", "127.0.0.1", "address the proxy listeners bind; redirected connections reach them through the datapath whatever it is")
	fl.IntVar(&maxConns, "max-connections", 65536, "concurrent client connections; beyond it new ones are reset at accept")
	fl.IntVar(&maxConnsPerSource, "max-connections-per-source", 8192, "concurrent client connections of one source identity (of one address for world/CIDR sources); beyond it new ones are reset at accept")
	fl.IntVar(&maxHeaderBytes, "http-max-header-bytes", 64<<10, "HTTP/1 request line plus headers; larger requests get 431")
	fl.DurationVar(&headerTimeout, "http-header-timeout", 30*time.Second, "time to receive an HTTP/1 request head (408 after it)")
	fl.DurationVar(&idleTimeout, "http-idle-timeout", 5*time.Minute, "idle time before a kept-alive client connection is closed")
	fl.DurationVar(&bodyTimeout, "http-body-timeout", 30*time.Second, "longest wait for the next bytes of a request body; then an HTTP/1 connection is closed, an HTTP/2 stream (also a gRPC client stream) reset")
	fl.StringVar(&escapedSlashes, "http-escaped-slashes", "reject", "request paths with %2F or %5C: reject (400), keep (match and forward encoded) or unescape (decode to /)")
	fl.IntVar(&kafkaMaxFrame, "kafka-max-frame-size", 100<<20, "largest Kafka frame accepted; a larger one closes the connection")
	fl.Int64Var(&kafkaBudget, "kafka-memory-budget", 256<<20, "bytes all Kafka connections together may hold in frame buffers; a connection that needs more waits (up to --kafka-frame-timeout) or is closed")
	fl.DurationVar(&kafkaIdle, "kafka-idle-timeout", 10*time.Minute, "close a Kafka client connection idle this long (nothing sent, nothing awaited; negative: never)")
	fl.DurationVar(&kafkaFrame, "kafka-frame-timeout", 30*time.Second, "time from a Kafka request frame's first byte to its last (slow frames are cut; negative: never)")
	fl.BoolVar(&kafkaTopicIDs, "kafka-topic-ids", false, "admit Kafka requests that address topics by ID (resolved per upstream cluster and identity); off: clients are offered topic-name versions only and ID requests are denied")
	return cmd
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
