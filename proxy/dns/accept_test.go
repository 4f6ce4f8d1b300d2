package dnsproxy

import (
	"net"
	"testing"
	"time"

	"github.com/l7gate/l7gate/internal/testutil"
	mdns "github.com/miekg/dns"
)

// TestTCPAcceptSurvivesDescriptorExhaustion: when connections use up
// RLIMIT_NOFILE, ServeTCP's accept fails with EMFILE; once descriptors
// are free again, DNS over TCP is answered. (ServeTCP used to return at
// the first such error, leaving DNS over TCP dead until a restart.)
func TestTCPAcceptSurvivesDescriptorExhaustion(t *testing.T) {
	p := startProxy(t, nil)
	restore := testutil.ScarceFileLimit(t, 8)
	var held []net.Conn
	for range 64 {
		if c, err := net.DialTimeout("tcp", p.addr.String(), time.Second); err == nil {
			held = append(held, c) // until this side runs out too (EMFILE)
		}
	}
	time.Sleep(200 * time.Millisecond) // the proxy's accepts fail meanwhile
	for _, c := range held {
		c.Close()
	}
	restore()
	q := new(mdns.Msg)
	q.SetQuestion("www.example.com.", mdns.TypeA)
	r, _, err := (&mdns.Client{Net: "tcp", Timeout: 3 * time.Second}).Exchange(q, p.addr.String())
	if err != nil || r.Rcode != mdns.RcodeSuccess {
		t.Fatalf("DNS over TCP after the descriptors came back: %v %v", r, err)
	}
}
