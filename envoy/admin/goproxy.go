package admin

import (
	"encoding/json"
	"fmt"
	"strings"
)

// GoProxyConfigType is the @type of the l7gate Go proxy's entry in its
// Envoy-compatible /config_dump (the proxy serves its config as JSON, not
// as a registered proto).
const GoProxyConfigType = "type.googleapis.com/l7gate.v1.ProxyConfigDump"

// goProxyDump mirrors the Go proxy's config JSON (proxy.Config); only what
// the summary shows.
type goProxyDump struct {
	Version   string `json:"version"`
	Listeners []struct {
		Name      string `json:"name"`
		Port      uint16 `json:"port"`
		Direction string `json:"direction"`
		Parser    string `json:"parser"`
	} `json:"listeners"`
	Endpoints []struct {
		Identity uint32      `json:"identity"`
		IPs      []string    `json:"ips"`
		Ingress  []goRuleSet `json:"ingress"`
		Egress   []goRuleSet `json:"egress"`
	} `json:"endpoints"`
}

type goRuleSet struct {
	Port   uint16 `json:"port"`
	Parser string `json:"parser"`
	Rules  []struct {
		AnyPeer bool              `json:"anyPeer"`
		Peers   []uint32          `json:"peers"`
		HTTP    map[string]any    `json:"http"`
		Kafka   map[string]any    `json:"kafka"`
		Generic map[string]string `json:"generic"`
		Origin  struct {
			Policy string `json:"policy"`
			Path   string `json:"path"`
			L7     string `json:"l7"`
			Kind   string `json:"kind"`
		} `json:"origin"`
	} `json:"rules"`
}

// addGoProxy summarises the Go proxy's config: its listeners, one chain
// per local endpoint and port, and the L7 rules as routes.
func (s *Summary) addGoProxy(raw json.RawMessage) error {
	var d goProxyDump
	if err := json.Unmarshal(raw, &d); err != nil {
		return fmt.Errorf("go proxy config: %w", err)
	}
	for _, l := range d.Listeners {
		ls := ListenerSummary{Name: l.Name, State: "active", Version: d.Version, Address: fmt.Sprintf("0.0.0.0:%d", l.Port), Transparent: true}
		for _, ep := range d.Endpoints {
			sets := ep.Ingress
			if l.Direction == "egress" {
				sets = ep.Egress
			}
			for _, rs := range sets {
				if rs.Parser != l.Parser {
					continue
				}
				route := fmt.Sprintf("l7gate/%s/%d/%d", l.Direction, ep.Identity, rs.Port)
				c := ChainSummary{Name: fmt.Sprintf("endpoint %d", ep.Identity), Port: uint32(rs.Port), Route: route}
				if l.Direction == "egress" {
					c.Sources = ep.IPs
				} else {
					c.Destinations = ep.IPs
				}
				ls.Chains = append(ls.Chains, c)
				r := RouteSummary{Name: route, Version: d.Version, Rules: []RuleSummary{}}
				for _, rule := range rs.Rules {
					peers := "any"
					if !rule.AnyPeer {
						ids := make([]string, len(rule.Peers))
						for i, p := range rule.Peers {
							ids[i] = fmt.Sprint(p)
						}
						peers = "identities " + strings.Join(ids, ",")
					}
					policy := rule.Origin.Policy + " " + rule.Origin.Path
					if rule.Origin.L7 != "" {
						policy += "." + rule.Origin.L7
					}
					r.Rules = append(r.Rules, RuleSummary{Policy: policy, Action: "ALLOW", Peers: peers, Match: goMatch(rule.HTTP, rule.Kafka, rule.Generic)})
				}
				s.Routes = append(s.Routes, r)
			}
		}
		s.Listeners = append(s.Listeners, ls)
	}
	return nil
}

func goMatch(http, kafka map[string]any, generic map[string]string) string {
	var parts []string
	add := func(m map[string]any, keys ...string) {
		for _, k := range keys {
			if v, ok := m[k]; ok {
				parts = append(parts, fmt.Sprintf("%s=%v", k, v))
			}
		}
	}
	switch {
	case http != nil:
		add(http, "method", "path", "host", "headers")
	case kafka != nil:
		add(kafka, "role", "apiKey", "apiVersion", "clientID", "topic")
	case generic != nil:
		for k, v := range generic {
			parts = append(parts, k+"="+v)
		}
	default:
		return "any request"
	}
	if len(parts) == 0 {
		return "any request"
	}
	return strings.Join(parts, " ")
}
