package dnsproxy

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// TestHostileQueries: malformed datagrams (compression loops, short
// headers, responses, garbage) get no answer and are counted; a query
// with two questions gets FORMERR; a name with escaped bytes is REFUSED;
// the proxy keeps answering good queries throughout.
func TestHostileQueries(t *testing.T) {
	p := startProxy(t, nil)
	conn, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(p.addr))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hdr := func(id, flags, qd uint16) []byte {
		b := make([]byte, 12)
		binary.BigEndian.PutUint16(b, id)
		binary.BigEndian.PutUint16(b[2:], flags)
		binary.BigEndian.PutUint16(b[4:], qd)
		return b
	}
	resp := new(mdns.Msg)
	resp.SetQuestion("www.example.com.", mdns.TypeA)
	resp.Response = true
	respBytes, _ := resp.Pack()
	silent := map[string][]byte{
		"compression loop": append(hdr(1, 0x0100, 1), 0xC0, 0x0C, 0, 1, 0, 1),
		"short header":     {1, 2, 3},
		"garbage":          []byte(strings.Repeat("\xff", 300)),
		"a response":       respBytes,
		"label past end":   append(hdr(2, 0x0100, 1), 63, 'a'),
	}
	read := func() *mdns.Msg {
		conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		buf := make([]byte, 65535)
		n, err := conn.Read(buf)
		if err != nil {
			return nil
		}
		m := new(mdns.Msg)
		if m.Unpack(buf[:n]) != nil {
			t.Fatalf("unparseable answer")
		}
		return m
	}
	for name, b := range silent {
		conn.Write(b)
		if m := read(); m != nil {
			t.Errorf("%s: answered %v", name, m)
		}
	}
	two := new(mdns.Msg)
	two.SetQuestion("www.example.com.", mdns.TypeA)
	two.Question = append(two.Question, two.Question[0])
	b, _ := two.Pack()
	conn.Write(b)
	if m := read(); m == nil || m.Rcode != mdns.RcodeFormatError {
		t.Errorf("two questions: %v", m)
	}
	weird := append(hdr(3, 0x0100, 1), 3, 'a', ' ', 'b', 7, 'e', 'x', 'a', 'm', 'p', 'l', 'e', 3, 'c', 'o', 'm', 0, 0, 1, 0, 1)
	conn.Write(weird)
	if m := read(); m == nil || m.Rcode != mdns.RcodeRefused {
		t.Errorf("escaped name: %v", m)
	}
	good := new(mdns.Msg)
	good.SetQuestion("www.example.com.", mdns.TypeA)
	b, _ = good.Pack()
	conn.Write(b)
	if m := read(); m == nil || m.Rcode != mdns.RcodeSuccess || len(m.Answer) != 1 {
		t.Fatalf("good query after hostile ones: %v", m)
	}
	if st := p.Stats(); st.Malformed != uint64(len(silent))+1 || st.Denied != 1 {
		t.Errorf("stats %+v", st)
	}
}

// TestHostileTCP: a length prefix shorter than a header, or a connection
// that stops mid-message, is closed; the listener keeps serving.
func TestHostileTCP(t *testing.T) {
	p := startProxy(t, nil)
	for _, b := range [][]byte{{0, 3, 1, 2, 3}, {0xff, 0xff, 1, 2}} {
		c, err := net.Dial("tcp", p.addr.String())
		if err != nil {
			t.Fatal(err)
		}
		c.Write(b)
		if tc, ok := c.(*net.TCPConn); ok && b[0] == 0xff {
			tc.CloseWrite() // stops mid-message
		}
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		if n, err := io.ReadAll(c); len(n) != 0 || (err != nil && !errors.Is(err, syscall.ECONNRESET)) {
			t.Errorf("% x: read %d bytes, %v; want a close", b[:2], len(n), err)
		}
		c.Close()
	}
	q := new(mdns.Msg)
	q.SetQuestion("www.example.com.", mdns.TypeA)
	r, _, err := (&mdns.Client{Net: "tcp", Timeout: 3 * time.Second}).Exchange(q, p.addr.String())
	if err != nil || r.Rcode != mdns.RcodeSuccess {
		t.Fatalf("after hostile connections: %v %v", r, err)
	}
}

// TestUpstreamMismatchServfail: an answer that does not match the query
// (another question) is not forwarded: SERVFAIL, nothing cached.
func TestUpstreamMismatchServfail(t *testing.T) {
	pc, err := net.ListenPacket("udp", serverAddr+":0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &mdns.Server{PacketConn: pc, Handler: mdns.HandlerFunc(func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(r)
		m.Question[0].Name = "evil.org."
		x, _ := mdns.NewRR("evil.org. 30 IN A 198.18.6.6")
		m.Answer = append(m.Answer, x)
		w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	defer srv.Shutdown()
	liar := netipAddrPort(t, pc.LocalAddr().String())
	pol, err := NewSnapshotPolicy(mustSnap(t, liar.Port()))
	if err != nil {
		t.Fatal(err)
	}
	p := startProxy(t, func(c *Config, _ *CacheConfig) { c.OriginalDst, c.Policy = FixedDst(liar), pol })
	q := new(mdns.Msg)
	q.SetQuestion("www.example.com.", mdns.TypeA)
	r, _, err := (&mdns.Client{Timeout: 3 * time.Second}).Exchange(q, p.addr.String())
	if err != nil || r.Rcode != mdns.RcodeServerFailure || len(r.Answer) != 0 {
		t.Fatalf("got %v %v", r, err)
	}
	if p.cache.Stats().Names != 0 || p.Stats().UpstreamErrors != 1 {
		t.Fatalf("cache %+v stats %+v", p.cache.Stats(), p.Stats())
	}
}
