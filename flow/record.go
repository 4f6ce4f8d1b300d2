package flow

import (
	"io"
	"net/netip"
	"sync"
	"time"
)

// Verdict is the outcome of a flow or request, in one vocabulary for the
// datapath and both proxies.
type Verdict string

// Verdicts.
const (
	// VerdictAllowed: the datapath forwarded the flow, or a proxy let the
	// request through.
	VerdictAllowed Verdict = "allowed"
	// VerdictDenied: the datapath dropped the flow (Reason says why) or a
	// proxy denied the request.
	VerdictDenied Verdict = "denied"
	// VerdictRedirected: the datapath handed the flow to a proxy, which
	// reports the requests on it in records of its own.
	VerdictRedirected Verdict = "redirected"
	// VerdictAudit: a policy in audit mode would have dropped the flow or
	// denied the request, and it was forwarded instead (DecidedBy names
	// the policy in audit that would have decided).
	VerdictAudit Verdict = "audit"
	// VerdictUnknown: the reporter could not tell (an Envoy log entry
	// without an RBAC decision: the request failed before the RBAC filter).
	VerdictUnknown Verdict = "unknown"
)

// Observers: who reported a Record.
const (
	ObserverDatapath = "datapath"
	ObserverProxy    = "proxy" // the l7gate Go proxy
	ObserverEnvoy    = "envoy"
)

// Record is one flow or request and the decision on it: a datapath event
// (a drop, or the verdict on a new flow), or an L7 access-log entry of the
// Go proxy or Envoy. Fields that do not apply stay empty and are left out
// of the JSON, except the common ones at the top.
type Record struct {
	Time time.Time `json:"time"`
	// Protocol is the L7 protocol of a proxy record (http, kafka, dns) or the
	// IP protocol of a datapath record as policy names it (tcp, udp, …;
	// IPProtocol has the number).
	Protocol    string         `json:"protocol"`
	Direction   Direction      `json:"direction"`
	Source      netip.AddrPort `json:"source"`
	Destination netip.AddrPort `json:"destination"`
	SrcIdentity Identity       `json:"srcIdentity"`
	DstIdentity Identity       `json:"dstIdentity"`
	Verdict     Verdict        `json:"verdict"`
	DecidedBy   []Provenance   `json:"decidedBy,omitempty"`
	LatencyMS   float64        `json:"latencyMs"`
	// Reason explains the verdict where DecidedBy cannot (Kafka's filter
	// reports its decision as text; the datapath its drop reason).
	Reason string `json:"reason,omitempty"`
	Error  string `json:"error,omitempty"`

	// HTTP
	Method string `json:"method,omitempty"`
	Path   string `json:"path,omitempty"`
	Host   string `json:"host,omitempty"`
	Status int    `json:"status,omitempty"`
	// RawPath is the request target as sent, when normalization changed it
	// (Path is what was matched and forwarded).
	RawPath string `json:"rawPath,omitempty"`
	// HeaderMismatches are the headerMatches mismatch actions taken.
	HeaderMismatches []HeaderMismatch `json:"headerMismatches,omitempty"`

	// Kafka
	APIKey        string   `json:"apiKey,omitempty"`
	APIVersion    int16    `json:"apiVersion,omitempty"`
	ClientID      string   `json:"clientID,omitempty"`
	CorrelationID int32    `json:"correlationID,omitempty"`
	Topics        []string `json:"topics,omitempty"`
	ErrorCode     int16    `json:"errorCode,omitempty"`

	// DNS (the DNS proxy): the query's name and type, the response code
	// the client got, and the addresses the answer carried for the name
	// (at the end of its CNAME chain).
	DNSQuery string       `json:"dnsQuery,omitempty"`
	DNSType  string       `json:"dnsType,omitempty"`
	DNSRcode string       `json:"dnsRcode,omitempty"`
	DNSIPs   []netip.Addr `json:"dnsIPs,omitempty"`

	// Datapath
	IPProtocol uint8  `json:"ipProtocol,omitempty"`
	ProxyPort  uint16 `json:"proxyPort,omitempty"`
	FromProxy  bool   `json:"fromProxy,omitempty"`
	// Endpoint is the local endpoint ("namespace/name") whose veth saw it.
	Endpoint string `json:"endpoint,omitempty"`

	// Observer is who reported it (ObserverDatapath, …); empty in the Go
	// proxy's own access log.
	Observer string `json:"observer,omitempty"`

	// Enrichment: the agent's flow pipeline fills these from what it knows
	// of the cluster; the reporters leave them empty.
	// Node is the node that observed it.
	Node string `json:"node,omitempty"`
	// SrcEndpoint and DstEndpoint describe the peers (pods, or the
	// reserved entities by their labels), when known.
	SrcEndpoint *Endpoint `json:"srcEndpoint,omitempty"`
	DstEndpoint *Endpoint `json:"dstEndpoint,omitempty"`
	// IsReply: the record is about the reply direction of a connection
	// (Source is the server). Every reporter today reports the
	// connection's own direction (new flows, drops, requests).
	IsReply bool `json:"isReply,omitempty"`
}

// Endpoint is what the agent knows of one peer of a flow.
type Endpoint struct {
	Namespace string `json:"namespace,omitempty"`
	// Pod is the pod name (empty for reserved entities and CIDRs).
	Pod string `json:"pod,omitempty"`
	// Labels are the identity's labels in Cilium's "source:key=value"
	// form, sorted.
	Labels []string `json:"labels,omitempty"`
	// WorkloadKind and Workload name the pod's controller (Deployment,
	// StatefulSet, …), when known.
	WorkloadKind string `json:"workloadKind,omitempty"`
	Workload     string `json:"workload,omitempty"`
	// Service is the Service ("namespace/name") the address and port
	// belong to, when known.
	Service string `json:"service,omitempty"`
}

// Dropped reports whether the datapath (or a proxy) stopped the flow.
func (r *Record) Dropped() bool { return r.Verdict == VerdictDenied }

// JSONLines returns a record sink writing one JSON object per line (the
// access-log format), safe for concurrent use.
func JSONLines(w io.Writer) func(*Record) {
	var mu sync.Mutex
	var buf []byte
	var tc timeCache
	return func(r *Record) {
		mu.Lock()
		defer mu.Unlock()
		buf = appendJSON(buf[:0], r, &tc)
		w.Write(buf)
	}
}

// HeaderMismatch is one headerMatches mismatch action the L7 proxy took
// on a request.
type HeaderMismatch struct {
	// Action is LOG, ADD, DELETE or REPLACE.
	Action string `json:"action"`
	Name   string `json:"name"`
	// Value is the rule's value; for DELETE, the value that was removed.
	Value string `json:"value"`
}

// maxBufferedLines is how many bytes of records BufferedJSONLines holds
// before writing them without waiting for the delay.
const maxBufferedLines = 64 << 10

// BufferedJSONLines is JSONLines with writes coalesced: a record is
// written at most delay after it was logged, together with those logged
// meanwhile (at once when 64 KiB are buffered), so a proxy handling many
// small requests pays one write system call per batch instead of one per
// request. flush writes what is buffered now; call it before exiting (a
// crash loses what is buffered: at most delay's worth, or 64 KiB). The
// sink keeps no pointer to a record after it returns. Safe for concurrent
// use.
func BufferedJSONLines(w io.Writer, delay time.Duration) (sink func(*Record), flush func()) {
	return BufferedJSONLinesForward(w, delay, nil)
}

// BufferedJSONLinesForward is BufferedJSONLines that also queues every
// record on fwd (nil: none), each record encoded once for both; w nil
// writes no file (the forwarder alone).
func BufferedJSONLinesForward(w io.Writer, delay time.Duration, fwd *Forwarder) (sink func(*Record), flush func()) {
	var mu sync.Mutex
	var buf []byte
	var tc timeCache // guarded by mu
	armed := false
	writeLocked := func() {
		if len(buf) > 0 {
			w.Write(buf)
			buf = buf[:0]
		}
	}
	if w == nil {
		sink = func(r *Record) {
			if fwd == nil {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			buf = appendJSON(buf[:0], r, &tc)
			fwd.SendLine(buf)
		}
		return sink, func() {}
	}
	flush = func() {
		mu.Lock()
		defer mu.Unlock()
		armed = false
		writeLocked()
	}
	t := time.AfterFunc(time.Hour, flush)
	t.Stop()
	sink = func(r *Record) {
		mu.Lock()
		defer mu.Unlock()
		start := len(buf)
		buf = appendJSON(buf, r, &tc)
		if fwd != nil {
			fwd.SendLine(buf[start:])
		}
		if len(buf) >= maxBufferedLines {
			writeLocked()
			return
		}
		if !armed {
			armed = true
			t.Reset(delay)
		}
	}
	return sink, flush
}
