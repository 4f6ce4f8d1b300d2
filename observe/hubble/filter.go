package hubble

import (
	"fmt"
	"net/netip"
	neturl "net/url"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"google.golang.org/protobuf/reflect/protoreflect"
	"k8s.io/apimachinery/pkg/labels"

	flowpb "github.com/l7gate/l7gate/proto/hubble/flowpb"
)

// Filter is a compiled pair of Hubble filter lists: a flow passes when it
// matches any whitelist filter (or the whitelist is empty) and no
// blacklist filter. Within one FlowFilter every field set must match, and
// a field matches when any of its values does (Hubble's semantics).
type Filter struct {
	allow, deny []conjunction
}

type conjunction []func(*flowpb.Flow) bool

func (c conjunction) match(f *flowpb.Flow) bool {
	for _, m := range c {
		if !m(f) {
			return false
		}
	}
	return true
}

// NewFilter compiles the lists. A filter field l7gate does not support is
// an error naming it, never ignored (ignoring it would show flows the user
// asked to leave out).
func NewFilter(whitelist, blacklist []*flowpb.FlowFilter) (*Filter, error) {
	f := &Filter{}
	for i, ff := range whitelist {
		c, err := compile(ff)
		if err != nil {
			return nil, fmt.Errorf("whitelist filter %d: %w", i, err)
		}
		f.allow = append(f.allow, c)
	}
	for i, ff := range blacklist {
		c, err := compile(ff)
		if err != nil {
			return nil, fmt.Errorf("blacklist filter %d: %w", i, err)
		}
		f.deny = append(f.deny, c)
	}
	return f, nil
}

// Match reports whether fl passes.
func (f *Filter) Match(fl *flowpb.Flow) bool {
	if f == nil {
		return true
	}
	if len(f.allow) > 0 && !slices.ContainsFunc(f.allow, func(c conjunction) bool { return c.match(fl) }) {
		return false
	}
	return !slices.ContainsFunc(f.deny, func(c conjunction) bool { return c.match(fl) })
}

// supportedFields are the FlowFilter fields compile understands.
var supportedFields = map[protoreflect.Name]bool{
	"uuid": true, "source_ip": true, "destination_ip": true, "source_pod": true, "destination_pod": true,
	"source_label": true, "destination_label": true, "source_service": true, "destination_service": true,
	"source_workload": true, "destination_workload": true, "traffic_direction": true, "verdict": true,
	"drop_reason_desc": true, "event_type": true, "http_status_code": true, "protocol": true,
	"source_port": true, "destination_port": true, "reply": true, "source_identity": true,
	"destination_identity": true, "http_method": true, "http_path": true, "http_url": true,
	"node_name": true, "ip_version": true,
}

func compile(ff *flowpb.FlowFilter) (conjunction, error) {
	var unsupported []string
	ff.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		if !supportedFields[fd.Name()] {
			unsupported = append(unsupported, string(fd.Name()))
		}
		return true
	})
	if len(unsupported) > 0 {
		slices.Sort(unsupported)
		return nil, fmt.Errorf("filter field %s not supported by l7gate", strings.Join(unsupported, ", "))
	}
	var c conjunction
	add := func(m func(*flowpb.Flow) bool) { c = append(c, m) }
	if v := ff.GetUuid(); len(v) > 0 {
		add(func(f *flowpb.Flow) bool { return slices.Contains(v, f.GetUuid()) })
	}
	for _, side := range []struct {
		ips, pods, labels, services []string
		workloads                   []*flowpb.Workload
		identities                  []uint32
		ports                       []string
		ip                          func(*flowpb.Flow) string
		ep                          func(*flowpb.Flow) *flowpb.Endpoint
		svc                         func(*flowpb.Flow) *flowpb.Service
		port                        func(*flowpb.Flow) (uint32, bool)
	}{
		{ff.GetSourceIp(), ff.GetSourcePod(), ff.GetSourceLabel(), ff.GetSourceService(), ff.GetSourceWorkload(), ff.GetSourceIdentity(), ff.GetSourcePort(),
			func(f *flowpb.Flow) string { return f.GetIP().GetSource() }, (*flowpb.Flow).GetSource, (*flowpb.Flow).GetSourceService, sourcePort},
		{ff.GetDestinationIp(), ff.GetDestinationPod(), ff.GetDestinationLabel(), ff.GetDestinationService(), ff.GetDestinationWorkload(), ff.GetDestinationIdentity(), ff.GetDestinationPort(),
			func(f *flowpb.Flow) string { return f.GetIP().GetDestination() }, (*flowpb.Flow).GetDestination, (*flowpb.Flow).GetDestinationService, destinationPort},
	} {
		if len(side.ips) > 0 {
			m, err := ipMatcher(side.ips, side.ip)
			if err != nil {
				return nil, err
			}
			add(m)
		}
		if len(side.pods) > 0 {
			m, err := nameMatcher(side.pods, func(f *flowpb.Flow) (string, string) {
				e := side.ep(f)
				return e.GetNamespace(), e.GetPodName()
			})
			if err != nil {
				return nil, fmt.Errorf("pod: %w", err)
			}
			add(m)
		}
		if len(side.services) > 0 {
			m, err := nameMatcher(side.services, func(f *flowpb.Flow) (string, string) {
				s := side.svc(f)
				return s.GetNamespace(), s.GetName()
			})
			if err != nil {
				return nil, fmt.Errorf("service: %w", err)
			}
			add(m)
		}
		if len(side.labels) > 0 {
			m, err := labelMatcher(side.labels, func(f *flowpb.Flow) []string { return side.ep(f).GetLabels() })
			if err != nil {
				return nil, err
			}
			add(m)
		}
		if ws := side.workloads; len(ws) > 0 {
			ep := side.ep
			add(func(f *flowpb.Flow) bool {
				return slices.ContainsFunc(ep(f).GetWorkloads(), func(w *flowpb.Workload) bool {
					return slices.ContainsFunc(ws, func(want *flowpb.Workload) bool {
						return (want.GetName() == "" || want.GetName() == w.GetName()) && (want.GetKind() == "" || want.GetKind() == w.GetKind())
					})
				})
			})
		}
		if ids := side.identities; len(ids) > 0 {
			ep := side.ep
			add(func(f *flowpb.Flow) bool { return slices.Contains(ids, ep(f).GetIdentity()) })
		}
		if len(side.ports) > 0 {
			var ports []uint32
			for _, s := range side.ports {
				p, err := strconv.ParseUint(s, 10, 16)
				if err != nil {
					return nil, fmt.Errorf("invalid port %q", s)
				}
				ports = append(ports, uint32(p))
			}
			port := side.port
			add(func(f *flowpb.Flow) bool {
				p, ok := port(f)
				return ok && slices.Contains(ports, p)
			})
		}
	}
	if v := ff.GetTrafficDirection(); len(v) > 0 {
		add(func(f *flowpb.Flow) bool { return slices.Contains(v, f.GetTrafficDirection()) })
	}
	if v := ff.GetVerdict(); len(v) > 0 {
		add(func(f *flowpb.Flow) bool { return slices.Contains(v, f.GetVerdict()) })
	}
	if v := ff.GetDropReasonDesc(); len(v) > 0 {
		add(func(f *flowpb.Flow) bool { return slices.Contains(v, f.GetDropReasonDesc()) })
	}
	if v := ff.GetIpVersion(); len(v) > 0 {
		add(func(f *flowpb.Flow) bool { return f.GetIP() != nil && slices.Contains(v, f.GetIP().GetIpVersion()) })
	}
	if v := ff.GetEventType(); len(v) > 0 {
		add(func(f *flowpb.Flow) bool {
			et := f.GetEventType()
			return et != nil && slices.ContainsFunc(v, func(want *flowpb.EventTypeFilter) bool {
				return want.GetType() == et.GetType() && (!want.GetMatchSubType() || want.GetSubType() == et.GetSubType())
			})
		})
	}
	if v := ff.GetReply(); len(v) > 0 {
		add(func(f *flowpb.Flow) bool {
			return f.GetIsReply() != nil && slices.Contains(v, f.GetIsReply().GetValue())
		})
	}
	if v := ff.GetProtocol(); len(v) > 0 {
		m, err := protocolMatcher(v)
		if err != nil {
			return nil, err
		}
		add(m)
	}
	if v := ff.GetHttpStatusCode(); len(v) > 0 {
		m, err := statusMatcher(v)
		if err != nil {
			return nil, err
		}
		add(m)
	}
	if v := ff.GetHttpMethod(); len(v) > 0 {
		add(func(f *flowpb.Flow) bool {
			h := f.GetL7().GetHttp()
			return h != nil && slices.ContainsFunc(v, func(m string) bool { return strings.EqualFold(m, h.GetMethod()) })
		})
	}
	for _, re := range []struct {
		exprs []string
		part  func(string) string
	}{
		{ff.GetHttpPath(), func(u string) string {
			if p, err := neturl.Parse(u); err == nil {
				return p.Path
			}
			return ""
		}},
		{ff.GetHttpUrl(), func(u string) string { return u }},
	} {
		if len(re.exprs) == 0 {
			continue
		}
		var res []*regexp.Regexp
		for _, e := range re.exprs {
			r, err := regexp.Compile(e)
			if err != nil {
				return nil, fmt.Errorf("invalid regular expression %q: %w", e, err)
			}
			res = append(res, r)
		}
		part := re.part
		add(func(f *flowpb.Flow) bool {
			h := f.GetL7().GetHttp()
			if h == nil {
				return false
			}
			s := part(h.GetUrl())
			return slices.ContainsFunc(res, func(r *regexp.Regexp) bool { return r.MatchString(s) })
		})
	}
	if v := ff.GetNodeName(); len(v) > 0 {
		for _, p := range v {
			if _, err := path.Match(p, ""); err != nil {
				return nil, fmt.Errorf("invalid node name pattern %q: %w", p, err)
			}
		}
		add(func(f *flowpb.Flow) bool {
			// patterns may name the cluster: "cluster/node"; l7gate's is "default"
			return slices.ContainsFunc(v, func(p string) bool {
				ok1, _ := path.Match(p, f.GetNodeName())
				ok2, _ := path.Match(p, "default/"+f.GetNodeName())
				return ok1 || ok2
			})
		})
	}
	return c, nil
}

func l4Ports(f *flowpb.Flow) (src, dst uint32, ok bool) {
	l4 := f.GetL4()
	switch {
	case l4.GetTCP() != nil:
		return l4.GetTCP().GetSourcePort(), l4.GetTCP().GetDestinationPort(), true
	case l4.GetUDP() != nil:
		return l4.GetUDP().GetSourcePort(), l4.GetUDP().GetDestinationPort(), true
	case l4.GetSCTP() != nil:
		return l4.GetSCTP().GetSourcePort(), l4.GetSCTP().GetDestinationPort(), true
	}
	return 0, 0, false
}

func sourcePort(f *flowpb.Flow) (uint32, bool) {
	s, _, ok := l4Ports(f)
	return s, ok
}

func destinationPort(f *flowpb.Flow) (uint32, bool) {
	_, d, ok := l4Ports(f)
	return d, ok
}

func ipMatcher(specs []string, get func(*flowpb.Flow) string) (func(*flowpb.Flow) bool, error) {
	var addrs []netip.Addr
	var prefixes []netip.Prefix
	for _, s := range specs {
		if strings.Contains(s, "/") {
			p, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("invalid IP prefix %q", s)
			}
			prefixes = append(prefixes, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("invalid IP address %q", s)
		}
		addrs = append(addrs, a)
	}
	return func(f *flowpb.Flow) bool {
		a, err := netip.ParseAddr(get(f))
		if err != nil {
			return false
		}
		return slices.Contains(addrs, a) || slices.ContainsFunc(prefixes, func(p netip.Prefix) bool { return p.Contains(a) })
	}, nil
}

// nameMatcher matches "namespace/name-prefix" as Hubble does: a name
// without a slash is in namespace default, "namespace/" matches the whole
// namespace.
func nameMatcher(specs []string, get func(*flowpb.Flow) (ns, name string)) (func(*flowpb.Flow) bool, error) {
	type spec struct{ ns, prefix string }
	var ss []spec
	for _, s := range specs {
		if s == "" {
			return nil, fmt.Errorf("empty name")
		}
		ns, prefix, ok := strings.Cut(s, "/")
		if !ok {
			ns, prefix = "default", s
		}
		ss = append(ss, spec{ns, prefix})
	}
	return func(f *flowpb.Flow) bool {
		ns, name := get(f)
		if ns == "" && name == "" {
			return false
		}
		return slices.ContainsFunc(ss, func(s spec) bool {
			return (s.ns == "" || s.ns == ns) && strings.HasPrefix(name, s.prefix)
		})
	}, nil
}

func protocolMatcher(specs []string) (func(*flowpb.Flow) bool, error) {
	var want []string
	for _, p := range specs {
		p = strings.ToLower(p)
		switch p {
		case "tcp", "udp", "sctp", "icmp", "icmpv4", "http", "kafka":
			want = append(want, p)
		default:
			return nil, fmt.Errorf("unknown protocol %q", p)
		}
	}
	return func(f *flowpb.Flow) bool {
		l4, l7 := f.GetL4(), f.GetL7()
		return slices.ContainsFunc(want, func(p string) bool {
			switch p {
			case "tcp":
				return l4.GetTCP() != nil
			case "udp":
				return l4.GetUDP() != nil
			case "sctp":
				return l4.GetSCTP() != nil
			case "icmp", "icmpv4":
				return l4.GetICMPv4() != nil
			case "http":
				return l7.GetHttp() != nil
			case "kafka":
				return l7.GetKafka() != nil
			}
			return false
		})
	}, nil
}

// statusMatcher matches HTTP status codes: "200" exactly, "5+" by prefix.
func statusMatcher(specs []string) (func(*flowpb.Flow) bool, error) {
	var full, prefix []string
	for _, s := range specs {
		switch {
		case len(s) == 3 && isDigits(s):
			full = append(full, s)
		case len(s) >= 2 && len(s) <= 3 && strings.HasSuffix(s, "+") && isDigits(s[:len(s)-1]):
			prefix = append(prefix, strings.TrimSuffix(s, "+"))
		default:
			return nil, fmt.Errorf("invalid status code %q", s)
		}
	}
	return func(f *flowpb.Flow) bool {
		h := f.GetL7().GetHttp()
		if h == nil || h.GetCode() == 0 {
			return false
		}
		code := fmt.Sprintf("%03d", h.GetCode())
		return slices.Contains(full, code) || slices.ContainsFunc(prefix, func(p string) bool { return strings.HasPrefix(code, p) })
	}, nil
}

func isDigits(s string) bool {
	return s != "" && strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' }) < 0
}

// labelMatcher matches Kubernetes label selectors against a flow
// endpoint's labels ("source:key=value"). A key may name its source
// ("k8s:app=web"); without one it matches any source, as in Hubble.
func labelMatcher(selectors []string, get func(*flowpb.Flow) []string) (func(*flowpb.Flow) bool, error) {
	var sels []labels.Selector
	for _, s := range selectors {
		t, err := translateSelector(s)
		if err != nil {
			return nil, fmt.Errorf("label selector %q: %w", s, err)
		}
		sel, err := labels.Parse(t)
		if err != nil {
			return nil, fmt.Errorf("label selector %q: %w", s, err)
		}
		sels = append(sels, sel)
	}
	return func(f *flowpb.Flow) bool {
		set := labelSet(get(f))
		return slices.ContainsFunc(sels, func(s labels.Selector) bool { return s.Matches(set) })
	}, nil
}

// labelSet turns "source:key=value" labels into the keys selectors use:
// "source.key" and "any.key".
func labelSet(ls []string) labels.Set {
	set := make(labels.Set, 2*len(ls))
	for _, l := range ls {
		kv, value, _ := strings.Cut(l, "=")
		src, key, ok := strings.Cut(kv, ":")
		if !ok {
			src, key = "any", kv
		}
		set[src+"."+key] = value
		set["any."+key] = value
	}
	return set
}

// translateSelector rewrites each key of a selector to the form labelSet
// uses: "k8s:app" becomes "k8s.app", "app" becomes "any.app".
func translateSelector(s string) (string, error) {
	var out strings.Builder
	i := 0
	for i < len(s) {
		// before a key: spaces and negations
		for i < len(s) && (unicode.IsSpace(rune(s[i])) || s[i] == '!') {
			out.WriteByte(s[i])
			i++
		}
		start := i
		for i < len(s) && !unicode.IsSpace(rune(s[i])) && !strings.ContainsRune("=!,()", rune(s[i])) {
			i++
		}
		key := s[start:i]
		if key == "" {
			if i < len(s) {
				return "", fmt.Errorf("expected a label key at offset %d", i)
			}
			break
		}
		if src, k, ok := strings.Cut(key, ":"); ok {
			key = src + "." + k
		} else {
			key = "any." + key
		}
		out.WriteString(key)
		// the rest of this requirement, up to a top-level comma
		depth := 0
		for i < len(s) {
			c := s[i]
			if c == '(' {
				depth++
			} else if c == ')' {
				depth--
			} else if c == ',' && depth == 0 {
				out.WriteByte(c)
				i++
				break
			}
			out.WriteByte(c)
			i++
		}
	}
	return out.String(), nil
}
