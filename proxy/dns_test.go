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
// on UDP and TCP of its port (a query from no local endpoint is REFUSED:
// fail closed); removing the listener closes both sockets; a dns listener
// for ingress is refused.
func TestDNSListener(t *testing.T) {
	no := false
	p := New(Options{ListenHost: "127.0.0.1", Transparent: &no})
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
	addr := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port).String()
	q := new(mdns.Msg)
	q.SetQuestion("api.example.test.", mdns.TypeA)
	for _, network := range []string{"udp", "tcp"} {
		r, _, err := (&mdns.Client{Net: network, Timeout: 3 * time.Second}).Exchange(q, addr)
		if err != nil || r.Rcode != mdns.RcodeRefused {
			t.Errorf("%s: %v %v; want REFUSED (no local endpoint)", network, r, err)
		}
	}
	if s := p.DNSStats(); s.Denied != 2 {
		t.Errorf("dns stats %+v: want 2 denied", s)
	}
	if err := p.Apply(&Config{Version: "2"}); err != nil {
		t.Fatal(err)
	}
	if r, _, err := (&mdns.Client{Net: "udp", Timeout: 500 * time.Millisecond}).Exchange(q, addr); err == nil {
		t.Errorf("udp answered %v after the listener was removed", r)
	}
	if _, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		t.Error("tcp still listening after the listener was removed")
	}
	if err := p.Apply(&Config{Version: "3", Listeners: []Listener{{Name: "ingress/dns", Port: port, Direction: policy.Ingress, Parser: policy.ParserDNS}}}); err == nil {
		t.Error("an ingress dns listener was accepted")
	}
}
