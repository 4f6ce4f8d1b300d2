package proxy

import (
	"net"
	"net/netip"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/l7gate/l7gate/policy"
)

// TestDNSListener: a listener with parser dns is served by the DNS proxy
// on UDP and TCP of its port, on the IPv4 and the IPv6 address
// (ListenHost6; a query from no local endpoint is REFUSED: fail closed);
// removing the listener closes every socket; a dns listener for ingress
// is refused.
func TestDNSListener(t *testing.T) {
	no := false
	p := New(Options{ListenHost: "127.0.0.1", ListenHost6: "::1", Transparent: &no})
	defer p.Close()
	var port uint16
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port = uint16(l.Addr().(*net.TCPAddr).Port)
		l.Close()
		err = p.Apply(&Config{Version: "1", Listeners: []Listener{{Name: "egress/dns", Port: port, Direction: policy.Egress, Parser: policy.ParserDNS}}})
		if err == nil {
			break
		}
		port = 0
	}
	if port == 0 {
		t.Fatal("no free port for the dns listener")
	}
	addrs := []string{netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String(), netip.AddrPortFrom(netip.IPv6Loopback(), port).String()}
	q := new(mdns.Msg)
	q.SetQuestion("api.example.test.", mdns.TypeA)
	for _, addr := range addrs {
		for _, network := range []string{"udp", "tcp"} {
			r, _, err := (&mdns.Client{Net: network, Timeout: 3 * time.Second}).Exchange(q, addr)
			if err != nil || r.Rcode != mdns.RcodeRefused {
				t.Errorf("%s %s: %v %v; want REFUSED (no local endpoint)", network, addr, r, err)
			}
		}
	}
	if s := p.DNSStats(); s.Denied != 4 {
		t.Errorf("dns stats %+v: want 4 denied", s)
	}
	if err := p.Apply(&Config{Version: "2"}); err != nil {
		t.Fatal(err)
	}
	for _, addr := range addrs {
		if r, _, err := (&mdns.Client{Net: "udp", Timeout: 500 * time.Millisecond}).Exchange(q, addr); err == nil {
			t.Errorf("udp %s answered %v after the listener was removed", addr, r)
		}
		if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			t.Errorf("tcp %s still listening after the listener was removed", addr)
		}
	}
	if err := p.Apply(&Config{Version: "3", Listeners: []Listener{{Name: "ingress/dns", Port: port, Direction: policy.Ingress, Parser: policy.ParserDNS}}}); err == nil {
		t.Error("an ingress dns listener was accepted")
	}
}
