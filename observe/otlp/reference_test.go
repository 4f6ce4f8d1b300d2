package otlp

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	collogspb "go.opentelemetry.io/proto/otlp/collector/logs/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	logspb "go.opentelemetry.io/proto/otlp/logs/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"

	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/observe"
)

// referenceRequest renders events as one export request from the
// generated OTLP messages, field by field as the encoder writes them:
// the readable statement of what the encoder must produce
// (TestEncoderMatchesReference).
func referenceRequest(cfg Config, evs []observe.Event, now uint64) *collogspb.ExportLogsServiceRequest {
	req := &collogspb.ExportLogsServiceRequest{}
	byKey := map[string]*logspb.ScopeLogs{}
	for _, ev := range evs {
		r := ev.Record
		self := r.DstEndpoint
		if r.Direction == flow.Egress {
			self = r.SrcEndpoint
		}
		key := r.Endpoint
		sl, ok := byKey[key]
		if !ok {
			sl = &logspb.ScopeLogs{Scope: &commonpb.InstrumentationScope{Name: "l7gate", Version: cfg.Version}}
			byKey[key] = sl
			req.ResourceLogs = append(req.ResourceLogs, &logspb.ResourceLogs{Resource: referenceResource(cfg, self, r), ScopeLogs: []*logspb.ScopeLogs{sl}})
		}
		lr := referenceLogRecord(r)
		lr.ObservedTimeUnixNano = now
		sl.LogRecords = append(sl.LogRecords, lr)
	}
	return req
}

func referenceResource(cfg Config, self *flow.Endpoint, r *flow.Record) *resourcepb.Resource {
	attrs := []*commonpb.KeyValue{str("service.name", "l7gate"), str("k8s.node.name", firstNonEmpty(r.Node, cfg.Node))}
	if self != nil && self.Pod != "" {
		attrs = append(attrs, str("k8s.namespace.name", self.Namespace), str("k8s.pod.name", self.Pod))
		if self.Workload != "" {
			attrs = append(attrs, str("k8s."+strings.ToLower(self.WorkloadKind)+".name", self.Workload))
		}
	} else if r.Endpoint != "" {
		ns, pod, _ := strings.Cut(r.Endpoint, "/")
		attrs = append(attrs, str("k8s.namespace.name", ns), str("k8s.pod.name", pod))
	}
	for _, k := range sortedKeys(cfg.Resource) {
		attrs = append(attrs, str(k, cfg.Resource[k]))
	}
	return &resourcepb.Resource{Attributes: attrs}
}

// referenceLogRecord renders one flow record as an OTLP log record.
func referenceLogRecord(r *flow.Record) *logspb.LogRecord {
	lr := &logspb.LogRecord{TimeUnixNano: uint64(r.Time.UnixNano()), SeverityNumber: logspb.SeverityNumber_SEVERITY_NUMBER_INFO, SeverityText: "INFO"}
	if r.Verdict == flow.VerdictDenied {
		lr.SeverityNumber, lr.SeverityText = logspb.SeverityNumber_SEVERITY_NUMBER_WARN, "WARN"
	}
	lr.Body = &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: referenceBody(r)}}
	a := []*commonpb.KeyValue{str(AttrVerdict, string(r.Verdict)), str(AttrDirection, r.Direction.String()), str(AttrObserver, r.Observer)}
	if r.Reason != "" {
		a = append(a, str(AttrReason, r.Reason))
	}
	if len(r.DecidedBy) > 0 {
		var full, names []string
		for _, p := range r.DecidedBy {
			full = append(full, p.String())
			if p.Policy != "" && !slices.Contains(names, p.Policy) {
				names = append(names, p.Policy)
			}
		}
		a = append(a, strs(AttrPolicies, full))
		if len(names) > 0 {
			a = append(a, strs(AttrPolicyNames, names))
		}
	}
	if r.Source.IsValid() {
		a = append(a, str("source.address", r.Source.Addr().String()), num("source.port", int64(r.Source.Port())))
	}
	if r.Destination.IsValid() {
		a = append(a, str("destination.address", r.Destination.Addr().String()), num("destination.port", int64(r.Destination.Port())))
	}
	a = append(a, num(AttrSrcIdentity, int64(r.SrcIdentity)), num(AttrDstIdentity, int64(r.DstIdentity)))
	a = referencePeer(a, r.SrcEndpoint, AttrSrcNS, AttrSrcPod, AttrSrcLabels, AttrSrcWorkload)
	a = referencePeer(a, r.DstEndpoint, AttrDstNS, AttrDstPod, AttrDstLabels, AttrDstWorkload)
	switch r.Protocol {
	case "http":
		a = append(a, str("network.protocol.name", "http"), str("http.request.method", r.Method), str("url.path", r.Path))
		if r.Host != "" {
			a = append(a, str("server.address", r.Host))
		}
		if r.Status != 0 {
			a = append(a, num("http.response.status_code", int64(r.Status)))
		}
	case "kafka":
		a = append(a, str("network.protocol.name", "kafka"), str("messaging.system", "kafka"), str("messaging.operation.name", r.APIKey),
			num("l7gate.kafka.api_version", int64(r.APIVersion)), num("l7gate.kafka.correlation_id", int64(r.CorrelationID)))
		if len(r.Topics) > 0 {
			a = append(a, strs("messaging.destination.name", r.Topics))
		}
		if r.ClientID != "" {
			a = append(a, str("messaging.client.id", r.ClientID))
		}
		if r.ErrorCode != 0 {
			a = append(a, num("l7gate.kafka.error_code", int64(r.ErrorCode)))
		}
	default:
		if r.Protocol != "" {
			a = append(a, str("network.transport", r.Protocol))
		}
	}
	if r.LatencyMS > 0 {
		a = append(a, &commonpb.KeyValue{Key: AttrLatencyMS, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_DoubleValue{DoubleValue: r.LatencyMS}}})
	}
	if r.Error != "" {
		a = append(a, str("error.type", r.Error))
	}
	lr.Attributes = a
	return lr
}

func referencePeer(a []*commonpb.KeyValue, e *flow.Endpoint, ns, pod, labels, workload string) []*commonpb.KeyValue {
	if e == nil {
		return a
	}
	if e.Pod != "" {
		a = append(a, str(ns, e.Namespace), str(pod, e.Pod))
	}
	if len(e.Labels) > 0 {
		a = append(a, strs(labels, e.Labels))
	}
	if e.Workload != "" {
		a = append(a, str(workload, e.WorkloadKind+"/"+e.Workload))
	}
	return a
}

// body is a one-line summary: "GET host/path 200 allowed", "Kafka produce
// topic-a denied", "tcp 10.0.0.1:4000 -> 10.0.0.2:80 denied (default)".
func referenceBody(r *flow.Record) string {
	var b strings.Builder
	switch r.Protocol {
	case "http":
		b.WriteString(r.Method + " " + r.Host + r.Path)
		if r.Status != 0 {
			b.WriteString(" " + strconv.Itoa(r.Status))
		}
	case "kafka":
		b.WriteString("Kafka " + r.APIKey)
		if len(r.Topics) > 0 {
			b.WriteString(" " + strings.Join(r.Topics, ","))
		}
	default:
		fmt.Fprintf(&b, "%s %s -> %s", r.Protocol, r.Source, r.Destination)
	}
	b.WriteString(" " + string(r.Verdict))
	if r.Verdict == flow.VerdictDenied && r.Reason != "" && r.Observer == flow.ObserverDatapath {
		b.WriteString(" (" + r.Reason + ")")
	}
	return b.String()
}

func str(k, v string) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}}}
}

func num(k string, v int64) *commonpb.KeyValue {
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: v}}}
}

func strs(k string, vs []string) *commonpb.KeyValue {
	arr := &commonpb.ArrayValue{}
	for _, v := range vs {
		arr.Values = append(arr.Values, &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: v}})
	}
	return &commonpb.KeyValue{Key: k, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_ArrayValue{ArrayValue: arr}}}
}
