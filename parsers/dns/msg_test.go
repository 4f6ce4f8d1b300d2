package dns

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"strings"
	"testing"

	mdns "github.com/miekg/dns"

	"github.com/l7gate/l7gate/policy"
)

func pack(t testing.TB, m *mdns.Msg) []byte {
	t.Helper()
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseQuery(t *testing.T) {
	q := new(mdns.Msg)
	q.SetQuestion("WWW.Example.COM.", mdns.TypeAAAA)
	q.SetEdns0(4096, true)
	m, qq, err := ParseQuery(pack(t, q))
	if err != nil {
		t.Fatal(err)
	}
	if qq.Name != "www.example.com." || qq.Raw != "WWW.Example.COM." || qq.TypeString() != "AAAA" || m.IsEdns0() == nil {
		t.Fatalf("got %+v edns %v", qq, m.IsEdns0())
	}
}

func TestResolveCNAMEChain(t *testing.T) {
	q := new(mdns.Msg)
	q.SetQuestion("app.example.com.", mdns.TypeA)
	r := new(mdns.Msg)
	r.SetReply(q)
	rr := func(s string) mdns.RR {
		x, err := mdns.NewRR(s)
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	r.Answer = []mdns.RR{
		rr("app.example.com. 300 IN CNAME lb.cdn.net."),
		rr("lb.cdn.net. 60 IN CNAME edge.cdn.net."),
		rr("edge.cdn.net. 120 IN A 198.18.0.2"),
		rr("edge.cdn.net. 120 IN A 198.18.0.1"),
		rr("evil.example.org. 5 IN A 198.18.9.9"), // off the chain: ignored
	}
	m, err := ParseResponse(pack(t, r), q)
	if err != nil {
		t.Fatal(err)
	}
	a := Resolve(m, "app.example.com.")
	want := []netip.Addr{netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2")}
	if len(a.IPs) != 2 || a.IPs[0] != want[0] || a.IPs[1] != want[1] || a.TTL != 60 ||
		strings.Join(a.CNAMEs, ",") != "lb.cdn.net.,edge.cdn.net." {
		t.Fatalf("got %+v", a)
	}
}

// TestHostileCNAMELoop: a CNAME loop stops, with no addresses.
func TestHostileCNAMELoop(t *testing.T) {
	r := new(mdns.Msg)
	for i := range 40 {
		x, _ := mdns.NewRR("n" + string(rune('a'+i%20)) + ".x. 10 IN CNAME n" + string(rune('a'+(i+1)%20)) + ".x.")
		r.Answer = append(r.Answer, x)
	}
	a := Resolve(r, "na.x.")
	if len(a.IPs) != 0 || len(a.CNAMEs) > maxCNAMEChain+1 {
		t.Fatalf("got %+v", a)
	}
}

func header(id uint16, flags uint16, qd uint16) []byte {
	b := make([]byte, 12)
	binary.BigEndian.PutUint16(b[0:], id)
	binary.BigEndian.PutUint16(b[2:], flags)
	binary.BigEndian.PutUint16(b[4:], qd)
	return b
}

// TestHostileMessages: hostile bytes give named errors, never a panic or
// an accepted query.
func TestHostileMessages(t *testing.T) {
	longName := func(labels int) []byte {
		var b []byte
		for range labels {
			b = append(b, 63)
			b = append(b, []byte(strings.Repeat("a", 63))...)
		}
		return append(b, 0)
	}
	q := func(name []byte) []byte {
		b := append(header(7, 0x0100, 1), name...)
		return append(b, 0, 1, 0, 1)
	}
	ok := new(mdns.Msg)
	ok.SetQuestion("a.example.", mdns.TypeA)
	resp := new(mdns.Msg)
	resp.SetReply(ok)
	two := new(mdns.Msg)
	two.SetQuestion("a.example.", mdns.TypeA)
	two.Question = append(two.Question, two.Question[0])
	// a label holding a space and a dot (escaped by miekg in presentation)
	weird := []byte{3, 'a', ' ', '.', 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 0}
	cases := []struct {
		name string
		in   []byte
		want error
	}{
		{"empty", nil, ErrMalformed},
		{"short header", []byte{1, 2, 3}, ErrMalformed},
		{"oversized", make([]byte, MaxMessageSize+1), ErrTooLarge},
		{"compression loop", q([]byte{0xC0, 0x0C}), ErrMalformed},
		{"pointer forward", q([]byte{0xC0, 0x40}), ErrMalformed},
		{"name over 255 octets", q(longName(4)), ErrMalformed},
		{"truncated question", header(7, 0x0100, 1), ErrQuestions}, // miekg stops at the end: no question
		{"label past the end", append(header(7, 0x0100, 1), 40, 'a'), ErrMalformed},
		{"response", pack(t, resp), ErrNotQuery},
		{"two questions", pack(t, two), ErrQuestions},
		{"no question", header(7, 0x0100, 0), ErrQuestions},
		{"escaped bytes in name", q(weird), ErrName},
	}
	for _, c := range cases {
		_, _, err := ParseQuery(c.in)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: err %v, want %v", c.name, err, c.want)
		}
	}
	// The longest legal name (255 octets on the wire, 253 characters) is a
	// query like any other.
	max := []byte{}
	for _, n := range []int{63, 63, 63, 61} {
		max = append(max, byte(n))
		max = append(max, []byte(strings.Repeat("b", n))...)
	}
	max = append(max, 0)
	if _, qq, err := ParseQuery(q(max)); err != nil || len(qq.Name) != 254 {
		t.Fatalf("253-character name: %v %d", err, len(qq.Name))
	}
}

func TestParseResponseMismatch(t *testing.T) {
	q := new(mdns.Msg)
	q.SetQuestion("a.example.", mdns.TypeA)
	r := new(mdns.Msg)
	r.SetReply(q)
	r.Id++
	if _, err := ParseResponse(pack(t, r), q); !errors.Is(err, ErrMismatch) {
		t.Fatalf("wrong id: %v", err)
	}
	r.SetReply(q)
	r.Question[0].Name = "b.example."
	if _, err := ParseResponse(pack(t, r), q); !errors.Is(err, ErrMismatch) {
		t.Fatalf("other question: %v", err)
	}
}

func TestDeny(t *testing.T) {
	q := new(mdns.Msg)
	q.SetQuestion("a.example.", mdns.TypeA)
	for _, rc := range []int{mdns.RcodeRefused, mdns.RcodeNameError} {
		d := Deny(q, rc)
		if d.Rcode != rc || !d.Response || d.Id != q.Id || len(d.Answer) != 0 || d.Question[0].Name != "a.example." {
			t.Fatalf("deny %d: %v", rc, d)
		}
	}
}

func TestChecker(t *testing.T) {
	sel, _ := policy.CompileDNSPattern("*.example.com")
	uncompiled := policy.DNSSelector{MatchName: "api.other.org"} // as decoded from JSON
	rs := &policy.L7RuleSet{Protocol: policy.ProtoUDP, Port: 53, Parser: "dns", Rules: []policy.L7Rule{
		{Peers: []policy.Identity{300}, DNS: &sel},
		{AnyPeer: true, DNS: &uncompiled},
		{Peers: []policy.Identity{301}}, // allow-all for 301
	}}
	c, err := NewChecker(rs)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		peer policy.Identity
		name string
		want int
	}{
		{300, "www.example.com.", 0}, {302, "www.example.com.", -1}, {302, "api.other.org.", 1},
		{301, "anything.at.all.", 2}, {300, "example.com.", -1},
	} {
		if got := c.Check(tc.peer, tc.name); got != tc.want {
			t.Errorf("%d %s: %d, want %d", tc.peer, tc.name, got, tc.want)
		}
	}
	bad := &policy.L7RuleSet{Rules: []policy.L7Rule{{AnyPeer: true, HTTP: &policy.HTTPRule{}}}}
	if _, err := NewChecker(bad); err == nil {
		t.Fatal("HTTP rule accepted in a DNS rule set")
	}
}
