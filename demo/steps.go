package demo

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/l7gate/l7gate/policy"
)

// Verdict is what a check expects or observes.
type Verdict string

// Verdicts. Errored is only ever observed: the request failed in a way that is
// none of the three (a bug in a server, the proxy or the demo).
const (
	Allowed Verdict = "allowed" // the request reached the server
	Denied  Verdict = "denied"  // an L7 denial seen by the client
	Dropped Verdict = "dropped" // no connection (timeout or reset)
	// Audited: the request reached the server, and the datapath or the
	// proxy recorded it with verdict audit (a policy in audit mode would
	// have dropped or denied it).
	Audited Verdict = "audit"
	Errored Verdict = "error"
)

// Step is one entry of steps.yaml.
type Step struct {
	Name string
	// Apply lists policy files relative to the scenario folder, applied in
	// order on top of the previous steps' policies (an object with the kind,
	// namespace and name of an earlier one replaces it, as kubectl apply).
	Apply  []string
	Checks []Check
}

// Check sends one request and compares what happened with Expect. Exactly
// one of HTTP, GRPC and Kafka is set.
type Check struct {
	// From and To name hosts: "namespace/pod" or "external:name"; From
	// may also be "node" (NodeHost): the node itself; To may be a Service,
	// "svc/namespace/name" (ServicePrefix), with the Service's port.
	From, To string
	Port     uint16
	HTTP     *HTTPRequest
	GRPC     *GRPCRequest
	Kafka    *KafkaRequest
	DNS      *DNSQuery
	Expect   Verdict
	// DecidedBy, when set, must be part of a rule the datapath or the
	// proxy reported as deciding this very request, as l7gate prints
	// rules: "allow shop/ops (CiliumNetworkPolicy spec.ingress[0])".
	DecidedBy string
	// Resolved: the names earlier DNS checks of the scenario resolved
	// (set by LoadScenario), for policy.Trace's toFQDNs.
	Resolved policy.StaticFQDNCache
	// Name: an HTTP check by name ("to: name:NAME"): the source first asks
	// the scenario's DNS server that has NAME in its zone (ResolvedBy)
	// for it, from its own namespace (so through the DNS proxy when
	// rules.dns are in force), then sends the request to the answered
	// address with Host: NAME. LoadScenario sets To to the host at the
	// zone's address (for validation and policy.Trace).
	Name, ResolvedBy string
	// Family is the address family the request goes over: FamilyIPv4
	// (the default, "") or FamilyIPv6 (both hosts' IPv6 addresses; not
	// for checks by name or to a Service).
	Family Family
}

// Family is a check's address family ("family: ipv4|ipv6").
type Family string

// Families.
const (
	FamilyIPv4 Family = ""
	FamilyIPv6 Family = "ipv6"
)

// HTTPRequest is a check's HTTP/1.1 request.
type HTTPRequest struct {
	Method  string // default GET
	Path    string // default /
	Host    string // default the destination address
	Headers map[string]string
}

// DNSQuery is an A (or AAAA) query for Name over UDP: allowed is an answer from
// the server (NOERROR or NXDOMAIN, as its zone says), denied REFUSED (or
// NXDOMAIN made up by the DNS proxy: see Observation.Detail), dropped no
// answer.
type DNSQuery struct {
	Name string
	// AAAA asks for the name's IPv6 addresses ("type: AAAA"; default A).
	AAAA bool
}

// GRPCRequest is a unary call of Method ("/pkg.Service/Method") with an
// empty message.
type GRPCRequest struct {
	Method string
}

// KafkaRequest produces one message to or fetches from a topic (exactly
// one is set).
type KafkaRequest struct {
	Produce string
	Consume string
}

// Topic is the topic the request names.
func (k *KafkaRequest) Topic() string {
	if k.Produce != "" {
		return k.Produce
	}
	return k.Consume
}

// External is a host outside the cluster (steps.yaml "externals"): a
// namespace routed through the node like a pod, but with no Pod object, so
// policy sees it as world or a CIDR.
type External struct {
	Name string
	IP   netip.Addr
	// IP6 is its IPv6 address ("ip6", optional, in 2001:db8::/32).
	IP6   netip.Addr
	Serve []Service
}

// stepsFile is steps.yaml, decoded.
type stepsFile struct {
	Description string
	Externals   []External
	Steps       []Step
}

// fieldErrs collects errors that name file and field path.
type fieldErrs struct {
	file string
	errs []error
}

func (e *fieldErrs) add(p, format string, args ...any) {
	e.errs = append(e.errs, fmt.Errorf("%s: %s: %s", e.file, p, fmt.Sprintf(format, args...)))
}

func (e *fieldErrs) err() error { return errors.Join(e.errs...) }

// parseSteps decodes steps.yaml strictly: unknown or duplicate fields,
// wrong types and invalid values are errors naming file and field.
func parseSteps(file string, data []byte) (*stepsFile, error) {
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, fmt.Errorf("%s: parse yaml: %w", file, err)
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, fmt.Errorf("%s: parse: %w", file, err)
	}
	e := &fieldErrs{file: file}
	out := &stepsFile{}
	top, ok := e.object("(top level)", v, "description", "externals", "steps")
	if !ok {
		return nil, e.err()
	}
	out.Description, _ = e.str("description", top["description"], false)
	if xs, ok := e.list("externals", top["externals"], false); ok {
		for i, x := range xs {
			p := fmt.Sprintf("externals[%d]", i)
			if ext, ok := e.external(p, x); ok {
				out.Externals = append(out.Externals, ext)
			}
		}
	}
	steps, ok := e.list("steps", top["steps"], true)
	if ok && len(steps) == 0 {
		e.add("steps", "give at least one step")
	}
	for i, s := range steps {
		if st, ok := e.step(fmt.Sprintf("steps[%d]", i), s); ok {
			out.Steps = append(out.Steps, st)
		}
	}
	if err := e.err(); err != nil {
		return nil, err
	}
	return out, nil
}

func describe(v any) string {
	switch v.(type) {
	case nil:
		return "nothing"
	case map[string]any:
		return "an object"
	case []any:
		return "a list"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	}
	return fmt.Sprintf("%T", v)
}

// object checks that v is an object with only the allowed keys.
func (e *fieldErrs) object(p string, v any, allowed ...string) (map[string]any, bool) {
	m, ok := v.(map[string]any)
	if !ok {
		e.add(p, "want an object, got %s", describe(v))
		return nil, false
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	good := true
	for _, k := range keys {
		if !slices.Contains(allowed, k) {
			e.add(join(p, k), "unknown field (want one of %s)", strings.Join(allowed, ", "))
			good = false
		}
	}
	return m, good
}

func join(p, k string) string {
	if p == "(top level)" {
		return k
	}
	return p + "." + k
}

func (e *fieldErrs) list(p string, v any, required bool) ([]any, bool) {
	if v == nil {
		if required {
			e.add(p, "missing")
		}
		return nil, false
	}
	l, ok := v.([]any)
	if !ok {
		e.add(p, "want a list, got %s", describe(v))
		return nil, false
	}
	return l, true
}

func (e *fieldErrs) str(p string, v any, required bool) (string, bool) {
	if v == nil {
		if required {
			e.add(p, "missing")
		}
		return "", false
	}
	s, ok := v.(string)
	if !ok {
		e.add(p, "want a string, got %s", describe(v))
		return "", false
	}
	if required && s == "" {
		e.add(p, "must not be empty")
		return "", false
	}
	return s, true
}

// scalar accepts a string, number or boolean as text (header values).
func (e *fieldErrs) scalar(p string, v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case json.Number:
		return x.String(), true
	case bool:
		return strconv.FormatBool(x), true
	}
	e.add(p, "want a string, got %s", describe(v))
	return "", false
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

func (e *fieldErrs) external(p string, v any) (External, bool) {
	m, ok := e.object(p, v, "name", "ip", "ip6", "serve")
	if !ok {
		return External{}, false
	}
	var x External
	good := true
	if x.Name, ok = e.str(join(p, "name"), m["name"], true); ok && (len(x.Name) > 63 || !dnsLabel.MatchString(x.Name)) {
		e.add(join(p, "name"), "want a DNS label (lowercase letters, digits, '-'), not %q", x.Name)
		good = false
	}
	good = good && ok
	if s, ok := e.str(join(p, "ip"), m["ip"], true); ok {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			e.add(join(p, "ip"), "%v", err)
			good = false
		} else if err := checkHostIP(ip); err != nil {
			e.add(join(p, "ip"), "%v", err)
			good = false
		}
		x.IP = ip
	} else {
		good = false
	}
	if s, ok := e.str(join(p, "ip6"), m["ip6"], false); ok && s != "" {
		ip, err := netip.ParseAddr(s)
		if err == nil && (!ip.Is6() || ip.Is4In6() || ip.Zone() != "") {
			err = fmt.Errorf("%s: want an IPv6 address", s)
		}
		if err == nil {
			err = checkHostIP6(ip)
		}
		if err != nil {
			e.add(join(p, "ip6"), "%v", err)
			good = false
		}
		x.IP6 = ip
	}
	if s, ok := e.str(join(p, "serve"), m["serve"], false); ok {
		svc, err := ParseServe(s)
		if err != nil {
			e.add(join(p, "serve"), "%v", err)
			good = false
		}
		x.Serve = svc
	}
	return x, good
}

func (e *fieldErrs) step(p string, v any) (Step, bool) {
	m, ok := e.object(p, v, "name", "apply", "checks")
	if !ok {
		return Step{}, false
	}
	var st Step
	n := len(e.errs)
	st.Name, _ = e.str(join(p, "name"), m["name"], true)
	if l, ok := e.list(join(p, "apply"), m["apply"], false); ok {
		for i, a := range l {
			ap := fmt.Sprintf("%s.apply[%d]", p, i)
			s, ok := e.str(ap, a, true)
			if !ok {
				continue
			}
			if c := path.Clean(s); c != s || path.IsAbs(s) || s == "." || strings.HasPrefix(s, "../") || s == ".." {
				e.add(ap, "want a clean path inside the scenario folder, not %q", s)
				continue
			}
			st.Apply = append(st.Apply, s)
		}
	}
	if l, ok := e.list(join(p, "checks"), m["checks"], false); ok {
		for i, c := range l {
			if ch, ok := e.check(fmt.Sprintf("%s.checks[%d]", p, i), c); ok {
				st.Checks = append(st.Checks, ch)
			}
		}
	}
	return st, len(e.errs) == n
}

var grpcMethod = regexp.MustCompile(`^/[A-Za-z_][A-Za-z0-9_.]*/[A-Za-z_][A-Za-z0-9_]*$`)

func (e *fieldErrs) check(p string, v any) (Check, bool) {
	m, ok := e.object(p, v, "from", "to", "port", "http", "grpc", "kafka", "dns", "expect", "decidedBy", "family")
	if !ok {
		return Check{}, false
	}
	n := len(e.errs)
	var c Check
	for _, f := range []struct {
		key string
		dst *string
	}{{"from", &c.From}, {"to", &c.To}} {
		s, ok := e.str(join(p, f.key), m[f.key], true)
		if !ok {
			continue
		}
		if name, byName := strings.CutPrefix(s, NamePrefix); byName && f.key == "to" {
			n, err := policy.NormalizeDNSName(name)
			if err != nil {
				e.add(join(p, f.key), "%v", err)
				continue
			}
			c.Name = n
			continue
		}
		if err := checkHostName(s); err != nil {
			e.add(join(p, f.key), "%v", err)
			continue
		}
		*f.dst = s
	}
	switch port := m["port"].(type) {
	case nil:
		e.add(join(p, "port"), "missing")
	case json.Number:
		n, err := strconv.ParseUint(port.String(), 10, 16)
		if err != nil || n == 0 {
			e.add(join(p, "port"), "want a port number (1-65535), not %s", port)
		}
		c.Port = uint16(n)
	default:
		e.add(join(p, "port"), "want a port number, got %s", describe(port))
	}
	if s, ok := e.str(join(p, "family"), m["family"], false); ok {
		switch s {
		case "ipv4":
			c.Family = FamilyIPv4
		case "ipv6":
			c.Family = FamilyIPv6
		default:
			e.add(join(p, "family"), "want ipv4 or ipv6, not %q", s)
		}
	}
	kinds := 0
	if hv := m["http"]; hv != nil {
		kinds++
		hp := join(p, "http")
		if hm, ok := e.object(hp, hv, "method", "path", "host", "headers"); ok {
			h := &HTTPRequest{Method: "GET", Path: "/"}
			if s, ok := e.str(join(hp, "method"), hm["method"], false); ok {
				if s == "" || strings.ContainsAny(s, " \t\r\n") {
					e.add(join(hp, "method"), "want an HTTP method, not %q", s)
				}
				h.Method = s
			}
			if s, ok := e.str(join(hp, "path"), hm["path"], false); ok {
				if !strings.HasPrefix(s, "/") || strings.ContainsAny(s, " \t\r\n") {
					e.add(join(hp, "path"), "want a request path starting with '/', not %q", s)
				}
				h.Path = s
			}
			h.Host, _ = e.str(join(hp, "host"), hm["host"], false)
			if hdrs := hm["headers"]; hdrs != nil {
				hmap, ok := hdrs.(map[string]any)
				if !ok {
					e.add(join(hp, "headers"), "want an object of header names to values, got %s", describe(hdrs))
				}
				h.Headers = map[string]string{}
				for k, val := range hmap {
					if k == "" || strings.ContainsAny(k, " \t\r\n:") {
						e.add(join(hp, "headers"), "invalid header name %q", k)
						continue
					}
					if s, ok := e.scalar(join(join(hp, "headers"), k), val); ok {
						h.Headers[k] = s
					}
				}
			}
			c.HTTP = h
		}
	}
	if gv := m["grpc"]; gv != nil {
		kinds++
		gp := join(p, "grpc")
		if gm, ok := e.object(gp, gv, "method"); ok {
			if s, ok := e.str(join(gp, "method"), gm["method"], true); ok {
				if !grpcMethod.MatchString(s) {
					e.add(join(gp, "method"), "want /package.Service/Method, not %q", s)
				}
				c.GRPC = &GRPCRequest{Method: s}
			}
		}
	}
	if kv := m["kafka"]; kv != nil {
		kinds++
		kp := join(p, "kafka")
		if km, ok := e.object(kp, kv, "produce", "consume"); ok {
			k := &KafkaRequest{}
			k.Produce, _ = e.str(join(kp, "produce"), km["produce"], false)
			k.Consume, _ = e.str(join(kp, "consume"), km["consume"], false)
			switch {
			case (k.Produce == "") == (k.Consume == ""):
				e.add(kp, "give exactly one of produce and consume (a topic)")
			case !validTopic(k.Topic()):
				e.add(kp, "invalid topic name %q", k.Topic())
			}
			c.Kafka = k
		}
	}
	if dv := m["dns"]; dv != nil {
		kinds++
		dp := join(p, "dns")
		if dm, ok := e.object(dp, dv, "query", "type"); ok {
			if s, ok := e.str(join(dp, "query"), dm["query"], true); ok {
				if _, err := policy.NormalizeDNSName(s); err != nil {
					e.add(join(dp, "query"), "%v", err)
				}
				c.DNS = &DNSQuery{Name: s}
			}
			if t, ok := e.str(join(dp, "type"), dm["type"], false); ok && t != "" && c.DNS != nil {
				switch strings.ToUpper(t) {
				case "A":
				case "AAAA":
					c.DNS.AAAA = true
				default:
					e.add(join(dp, "type"), "want A or AAAA, not %q", t)
				}
			}
		}
	}
	if kinds != 1 {
		e.add(p, "give exactly one of http, grpc, kafka and dns")
	}
	if c.Name != "" && c.HTTP == nil {
		e.add(join(p, "to"), "a check by name (%s%s) is an HTTP check", NamePrefix, strings.TrimSuffix(c.Name, "."))
	}
	if s, ok := e.str(join(p, "expect"), m["expect"], true); ok {
		switch Verdict(s) {
		case Allowed, Denied, Dropped, Audited:
			c.Expect = Verdict(s)
		default:
			e.add(join(p, "expect"), "want allowed, denied, dropped or audit, not %q", s)
		}
	}
	if s, ok := e.str(join(p, "decidedBy"), m["decidedBy"], false); ok {
		if strings.TrimSpace(s) == "" {
			e.add(join(p, "decidedBy"), "must not be empty (leave it out instead)")
		}
		c.DecidedBy = s
	}
	return c, len(e.errs) == n
}

var topicName = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,249}$`)

func validTopic(t string) bool { return topicName.MatchString(t) && t != "." && t != ".." }

// checkHostName accepts "namespace/pod", "external:name" and "node".
// NamePrefix: a check's destination given by DNS name ("to: name:NAME",
// HTTP checks).
const NamePrefix = "name:"

func checkHostName(s string) error {
	if s == NodeHost {
		return nil
	}
	if name, ok := strings.CutPrefix(s, "external:"); ok {
		if !dnsLabel.MatchString(name) {
			return fmt.Errorf("want external:<name>, not %q", s)
		}
		return nil
	}
	if svc, ok := strings.CutPrefix(s, ServicePrefix); ok {
		ns, name, ok := strings.Cut(svc, "/")
		if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
			return fmt.Errorf("want svc/<namespace>/<name>, not %q", s)
		}
		return nil
	}
	ns, name, ok := strings.Cut(s, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return fmt.Errorf("want namespace/pod, svc/namespace/name, external:name or node, not %q", s)
	}
	return nil
}
