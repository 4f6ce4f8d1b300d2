package proxy

import (
	"context"
	"fmt"
	"net"
	"slices"
	"strings"

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

// allTopics stands for "every topic"; it is not a legal topic name, so only
// rules without a topic match it.
const allTopics = "*"

func (p *Proxy) kafkaDecider(ci connInfo) kafka.Decider {
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
		topics := r.Topics
		if r.AllTopics && len(topics) == 0 {
			// "every topic" is allowed only by rules without a topic; the
			// filter then answers a denied Metadata request with the topics
			// allowed one by one.
			topics = []string{allTopics}
		}
		res := set.rs.EvaluateKafka(peer, &policy.KafkaRequest{APIKey: r.APIKey, APIVersion: r.APIVersion, ClientID: r.ClientID, Topics: topics})
		if res.Decision != policy.DecisionAllowed {
			return kafka.Deny(provenanceReason(res.DecidedBy), slices.DeleteFunc(res.DeniedTopics, func(t string) bool { return t == allTopics })...)
		}
		return kafka.Allow(provenanceReason(res.DecidedBy))
	}
}

func (p *Proxy) serveKafka(ci connInfo, client net.Conn, dial func(context.Context) (net.Conn, error)) error {
	f, err := kafka.NewFilter(kafka.Config{
		Decide:       p.kafkaDecider(ci),
		AccessLog:    p.kafkaAccess(ci),
		Logger:       p.log,
		MaxFrameSize: p.opts.KafkaMaxFrameSize,
		TopicIDs:     p.topicIDs,
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
