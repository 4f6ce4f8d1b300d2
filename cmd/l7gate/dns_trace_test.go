//go:build !l7gate_proxyonly

package main

import (
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	dnsproxy "github.com/l7gate/l7gate/proxy/dns"
)

const dnsPolicy = "../../policy/testdata/in/dns.yaml"

// TestTraceDNS: --dns-name decides a query by rules.dns (UDP/53 by
// default); --dst-fqdn resolves through --fqdn-cache and says so; without
// the cache the name is world and toFQDNs allow nothing.
func TestTraceDNS(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"--dst-labels", "k8s-app=kube-dns", "--dst-namespace", "kube-system", "--dns-name", "www.example.com"},
			[]string{"Verdict: ALLOWED", "Flow:    UDP/53", "L7 (dns): allowed", "spec.egress[0].dns[0]"}},
		{[]string{"--dst-labels", "k8s-app=kube-dns", "--dst-namespace", "kube-system", "--dns-name", "evil.org", "--protocol", "TCP"},
			[]string{"Verdict: DENIED", "Flow:    TCP/53", "L7 (dns): denied"}},
		{[]string{"--dst-fqdn", "api.github.com", "--dport", "443", "--fqdn-cache", "../../policy/testdata/fqdn/dns.yaml"},
			[]string{"Verdict: ALLOWED", "fqdn:api.github.com", "cached addresses: 198.18.1.1, 198.18.1.2", "selected by toFQDNs: default/fqdn spec.egress[1]: matchName: api.github.com"}},
		{[]string{"--dst-fqdn", "api.github.com", "--dport", "443"},
			[]string{"Verdict: DENIED", "not in the FQDN cache", "reserved:world"}},
	} {
		args := append([]string{"policy", "trace", "-f", dnsPolicy, "--src-labels", "app=app"}, tc.args...)
		code, out, errOut := runCLI(t, args...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", tc.args, code, errOut)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("%v: no %q in:\n%s", tc.args, w, out)
			}
		}
	}
	if code, _, _ := runCLI(t, "policy", "trace", "-f", dnsPolicy, "--src-labels", "app=app", "--dst-fqdn", "a.b", "--dst-cidr", "198.18.0.1", "--dport", "1"); code != 2 {
		t.Errorf("--dst-fqdn with --dst-cidr: exit %d, want 2", code)
	}
}

// TestFQDNCacheList: `l7gate fqdn cache list` shows a saved cache (live
// and expired entries), and trace --fqdn-cache reads the same file.
func TestFQDNCacheList(t *testing.T) {
	dir := t.TempDir()
	c, err := dnsproxy.NewCache(dnsproxy.CacheConfig{StatePath: filepath.Join(dir, "fqdn-cache.json"), MinTTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	c.Insert("api.github.com", []netip.Addr{netip.MustParseAddr("198.18.1.1")}, time.Hour)
	if err := c.Save(); err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runCLI(t, "fqdn", "cache", "list", "--state-dir", dir)
	if code != 0 || !strings.Contains(out, "api.github.com.") || !strings.Contains(out, "198.18.1.1") || !strings.Contains(out, "in 59m") && !strings.Contains(out, "in 1h0m0s") {
		t.Fatalf("list (exit %d):\n%s%s", code, out, errOut)
	}
	code, out, _ = runCLI(t, "fqdn", "cache", "list", "--file", filepath.Join(dir, "fqdn-cache.json"), "-o", "json")
	if code != 0 || !strings.Contains(out, `"ip": "198.18.1.1"`) {
		t.Fatalf("json (exit %d):\n%s", code, out)
	}
	code, out, errOut = runCLI(t, "policy", "trace", "-f", dnsPolicy, "--src-labels", "app=app", "--dst-fqdn", "api.github.com", "--dport", "443",
		"--fqdn-cache", filepath.Join(dir, "fqdn-cache.json"))
	if code != 0 || !strings.Contains(out, "Verdict: ALLOWED") || !strings.Contains(out, "cached addresses: 198.18.1.1") {
		t.Fatalf("trace with the saved cache (exit %d):\n%s%s", code, out, errOut)
	}
	if code, _, errOut := runCLI(t, "fqdn", "cache", "list", "--state-dir", filepath.Join(dir, "none")); code == 0 {
		t.Fatalf("missing cache: exit 0 %s", errOut)
	}
}

// TestDNSGuideExample: Cilium's DNS guide through the command line: any
// name resolves through kube-dns; api.github.com is reachable once cached,
// support.github.com (cached too) and an uncached name are not.
func TestDNSGuideExample(t *testing.T) {
	const dir = "../../examples/dns-guide"
	src := []string{"policy", "trace", "-f", dir + "/objects.yaml", "-f", dir + "/policy.yaml", "--src-labels", "org=empire,class=mediabot"}
	cache := []string{"--fqdn-cache", dir + "/fqdn-cache.yaml"}
	if code, out, errOut := runCLI(t, "policy", "validate", "-f", dir+"/objects.yaml", "-f", dir+"/policy.yaml"); code != 0 || errOut != "" {
		t.Fatalf("validate (exit %d):\n%s%s", code, out, errOut)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--dst-labels", "k8s-app=kube-dns", "--dst-namespace", "kube-system", "--dns-name", "support.github.com"}, "Verdict: ALLOWED"},
		{append([]string{"--dst-fqdn", "api.github.com", "--dport", "443"}, cache...), "Verdict: ALLOWED"},
		{append([]string{"--dst-fqdn", "support.github.com", "--dport", "443"}, cache...), "Verdict: DENIED"},
		{append([]string{"--dst-fqdn", "www.example.com", "--dport", "443"}, cache...), "Verdict: DENIED"},
		{[]string{"--dst-fqdn", "api.github.com", "--dport", "443"}, "Verdict: DENIED"}, // not cached: fail closed
	} {
		code, out, errOut := runCLI(t, append(src, tc.args...)...)
		if code != 0 || !strings.Contains(out, tc.want) {
			t.Errorf("%v (exit %d): want %q\n%s%s", tc.args, code, tc.want, out, errOut)
		}
	}
}
