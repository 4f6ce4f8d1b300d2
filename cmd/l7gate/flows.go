//go:build !l7gate_proxyonly

package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/l7gate/l7gate/agent"
	"github.com/l7gate/l7gate/agentapi"
	"github.com/l7gate/l7gate/observe"
	"github.com/l7gate/l7gate/observe/hubble"
	"github.com/l7gate/l7gate/observe/metrics"
	"github.com/l7gate/l7gate/observe/otlp"
	flowpb "github.com/l7gate/l7gate/proto/hubble/flowpb"
)

// version is reported by the Observer API and in exported flows.
const version = "0.1.0"

// obsFlags are the agent's observability settings (flags, and the same
// names in --config).
type obsFlags struct {
	MetricsAddress      string `json:"metricsAddress"`
	ProxyMetricsAddress string `json:"proxyMetricsAddress"`
	FlowBufferSize      int    `json:"flowBufferSize"`
	FlowQueueSize       int    `json:"flowQueueSize"`
	HubbleListen        string `json:"hubbleListenAddress"`
	ServiceMapAddress   string `json:"serviceMapAddress"`
	HubbleTLSCert       string `json:"hubbleTLSCertFile"`
	HubbleTLSKey        string `json:"hubbleTLSKeyFile"`
	HubbleTLSClientCA   string `json:"hubbleTLSClientCAFile"`
	// Export: Hubble's JSON-lines flow export.
	ExportFile       string   `json:"flowExportFile"`
	ExportMaxSizeMB  int      `json:"flowExportMaxSizeMB"`
	ExportMaxBackups int      `json:"flowExportMaxBackups"`
	ExportCompress   bool     `json:"flowExportCompress"`
	ExportAllowlist  []string `json:"flowExportAllowlist"`
	ExportDenylist   []string `json:"flowExportDenylist"`
	// OTLP access-log export.
	OTLPEndpoint string   `json:"otlpEndpoint"`
	OTLPProtocol string   `json:"otlpProtocol"`
	OTLPInsecure bool     `json:"otlpInsecure"`
	OTLPCAFile   string   `json:"otlpCAFile"`
	OTLPHeaders  []string `json:"otlpHeaders"`
	OTLPResource []string `json:"otlpResourceAttributes"`
	OTLPAllFlows bool     `json:"otlpAllFlows"`
	// Envoy mode: how Envoy reports requests.
	EnvoyAccessLog     string `json:"envoyAccessLog"`
	EnvoyOTLPCollector string `json:"envoyOTLPCollector"`
}

func (o *obsFlags) addFlags(fl *pflag.FlagSet) {
	fl.StringVar(&o.MetricsAddress, "metrics-address", o.MetricsAddress, "serve Prometheus metrics (Hubble's flow metrics, l7gate_*) on GET /metrics at this TCP address, e.g. :9962 (empty: off)")
	fl.StringVar(&o.ProxyMetricsAddress, "proxy-metrics-address", o.ProxyMetricsAddress, "the Go proxy's Prometheus endpoint, e.g. :9964 (passed to the proxy the agent starts; empty: off)")
	fl.IntVar(&o.FlowBufferSize, "flow-buffer-size", o.FlowBufferSize, "flows kept for the Observer API (l7gate observe, hubble observe)")
	fl.IntVar(&o.FlowQueueSize, "flow-queue-size", o.FlowQueueSize, "flows waiting for enrichment; beyond it flows are dropped and counted (l7gate_flows_lost_total)")
	fl.StringVar(&o.HubbleListen, "hubble-listen-address", o.HubbleListen, "also serve the Observer API on TCP (for hubble-relay), e.g. :4244; TLS required beyond loopback")
	fl.StringVar(&o.ServiceMapAddress, "service-map-address", o.ServiceMapAddress, "serve the live service map page (workloads, flows coloured by verdict, the deciding policy) at this loopback address, e.g. 127.0.0.1:9966 (reach it with kubectl port-forward; it has no authentication); fd:N serves on inherited listening socket N (l7gate demo); empty: off")
	fl.StringVar(&o.HubbleTLSCert, "hubble-tls-cert-file", o.HubbleTLSCert, "TLS certificate of the TCP Observer API")
	fl.StringVar(&o.HubbleTLSKey, "hubble-tls-key-file", o.HubbleTLSKey, "TLS key of the TCP Observer API")
	fl.StringVar(&o.HubbleTLSClientCA, "hubble-tls-client-ca-file", o.HubbleTLSClientCA, "CA that client certificates of the TCP Observer API must chain to (mutual TLS)")
	fl.StringVar(&o.ExportFile, "flow-export-file", o.ExportFile, "write flows as JSON lines (Hubble's exporter format; `hubble observe --input-file` reads it) to this file, rotated")
	fl.IntVar(&o.ExportMaxSizeMB, "flow-export-max-size-mb", o.ExportMaxSizeMB, "rotate the flow export file at this size")
	fl.IntVar(&o.ExportMaxBackups, "flow-export-max-backups", o.ExportMaxBackups, "rotated flow export files kept")
	fl.BoolVar(&o.ExportCompress, "flow-export-compress", o.ExportCompress, "gzip rotated flow export files")
	fl.StringArrayVar(&o.ExportAllowlist, "flow-export-allowlist", o.ExportAllowlist, "export only flows matching this Hubble FlowFilter (JSON, repeatable: any matches), e.g. '{\"verdict\":[\"DROPPED\"]}'")
	fl.StringArrayVar(&o.ExportDenylist, "flow-export-denylist", o.ExportDenylist, "leave out flows matching this Hubble FlowFilter (JSON, repeatable)")
	fl.StringVar(&o.OTLPEndpoint, "otlp-endpoint", o.OTLPEndpoint, "send every L7 request as an OpenTelemetry log to this collector: host:port (gRPC) or http(s)://host:port[/v1/logs] with --otlp-protocol http")
	fl.StringVar(&o.OTLPProtocol, "otlp-protocol", o.OTLPProtocol, "grpc or http")
	fl.BoolVar(&o.OTLPInsecure, "otlp-insecure", o.OTLPInsecure, "no TLS to the collector")
	fl.StringVar(&o.OTLPCAFile, "otlp-ca-file", o.OTLPCAFile, "CA of the collector's certificate (default: the system's)")
	fl.StringArrayVar(&o.OTLPHeaders, "otlp-header", o.OTLPHeaders, "header sent with every export, NAME=VALUE (repeatable)")
	fl.StringArrayVar(&o.OTLPResource, "otlp-resource-attribute", o.OTLPResource, "resource attribute added to every log, NAME=VALUE (repeatable), e.g. k8s.cluster.name=prod")
	fl.BoolVar(&o.OTLPAllFlows, "otlp-all-flows", o.OTLPAllFlows, "export the datapath's flows (verdicts, drops) too, not only L7 requests")
	fl.StringVar(&o.EnvoyAccessLog, "envoy-access-log", o.EnvoyAccessLog, "with --http-proxy envoy: how Envoy reports requests to the agent: grpc (its gRPC access-log service) or otel (its OpenTelemetry access logger, OTLP to the agent)")
	fl.StringVar(&o.EnvoyOTLPCollector, "envoy-otlp-collector", o.EnvoyOTLPCollector, "with --http-proxy envoy: host:port of an OTLP gRPC collector Envoy's own OpenTelemetry logger also sends access logs to (attributes from Envoy only, without the agent's pod names)")
}

// merge takes the settings of a --config file that no flag overrode.
func (o *obsFlags) merge(file obsFlags, changed func(string) bool) {
	pick := func(flag string, dst *string, v string) {
		if !changed(flag) {
			*dst = v
		}
	}
	pickInt := func(flag string, dst *int, v int) {
		if !changed(flag) && v != 0 {
			*dst = v
		}
	}
	pickBool := func(flag string, dst *bool, v bool) {
		if !changed(flag) {
			*dst = v
		}
	}
	pickList := func(flag string, dst *[]string, v []string) {
		if !changed(flag) {
			*dst = v
		}
	}
	pick("metrics-address", &o.MetricsAddress, file.MetricsAddress)
	pick("proxy-metrics-address", &o.ProxyMetricsAddress, file.ProxyMetricsAddress)
	pickInt("flow-buffer-size", &o.FlowBufferSize, file.FlowBufferSize)
	pickInt("flow-queue-size", &o.FlowQueueSize, file.FlowQueueSize)
	pick("hubble-listen-address", &o.HubbleListen, file.HubbleListen)
	pick("service-map-address", &o.ServiceMapAddress, file.ServiceMapAddress)
	pick("hubble-tls-cert-file", &o.HubbleTLSCert, file.HubbleTLSCert)
	pick("hubble-tls-key-file", &o.HubbleTLSKey, file.HubbleTLSKey)
	pick("hubble-tls-client-ca-file", &o.HubbleTLSClientCA, file.HubbleTLSClientCA)
	pick("flow-export-file", &o.ExportFile, file.ExportFile)
	pickInt("flow-export-max-size-mb", &o.ExportMaxSizeMB, file.ExportMaxSizeMB)
	pickInt("flow-export-max-backups", &o.ExportMaxBackups, file.ExportMaxBackups)
	pickBool("flow-export-compress", &o.ExportCompress, file.ExportCompress)
	pickList("flow-export-allowlist", &o.ExportAllowlist, file.ExportAllowlist)
	pickList("flow-export-denylist", &o.ExportDenylist, file.ExportDenylist)
	pick("otlp-endpoint", &o.OTLPEndpoint, file.OTLPEndpoint)
	if file.OTLPProtocol != "" {
		pick("otlp-protocol", &o.OTLPProtocol, file.OTLPProtocol)
	}
	pickBool("otlp-insecure", &o.OTLPInsecure, file.OTLPInsecure)
	pick("otlp-ca-file", &o.OTLPCAFile, file.OTLPCAFile)
	pickList("otlp-header", &o.OTLPHeaders, file.OTLPHeaders)
	pickList("otlp-resource-attribute", &o.OTLPResource, file.OTLPResource)
	pickBool("otlp-all-flows", &o.OTLPAllFlows, file.OTLPAllFlows)
	if file.EnvoyAccessLog != "" {
		pick("envoy-access-log", &o.EnvoyAccessLog, file.EnvoyAccessLog)
	}
	pick("envoy-otlp-collector", &o.EnvoyOTLPCollector, file.EnvoyOTLPCollector)
}

func defaultObsFlags() obsFlags {
	return obsFlags{FlowBufferSize: observe.DefaultCapacity, FlowQueueSize: observe.DefaultQueue, ExportMaxSizeMB: 10, ExportMaxBackups: 5,
		OTLPProtocol: otlp.ProtocolGRPC, EnvoyAccessLog: agent.EnvoyAccessLogGRPC}
}

// observability is what runAgent composes from obsFlags.
type observability struct {
	registry *prometheus.Registry
	agent    *metrics.Agent
	flows    agent.FlowsConfig
	// envoy's access-log settings (agent.EnvoyConfig)
	envoyAccessLog, envoyCollector string
	envoyResource                  map[string]string
}

// build checks the settings and builds the metrics and the flow sinks.
func (o *obsFlags) build(node string, log *slog.Logger) (*observability, error) {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ob := &observability{registry: reg, agent: metrics.NewAgent(reg), envoyAccessLog: o.EnvoyAccessLog, envoyCollector: o.EnvoyOTLPCollector}
	if o.EnvoyAccessLog != agent.EnvoyAccessLogGRPC && o.EnvoyAccessLog != agent.EnvoyAccessLogOTel {
		return nil, usageErrorf("--envoy-access-log: want grpc or otel, not %q", o.EnvoyAccessLog)
	}
	if o.EnvoyOTLPCollector != "" {
		if _, _, err := net.SplitHostPort(o.EnvoyOTLPCollector); err != nil {
			return nil, usageErrorf("--envoy-otlp-collector: want host:port: %v", err)
		}
	}
	var err error
	if ob.envoyResource, err = keyValues(o.OTLPResource); err != nil {
		return nil, usageErrorf("--otlp-resource-attribute: %v", err)
	}
	fc := &ob.flows
	fc.Capacity, fc.Queue, fc.Version = o.FlowBufferSize, o.FlowQueueSize, version
	if fc.Capacity <= 0 || fc.Queue <= 0 {
		return nil, usageErrorf("--flow-buffer-size and --flow-queue-size must be positive")
	}
	fc.Sinks = append(fc.Sinks, metrics.NewFlows(reg))
	if o.HubbleListen != "" {
		fc.HubbleListen = o.HubbleListen
		if o.HubbleTLSCert != "" || o.HubbleTLSKey != "" {
			cert, err := tls.LoadX509KeyPair(o.HubbleTLSCert, o.HubbleTLSKey)
			if err != nil {
				return nil, usageErrorf("--hubble-tls-cert-file/--hubble-tls-key-file: %v", err)
			}
			fc.HubbleTLS = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
			if o.HubbleTLSClientCA != "" {
				pool, err := certPool(o.HubbleTLSClientCA)
				if err != nil {
					return nil, usageErrorf("--hubble-tls-client-ca-file: %v", err)
				}
				fc.HubbleTLS.ClientCAs, fc.HubbleTLS.ClientAuth = pool, tls.RequireAndVerifyClientCert
			}
		}
	}
	if o.ServiceMapAddress != "" {
		if fc.ServiceMap, err = listenServiceMap(o.ServiceMapAddress); err != nil {
			return nil, err
		}
	}
	if o.ExportFile != "" {
		allow, err := parseFlowFilters(o.ExportAllowlist)
		if err != nil {
			return nil, usageErrorf("--flow-export-allowlist: %v", err)
		}
		deny, err := parseFlowFilters(o.ExportDenylist)
		if err != nil {
			return nil, usageErrorf("--flow-export-denylist: %v", err)
		}
		filter, err := hubble.NewFilter(allow, deny)
		if err != nil {
			return nil, usageErrorf("--flow-export-allowlist/denylist: %v", err)
		}
		exp, err := hubble.NewExporter(hubble.ExporterConfig{Path: o.ExportFile, MaxSizeMB: o.ExportMaxSizeMB, MaxBackups: o.ExportMaxBackups,
			Compress: o.ExportCompress, Filter: filter, Node: node, Options: hubble.Options{Emitter: "l7gate", Version: version}})
		if err != nil {
			return nil, err
		}
		fc.Sinks = append(fc.Sinks, exp)
		fc.Runners = append(fc.Runners, exp.Run)
		fc.Losses = append(fc.Losses, metrics.SinkLosses{Sink: "export", Stats: exp.Stats})
	}
	if o.OTLPEndpoint != "" {
		cfg := otlp.Config{Endpoint: o.OTLPEndpoint, Protocol: o.OTLPProtocol, Insecure: o.OTLPInsecure, AllFlows: o.OTLPAllFlows,
			Node: node, Version: version, Logger: log}
		var err error
		if cfg.Headers, err = keyValues(o.OTLPHeaders); err != nil {
			return nil, usageErrorf("--otlp-header: %v", err)
		}
		if cfg.Resource, err = keyValues(o.OTLPResource); err != nil {
			return nil, usageErrorf("--otlp-resource-attribute: %v", err)
		}
		if o.OTLPCAFile != "" {
			pool, err := certPool(o.OTLPCAFile)
			if err != nil {
				return nil, usageErrorf("--otlp-ca-file: %v", err)
			}
			cfg.TLS = &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}
		}
		exp, err := otlp.New(cfg)
		if err != nil {
			return nil, usageErrorf("--otlp-endpoint: %v", err)
		}
		fc.Sinks = append(fc.Sinks, exp)
		fc.Runners = append(fc.Runners, exp.Run)
		fc.Losses = append(fc.Losses, metrics.SinkLosses{Sink: "otlp", Stats: exp.Stats})
	}
	return ob, nil
}

func parseFlowFilters(specs []string) ([]*flowpb.FlowFilter, error) {
	var out []*flowpb.FlowFilter
	for _, s := range specs {
		var f flowpb.FlowFilter
		if err := protojson.Unmarshal([]byte(s), &f); err != nil {
			return nil, fmt.Errorf("%q: %w", s, err)
		}
		out = append(out, &f)
	}
	return out, nil
}

func keyValues(specs []string) (map[string]string, error) {
	out := map[string]string{}
	for _, s := range specs {
		k, v, ok := strings.Cut(s, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return nil, fmt.Errorf("want NAME=VALUE, not %q", s)
		}
		out[strings.TrimSpace(k)] = v
	}
	return out, nil
}

func certPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("no certificate in " + path)
	}
	return pool, nil
}

// listenServiceMap listens for the service map page: on a loopback
// address only (the page names every pod, policy and path of the node and
// has no authentication), or on an inherited listening socket ("fd:N", as
// l7gate demo passes one made in the host's network namespace).
func listenServiceMap(addr string) (net.Listener, error) {
	if n, ok := strings.CutPrefix(addr, "fd:"); ok {
		fd, err := strconv.Atoi(n)
		if err != nil || fd < 3 {
			return nil, usageErrorf("--service-map-address %q: want fd:N with N >= 3", addr)
		}
		f := os.NewFile(uintptr(fd), "service-map")
		defer f.Close()
		ln, err := net.FileListener(f)
		if err != nil {
			return nil, usageErrorf("--service-map-address %q: %v", addr, err)
		}
		return ln, nil
	}
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, usageErrorf("--service-map-address %q: %v", addr, err)
	}
	if ip, err := netip.ParseAddr(host); host != "localhost" && (err != nil || !ip.IsLoopback()) {
		return nil, usageErrorf("--service-map-address %q: loopback only (the page has no authentication; use kubectl port-forward)", addr)
	}
	ln, err := agentapi.ListenTCP(context.Background(), addr)
	if err != nil {
		return nil, fmt.Errorf("service map listener: %w", err)
	}
	return ln, nil
}

// serveMetrics serves a registry on GET /metrics at a TCP address until
// ctx ends.
