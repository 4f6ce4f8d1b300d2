package proxy

import (
	"io"
	"net/netip"
	"slices"
	"sync"
	"time"

	httpparser "github.com/l7gate/l7gate/parsers/http"
	"github.com/l7gate/l7gate/parsers/kafka"
	"github.com/l7gate/l7gate/policy"
)

// AccessRecord is one access-log record.
type AccessRecord struct {
	Time        time.Time           `json:"time"`
	Protocol    string              `json:"protocol"` // http or kafka
	Direction   policy.Direction    `json:"direction"`
	Source      netip.AddrPort      `json:"source"`
	Destination netip.AddrPort      `json:"destination"`
	SrcIdentity policy.Identity     `json:"srcIdentity"`
	DstIdentity policy.Identity     `json:"dstIdentity"`
	Verdict     string              `json:"verdict"` // allowed or denied
	DecidedBy   []policy.Provenance `json:"decidedBy,omitempty"`
	LatencyMS   float64             `json:"latencyMs"`
	// Reason explains the verdict where DecidedBy cannot (Kafka's filter
	// reports its decision as text).
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
	HeaderMismatches []httpparser.HeaderMismatch `json:"headerMismatches,omitempty"`

	// Kafka
	APIKey        string   `json:"apiKey,omitempty"`
	APIVersion    int16    `json:"apiVersion,omitempty"`
	ClientID      string   `json:"clientID,omitempty"`
	CorrelationID int32    `json:"correlationID,omitempty"`
	Topics        []string `json:"topics,omitempty"`
	ErrorCode     int16    `json:"errorCode,omitempty"`
}

// JSONLines returns an access-log sink writing one JSON object per line.
func JSONLines(w io.Writer) func(*AccessRecord) {
	var mu sync.Mutex
	var buf []byte
	return func(r *AccessRecord) {
		mu.Lock()
		defer mu.Unlock()
		buf = appendJSON(buf[:0], r)
		w.Write(buf)
	}
}

func verdictString(allowed bool) string {
	if allowed {
		return "allowed"
	}
	return "denied"
}

// identities returns (source, destination) identities of a connection.
func (p *Proxy) identities(ci connInfo) (policy.Identity, policy.Identity) {
	c := p.cur.Load()
	if c == nil {
		return 0, 0
	}
	return c.identityOf(ci.src.Addr()), c.identityOf(ci.dst.Addr())
}

func (p *Proxy) httpAccess(ci connInfo) func(*httpparser.Record) {
	return func(r *httpparser.Record) {
		if r.Allowed {
			p.stats.httpAllowed.Add(1)
		} else {
			p.stats.httpDenied.Add(1)
		}
		src, dst := p.identities(ci)
		p.opts.AccessLog(&AccessRecord{
			Time: r.Start, Protocol: "http", Direction: ci.dir, Source: ci.src, Destination: ci.dst,
			SrcIdentity: src, DstIdentity: dst, Verdict: verdictString(r.Allowed), DecidedBy: r.DecidedBy,
			LatencyMS: float64(r.Duration.Microseconds()) / 1000, Error: r.Error,
			Method: r.Method, Path: r.Path, Host: r.Host, Status: r.Status, RawPath: r.RawPath, HeaderMismatches: r.HeaderMismatches,
		})
	}
}

func (p *Proxy) kafkaAccess(ci connInfo) kafka.AccessLogger {
	return func(r *kafka.AccessRecord) {
		allowed := r.Verdict == kafka.VerdictAllow
		if allowed {
			p.stats.kafkaAllowed.Add(1)
		} else {
			p.stats.kafkaDenied.Add(1)
		}
		src, dst := p.identities(ci)
		rec := &AccessRecord{
			Time: time.Now(), Protocol: "kafka", Direction: ci.dir, Source: ci.src, Destination: ci.dst,
			SrcIdentity: src, DstIdentity: dst, Verdict: verdictString(allowed), Reason: r.Reason,
			APIKey: r.APIName, APIVersion: r.APIVersion, ClientID: r.ClientID, CorrelationID: r.CorrelationID,
			// the parser reuses its slices after the callback returns
			Topics: slices.Clone(r.Topics), ErrorCode: r.ErrorCode,
		}
		p.opts.AccessLog(rec)
	}
}
