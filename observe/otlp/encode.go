package otlp

import (
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/observe"
)

// encoder writes ExportLogsServiceRequests in protobuf wire format
// straight from flow records, into buffers it reuses from batch to batch.
// Building the generated messages instead (a LogRecord, ~20 KeyValues and
// their AnyValues per record) and marshalling them took 82 allocations
// per record; at the L7 rates the proxy reaches that was most of the
// agent's CPU with OTLP on, and the export fell behind (records lost).
// It is used by one goroutine at a time.
type encoder struct {
	version, node string
	resource      [][2]string // Config.Resource, sorted by key

	out    []byte // the request
	rec    []byte // one log record
	tmp    []byte // formatted values (an address, the body, the policies)
	ends   []int  // where each of the values in tmp ends
	names  []string
	pieces [][]byte
	groups []group
	byKey  map[string]int
}

// group is one ResourceLogs: the records of one local endpoint.
type group struct {
	first *flow.Record // its resource is rendered from the first record
	recs  []byte       // encoded LogRecords, each with its tag and length
}

// Field numbers of the OTLP messages written here
// (opentelemetry/proto/{collector/logs,logs,common,resource}/v1).
const (
	fRequestResourceLogs = 1 // ExportLogsServiceRequest.resource_logs
	fResourceLogsRes     = 1 // ResourceLogs.resource
	fResourceLogsScope   = 2 // ResourceLogs.scope_logs
	fResourceAttrs       = 1 // Resource.attributes
	fScopeLogsScope      = 1 // ScopeLogs.scope
	fScopeLogsRecords    = 2 // ScopeLogs.log_records
	fScopeName           = 1 // InstrumentationScope.name
	fScopeVersion        = 2 // InstrumentationScope.version
	fLogTime             = 1 // LogRecord.time_unix_nano
	fLogSeverity         = 2 // LogRecord.severity_number
	fLogSeverityText     = 3 // LogRecord.severity_text
	fLogBody             = 5 // LogRecord.body
	fLogAttrs            = 6 // LogRecord.attributes
	fLogObservedTime     = 11
	fKVKey               = 1 // KeyValue.key
	fKVValue             = 2 // KeyValue.value
	fAnyString           = 1 // AnyValue.string_value
	fAnyInt              = 3 // AnyValue.int_value
	fAnyDouble           = 4 // AnyValue.double_value
	fAnyArray            = 5 // AnyValue.array_value
	fArrayValues         = 1 // ArrayValue.values
)

func newEncoder(cfg Config) *encoder {
	e := &encoder{version: cfg.Version, node: cfg.Node, byKey: map[string]int{}}
	for _, k := range sortedKeys(cfg.Resource) {
		e.resource = append(e.resource, [2]string{k, cfg.Resource[k]})
	}
	return e
}

// encode returns the events' records as one request: a ResourceLogs per local
// endpoint, in order of first appearance, observed at now (Unix ns). The
// result is valid until the next call.
func (e *encoder) encode(evs []observe.Event, now uint64) []byte {
	for i := range e.groups {
		e.groups[i].first, e.groups[i].recs = nil, e.groups[i].recs[:0]
	}
	n := 0
	clear(e.byKey)
	for _, ev := range evs {
		r := ev.Record
		i, ok := e.byKey[r.Endpoint]
		if !ok {
			i = n
			n++
			e.byKey[r.Endpoint] = i
			if i == len(e.groups) {
				e.groups = append(e.groups, group{})
			}
			e.groups[i].first = r
		}
		e.rec = e.logRecord(e.rec[:0], r, now)
		g := &e.groups[i]
		g.recs = protowire.AppendTag(g.recs, fScopeLogsRecords, protowire.BytesType)
		g.recs = appendLen(g.recs, e.rec)
	}
	out := e.out[:0]
	for i := range n {
		g := &e.groups[i]
		// Resource, then ScopeLogs{scope, records}: e.rec holds the
		// resource while the sizes are summed.
		e.rec = e.resourceOf(e.rec[:0], g.first)
		scope := e.scope()
		scopeLogs := protowire.SizeTag(fScopeLogsScope) + protowire.SizeBytes(scope) + len(g.recs)
		rl := protowire.SizeTag(fResourceLogsRes) + protowire.SizeBytes(len(e.rec)) +
			protowire.SizeTag(fResourceLogsScope) + protowire.SizeBytes(scopeLogs)
		out = protowire.AppendTag(out, fRequestResourceLogs, protowire.BytesType)
		out = protowire.AppendVarint(out, uint64(rl))
		out = protowire.AppendTag(out, fResourceLogsRes, protowire.BytesType)
		out = appendLen(out, e.rec)
		out = protowire.AppendTag(out, fResourceLogsScope, protowire.BytesType)
		out = protowire.AppendVarint(out, uint64(scopeLogs))
		out = protowire.AppendTag(out, fScopeLogsScope, protowire.BytesType)
		out = protowire.AppendVarint(out, uint64(scope))
		out = appendStringField(out, fScopeName, "l7gate")
		if e.version != "" {
			out = appendStringField(out, fScopeVersion, e.version)
		}
		out = append(out, g.recs...)
	}
	e.out = out
	return out
}

// scope is the size of the InstrumentationScope.
func (e *encoder) scope() int {
	n := protowire.SizeTag(fScopeName) + protowire.SizeBytes(len("l7gate"))
	if e.version != "" {
		n += protowire.SizeTag(fScopeVersion) + protowire.SizeBytes(len(e.version))
	}
	return n
}

// resourceOf appends the Resource's fields (see Exporter.resource).
func (e *encoder) resourceOf(b []byte, r *flow.Record) []byte {
	self := r.DstEndpoint
	if r.Direction == flow.Egress {
		self = r.SrcEndpoint
	}
	b = appendKVString(b, fResourceAttrs, "service.name", "l7gate")
	b = appendKVString(b, fResourceAttrs, "k8s.node.name", firstNonEmpty(r.Node, e.node))
	if self != nil && self.Pod != "" {
		b = appendKVString(b, fResourceAttrs, "k8s.namespace.name", self.Namespace)
		b = appendKVString(b, fResourceAttrs, "k8s.pod.name", self.Pod)
		if self.Workload != "" {
			b = appendKVString(b, fResourceAttrs, "k8s."+strings.ToLower(self.WorkloadKind)+".name", self.Workload)
		}
	} else if r.Endpoint != "" {
		ns, pod, _ := strings.Cut(r.Endpoint, "/")
		b = appendKVString(b, fResourceAttrs, "k8s.namespace.name", ns)
		b = appendKVString(b, fResourceAttrs, "k8s.pod.name", pod)
	}
	for _, kv := range e.resource {
		b = appendKVString(b, fResourceAttrs, kv[0], kv[1])
	}
	return b
}

// logRecord appends the LogRecord's fields for r (what LogRecord renders).
func (e *encoder) logRecord(b []byte, r *flow.Record, now uint64) []byte {
	if t := uint64(r.Time.UnixNano()); t != 0 {
		b = protowire.AppendTag(b, fLogTime, protowire.Fixed64Type)
		b = protowire.AppendFixed64(b, t)
	}
	severity, text := uint64(9), "INFO" // SEVERITY_NUMBER_INFO
	if r.Verdict == flow.VerdictDenied {
		severity, text = 13, "WARN" // SEVERITY_NUMBER_WARN
	}
	b = protowire.AppendTag(b, fLogSeverity, protowire.VarintType)
	b = protowire.AppendVarint(b, severity)
	b = appendStringField(b, fLogSeverityText, text)
	e.tmp = appendBody(e.tmp[:0], r)
	b = protowire.AppendTag(b, fLogBody, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(protowire.SizeTag(fAnyString)+protowire.SizeBytes(len(e.tmp))))
	b = appendStringField(b, fAnyString, e.tmp)

	b = appendKVString(b, fLogAttrs, AttrVerdict, string(r.Verdict))
	b = appendKVString(b, fLogAttrs, AttrDirection, r.Direction.String())
	b = appendKVString(b, fLogAttrs, AttrObserver, r.Observer)
	if r.Reason != "" {
		b = appendKVString(b, fLogAttrs, AttrReason, r.Reason)
	}
	if len(r.DecidedBy) > 0 {
		e.tmp, e.ends, e.names = e.tmp[:0], e.ends[:0], e.names[:0]
		for _, p := range r.DecidedBy {
			e.tmp = appendProvenance(e.tmp, p)
			e.ends = append(e.ends, len(e.tmp))
			if p.Policy != "" && !slices.Contains(e.names, p.Policy) {
				e.names = append(e.names, p.Policy)
			}
		}
		e.pieces = e.pieces[:0]
		start := 0
		for _, end := range e.ends {
			e.pieces = append(e.pieces, e.tmp[start:end])
			start = end
		}
		b = appendKVStrings(b, fLogAttrs, AttrPolicies, e.pieces)
		if len(e.names) > 0 {
			b = appendKVStrings(b, fLogAttrs, AttrPolicyNames, e.names)
		}
	}
	if r.Source.IsValid() {
		e.tmp = r.Source.Addr().AppendTo(e.tmp[:0])
		b = appendKVString(b, fLogAttrs, "source.address", e.tmp)
		b = appendKVInt(b, fLogAttrs, "source.port", int64(r.Source.Port()))
	}
	if r.Destination.IsValid() {
		e.tmp = r.Destination.Addr().AppendTo(e.tmp[:0])
		b = appendKVString(b, fLogAttrs, "destination.address", e.tmp)
		b = appendKVInt(b, fLogAttrs, "destination.port", int64(r.Destination.Port()))
	}
	b = appendKVInt(b, fLogAttrs, AttrSrcIdentity, int64(r.SrcIdentity))
	b = appendKVInt(b, fLogAttrs, AttrDstIdentity, int64(r.DstIdentity))
	b = appendPeerKVs(b, r.SrcEndpoint, AttrSrcNS, AttrSrcPod, AttrSrcLabels, AttrSrcWorkload)
	b = appendPeerKVs(b, r.DstEndpoint, AttrDstNS, AttrDstPod, AttrDstLabels, AttrDstWorkload)
	switch r.Protocol {
	case "http":
		b = appendKVString(b, fLogAttrs, "network.protocol.name", "http")
		b = appendKVString(b, fLogAttrs, "http.request.method", r.Method)
		b = appendKVString(b, fLogAttrs, "url.path", r.Path)
		if r.Host != "" {
			b = appendKVString(b, fLogAttrs, "server.address", r.Host)
		}
		if r.Status != 0 {
			b = appendKVInt(b, fLogAttrs, "http.response.status_code", int64(r.Status))
		}
	case "kafka":
		b = appendKVString(b, fLogAttrs, "network.protocol.name", "kafka")
		b = appendKVString(b, fLogAttrs, "messaging.system", "kafka")
		b = appendKVString(b, fLogAttrs, "messaging.operation.name", r.APIKey)
		b = appendKVInt(b, fLogAttrs, "l7gate.kafka.api_version", int64(r.APIVersion))
		b = appendKVInt(b, fLogAttrs, "l7gate.kafka.correlation_id", int64(r.CorrelationID))
		if len(r.Topics) > 0 {
			b = appendKVStrings(b, fLogAttrs, "messaging.destination.name", r.Topics)
		}
		if r.ClientID != "" {
			b = appendKVString(b, fLogAttrs, "messaging.client.id", r.ClientID)
		}
		if r.ErrorCode != 0 {
			b = appendKVInt(b, fLogAttrs, "l7gate.kafka.error_code", int64(r.ErrorCode))
		}
	default:
		if r.Protocol != "" {
			b = appendKVString(b, fLogAttrs, "network.transport", r.Protocol)
		}
	}
	if r.LatencyMS > 0 {
		b = appendKVDouble(b, fLogAttrs, AttrLatencyMS, r.LatencyMS)
	}
	if r.Error != "" {
		b = appendKVString(b, fLogAttrs, "error.type", r.Error)
	}
	b = protowire.AppendTag(b, fLogObservedTime, protowire.Fixed64Type)
	return protowire.AppendFixed64(b, now)
}

func appendPeerKVs(b []byte, e *flow.Endpoint, ns, pod, labels, workload string) []byte {
	if e == nil {
		return b
	}
	if e.Pod != "" {
		b = appendKVString(b, fLogAttrs, ns, e.Namespace)
		b = appendKVString(b, fLogAttrs, pod, e.Pod)
	}
	if len(e.Labels) > 0 {
		b = appendKVStrings(b, fLogAttrs, labels, e.Labels)
	}
	if e.Workload != "" {
		b = appendKVString(b, fLogAttrs, workload, e.WorkloadKind+"/"+e.Workload)
	}
	return b
}

// appendProvenance appends p.String().
func appendProvenance(b []byte, p flow.Provenance) []byte {
	b = append(b, p.Kind...)
	b = append(b, ' ')
	b = append(b, p.Policy...)
	b = append(b, " ("...)
	b = append(b, p.PolicyKind...)
	b = append(b, ' ')
	b = append(b, p.Path...)
	if p.L7 != "" {
		b = append(b, '.')
		b = append(b, p.L7...)
	}
	if p.Audit {
		b = append(b, " [audit]"...)
	}
	return append(b, ')')
}

// appendBody appends body(r).
func appendBody(b []byte, r *flow.Record) []byte {
	switch r.Protocol {
	case "http":
		b = append(b, r.Method...)
		b = append(b, ' ')
		b = append(b, r.Host...)
		b = append(b, r.Path...)
		if r.Status != 0 {
			b = append(b, ' ')
			b = strconv.AppendInt(b, int64(r.Status), 10)
		}
	case "kafka":
		b = append(b, "Kafka "...)
		b = append(b, r.APIKey...)
		for i, t := range r.Topics {
			if i == 0 {
				b = append(b, ' ')
			} else {
				b = append(b, ',')
			}
			b = append(b, t...)
		}
	default:
		b = append(b, r.Protocol...)
		b = append(b, ' ')
		b = appendAddrPort(b, r.Source)
		b = append(b, " -> "...)
		b = appendAddrPort(b, r.Destination)
	}
	b = append(b, ' ')
	b = append(b, r.Verdict...)
	if r.Verdict == flow.VerdictDenied && r.Reason != "" && r.Observer == flow.ObserverDatapath {
		b = append(b, " ("...)
		b = append(b, r.Reason...)
		b = append(b, ')')
	}
	return b
}

// appendAddrPort appends p as fmt's %s does (String, "invalid AddrPort"
// for the zero value).
func appendAddrPort(b []byte, p netip.AddrPort) []byte {
	if !p.IsValid() {
		return append(b, p.String()...)
	}
	return p.AppendTo(b)
}

func appendLen[T ~string | ~[]byte](b []byte, v T) []byte {
	b = protowire.AppendVarint(b, uint64(len(v)))
	return append(b, v...)
}

func appendStringField[T ~string | ~[]byte](b []byte, num protowire.Number, v T) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return appendLen(b, v)
}

// appendKV appends a KeyValue field whose AnyValue is size bytes long;
// the caller appends the AnyValue.
func appendKV(b []byte, num protowire.Number, key string, size int) []byte {
	kv := protowire.SizeTag(fKVKey) + protowire.SizeBytes(len(key)) + protowire.SizeTag(fKVValue) + protowire.SizeBytes(size)
	b = protowire.AppendTag(b, num, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(kv))
	b = appendStringField(b, fKVKey, key)
	b = protowire.AppendTag(b, fKVValue, protowire.BytesType)
	return protowire.AppendVarint(b, uint64(size))
}

func appendKVString[T ~string | ~[]byte](b []byte, num protowire.Number, key string, v T) []byte {
	b = appendKV(b, num, key, protowire.SizeTag(fAnyString)+protowire.SizeBytes(len(v)))
	return appendStringField(b, fAnyString, v)
}

func appendKVInt(b []byte, num protowire.Number, key string, v int64) []byte {
	b = appendKV(b, num, key, protowire.SizeTag(fAnyInt)+protowire.SizeVarint(uint64(v)))
	b = protowire.AppendTag(b, fAnyInt, protowire.VarintType)
	return protowire.AppendVarint(b, uint64(v))
}

func appendKVDouble(b []byte, num protowire.Number, key string, v float64) []byte {
	b = appendKV(b, num, key, protowire.SizeTag(fAnyDouble)+protowire.SizeFixed64())
	b = protowire.AppendTag(b, fAnyDouble, protowire.Fixed64Type)
	return protowire.AppendFixed64(b, math.Float64bits(v))
}

func appendKVStrings[T ~string | ~[]byte](b []byte, num protowire.Number, key string, vs []T) []byte {
	arr := 0
	for _, v := range vs {
		arr += protowire.SizeTag(fArrayValues) + protowire.SizeBytes(protowire.SizeTag(fAnyString)+protowire.SizeBytes(len(v)))
	}
	b = appendKV(b, num, key, protowire.SizeTag(fAnyArray)+protowire.SizeBytes(arr))
	b = protowire.AppendTag(b, fAnyArray, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(arr))
	for _, v := range vs {
		b = protowire.AppendTag(b, fArrayValues, protowire.BytesType)
		b = protowire.AppendVarint(b, uint64(protowire.SizeTag(fAnyString)+protowire.SizeBytes(len(v))))
		b = appendStringField(b, fAnyString, v)
	}
	return b
}
