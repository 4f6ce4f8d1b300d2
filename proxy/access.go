package proxy

import (
	"slices"
	"sync/atomic"
	"time"

	"github.com/l7gate/l7gate/flow"
	httpparser "github.com/l7gate/l7gate/parsers/http"
	"github.com/l7gate/l7gate/parsers/kafka"
	"github.com/l7gate/l7gate/policy"
)

// AccessRecord is one access-log record: the shared flow record (package
// flow owns its fields, JSON form and verdict vocabulary).
type AccessRecord = flow.Record

func verdictString(allowed bool) flow.Verdict {
	if allowed {
		return flow.VerdictAllowed
	}
	return flow.VerdictDenied
}

// auditDenial reports whether a denial's rules (an L7 rule set's implicit
// deny: DefaultDenyOrigins) are all in audit mode: the request is then
// forwarded and recorded with verdict audit.
func auditDenial(ps []policy.Provenance) bool {
	return flow.AllAudit(ps) && ps[0].Kind == policy.KindDefaultDeny
}

// recordVerdict is the verdict of an L7 request: allowed, denied, or
// audit (allowed only because the rules that deny it are in audit mode).
func recordVerdict(allowed bool, decidedBy []policy.Provenance) flow.Verdict {
	if allowed && auditDenial(decidedBy) {
		return flow.VerdictAudit
	}
	return verdictString(allowed)
}

// identities returns (source, destination) identities of a connection.
func (p *Proxy) identities(ci connInfo) (policy.Identity, policy.Identity) {
	c := p.cur.Load()
	if c == nil {
		return 0, 0
	}
	return c.identityOf(ci.src.Addr()), c.identityOf(ci.dst.Addr())
}

// connIdentities caches a connection's (source, destination) identities
// under the config they were looked up in: a connection's requests are
// recorded with the identities of the config current at each record, as
// before, without two address lookups per request.
type connIdentities struct {
	cfg      *compiled
	src, dst policy.Identity
}

// identitiesCached is identities through cache (per connection; records
// of HTTP/2 streams may be written from several goroutines).
func (p *Proxy) identitiesCached(ci connInfo, cache *atomic.Pointer[connIdentities]) (policy.Identity, policy.Identity) {
	c := p.cur.Load()
	if c == nil {
		return 0, 0
	}
	if e := cache.Load(); e != nil && e.cfg == c {
		return e.src, e.dst
	}
	e := &connIdentities{cfg: c, src: c.identityOf(ci.src.Addr()), dst: c.identityOf(ci.dst.Addr())}
	cache.Store(e)
	return e.src, e.dst
}

func (p *Proxy) httpAccess(ci connInfo) func(*httpparser.Record) {
	var ids atomic.Pointer[connIdentities]
	return func(r *httpparser.Record) {
		verdict := recordVerdict(r.Allowed, r.DecidedBy)
		switch verdict {
		case flow.VerdictAllowed:
			p.stats.httpAllowed.Add(1)
		case flow.VerdictAudit:
			p.stats.httpAudited.Add(1)
		default:
			p.stats.httpDenied.Add(1)
		}
		src, dst := p.identitiesCached(ci, &ids)
		// A record from the pool (AccessLog keeps none): a request costs
		// no access-record allocation.
		rec, _ := p.records.Get().(*AccessRecord)
		if rec == nil {
			rec = new(AccessRecord)
		}
		*rec = AccessRecord{
			Time: r.Start, Protocol: "http", Direction: ci.dir, Source: ci.src, Destination: ci.dst,
			SrcIdentity: src, DstIdentity: dst, Verdict: verdict, DecidedBy: r.DecidedBy,
			LatencyMS: float64(r.Duration.Microseconds()) / 1000, Error: r.Error,
			Method: r.Method, Path: r.Path, Host: r.Host, Status: r.Status, RawPath: r.RawPath, HeaderMismatches: r.HeaderMismatches,
		}
		p.opts.AccessLog(rec)
		*rec = AccessRecord{} // holds nothing of the request while pooled
		p.records.Put(rec)
	}
}

func (p *Proxy) kafkaAccess(ci connInfo, audits *kafkaAudits) kafka.AccessLogger {
	return func(r *kafka.AccessRecord) {
		verdict := verdictString(r.Verdict == kafka.VerdictAllow)
		var decidedBy []policy.Provenance
		if ps, ok := audits.take(r.CorrelationID); ok && r.Verdict == kafka.VerdictAllow {
			verdict, decidedBy = flow.VerdictAudit, ps
		}
		switch verdict {
		case flow.VerdictAllowed:
			p.stats.kafkaAllowed.Add(1)
		case flow.VerdictAudit:
			p.stats.kafkaAudited.Add(1)
		default:
			p.stats.kafkaDenied.Add(1)
		}
		src, dst := p.identities(ci)
		rec := &AccessRecord{
			Time: time.Now(), Protocol: "kafka", Direction: ci.dir, Source: ci.src, Destination: ci.dst,
			SrcIdentity: src, DstIdentity: dst, Verdict: verdict, Reason: r.Reason, DecidedBy: decidedBy,
			APIKey: r.APIName, APIVersion: r.APIVersion, ClientID: r.ClientID, CorrelationID: r.CorrelationID,
			// the parser reuses its slices after the callback returns
			Topics: slices.Clone(r.Topics), ErrorCode: r.ErrorCode,
		}
		p.opts.AccessLog(rec)
	}
}
