package bpf

import (
	"testing"
)

// TestPrivilegedEgressProxyChain: a connection the egress proxy opens to a
// local pod (mark 0xB00 with the client's identity) is redirected to the
// ingress proxy when the pod's ingress policy redirects that identity;
// the ingress proxy's own upstream (0xA00) reaches the pod directly.
func TestPrivilegedEgressProxyChain(t *testing.T) {
	requireRoot(t)
	tp, a, b := twoPods(t)
	serveBanner(t, listenTCP(t, b.ns, "198.18.1.11:8080", false), "server")
	d := attachedDatapath(t, tp, a, b)
	if _, err := d.SyncPolicy(policyP1(a, b)); err != nil {
		t.Fatal(err)
	}
	ingressProxy := listenTCP(t, tp.node, "127.0.0.1:0", true)
	seen := serveBanner(t, ingressProxy, "proxy")
	if err := d.RegisterProxyListener(ingressProxyPort, ingressProxy); err != nil {
		t.Fatal(err)
	}
	proxies := trustedDialer(t, d, tp.node)

	got, err := proxies.dialRead("198.18.1.11:8080", ProxyMark(Egress, a.ident))
	if err != nil || got != "proxy 198.18.1.11:8080" {
		t.Errorf("from the egress proxy: got %q, %v; want the ingress proxy", got, err)
	}
	if s := seen.seen(); len(s) != 1 {
		t.Errorf("ingress proxy accepted %v", s)
	}
	got, err = proxies.dialRead("198.18.1.11:8080", ProxyMark(Ingress, a.ident))
	if err != nil || got != "server 198.18.1.11:8080" {
		t.Errorf("from the ingress proxy: got %q, %v; want the server", got, err)
	}
}

// TestPrivilegedForgedProxyMark: a host-network process outside the proxy
// cgroup that sets the ingress proxy's mark with an allowed identity is
// treated as host: dropped where host is, admitted where host is; the same
// mark from the proxy's cgroup is believed.
func TestPrivilegedForgedProxyMark(t *testing.T) {
	requireRoot(t)
	tp, a, b := twoPods(t)
	d := attachedDatapath(t, tp, a, b)
	if _, err := d.SyncPolicy(policyP1(a, b)); err != nil {
		t.Fatal(err)
	}
	proxy := trustedDialer(t, d, tp.node)
	forger, _ := testCgroup(t, "forger")
	mark := ProxyMark(Ingress, a.ident)

	// b admits a on :80 and host on :9000 only.
	if got, err := dialFromCgroup(t, forger, tp.node, "198.18.1.11:80", mark); err == nil {
		t.Errorf("forged mark to :80 connected (%q), want dropped as host", got)
	}
	if got, err := dialFromCgroup(t, forger, tp.node, "198.18.1.11:9000", mark); err != nil || got != "server 198.18.1.11:9000" {
		t.Errorf("forged mark to :9000 (host allowed): %q %v", got, err)
	}
	if got, err := dialFromCgroup(t, forger, tp.node, "198.18.1.11:80", ProxyMark(Egress, a.ident)); err == nil {
		t.Errorf("forged egress proxy mark to :80 connected (%q)", got)
	}
	if got, err := proxy.dialRead("198.18.1.11:80", mark); err != nil || got != "server 198.18.1.11:80" {
		t.Errorf("proxy cgroup to :80: %q %v", got, err)
	}
	// The forger in the test's own (root) cgroup, as any host process.
	wantBlocked(t, tp.node, "198.18.1.11:80", dialOpts{mark: mark})
}
