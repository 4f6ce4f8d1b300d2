package suggest

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/policy"
)

// Options select the records a suggestion (or a check) uses.
type Options struct {
	// Since and Until bound the record times (zero: unbounded; Until is
	// exclusive).
	Since, Until time.Time
	// Namespace keeps the workloads of one namespace.
	Namespace string
	// Workload keeps one workload: its name, or "namespace/name".
	Workload string
	// Egress suggests egress rules as well as ingress rules.
	Egress bool
	// IncludeDenied turns denied flows into allows too (by default only
	// traffic that was let through, allowed or audited, does).
	IncludeDenied bool
	// AuditMode (Check only): evaluate as an agent with
	// --policy-audit-mode does, every policy in audit mode.
	AuditMode bool
}

// Stats say what happened to the records.
type Stats struct {
	Read int
	Used int
	// Skipped counts records by why they were not used.
	Skipped map[string]int
}

func (s *Stats) skip(reason string) {
	if s.Skipped == nil {
		s.Skipped = map[string]int{}
	}
	s.Skipped[reason]++
}

// Reasons, sorted, with their counts ("12 denied (not turned into allows)").
func (s *Stats) Reasons() []string {
	var out []string
	for r, n := range s.Skipped {
		out = append(out, fmt.Sprintf("%d %s", n, r))
	}
	slices.SortFunc(out, func(a, b string) int {
		_, ra, _ := strings.Cut(a, " ")
		_, rb, _ := strings.Cut(b, " ")
		return strings.Compare(ra, rb)
	})
	return out
}

// Policy is one suggested CiliumNetworkPolicy.
type Policy struct {
	Namespace, Name string
	Workload        *Workload
	// Flows is how many records its rules cover.
	Flows int
	YAML  []byte
}

// Result is a suggestion.
type Result struct {
	Policies []Policy
	Stats    Stats
	// Warnings name workloads that got no policy and why.
	Warnings []string
}

// YAML joins every policy into one multi-document stream.
func (r *Result) YAML() []byte {
	var b []byte
	for i, p := range r.Policies {
		if i > 0 {
			b = append(b, "---\n"...)
		}
		b = append(b, p.YAML...)
	}
	return b
}

// verdictAudit is the audit mode's verdict (flow.VerdictAudit): a policy
// in audit mode would have denied, the traffic went through — so it was
// observed and is allowed like any forwarded traffic.
const verdictAudit = flow.VerdictAudit

// observation is one usable record, placed.
type observation struct {
	rec      *flow.Record
	dir      flow.Direction
	subject  *Workload // the endpoint whose policy the rule goes to
	peer     peer
	proto    policy.Protocol
	port     uint16
	l7       string // "", "http", "kafka"
	kafkaKey int16
	// redirected: a connection the datapath handed to a proxy; it becomes
	// no rule by itself.
	redirected bool
}

// place decides whether a record is used and where; reason says why not.
func (c *cluster) place(r *flow.Record, opts *Options) (obs observation, reason string) {
	obs.rec, obs.dir = r, r.Direction
	switch r.Verdict {
	case verdictAudit:
		// a datapath audit record of a connection handed to a proxy: like
		// a redirect, its requests make the rules (an L4 allow here would
		// lift the port's L7 rules)
		obs.redirected = r.Observer == flow.ObserverDatapath && r.ProxyPort != 0
	case flow.VerdictAllowed:
	case flow.VerdictRedirected:
		obs.redirected = true
	case flow.VerdictDenied:
		if !opts.IncludeDenied {
			return obs, "denied (not turned into allows; see --include-denied)"
		}
	default:
		return obs, fmt.Sprintf("with verdict %q", r.Verdict)
	}
	if r.FromProxy {
		return obs, "sent by a proxy upstream (the proxy's record has the request)"
	}
	if !opts.Since.IsZero() && r.Time.Before(opts.Since) || !opts.Until.IsZero() && !r.Time.Before(opts.Until) {
		return obs, "outside the time window"
	}
	if r.Direction != flow.Ingress && r.Direction != flow.Egress {
		return obs, "with an unknown direction"
	}
	if !r.Source.Addr().IsValid() || !r.Destination.Addr().IsValid() || r.Source.Addr().IsUnspecified() || r.Destination.Addr().IsUnspecified() {
		return obs, "without addresses"
	}
	obs.port = r.Destination.Port()
	switch strings.ToLower(r.Protocol) {
	case "http", "grpc":
		obs.l7, obs.proto = "http", policy.ProtoTCP
		if !httpToken(r.Method) {
			return obs, "HTTP records with an invalid method"
		}
		if r.Path == "" || len(r.Path) > maxPath || strings.ContainsFunc(r.Path, func(c rune) bool { return c <= ' ' || c == 0x7f }) {
			return obs, "HTTP records with an invalid path"
		}
	case "kafka":
		obs.l7, obs.proto = "kafka", policy.ProtoTCP
		k, err := policy.ParseKafkaAPIKey(r.APIKey)
		if err != nil {
			return obs, "Kafka records with an unknown API key"
		}
		obs.kafkaKey = k
		for _, t := range r.Topics {
			if !validTopic(t) {
				return obs, "Kafka records with an invalid topic"
			}
		}
	case "tcp":
		obs.proto = policy.ProtoTCP
	case "udp":
		obs.proto = policy.ProtoUDP
	case "sctp":
		obs.proto = policy.ProtoSCTP
	default:
		return obs, fmt.Sprintf("of protocol %q (not suggested)", r.Protocol)
	}
	if obs.port == 0 {
		return obs, "to port 0"
	}
	self, other := r.Destination.Addr(), r.Source.Addr()
	otherID := r.SrcIdentity
	if r.Direction == flow.Egress {
		self, other, otherID = r.Source.Addr(), r.Destination.Addr(), r.DstIdentity
		if !opts.Egress {
			return obs, "egress (see --egress)"
		}
	}
	obs.subject = c.byIP[self.Unmap()]
	if obs.subject == nil {
		return obs, "whose endpoint is not a pod of the objects"
	}
	if opts.Namespace != "" && obs.subject.Namespace != opts.Namespace {
		return obs, "of other namespaces"
	}
	if opts.Workload != "" && opts.Workload != obs.subject.Name && opts.Workload != obs.subject.Namespace+"/"+obs.subject.Name {
		return obs, "of other workloads"
	}
	obs.peer = c.peerOf(other, otherID)
	return obs, ""
}

var topicRE = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,249}$`)

func validTopic(t string) bool { return topicRE.MatchString(t) && t != "." && t != ".." }

// ruleKey is one rule: a peer and a port.
type ruleKey struct {
	dir   flow.Direction
	peer  string
	proto policy.Protocol
	port  uint16
}

type httpKey struct{ method, path string }

type ruleAgg struct {
	key        ruleKey
	peer       peer
	conns      int // connections allowed at L3/L4
	redirected int // connections handed to a proxy
	requests   int
	http       map[httpKey]*httpAgg
	kafka      map[string]map[int16]int // topic ("" none) → API key → requests
	l7         string
}

type httpAgg struct {
	count int
	query bool
}

func (a *ruleAgg) flows() int { return a.conns + a.redirected + a.requests }

// emitted: a rule comes from allowed connections or recorded requests;
// redirected connections alone make none (the requests decide).
func (a *ruleAgg) emitted() bool { return a.conns > 0 || a.requests > 0 }

type workloadAgg struct {
	wl         *Workload
	rules      map[ruleKey]*ruleAgg
	first, end time.Time
}

// Suggest writes one policy per workload from the records.
func Suggest(objs *policy.Objects, recs []*flow.Record, opts Options) (*Result, error) {
	c := newCluster(objs)
	res := &Result{}
	aggs := map[*Workload]*workloadAgg{}
	for _, r := range recs {
		res.Stats.Read++
		obs, reason := c.place(r, &opts)
		if reason != "" {
			res.Stats.skip(reason)
			continue
		}
		res.Stats.Used++
		wa := aggs[obs.subject]
		if wa == nil {
			wa = &workloadAgg{wl: obs.subject, rules: map[ruleKey]*ruleAgg{}}
			aggs[obs.subject] = wa
		}
		if wa.first.IsZero() || r.Time.Before(wa.first) {
			wa.first = r.Time
		}
		if r.Time.After(wa.end) {
			wa.end = r.Time
		}
		k := ruleKey{dir: obs.dir, peer: obs.peer.sortKey(), proto: obs.proto, port: obs.port}
		ra := wa.rules[k]
		if ra == nil {
			ra = &ruleAgg{key: k, peer: obs.peer}
			wa.rules[k] = ra
		}
		switch {
		case obs.redirected:
			ra.redirected++
		case obs.l7 == "":
			ra.conns++
		case ra.l7 != "" && ra.l7 != obs.l7:
			// One port, two L7 protocols: a port has one parser. Keep
			// the first; the other's requests get no rule (fail closed).
			res.Stats.Used--
			res.Stats.skip("requests of a second L7 protocol on one port")
		default:
			ra.l7 = obs.l7
			ra.requests++
			if obs.l7 == "http" {
				if ra.http == nil {
					ra.http = map[httpKey]*httpAgg{}
				}
				tmpl, query := PathTemplate(r.Path)
				hk := httpKey{method: strings.ToUpper(r.Method), path: tmpl}
				h := ra.http[hk]
				if h == nil {
					h = &httpAgg{}
					ra.http[hk] = h
				}
				h.count++
				h.query = h.query || query
			} else {
				if ra.kafka == nil {
					ra.kafka = map[string]map[int16]int{}
				}
				topics := r.Topics
				if len(topics) == 0 {
					topics = []string{""}
				}
				for _, t := range topics {
					if ra.kafka[t] == nil {
						ra.kafka[t] = map[int16]int{}
					}
					ra.kafka[t][obs.kafkaKey]++
				}
			}
		}
	}
	for _, w := range c.workloads {
		wa := aggs[w]
		if wa == nil {
			continue
		}
		if w.selector() == nil {
			res.Warnings = append(res.Warnings, fmt.Sprintf("workload %s/%s (pods %s) has no stable labels and a default service account: no policy can select it alone, none suggested",
				w.Namespace, w.Name, strings.Join(w.Pods, ", ")))
			continue
		}
		p := render(wa)
		if p == nil {
			continue
		}
		res.Policies = append(res.Policies, *p)
	}
	return res, nil
}

var (
	uuidSeg    = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	numericSeg = regexp.MustCompile(`^[0-9]+$`)
)

// Path template segments: a numeric segment and a UUID segment.
const (
	NumericSegment = `[0-9]+`
	UUIDSegment    = `[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}`
)

// PathTemplate turns a request target into a path regex as rules.http
// paths are written (matched anchored at both ends): numeric and UUID
// segments generalised, everything else literal, the query dropped.
// query reports whether the target had one.
func PathTemplate(target string) (tmpl string, query bool) {
	path, _, query := strings.Cut(target, "?")
	segs := strings.Split(path, "/")
	for i, s := range segs {
		switch {
		case numericSeg.MatchString(s):
			segs[i] = NumericSegment
		case uuidSeg.MatchString(s):
			segs[i] = UUIDSegment
		default:
			segs[i] = regexp.QuoteMeta(s)
		}
	}
	return strings.Join(segs, "/"), query
}

// maxPath bounds the request targets a suggestion turns into rules.
const maxPath = 8 << 10

// httpToken reports whether s is an HTTP method (RFC 9110 token).
func httpToken(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}
