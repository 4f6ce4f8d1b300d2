// Package hubble speaks Hubble's formats for the agent's flow pipeline
// (package observe): it converts flow records to Hubble's flow.Flow
// (Convert), matches Hubble's FlowFilters (Filter), serves Hubble's
// Observer gRPC API and gRPC health (Server) so the hubble CLI and
// hubble-relay work against an l7gate agent, and writes the Hubble
// exporter's JSON-lines format to a rotating file (Exporter).
//
// The protos are Hubble's own (proto/hubble, from Cilium v1.20.2). Where
// l7gate's vocabulary differs, the mapping is here and documented:
// datapath verdicts on new flows are policy-verdict events (type 5),
// datapath drops are drop events (type 1) with Cilium's drop reason codes,
// and each L7 request is one access-log event (type 129, L7 type REQUEST)
// carrying the response code and latency when there was a response.
package hubble

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/observe"
	flowpb "github.com/l7gate/l7gate/proto/hubble/flowpb"
)

// Cilium's monitor message types (pkg/monitor/api), as Hubble's event_type.
const (
	MessageTypeDrop          = 1
	MessageTypePolicyVerdict = 5
	MessageTypeAccessLog     = 129
)

// Cilium's policy match types (pkg/monitor/api PolicyMatch*), in
// policy_match_type of policy-verdict events.
const (
	PolicyMatchNone = 0
	PolicyMatchL3L4 = 2
)

// dropReasons maps the datapath's drop reasons (flow.Record.Reason, the
// names bpf.Reason prints) to Cilium's drop reason codes, the closest in
// meaning.
var dropReasons = map[string]flowpb.DropReason{
	"policy":                flowpb.DropReason_POLICY_DENY,   // a deny entry matched
	"default":               flowpb.DropReason_POLICY_DENIED, // default-deny: nothing allowed it
	"revalidate":            flowpb.DropReason_POLICY_DENIED, // an established flow policy no longer allows
	"no-listener":           flowpb.DropReason_SOCKET_LOOKUP_FAILED,
	"fragment":              flowpb.DropReason_FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND,
	"no-endpoint":           flowpb.DropReason_NO_CONFIGURATION_AVAILABLE_TO_PERFORM_POLICY_DECISION,
	"fail-closed":           flowpb.DropReason_NO_CONFIGURATION_AVAILABLE_TO_PERFORM_POLICY_DECISION,
	"unsupported":           flowpb.DropReason_UNSUPPORTED_L3_PROTOCOL,
	"malformed":             flowpb.DropReason_INVALID_PACKET_DROPPED,
	"ethertype-mismatch":    flowpb.DropReason_INVALID_PACKET_DROPPED,
	"ip-options":            flowpb.DropReason_INVALID_PACKET_DROPPED,
	"ipv6-ext-header":       flowpb.DropReason_INVALID_IPV6_EXTENSION_HEADER,
	"ipv6-routing":          flowpb.DropReason_INVALID_IPV6_EXTENSION_HEADER,
	"nd-router":             flowpb.DropReason_FORBIDDEN_ICMPV6_MESSAGE,
	"mld":                   flowpb.DropReason_FORBIDDEN_ICMPV6_MESSAGE,
	"wrong-family":          flowpb.DropReason_INVALID_PACKET_DROPPED,
	"spoofed":               flowpb.DropReason_INVALID_SOURCE_IP,
	"vlan-tagged":           flowpb.DropReason_VLAN_FILTERED,
	"unsupported-ethertype": flowpb.DropReason_UNSUPPORTED_L2_PROTOCOL,
}

// DropReason returns the Cilium drop reason of a denied record: the
// datapath's reason mapped, POLICY_DENIED for an L7 denial.
func DropReason(r *flow.Record) flowpb.DropReason {
	if r.Verdict != flow.VerdictDenied {
		return flowpb.DropReason_DROP_REASON_UNKNOWN
	}
	if r.Observer == flow.ObserverDatapath {
		if d, ok := dropReasons[r.Reason]; ok {
			return d
		}
		return flowpb.DropReason_DROP_REASON_UNKNOWN
	}
	return flowpb.DropReason_POLICY_DENIED
}

// IsL7 reports whether a record is an L7 (proxy) record.
func IsL7(r *flow.Record) bool {
	return r.Observer != flow.ObserverDatapath && (r.Protocol == "http" || r.Protocol == "kafka")
}

// Options are what a conversion needs beyond the record.
type Options struct {
	// Emitter names the software (Flow.emitter).
	Emitter string
	Version string
	// Instance makes flow UUIDs unique across agent restarts (random).
	Instance uint64
}

// UUID returns the flow UUID of event seq: the instance and the sequence
// number in UUID form.
func UUID(instance, seq uint64) string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], instance)
	binary.BigEndian.PutUint64(b[8:], seq)
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// Convert renders one event as a Hubble flow.
func Convert(ev observe.Event, o Options) *flowpb.Flow {
	r := ev.Record
	f := &flowpb.Flow{
		Time:        timestamppb.New(r.Time),
		Uuid:        UUID(o.Instance, ev.Seq),
		Emitter:     &flowpb.Emitter{Name: o.Emitter, Version: o.Version},
		NodeName:    r.Node,
		Source:      endpoint(r.SrcIdentity, r.SrcEndpoint),
		Destination: endpoint(r.DstIdentity, r.DstEndpoint),
		IsReply:     wrapperspb.Bool(r.IsReply),
		ProxyPort:   uint32(r.ProxyPort),
	}
	f.TrafficDirection = flowpb.TrafficDirection_INGRESS
	if r.Direction == flow.Egress {
		f.TrafficDirection = flowpb.TrafficDirection_EGRESS
	}
	if ip := ipOf(r.Source, r.Destination); ip != nil {
		f.IP = ip
	}
	f.L4 = l4Of(r)
	if r.SrcEndpoint != nil && r.SrcEndpoint.Service != "" {
		f.SourceService = service(r.SrcEndpoint.Service)
	}
	if r.DstEndpoint != nil && r.DstEndpoint.Service != "" {
		f.DestinationService = service(r.DstEndpoint.Service)
	}
	switch r.Verdict {
	case flow.VerdictAllowed:
		f.Verdict = flowpb.Verdict_FORWARDED
	case flow.VerdictDenied:
		f.Verdict = flowpb.Verdict_DROPPED
		f.DropReasonDesc = DropReason(r)
		f.DropReason = uint32(f.DropReasonDesc)
	case flow.VerdictRedirected:
		f.Verdict = flowpb.Verdict_REDIRECTED
	case flow.VerdictAudit:
		// forwarded: a policy in audit mode would have dropped it (the
		// policies in audit are in Ingress/EgressDeniedBy)
		f.Verdict = flowpb.Verdict_AUDIT
	default:
		f.Verdict = flowpb.Verdict_VERDICT_UNKNOWN
	}
	allowed, denied := policies(r.DecidedBy)
	if f.TrafficDirection == flowpb.TrafficDirection_EGRESS {
		f.EgressAllowedBy, f.EgressDeniedBy = allowed, denied
	} else {
		f.IngressAllowedBy, f.IngressDeniedBy = allowed, denied
	}
	if IsL7(r) {
		f.Type = flowpb.FlowType_L7
		f.EventType = &flowpb.CiliumEventType{Type: MessageTypeAccessLog}
		f.L7 = l7Of(r)
		f.Summary = l7Summary(r)
		return f
	}
	f.Type = flowpb.FlowType_L3_L4
	if r.Verdict == flow.VerdictDenied {
		f.EventType = &flowpb.CiliumEventType{Type: MessageTypeDrop, SubType: int32(f.DropReasonDesc)}
	} else {
		f.EventType = &flowpb.CiliumEventType{Type: MessageTypePolicyVerdict}
		f.PolicyMatchType = PolicyMatchNone
		if len(r.DecidedBy) > 0 {
			f.PolicyMatchType = PolicyMatchL3L4
		}
	}
	f.Summary = l4Summary(r)
	return f
}

func endpoint(id flow.Identity, e *flow.Endpoint) *flowpb.Endpoint {
	out := &flowpb.Endpoint{Identity: uint32(id)}
	if e == nil {
		if n := flow.ReservedName(id); n != "" {
			out.Labels = []string{"reserved:" + n}
		}
		return out
	}
	out.Namespace, out.PodName, out.Labels = e.Namespace, e.Pod, e.Labels
	if e.Workload != "" {
		out.Workloads = []*flowpb.Workload{{Name: e.Workload, Kind: e.WorkloadKind}}
	}
	return out
}

func service(nsName string) *flowpb.Service {
	ns, name, ok := strings.Cut(nsName, "/")
	if !ok {
		return &flowpb.Service{Name: nsName}
	}
	return &flowpb.Service{Namespace: ns, Name: name}
}

func ipOf(src, dst netip.AddrPort) *flowpb.IP {
	if !src.IsValid() && !dst.IsValid() {
		return nil
	}
	ip := &flowpb.IP{IpVersion: flowpb.IPVersion_IPv4}
	if src.IsValid() {
		ip.Source = src.Addr().String()
		if src.Addr().Is6() && !src.Addr().Is4In6() {
			ip.IpVersion = flowpb.IPVersion_IPv6
		}
	}
	if dst.IsValid() {
		ip.Destination = dst.Addr().String()
	}
	return ip
}

// protocolOf is the record's L4 protocol name: the IP protocol of a
// datapath record, TCP for the proxies' (HTTP and Kafka run on TCP).
func protocolOf(r *flow.Record) string {
	if IsL7(r) {
		return "tcp"
	}
	return r.Protocol
}

func l4Of(r *flow.Record) *flowpb.Layer4 {
	sp, dp := uint32(r.Source.Port()), uint32(r.Destination.Port())
	switch protocolOf(r) {
	case "tcp":
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_TCP{TCP: &flowpb.TCP{SourcePort: sp, DestinationPort: dp}}}
	case "udp":
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_UDP{UDP: &flowpb.UDP{SourcePort: sp, DestinationPort: dp}}}
	case "sctp":
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_SCTP{SCTP: &flowpb.SCTP{SourcePort: sp, DestinationPort: dp}}}
	case "icmp":
		return &flowpb.Layer4{Protocol: &flowpb.Layer4_ICMPv4{ICMPv4: &flowpb.ICMPv4{}}}
	}
	return nil
}

func l7Of(r *flow.Record) *flowpb.Layer7 {
	l7 := &flowpb.Layer7{Type: flowpb.L7FlowType_REQUEST, LatencyNs: uint64(r.LatencyMS * float64(time.Millisecond))}
	switch r.Protocol {
	case "http":
		l7.Record = &flowpb.Layer7_Http{Http: &flowpb.HTTP{Code: uint32(max(r.Status, 0)), Method: r.Method, Url: url(r), Protocol: "HTTP/1.1"}}
	case "kafka":
		k := &flowpb.Kafka{ErrorCode: int32(r.ErrorCode), ApiVersion: int32(r.APIVersion), ApiKey: r.APIKey, CorrelationId: r.CorrelationID}
		k.Topic = strings.Join(r.Topics, ",")
		l7.Record = &flowpb.Layer7_Kafka{Kafka: k}
	}
	return l7
}

// url is the request's URL as Hubble shows it: http://host/path.
func url(r *flow.Record) string {
	host := r.Host
	if host == "" && r.Destination.IsValid() {
		host = r.Destination.String()
	}
	return "http://" + host + r.Path
}

func l7Summary(r *flow.Record) string {
	var b strings.Builder
	switch r.Protocol {
	case "http":
		fmt.Fprintf(&b, "HTTP/1.1 %s %s", r.Method, url(r))
		if r.Status != 0 {
			fmt.Fprintf(&b, " => %d", r.Status)
		}
	case "kafka":
		fmt.Fprintf(&b, "Kafka %s v%d correlation id %d", r.APIKey, r.APIVersion, r.CorrelationID)
		if len(r.Topics) > 0 {
			fmt.Fprintf(&b, " topic '%s'", strings.Join(r.Topics, "','"))
		}
		if r.ErrorCode != 0 {
			fmt.Fprintf(&b, " => error %d", r.ErrorCode)
		}
	}
	if r.LatencyMS > 0 {
		fmt.Fprintf(&b, " (%s)", time.Duration(r.LatencyMS*float64(time.Millisecond)).Round(time.Microsecond))
	}
	if r.Verdict == flow.VerdictAudit {
		b.WriteString(" audit: would be denied")
		if p := firstPolicy(r.DecidedBy); p != "" {
			b.WriteString(" by " + p)
		}
	}
	if r.Verdict == flow.VerdictDenied {
		b.WriteString(" denied")
		if p := firstPolicy(r.DecidedBy); p != "" {
			b.WriteString(" by " + p)
		} else if r.Reason != "" {
			b.WriteString(": " + r.Reason)
		}
	}
	if r.Error != "" {
		b.WriteString(" error: " + r.Error)
	}
	return b.String()
}

func l4Summary(r *flow.Record) string {
	var b strings.Builder
	b.WriteString(strings.ToUpper(r.Protocol))
	if r.Protocol == "icmp" {
		b.WriteString("v4")
	}
	if r.Verdict == flow.VerdictDenied {
		b.WriteString(" dropped (" + r.Reason)
		if p := firstPolicy(r.DecidedBy); p != "" {
			b.WriteString(" by " + p)
		}
		b.WriteString(")")
	}
	if r.Verdict == flow.VerdictAudit {
		b.WriteString(" audit: would be dropped")
		if p := firstPolicy(r.DecidedBy); p != "" {
			b.WriteString(" by " + p)
		} else if r.Reason != "" {
			b.WriteString(" (" + r.Reason + ")")
		}
	}
	if (r.Verdict == flow.VerdictRedirected || r.Verdict == flow.VerdictAudit) && r.ProxyPort != 0 {
		b.WriteString(" to proxy port " + strconv.Itoa(int(r.ProxyPort)))
	}
	return b.String()
}

// firstPolicy names the rules that decided, for summaries: "kind
// ns/name" of the first and how many more.
func firstPolicy(ps []flow.Provenance) string {
	if len(ps) == 0 || ps[0].Policy == "" {
		return ""
	}
	s := string(ps[0].Kind) + " " + ps[0].Policy
	if len(ps) > 1 {
		s += fmt.Sprintf(" (and %d more)", len(ps)-1)
	}
	return s
}

// Policy labels, as Cilium names the labels of policy rules.
const (
	LabelPolicyDerivedFrom = "k8s:io.cilium.k8s.policy.derived-from"
	LabelPolicyName        = "k8s:io.cilium.k8s.policy.name"
	LabelPolicyNamespace   = "k8s:io.cilium.k8s.policy.namespace"
	// l7gate's: the rule's field path, the L7 rule and how it decided.
	LabelRule     = "l7gate:rule"
	LabelL7Rule   = "l7gate:l7-rule"
	LabelDecision = "l7gate:decision"
	// LabelAudit marks a policy in audit mode.
	LabelAudit = "l7gate:audit"
)

// policies splits provenance into Hubble's allowed-by and denied-by
// policies; default-deny goes to denied-by, labelled
// l7gate:decision=default-deny, naming each policy that made the endpoint
// default-deny.
func policies(ps []flow.Provenance) (allowed, denied []*flowpb.Policy) {
	for _, p := range ps {
		pol := &flowpb.Policy{Kind: string(p.PolicyKind)}
		if ns, name, ok := strings.Cut(p.Policy, "/"); ok {
			pol.Namespace, pol.Name = ns, name
		} else {
			pol.Name = p.Policy
		}
		if pol.Kind != "" {
			pol.Labels = append(pol.Labels, LabelPolicyDerivedFrom+"="+pol.Kind)
		}
		if pol.Name != "" {
			pol.Labels = append(pol.Labels, LabelPolicyName+"="+pol.Name)
		}
		if pol.Namespace != "" {
			pol.Labels = append(pol.Labels, LabelPolicyNamespace+"="+pol.Namespace)
		}
		pol.Labels = append(pol.Labels, LabelDecision+"="+string(p.Kind))
		if p.Path != "" {
			pol.Labels = append(pol.Labels, LabelRule+"="+p.Path)
		}
		if p.L7 != "" {
			pol.Labels = append(pol.Labels, LabelL7Rule+"="+p.L7)
		}
		if p.Audit {
			pol.Labels = append(pol.Labels, LabelAudit+"=true")
		}
		if p.Kind == flow.KindAllow {
			allowed = append(allowed, pol)
		} else {
			denied = append(denied, pol)
		}
	}
	return allowed, denied
}
