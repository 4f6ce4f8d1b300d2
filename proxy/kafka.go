package proxy

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/l7gate/l7gate/parsers/kafka"
	"github.com/l7gate/l7gate/policy"
)

// provenanceReason renders deciding rules for the Kafka access log, which
// carries a reason string.
func provenanceReason(ps []policy.Provenance) string {
	parts := make([]string, len(ps))
	for i, p := range ps {
		parts[i] = p.String()
	}
	return strings.Join(parts, "; ")
}

// reasonCache remembers the reason string of the last deciding rules of
// one connection: a connection's requests are mostly decided by the same
// rules, and rendering them (fmt per rule) cost more than the policy
// evaluation itself. Keyed by the provenances' values, so a policy change
// that changes them renders anew. Safe for concurrent use (the decider
// runs on both of a connection's goroutines).
type reasonCache struct {
	last atomic.Pointer[renderedReason]
}

type renderedReason struct {
	by     []policy.Provenance
	reason string
}

func (c *reasonCache) of(ps []policy.Provenance) string {
	if r := c.last.Load(); r != nil && slices.Equal(r.by, ps) {
		return r.reason
	}
	r := &renderedReason{by: slices.Clone(ps), reason: provenanceReason(ps)}
	c.last.Store(r)
	return r.reason
}

// kafkaAudits hands the rules in audit mode behind a forwarded Kafka
// request from the decider to the access logger of the same connection
// (by correlation id; the filter's access record carries a reason string
// only). Bounded: a connection never holds more than maxKafkaAudits.
type kafkaAudits struct {
	mu sync.Mutex
	m  map[int32][]policy.Provenance
}

const maxKafkaAudits = 1024

func (a *kafkaAudits) put(id int32, ps []policy.Provenance) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.m == nil || len(a.m) >= maxKafkaAudits {
		a.m = map[int32][]policy.Provenance{}
	}
	a.m[id] = ps
}

func (a *kafkaAudits) take(id int32) ([]policy.Provenance, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ps, ok := a.m[id]
	delete(a.m, id)
	return ps, ok
}

func (p *Proxy) kafkaDecider(ci connInfo, audits *kafkaAudits) kafka.Decider {
	var reasons reasonCache
	return func(r *kafka.Request) kafka.Decision {
		c := p.cur.Load()
		if c == nil {
			return kafka.Deny("no config", r.Topics...)
		}
		set, peer, _, err := c.lookup(ci.dir, ci.src, ci.dst)
		if err != nil {
			return kafka.Deny(err.Error(), r.Topics...)
		}
		if set.rs.Parser != policy.ParserKafka {
			return kafka.Deny(fmt.Sprintf("port %d uses parser %s", ci.dst.Port(), set.rs.Parser), r.Topics...)
		}
		// An all-topics Metadata request names no topic and is matched on
		// its other fields (Cilium's rule), so clients learn topic names and
		// then get TOPIC_AUTHORIZATION_FAILED on the topics they may not
		// use, rather than UNKNOWN_TOPIC.
		topics := r.Topics
		res := set.rs.EvaluateKafka(peer, &policy.KafkaRequest{APIKey: r.APIKey, APIVersion: r.APIVersion, ClientID: r.ClientID, Topics: topics})
		if res.Decision != policy.DecisionAllowed {
			if res.Decision == policy.DecisionDenied && auditDenial(res.DecidedBy) {
				// audit mode: forward, record audit with the rules
				audits.put(r.CorrelationID, res.DecidedBy)
				return kafka.Allow("audit: " + provenanceReason(res.DecidedBy) + " (denied topics: " + strings.Join(res.DeniedTopics, ", ") + ")")
			}
			return kafka.Deny(reasons.of(res.DecidedBy), res.DeniedTopics...)
		}
		return kafka.Allow(reasons.of(res.DecidedBy))
	}
}

// topicIDScope is whom the proxy trusts to tell the truth about a
// connection's upstream cluster: its security identity (the broker's pod
// identity on egress, the local endpoint's on ingress, or a CIDR
// identity), so that a broker of one identity claiming another cluster's
// id cannot touch that cluster's topic-ID table. Reserved identities
// (world, host, remote-node, ...) are shared by unrelated peers, so there
// the scope is the upstream address itself.
func (p *Proxy) topicIDScope(ci connInfo) string {
	upstream := policy.IdentityWorld
	if c := p.cur.Load(); c != nil {
		if _, peer, local, err := c.lookup(ci.dir, ci.src, ci.dst); err == nil {
			upstream = local
			if ci.dir == policy.Egress {
				upstream = peer
			}
		}
	}
	if upstream < policy.FirstClusterIdentity {
		return "addr:" + ci.dst.Addr().String()
	}
	return fmt.Sprintf("identity:%d", upstream)
}

func (p *Proxy) serveKafka(ci connInfo, client net.Conn, dial func(context.Context) (net.Conn, error)) error {
	audits := &kafkaAudits{}
	f, err := kafka.NewFilter(kafka.Config{
		Decide:          p.kafkaDecider(ci, audits),
		AccessLog:       p.kafkaAccess(ci, audits),
		OnResponse:      p.opts.KafkaOnResponse,
		Logger:          p.log,
		MaxFrameSize:    p.opts.KafkaMaxFrameSize,
		AllowTopicIDs:   p.opts.KafkaTopicIDs,
		TopicIDRegistry: p.topicIDs,
		TopicIDScope:    p.topicIDScope(ci),
		Budget:          p.kafkaMem,
		IdleTimeout:     p.opts.KafkaIdleTimeout,
		FrameTimeout:    p.opts.KafkaFrameTimeout,
		Drain:           p.drainCtx,
	})
	if err != nil {
		return err
	}
	up, err := dial(p.ctx)
	if err != nil {
		return fmt.Errorf("dial upstream %s: %w", ci.dst, err)
	}
	defer up.Close()
	return f.Serve(p.ctx, client, up)
}

// writeKafkaStats writes the Kafka memory budget's and topic-ID tables'
// metrics (Prometheus text format).
