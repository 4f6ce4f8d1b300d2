package policy

import (
	"net/netip"
	"os"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

func loadDNSGolden(t *testing.T) (*Objects, StaticFQDNCache) {
	t.Helper()
	objs, errs := Load("testdata/in/dns.yaml")
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	b, err := os.ReadFile("testdata/fqdn/dns.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cache StaticFQDNCache
	if err := yaml.Unmarshal(b, &cache); err != nil {
		t.Fatal(err)
	}
	return objs, cache
}

// TestToFQDNsFailClosedWithoutCache: toFQDNs with no cached addresses
// allow nothing; with the cache they allow exactly the cached addresses of
// the selected names, on the rule's ports.
func TestToFQDNsFailClosedWithoutCache(t *testing.T) {
	objs, cache := loadDNSGolden(t)
	trace := func(opts Options, dst string, port uint16) Decision {
		t.Helper()
		res, err := Trace(objs, TraceRequest{Src: TracePeer{Addr: netip.MustParseAddr("198.18.0.1")}, Dst: TracePeer{Addr: netip.MustParseAddr(dst)},
			Protocol: ProtoTCP, DPort: port, Options: opts})
		if err != nil {
			t.Fatal(err)
		}
		return res.Egress.Verdict
	}
	with := Options{FQDNCache: cache}
	for _, tc := range []struct {
		opts Options
		dst  string
		port uint16
		want Decision
	}{
		{Options{}, "198.18.1.1", 443, DecisionDenied}, // api.github.com, not cached
		{with, "198.18.1.1", 443, DecisionAllowed},
		{with, "198.18.1.1", 80, DecisionDenied},  // not **.example.com
		{with, "198.18.3.1", 443, DecisionDenied}, // other.org: cached, selected by no rule
		{with, "198.18.9.9", 443, DecisionDenied}, // unknown address
		{with, "198.18.2.1", 443, DecisionDenied}, // www.example.com: port 80 only
	} {
		if got := trace(tc.opts, tc.dst, tc.port); got != tc.want {
			t.Errorf("cache %v → %s:%d: %s, want %s", tc.opts.FQDNCache != nil, tc.dst, tc.port, got, tc.want)
		}
	}
}

// TestTraceDNSNameAndDstFQDN: policy trace --dns-name decides a query by
// rules.dns; --dst-fqdn resolves through the cache and says so.
func TestTraceDNSNameAndDstFQDN(t *testing.T) {
	objs, cache := loadDNSGolden(t)
	src := TracePeer{Addr: netip.MustParseAddr("198.18.0.1")}
	kubeDNS := TracePeer{Addr: netip.MustParseAddr("198.18.0.53")}
	for name, want := range map[string]Decision{"www.example.com": DecisionAllowed, "api.github.com.": DecisionAllowed, "a.b.example.com": DecisionDenied, "evil.org": DecisionDenied} {
		res, err := Trace(objs, TraceRequest{Src: src, Dst: kubeDNS, DPort: 53, DNSName: name})
		if err != nil {
			t.Fatal(err)
		}
		if res.Protocol != ProtoUDP || res.Verdict != want || res.Egress.L7 == nil || res.Egress.L7.Parser != ParserDNS {
			t.Errorf("%s: %s over %s, l7 %+v; want %s", name, res.Verdict, res.Protocol, res.Egress.L7, want)
		}
		if want == DecisionAllowed && !strings.HasPrefix(res.DecidedBy[0].L7, "dns[") {
			t.Errorf("%s: decided by %v", name, res.DecidedBy)
		}
	}
	res, err := Trace(objs, TraceRequest{Src: src, DstFQDN: "API.github.com", Protocol: ProtoTCP, DPort: 443, Options: Options{FQDNCache: cache}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Verdict != DecisionAllowed || res.FQDN == nil || len(res.FQDN.IPs) != 2 || len(res.FQDN.Selectors) != 1 || !strings.Contains(res.FQDN.Note, "FQDN cache") {
		t.Errorf("cached: %s %+v", res.Verdict, res.FQDN)
	}
	res, err = Trace(objs, TraceRequest{Src: src, DstFQDN: "api.github.com", Protocol: ProtoTCP, DPort: 443})
	if err != nil {
		t.Fatal(err)
	}
	if res.Verdict != DecisionDenied || res.FQDN == nil || len(res.FQDN.IPs) != 0 || !strings.Contains(res.FQDN.Note, "not in the FQDN cache") {
		t.Errorf("uncached: %s %+v", res.Verdict, res.FQDN)
	}
}

// TestDNSRuleValidation: invalid rules.dns / toFQDNs are errors naming the
// field; DNS rules on SCTP or all ports are errors.
func TestDNSRuleValidation(t *testing.T) {
	for _, tc := range []struct{ frag, want string }{
		{`toPorts: [{ports: [{port: "53"}], rules: {dns: [{matchName: "a b"}]}}]`, "rules.dns[0].matchName"},
		{`toPorts: [{ports: [{port: "53"}], rules: {dns: [{matchName: a.com, matchPattern: "*"}]}}]`, "not both"},
		{`toPorts: [{ports: [{port: "53", protocol: SCTP}], rules: {dns: [{matchPattern: "*"}]}}]`, "DNS rules need UDP, TCP or ANY"},
		{`toPorts: [{ports: [{port: "0"}], rules: {dns: [{matchPattern: "*"}]}}]`, "need a specific port"},
		{`toFQDNs: [{matchPattern: "a..b"}]`, "toFQDNs[0].matchPattern"},
		{`toFQDNs: [{}]`, "give matchName or matchPattern"},
		{`INGRESS toPorts: [{ports: [{port: "53"}], rules: {dns: [{matchPattern: "*"}]}}]`, "DNS rules are not allowed on ingress"},
	} {
		dir := "egress"
		frag, ingress := strings.CutPrefix(tc.frag, "INGRESS ")
		if ingress {
			dir = "ingress"
		}
		doc := "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p, namespace: default}\nspec:\n  endpointSelector: {}\n  " + dir + ":\n  - " + frag + "\n"
		_, errs := Decode("t.yaml", []byte(doc))
		if len(errs) == 0 || !strings.Contains(errs[0].Error(), tc.want) {
			t.Errorf("%s: errors %v, want %q", tc.frag, errs, tc.want)
		}
	}
}
