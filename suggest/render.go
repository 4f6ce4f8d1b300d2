package suggest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/policy"
)

// yw writes YAML line by line: the suggestion's layout is fixed, and
// writing it by hand keeps the comments where they belong.
type yw struct{ b bytes.Buffer }

func (w *yw) line(indent int, format string, args ...any) {
	w.b.WriteString(strings.Repeat("  ", indent))
	fmt.Fprintf(&w.b, format, args...)
	w.b.WriteByte('\n')
}

func (w *yw) comment(indent int, format string, args ...any) {
	w.line(indent, "# %s", commentText(fmt.Sprintf(format, args...)))
}

// commentText keeps a comment on one line of printable ASCII.
func commentText(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return '?'
		}
		return r
	}, s)
}

// q renders a string scalar: plain when that cannot be misread, else a
// double-quoted (JSON) string.
func q(s string) string {
	plain := s != "" && (s[0] >= 'a' && s[0] <= 'z' || s[0] >= 'A' && s[0] <= 'Z')
	for i := 0; plain && i < len(s); i++ {
		c := s[i]
		plain = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' || c == '/'
	}
	switch strings.ToLower(s) {
	case "y", "n", "yes", "no", "on", "off", "true", "false", "null":
		plain = false
	}
	if plain {
		return s
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	return strings.TrimSuffix(b.String(), "\n")
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func plural(n int, one string) string {
	if n == 1 {
		return "1 " + one
	}
	return strconv.Itoa(n) + " " + one + "s"
}

// PolicyName is the name of the policy suggested for a workload.
func PolicyName(w *Workload) string {
	name := "l7gate-suggest-" + w.Name
	if len(name) > 253 {
		name = strings.TrimRight(name[:253], "-.")
	}
	return name
}

func render(wa *workloadAgg) *Policy {
	w := wa.wl
	var rules []*ruleAgg
	flows := 0
	for _, r := range wa.rules {
		if r.emitted() {
			rules = append(rules, r)
			flows += r.flows()
		}
	}
	if len(rules) == 0 {
		return nil
	}
	slices.SortFunc(rules, func(a, b *ruleAgg) int {
		switch {
		case a.key.dir != b.key.dir:
			return int(a.key.dir) - int(b.key.dir)
		case a.key.peer != b.key.peer:
			return strings.Compare(a.key.peer, b.key.peer)
		case a.key.proto != b.key.proto:
			return int(a.key.proto) - int(b.key.proto)
		}
		return int(a.key.port) - int(b.key.port)
	})
	var y yw
	pods := w.Pods
	more := ""
	if len(pods) > 5 {
		pods, more = pods[:5], fmt.Sprintf(" and %d more", len(w.Pods)-5)
	}
	y.comment(0, "Suggested by l7gate policy suggest for workload %s/%s (pods: %s%s)", w.Namespace, w.Name, strings.Join(pods, ", "), more)
	y.comment(0, "from %s observed %s to %s.", plural(flows, "flow"), wa.first.UTC().Format(time.RFC3339), wa.end.UTC().Format(time.RFC3339))
	y.line(0, "apiVersion: cilium.io/v2")
	y.line(0, "kind: CiliumNetworkPolicy")
	y.line(0, "metadata:")
	y.line(1, "name: %s", q(PolicyName(w)))
	y.line(1, "namespace: %s", q(w.Namespace))
	y.line(0, "spec:")
	y.line(1, "endpointSelector:")
	y.line(2, "matchLabels:")
	sel := w.selector()
	for _, k := range sortedKeys(sel) {
		y.line(3, "%s: %s", q(k), q(sel[k]))
	}
	for _, dir := range []flow.Direction{flow.Ingress, flow.Egress} {
		first := true
		for _, r := range rules {
			if r.key.dir != dir {
				continue
			}
			if first {
				y.line(1, "%s:", dir)
				first = false
			}
			renderRule(&y, w, r)
		}
	}
	return &Policy{Namespace: w.Namespace, Name: PolicyName(w), Workload: w, Flows: flows, YAML: y.b.Bytes()}
}

func renderRule(y *yw, self *Workload, r *ruleAgg) {
	var parts []string
	if n := r.conns + r.redirected; n > 0 {
		parts = append(parts, plural(n, "connection"))
	}
	if r.requests > 0 {
		name := map[string]string{"http": "HTTP", "kafka": "Kafka"}[r.l7]
		parts = append(parts, plural(r.requests, name+" request"))
	}
	y.comment(1, "%s: %s (%s)", r.peer, plural(r.flows(), "flow"), strings.Join(parts, ", "))
	if r.l7 == "" {
		y.comment(1, "no L7 request was recorded from this peer on this port: L3/L4 only")
	}
	from := "from"
	if r.key.dir == flow.Egress {
		from = "to"
	}
	switch r.peer.kind {
	case peerWorkload:
		p := r.peer.wl
		ls := map[string]string{}
		for k, v := range p.selector() {
			ls[k] = v
		}
		if p.Namespace != self.Namespace {
			ls["k8s:"+policy.LabelPodNamespace] = p.Namespace
		}
		if p.selector() == nil {
			y.comment(1, "the peer has no stable labels: this selects every pod of namespace %s", p.Namespace)
		}
		if len(ls) == 0 {
			y.line(1, "- %sEndpoints:", from)
			y.line(2, "- {}")
		} else {
			y.line(1, "- %sEndpoints:", from)
			y.line(2, "- matchLabels:")
			for _, k := range sortedKeys(ls) {
				y.line(4, "%s: %s", q(k), q(ls[k]))
			}
		}
	case peerEntity:
		y.line(1, "- %sEntities:", from)
		y.line(2, "- %s", q(r.peer.entity))
	default:
		y.line(1, "- %sCIDR:", from)
		y.line(2, "- %s", q(r.peer.cidr.String()))
	}
	y.line(2, "toPorts:")
	y.line(2, "- ports:")
	y.line(3, "- port: %s", q(strconv.Itoa(int(r.key.port))))
	y.line(4, "protocol: %s", r.key.proto)
	switch r.l7 {
	case "http":
		y.line(3, "rules:")
		y.line(4, "http:")
		keys := make([]httpKey, 0, len(r.http))
		for k := range r.http {
			keys = append(keys, k)
		}
		slices.SortFunc(keys, func(a, b httpKey) int {
			if c := strings.Compare(a.path, b.path); c != 0 {
				return c
			}
			return strings.Compare(a.method, b.method)
		})
		for _, k := range keys {
			h := r.http[k]
			path := k.path
			if h.query {
				path += `(\?.*)?`
			}
			y.comment(4, "%s", plural(h.count, "request"))
			y.line(4, "- method: %s", q(regexp.QuoteMeta(k.method)))
			y.line(5, "path: %s", q(path))
		}
	case "kafka":
		y.line(3, "rules:")
		y.line(4, "kafka:")
		for _, kr := range kafkaRules(r.kafka) {
			y.comment(4, "%s", plural(kr.count, "request"))
			if kr.role != "" {
				y.line(4, "- role: %s", kr.role)
			} else {
				y.line(4, "- apiKey: %s", q(policy.KafkaAPIName(kr.apiKey)))
			}
			if kr.topic != "" {
				y.line(5, "topic: %s", q(kr.topic))
			}
		}
	}
}

type kafkaRule struct {
	role   string
	apiKey int16
	topic  string
	keys   []int16 // what it admits
	count  int
}

func (k *kafkaRule) admits(key int16, topic string) bool {
	return slices.Contains(k.keys, key) && (topic == "" || k.topic == "" || k.topic == topic)
}

// kafkaRules turns observed (topic, API key) pairs into the fewest rules
// that admit no other API key: a role where its defining key was seen
// (produce for produce, fetch for consume), single API keys for the rest,
// and topic-less rules only for topic-less requests no other rule admits.
func kafkaRules(seen map[string]map[int16]int) []*kafkaRule {
	produce, _ := policy.KafkaRoleAPIKeys("produce")
	consume, _ := policy.KafkaRoleAPIKeys("consume")
	var out []*kafkaRule
	for _, t := range sortedKeys(seen) {
		if t == "" {
			continue
		}
		keys := seen[t]
		if keys[policy.KafkaProduce] > 0 {
			out = append(out, &kafkaRule{role: "produce", topic: t, keys: produce})
		}
		if keys[policy.KafkaFetch] > 0 {
			out = append(out, &kafkaRule{role: "consume", topic: t, keys: consume})
		}
		for _, k := range sortedInt16(keys) {
			if !anyAdmits(out, k, t) {
				out = append(out, &kafkaRule{apiKey: k, topic: t, keys: []int16{k}})
			}
		}
	}
	for _, k := range sortedInt16(seen[""]) {
		if !anyAdmits(out, k, "") {
			out = append(out, &kafkaRule{apiKey: k, keys: []int16{k}})
		}
	}
	// counts: each request to the first rule that admits it
	for _, t := range sortedKeys(seen) {
		for k, n := range seen[t] {
			for _, r := range out {
				if r.admits(k, t) {
					r.count += n
					break
				}
			}
		}
	}
	return out
}

func anyAdmits(rules []*kafkaRule, key int16, topic string) bool {
	for _, r := range rules {
		if r.admits(key, topic) {
			return true
		}
	}
	return false
}

func sortedInt16(m map[int16]int) []int16 {
	out := make([]int16, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
