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
