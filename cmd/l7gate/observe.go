//go:build !l7gate_proxyonly

package main

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/l7gate/l7gate/agentapi"
	flowpb "github.com/l7gate/l7gate/proto/hubble/flowpb"
	observerpb "github.com/l7gate/l7gate/proto/hubble/observerpb"
)

// observeFlags are `l7gate observe`'s selectors and filters, named as
// `hubble observe` names them.
type observeFlags struct {
	server, runDir, output     string
	last, first                uint64
	follow, drops, all         bool
	since, until               string
	verdicts, types            []string
	httpMethods, httpPaths     []string
	httpStatus, protocols      []string
	pods, fromPods, toPods     []string
	namespaces                 []string
	fromNamespaces, toNamespcs []string
	labels, fromLabels, toLbls []string
	ips, fromIPs, toIPs        []string
	ports, fromPorts, toPorts  []string
	identities                 []uint
	fromIdentities, toIdents   []uint
	directions                 []string
	nodes                      []string
}

func (a *app) observeCommand() *cobra.Command {
	var f observeFlags
	cmd := &cobra.Command{
		Use:   "observe",
		Short: "Show flows: datapath verdicts and drops, L7 requests, with the policy that decided",
		Long: `observe prints the flows the agent saw: the datapath's verdict on every new
flow and every drop, and every L7 request the Go proxy or Envoy handled, with
pods, labels, identities and the policy rule that decided (default-deny names
the policies that made the endpoint default-deny).

It is a client of the agent's Hubble Observer API (RUN_DIR/hubble.sock), the
same API the hubble CLI uses: 'hubble observe --server unix://RUN_DIR/hubble.sock'
shows the same flows. Filters are Hubble's: repeating a flag ORs its values,
different flags AND; --pod, --namespace, --label, --ip and --port match
either side.`,
		Example: `  l7gate observe --last 50
  l7gate observe -f --verdict DROPPED
  l7gate observe --verdict AUDIT
  l7gate observe --http-method PUT --to-pod default/deathstar -o json`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req, err := f.request(time.Now())
			if err != nil {
				return usageErrorf("%v", err)
			}
			server := f.server
			if server == "" {
				server = agentapi.ObserverTarget(f.runDir)
			}
			conn, err := agentapi.DialObserver(server, nil)
			if err != nil {
				return err
			}
			defer conn.Close()
			print := observePrinter(a.stdout, f.output)
			if print == nil {
				return usageErrorf("--output: want compact, json or jsonpb, not %q", f.output)
			}
			return conn.Flows(cmd.Context(), req, print)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.server, "server", "", "Observer API address (default unix://RUN_DIR/hubble.sock)")
	fl.StringVar(&f.runDir, "run-dir", "/run/l7gate", "the agent's run directory")
	fl.StringVarP(&f.output, "output", "o", "compact", "compact, json (one flow per line) or jsonpb (one GetFlowsResponse per line, Hubble's export format)")
	fl.Uint64Var(&f.last, "last", 0, "the last N flows (default 20 without --follow, --since or --first)")
	fl.Uint64Var(&f.first, "first", 0, "the first N flows kept")
	fl.BoolVar(&f.all, "all", false, "every flow kept")
	fl.BoolVarP(&f.follow, "follow", "f", false, "keep printing new flows")
	fl.StringVar(&f.since, "since", "", "flows since a time (RFC 3339) or a duration ago (5m)")
	fl.StringVar(&f.until, "until", "", "flows until a time (RFC 3339) or a duration ago")
	fl.StringSliceVar(&f.verdicts, "verdict", nil, "FORWARDED, DROPPED, REDIRECTED, AUDIT (forwarded: a policy in audit mode would drop or deny it)")
	fl.BoolVar(&f.drops, "drops", false, "only drops (--verdict DROPPED)")
	fl.StringSliceVarP(&f.types, "type", "t", nil, "event type: drop, policy-verdict, l7")
	fl.StringSliceVar(&f.httpMethods, "http-method", nil, "HTTP method")
	fl.StringSliceVar(&f.httpPaths, "http-path", nil, "HTTP path (regular expression)")
	fl.StringSliceVar(&f.httpStatus, "http-status", nil, "HTTP status code (200) or class (5+)")
	fl.StringSliceVar(&f.protocols, "protocol", nil, "tcp, udp, icmp, http, kafka")
	fl.StringSliceVar(&f.pods, "pod", nil, "[namespace/]pod-name-prefix, either side")
	fl.StringSliceVar(&f.fromPods, "from-pod", nil, "source [namespace/]pod-name-prefix")
	fl.StringSliceVar(&f.toPods, "to-pod", nil, "destination [namespace/]pod-name-prefix")
	fl.StringSliceVarP(&f.namespaces, "namespace", "n", nil, "namespace, either side")
	fl.StringSliceVar(&f.fromNamespaces, "from-namespace", nil, "source namespace")
	fl.StringSliceVar(&f.toNamespcs, "to-namespace", nil, "destination namespace")
	fl.StringSliceVarP(&f.labels, "label", "l", nil, "label selector (k8s:app=web), either side")
	fl.StringSliceVar(&f.fromLabels, "from-label", nil, "source label selector")
	fl.StringSliceVar(&f.toLbls, "to-label", nil, "destination label selector")
	fl.StringSliceVar(&f.ips, "ip", nil, "IP or CIDR, either side")
	fl.StringSliceVar(&f.fromIPs, "from-ip", nil, "source IP or CIDR")
	fl.StringSliceVar(&f.toIPs, "to-ip", nil, "destination IP or CIDR")
	fl.StringSliceVar(&f.ports, "port", nil, "L4 port, either side")
	fl.StringSliceVar(&f.fromPorts, "from-port", nil, "source port")
	fl.StringSliceVar(&f.toPorts, "to-port", nil, "destination port")
	fl.UintSliceVar(&f.identities, "identity", nil, "security identity, either side")
	fl.UintSliceVar(&f.fromIdentities, "from-identity", nil, "source identity")
	fl.UintSliceVar(&f.toIdents, "to-identity", nil, "destination identity")
	fl.StringSliceVar(&f.directions, "traffic-direction", nil, "ingress or egress")
	fl.StringSliceVar(&f.nodes, "node-name", nil, "node name (glob)")
	return cmd
}

// request builds the GetFlowsRequest the flags describe.
func (f *observeFlags) request(now time.Time) (*observerpb.GetFlowsRequest, error) {
	req := &observerpb.GetFlowsRequest{Follow: f.follow}
	var err error
	if req.Since, err = parseObserveTime(f.since, now); err != nil {
		return nil, fmt.Errorf("--since: %w", err)
	}
	if f.until != "" && f.follow {
		return nil, fmt.Errorf("--until and --follow exclude each other")
	}
	if req.Until, err = parseObserveTime(f.until, now); err != nil {
		return nil, fmt.Errorf("--until: %w", err)
	}
	switch {
	case f.first > 0:
		req.First, req.Number = true, f.first
	case f.all:
		req.Number = 0
	case f.last > 0:
		req.Number = f.last
	case !f.follow && req.Since == nil && req.Until == nil:
		req.Number = 20
	}
	base := &flowpb.FlowFilter{HttpMethod: f.httpMethods, HttpPath: f.httpPaths, HttpStatusCode: f.httpStatus, NodeName: f.nodes}
	verdicts := f.verdicts
	if f.drops {
		verdicts = append(verdicts, "DROPPED")
	}
	for _, v := range verdicts {
		n, ok := flowpb.Verdict_value[strings.ToUpper(v)]
		if !ok {
			return nil, fmt.Errorf("--verdict: unknown verdict %q", v)
		}
		base.Verdict = append(base.Verdict, flowpb.Verdict(n))
	}
	for _, t := range f.types {
		switch strings.ToLower(t) {
		case "drop":
			base.EventType = append(base.EventType, &flowpb.EventTypeFilter{Type: 1})
		case "policy-verdict":
			base.EventType = append(base.EventType, &flowpb.EventTypeFilter{Type: 5})
		case "l7":
			base.EventType = append(base.EventType, &flowpb.EventTypeFilter{Type: 129})
		default:
			return nil, fmt.Errorf("--type: want drop, policy-verdict or l7, not %q", t)
		}
	}
	for _, p := range f.protocols {
		base.Protocol = append(base.Protocol, strings.ToLower(p))
	}
	for _, d := range f.directions {
		n, ok := flowpb.TrafficDirection_value[strings.ToUpper(d)]
		if !ok || n == 0 {
			return nil, fmt.Errorf("--traffic-direction: want ingress or egress, not %q", d)
		}
		base.TrafficDirection = append(base.TrafficDirection, flowpb.TrafficDirection(n))
	}
	base.SourcePod = append(base.SourcePod, f.fromPods...)
	base.DestinationPod = append(base.DestinationPod, f.toPods...)
	for _, ns := range f.fromNamespaces {
		base.SourcePod = append(base.SourcePod, ns+"/")
	}
	for _, ns := range f.toNamespcs {
		base.DestinationPod = append(base.DestinationPod, ns+"/")
	}
	base.SourceLabel, base.DestinationLabel = f.fromLabels, f.toLbls
	base.SourceIp, base.DestinationIp = f.fromIPs, f.toIPs
	base.SourcePort, base.DestinationPort = f.fromPorts, f.toPorts
	base.SourceIdentity, base.DestinationIdentity = u32s(f.fromIdentities), u32s(f.toIdents)

	// Flags for either side: one filter with them as the source, one as
	// the destination (Hubble's way).
	either := len(f.pods) > 0 || len(f.namespaces) > 0 || len(f.labels) > 0 || len(f.ips) > 0 || len(f.ports) > 0 || len(f.identities) > 0
	if !either {
		if !isEmptyFilter(base) {
			req.Whitelist = []*flowpb.FlowFilter{base}
		}
		return req, nil
	}
	src, dst := cloneFilter(base), cloneFilter(base)
	pods := append([]string{}, f.pods...)
	for _, ns := range f.namespaces {
		pods = append(pods, ns+"/")
	}
	src.SourcePod = append(src.SourcePod, pods...)
	dst.DestinationPod = append(dst.DestinationPod, pods...)
	src.SourceLabel = append(src.SourceLabel, f.labels...)
	dst.DestinationLabel = append(dst.DestinationLabel, f.labels...)
	src.SourceIp = append(src.SourceIp, f.ips...)
	dst.DestinationIp = append(dst.DestinationIp, f.ips...)
	src.SourcePort = append(src.SourcePort, f.ports...)
	dst.DestinationPort = append(dst.DestinationPort, f.ports...)
	src.SourceIdentity = append(src.SourceIdentity, u32s(f.identities)...)
	dst.DestinationIdentity = append(dst.DestinationIdentity, u32s(f.identities)...)
	req.Whitelist = []*flowpb.FlowFilter{src, dst}
	return req, nil
}

func u32s(in []uint) []uint32 {
	var out []uint32
	for _, v := range in {
		out = append(out, uint32(v))
	}
	return out
}

func cloneFilter(f *flowpb.FlowFilter) *flowpb.FlowFilter { return proto.Clone(f).(*flowpb.FlowFilter) }

func isEmptyFilter(f *flowpb.FlowFilter) bool { return proto.Size(f) == 0 }

// parseObserveTime reads RFC 3339 or a duration before now.
func parseObserveTime(s string, now time.Time) (*timestamppb.Timestamp, error) {
	if s == "" {
		return nil, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		return timestamppb.New(now.Add(-d)), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return nil, fmt.Errorf("want RFC 3339 or a duration such as 5m, not %q", s)
	}
	return timestamppb.New(t), nil
}

// observePrinter prints responses: compact (one line per flow, the
// policies that decided on it), json (the flow) or jsonpb (the response).
func observePrinter(w io.Writer, output string) func(*observerpb.GetFlowsResponse) error {
	opts := protojson.MarshalOptions{UseProtoNames: true}
	switch output {
	case "json":
		return func(r *observerpb.GetFlowsResponse) error {
			if r.GetFlow() == nil {
				return nil
			}
			b, err := opts.Marshal(r.GetFlow())
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(w, "%s\n", b)
			return err
		}
	case "jsonpb":
		return func(r *observerpb.GetFlowsResponse) error {
			b, err := opts.Marshal(r)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(w, "%s\n", b)
			return err
		}
	case "compact", "text", "":
		return func(r *observerpb.GetFlowsResponse) error {
			if l := r.GetLostEvents(); l != nil {
				_, err := fmt.Fprintf(w, "EVENTS LOST: %s %d\n", l.GetSource(), l.GetNumEventsLost())
				return err
			}
			_, err := fmt.Fprintln(w, compactFlow(r.GetFlow()))
			return err
		}
	}
	return nil
}

// compactFlow is one flow on one line, like `hubble observe`'s compact
// output, plus the policies that decided.
func compactFlow(f *flowpb.Flow) string {
	var b strings.Builder
	b.WriteString(f.GetTime().AsTime().Local().Format("Jan _2 15:04:05.000"))
	if f.GetNodeName() != "" {
		b.WriteString(" [" + f.GetNodeName() + "]")
	}
	fmt.Fprintf(&b, ": %s %s -> %s %s %s %s (%s)", peer(f.GetSource(), f.GetIP().GetSource(), srcPort(f)), ident(f.GetSource()),
		peer(f.GetDestination(), f.GetIP().GetDestination(), dstPort(f)), ident(f.GetDestination()), flowType(f), f.GetVerdict(), f.GetSummary())
	var pols []string
	for _, group := range []struct {
		what string
		ps   []*flowpb.Policy
	}{{"allowed by", append(f.GetIngressAllowedBy(), f.GetEgressAllowedBy()...)}, {"denied by", append(f.GetIngressDeniedBy(), f.GetEgressDeniedBy()...)}} {
		for _, p := range group.ps {
			name := p.GetName()
			if p.GetNamespace() != "" {
				name = p.GetNamespace() + "/" + name
			}
			for _, l := range p.GetLabels() {
				if v, ok := strings.CutPrefix(l, "l7gate:rule="); ok {
					name += " " + v
				}
				if v, ok := strings.CutPrefix(l, "l7gate:decision="); ok && v == "default-deny" {
					name += " (default-deny)"
				}
			}
			pols = append(pols, group.what+" "+p.GetKind()+" "+name)
		}
	}
	if len(pols) > 0 {
		b.WriteString(" [" + strings.Join(pols, "; ") + "]")
	}
	return b.String()
}

func peer(e *flowpb.Endpoint, ip string, port uint32) string {
	name := ip
	if e.GetPodName() != "" {
		name = e.GetNamespace() + "/" + e.GetPodName()
	}
	if port != 0 {
		name += ":" + strconv.Itoa(int(port))
	}
	return name
}

func ident(e *flowpb.Endpoint) string {
	for _, l := range e.GetLabels() {
		if strings.HasPrefix(l, "reserved:") {
			return "(" + l + ")"
		}
	}
	return fmt.Sprintf("(ID:%d)", e.GetIdentity())
}

func srcPort(f *flowpb.Flow) uint32 {
	if t := f.GetL4().GetTCP(); t != nil {
		return t.GetSourcePort()
	}
	return f.GetL4().GetUDP().GetSourcePort()
}

func dstPort(f *flowpb.Flow) uint32 {
	if t := f.GetL4().GetTCP(); t != nil {
		return t.GetDestinationPort()
	}
	return f.GetL4().GetUDP().GetDestinationPort()
}

func flowType(f *flowpb.Flow) string {
	if l7 := f.GetL7(); l7 != nil {
		proto := "l7"
		switch {
		case l7.GetHttp() != nil:
			proto = "http"
		case l7.GetKafka() != nil:
			proto = "kafka"
		}
		return proto + "-" + strings.ToLower(l7.GetType().String())
	}
	switch f.GetEventType().GetType() {
	case 1:
		return f.GetDropReasonDesc().String()
	case 5:
		return "policy-verdict " + strings.ToLower(f.GetTrafficDirection().String())
	}
	return "UNKNOWN"
}
