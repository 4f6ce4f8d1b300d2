package admin

import (
	"fmt"
	"io"
	"slices"
	"strings"

	adminv3 "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbacfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	origsrcv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_src/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// Summary is what an operator asks of an l7gate Envoy: which listeners,
// which endpoint each filter chain selects, which rules each route holds.
type Summary struct {
	Listeners []ListenerSummary `json:"listeners"`
	Routes    []RouteSummary    `json:"routes"`
	Clusters  []string          `json:"clusters"`
	// Undecoded lists config types this binary could not decode.
	Undecoded []string `json:"undecoded,omitempty"`
}

// ListenerSummary is one listener.
type ListenerSummary struct {
	Name        string         `json:"name"`
	State       string         `json:"state"` // active, warming, static
	Version     string         `json:"version,omitempty"`
	Address     string         `json:"address"`
	Transparent bool           `json:"transparent"`
	Mark        uint32         `json:"mark,omitempty"` // original_src SO_MARK
	Chains      []ChainSummary `json:"filterChains"`
}

// ChainSummary is one filter chain: the endpoint it selects and its routes.
type ChainSummary struct {
	Name         string   `json:"name"`
	Port         uint32   `json:"port,omitempty"`
	Destinations []string `json:"destinations,omitempty"` // ingress: the endpoint
	Sources      []string `json:"sources,omitempty"`      // egress: the endpoint
	Route        string   `json:"route,omitempty"`        // RDS name
}

// RouteSummary is one route configuration and the RBAC rules of its routes.
type RouteSummary struct {
	Name    string        `json:"name"`
	Version string        `json:"version,omitempty"`
	Rules   []RuleSummary `json:"rules"`
	// NoRBAC: a route without RBACPerRoute (the listener's RBAC applies).
	NoRBAC bool `json:"noRBAC,omitempty"`
}

// RuleSummary is one RBAC policy: its id (policy and rule), the peers it
// admits and the requests it matches.
type RuleSummary struct {
	Policy string `json:"policy"`
	Action string `json:"action"`
	Peers  string `json:"peers"`
	Match  string `json:"match"`
}

// Summarize extracts the summary from a decoded dump. It accepts whole
// dumps and the per-resource entries ?resource= returns.
func Summarize(d *Dump) *Summary {
	s := &Summary{Listeners: []ListenerSummary{}, Routes: []RouteSummary{}, Clusters: []string{}}
	for _, c := range d.Configs {
		switch m := c.Message.(type) {
		case nil:
			if c.TypeURL == GoProxyConfigType && s.addGoProxy(c.Raw) == nil {
				continue
			}
			s.Undecoded = append(s.Undecoded, c.TypeURL)
		case *adminv3.ListenersConfigDump:
			for _, l := range m.StaticListeners {
				s.addListener("static", "", l.Listener)
			}
			for _, l := range m.DynamicListeners {
				s.addDynamicListener(l)
			}
		case *adminv3.ListenersConfigDump_DynamicListener:
			s.addDynamicListener(m)
		case *adminv3.ListenersConfigDump_StaticListener:
			s.addListener("static", "", m.Listener)
		case *adminv3.RoutesConfigDump:
			for _, r := range m.StaticRouteConfigs {
				s.addRoute("", r.RouteConfig)
			}
			for _, r := range m.DynamicRouteConfigs {
				s.addRoute(r.VersionInfo, r.RouteConfig)
			}
		case *adminv3.RoutesConfigDump_DynamicRouteConfig:
			s.addRoute(m.VersionInfo, m.RouteConfig)
		case *adminv3.RoutesConfigDump_StaticRouteConfig:
			s.addRoute("", m.RouteConfig)
		case *adminv3.ClustersConfigDump:
			for _, c := range m.StaticClusters {
				s.addCluster(c.Cluster)
			}
			for _, c := range m.DynamicActiveClusters {
				s.addCluster(c.Cluster)
			}
		case *adminv3.ClustersConfigDump_DynamicCluster:
			s.addCluster(m.Cluster)
		case *adminv3.ClustersConfigDump_StaticCluster:
			s.addCluster(m.Cluster)
		}
	}
	slices.SortFunc(s.Listeners, func(a, b ListenerSummary) int { return strings.Compare(a.Name+a.State, b.Name+b.State) })
	slices.SortFunc(s.Routes, func(a, b RouteSummary) int { return strings.Compare(a.Name, b.Name) })
	slices.Sort(s.Clusters)
	return s
}

func (s *Summary) addCluster(a *anypb.Any) {
	var c clusterv3.Cluster
	if a != nil && a.UnmarshalTo(&c) == nil {
		s.Clusters = append(s.Clusters, c.Name)
	}
}

func (s *Summary) addDynamicListener(l *adminv3.ListenersConfigDump_DynamicListener) {
	if st := l.ActiveState; st != nil {
		s.addListener("active", st.VersionInfo, st.Listener)
	}
	if st := l.WarmingState; st != nil {
		s.addListener("warming", st.VersionInfo, st.Listener)
	}
}

func (s *Summary) addListener(state, version string, a *anypb.Any) {
	var l listenerv3.Listener
	if a == nil || a.UnmarshalTo(&l) != nil {
		return
	}
	ls := ListenerSummary{Name: l.Name, State: state, Version: version, Address: addressString(l.Address), Transparent: l.Transparent.GetValue()}
	for _, f := range l.ListenerFilters {
		var os origsrcv3.OriginalSrc
		if f.GetTypedConfig().UnmarshalTo(&os) == nil {
			ls.Mark = os.Mark
		}
	}
	for _, fc := range l.FilterChains {
		cs := ChainSummary{Name: fc.Name, Port: fc.FilterChainMatch.GetDestinationPort().GetValue()}
		for _, r := range fc.FilterChainMatch.GetPrefixRanges() {
			cs.Destinations = append(cs.Destinations, cidrString(r))
		}
		for _, r := range fc.FilterChainMatch.GetSourcePrefixRanges() {
			cs.Sources = append(cs.Sources, cidrString(r))
		}
		for _, f := range fc.Filters {
			var h hcmv3.HttpConnectionManager
			if f.GetTypedConfig().UnmarshalTo(&h) == nil {
				if rds := h.GetRds(); rds != nil {
					cs.Route = rds.RouteConfigName
				} else if rc := h.GetRouteConfig(); rc != nil {
					cs.Route = rc.Name + " (inline)"
				}
			}
		}
		ls.Chains = append(ls.Chains, cs)
	}
	s.Listeners = append(s.Listeners, ls)
}

func (s *Summary) addRoute(version string, a *anypb.Any) {
	var rc routev3.RouteConfiguration
	if a == nil || a.UnmarshalTo(&rc) != nil {
		return
	}
	rs := RouteSummary{Name: rc.Name, Version: version, Rules: []RuleSummary{}}
	for _, vh := range rc.VirtualHosts {
		for _, r := range vh.Routes {
			cfg, ok := r.TypedPerFilterConfig["envoy.filters.http.rbac"]
			var per rbacfilterv3.RBACPerRoute
			if !ok || cfg.UnmarshalTo(&per) != nil {
				rs.NoRBAC = true
				continue
			}
			rules := per.GetRbac().GetRules()
			ids := make([]string, 0, len(rules.GetPolicies()))
			for id := range rules.GetPolicies() {
				ids = append(ids, id)
			}
			slices.Sort(ids)
			for _, id := range ids {
				p := rules.Policies[id]
				rs.Rules = append(rs.Rules, RuleSummary{
					Policy: id,
					Action: strings.ToLower(rules.Action.String()),
					Peers:  joinPrincipals(p.Principals, " | "),
					Match:  joinPermissions(p.Permissions, " | "),
				})
			}
		}
	}
	s.Routes = append(s.Routes, rs)
}

func addressString(a *corev3.Address) string {
	switch {
	case a.GetSocketAddress() != nil:
		sa := a.GetSocketAddress()
		if strings.Contains(sa.Address, ":") {
			return fmt.Sprintf("[%s]:%d", sa.Address, sa.GetPortValue())
		}
		return fmt.Sprintf("%s:%d", sa.Address, sa.GetPortValue())
	case a.GetPipe() != nil:
		return "unix:" + a.GetPipe().Path
	}
	return ""
}

func cidrString(r *corev3.CidrRange) string {
	return fmt.Sprintf("%s/%d", r.AddressPrefix, r.PrefixLen.GetValue())
}

func joinPrincipals(ps []*rbacv3.Principal, sep string) string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = principalString(p)
	}
	return strings.Join(out, sep)
}

func principalString(p *rbacv3.Principal) string {
	switch id := p.Identifier.(type) {
	case *rbacv3.Principal_Any:
		return "any"
	case *rbacv3.Principal_DirectRemoteIp:
		return cidrString(id.DirectRemoteIp)
	case *rbacv3.Principal_RemoteIp:
		return "remote " + cidrString(id.RemoteIp)
	case *rbacv3.Principal_AndIds:
		return "(" + joinPrincipals(id.AndIds.Ids, " & ") + ")"
	case *rbacv3.Principal_OrIds:
		return "(" + joinPrincipals(id.OrIds.Ids, " | ") + ")"
	case *rbacv3.Principal_NotId:
		return "!" + principalString(id.NotId)
	case *rbacv3.Principal_Header:
		return headerString(id.Header)
	}
	return fmt.Sprintf("%T", p.Identifier)
}

func joinPermissions(ps []*rbacv3.Permission, sep string) string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = permissionString(p)
	}
	return strings.Join(out, sep)
}

func permissionString(p *rbacv3.Permission) string {
	switch r := p.Rule.(type) {
	case *rbacv3.Permission_Any:
		return "any"
	case *rbacv3.Permission_Header:
		return headerString(r.Header)
	case *rbacv3.Permission_DestinationIp:
		return "dst " + cidrString(r.DestinationIp)
	case *rbacv3.Permission_DestinationPort:
		return fmt.Sprintf("port %d", r.DestinationPort)
	case *rbacv3.Permission_AndRules:
		s := joinPermissions(r.AndRules.Rules, " & ")
		if len(r.AndRules.Rules) > 1 {
			return "(" + s + ")"
		}
		return s
	case *rbacv3.Permission_OrRules:
		return "(" + joinPermissions(r.OrRules.Rules, " | ") + ")"
	case *rbacv3.Permission_NotRule:
		return "!" + permissionString(r.NotRule)
	}
	return fmt.Sprintf("%T", p.Rule)
}

func headerString(h *routev3.HeaderMatcher) string {
	switch {
	case h.GetPresentMatch():
		return h.Name + " present"
	case h.GetStringMatch().GetSafeRegex() != nil:
		return h.Name + " ~ " + h.GetStringMatch().GetSafeRegex().GetRegex()
	case h.GetStringMatch().GetPrefix() != "":
		return h.Name + " ^= " + h.GetStringMatch().GetPrefix()
	case h.GetStringMatch() != nil:
		return h.Name + " = " + h.GetStringMatch().GetExact()
	}
	return h.Name + " ?"
}

// WriteText prints the summary for people.
func (s *Summary) WriteText(w io.Writer) error {
	var b strings.Builder
	for _, l := range s.Listeners {
		fmt.Fprintf(&b, "listener %s  %s  %s", l.Name, l.Address, l.State)
		if l.Version != "" {
			fmt.Fprintf(&b, " (version %s)", l.Version)
		}
		if l.Transparent {
			b.WriteString("  transparent")
		}
		if l.Mark != 0 {
			fmt.Fprintf(&b, "  mark %#x", l.Mark)
		}
		b.WriteByte('\n')
		for _, c := range l.Chains {
			fmt.Fprintf(&b, "  chain %s  port %d", c.Name, c.Port)
			if len(c.Destinations) > 0 {
				fmt.Fprintf(&b, "  endpoint dst %s", strings.Join(c.Destinations, ","))
			}
			if len(c.Sources) > 0 {
				fmt.Fprintf(&b, "  endpoint src %s", strings.Join(c.Sources, ","))
			}
			if c.Route != "" {
				fmt.Fprintf(&b, "  -> routes %s", c.Route)
			}
			b.WriteByte('\n')
		}
	}
	for _, r := range s.Routes {
		fmt.Fprintf(&b, "routes %s", r.Name)
		if r.Version != "" {
			fmt.Fprintf(&b, " (version %s)", r.Version)
		}
		fmt.Fprintf(&b, ": %d rule(s)", len(r.Rules))
		if r.NoRBAC {
			b.WriteString(", a route without RBACPerRoute")
		}
		b.WriteByte('\n')
		for _, rule := range r.Rules {
			fmt.Fprintf(&b, "  %s %s\n    peers: %s\n    match: %s\n", rule.Action, rule.Policy, rule.Peers, rule.Match)
		}
	}
	if len(s.Clusters) > 0 {
		fmt.Fprintf(&b, "clusters: %s\n", strings.Join(s.Clusters, ", "))
	}
	for _, u := range s.Undecoded {
		fmt.Fprintf(&b, "undecoded: %s\n", u)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
