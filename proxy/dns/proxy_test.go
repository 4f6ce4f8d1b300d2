package dnsproxy

import (
	"context"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/l7gate/l7gate/flow"
)

func needDig(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("dig"); err != nil {
		t.Skip("dig not installed (hack/install-deps.sh installs dnsutils)")
	}
}

// dig runs the real dig against the proxy.
func dig(t *testing.T, p *testProxy, args ...string) string {
	t.Helper()
	all := append([]string{"@" + p.addr.Addr().String(), "-p", strconv.Itoa(int(p.addr.Port())), "+tries=1", "+time=3"}, args...)
	out, err := exec.Command("dig", all...).CombinedOutput()
	if err != nil {
		t.Fatalf("dig %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// TestDigThroughProxy: a real client (dig) over UDP and TCP: allowed
// names are forwarded and answered, the answer's addresses cached for
// toFQDNs; denied names get REFUSED and are logged with the deciding
// rules.
func TestDigThroughProxy(t *testing.T) {
	needDig(t)
	p := startProxy(t, nil)
	out := dig(t, p, "www.example.com", "A")
	if !strings.Contains(out, "status: NOERROR") || !strings.Contains(out, "198.18.2.1") {
		t.Fatalf("allowed UDP query:\n%s", out)
	}
	out = dig(t, p, "+tcp", "WWW.Example.com", "AAAA")
	if !strings.Contains(out, "status: NOERROR") || !strings.Contains(out, "2001:db8::1") {
		t.Fatalf("allowed TCP query:\n%s", out)
	}
	out = dig(t, p, "evil.org", "A")
	if !strings.Contains(out, "status: REFUSED") || strings.Contains(out, "198.18.6.6") {
		t.Fatalf("denied query:\n%s", out)
	}
	out = dig(t, p, "+tcp", "example.com", "A") // *.example.com does not match example.com
	if !strings.Contains(out, "status: REFUSED") {
		t.Fatalf("denied TCP query:\n%s", out)
	}
	if got := cachedIPs(p.cache, "www.example.com."); !slices.Equal(got, []string{"198.18.2.1", "2001:db8::1"}) {
		t.Errorf("cache for www.example.com: %v", got)
	}
	if got := cachedIPs(p.cache, "evil.org."); got != nil {
		t.Errorf("denied name cached: %v", got)
	}
	allowed := p.recs.find("www.example.com.", "A")
	if len(allowed) != 1 || allowed[0].Verdict != flow.VerdictAllowed || allowed[0].DNSRcode != "NOERROR" ||
		len(allowed[0].DNSIPs) != 1 || allowed[0].DecidedBy[0].L7 != "dns[0]" || allowed[0].Destination != p.server || allowed[0].SrcIdentity == 0 {
		t.Errorf("allowed record: %+v", allowed)
	}
	denied := p.recs.find("evil.org.", "A")
	if len(denied) != 1 || denied[0].Verdict != flow.VerdictDenied || denied[0].DNSRcode != "REFUSED" || len(denied[0].DecidedBy) == 0 ||
		denied[0].DecidedBy[0].Kind != flow.KindDefaultDeny {
		t.Errorf("denied record: %+v", denied)
	}
}

// TestTruncatedRetriedOverTCP: an answer too big for plain UDP comes back
// truncated through the proxy; dig retries over TCP (through the proxy)
// and gets all of it. With EDNS0 and a big buffer it fits UDP.
func TestTruncatedRetriedOverTCP(t *testing.T) {
	needDig(t)
	p := startProxy(t, nil)
	out := dig(t, p, "+noedns", "big.example.com", "A")
	if !strings.Contains(out, "Truncated, retrying in TCP mode") || !strings.Contains(out, "ANSWER: 60") {
		t.Fatalf("truncated answer not retried over TCP:\n%s", out)
	}
	recs := p.recs.find("big.example.com.", "A")
	if len(recs) != 2 {
		t.Fatalf("want a UDP and a TCP record, got %d", len(recs))
	}
	out = dig(t, p, "+edns=0", "+bufsize=4096", "+ignore", "big.example.com", "A")
	if strings.Contains(out, " tc ") || !strings.Contains(out, "ANSWER: 60") || !strings.Contains(out, "udp: 4096") {
		t.Fatalf("EDNS0 answer:\n%s", out)
	}
	if got := cachedIPs(p.cache, "big.example.com."); len(got) != 60 {
		t.Errorf("cached %d addresses for big.example.com, want 60", len(got))
	}
}

// TestCNAMEChainCachedUnderQueriedName: the A records at the end of a
// CNAME chain belong to the queried name (its toFQDNs selector), with the
// chain's smallest TTL; the CNAME target itself is not cached.
func TestCNAMEChainCachedUnderQueriedName(t *testing.T) {
	needDig(t)
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	p := startProxy(t, func(_ *Config, c *CacheConfig) {
		c.MinTTL = time.Second
		c.Now = func() time.Time { return now }
	})
	out := dig(t, p, "cname.example.com", "A")
	if !strings.Contains(out, "lb.cdn.net") || !strings.Contains(out, "198.18.3.3") {
		t.Fatalf("dig:\n%s", out)
	}
	if got := cachedIPs(p.cache, "cname.example.com."); !slices.Equal(got, []string{"198.18.3.3"}) {
		t.Errorf("cname.example.com: %v", got)
	}
	if got := cachedIPs(p.cache, "lb.cdn.net."); got != nil {
		t.Errorf("CNAME target cached: %v", got)
	}
	st := p.cache.State()
	if len(st.Names) != 1 || !st.Names[0].IPs[0].Expires.Equal(now.Add(20*time.Second)) {
		t.Errorf("expiry: %+v, want now+20s (the chain's smallest TTL)", st)
	}
}

// TestGoResolverThroughProxy: Go's own resolver (the pure-Go one) through
// the proxy: allowed names resolve, denied ones fail.
func TestGoResolverThroughProxy(t *testing.T) {
	p := startProxy(t, nil)
	for _, network := range []string{"udp", "tcp"} {
		r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, p.addr.String())
		}}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		addrs, err := r.LookupHost(ctx, "www.example.com")
		slices.Sort(addrs)
		if err != nil || !slices.Equal(addrs, []string{"198.18.2.1", "2001:db8::1"}) {
			t.Errorf("%s: www.example.com: %v %v", network, addrs, err)
		}
		if addrs, err := r.LookupHost(ctx, "evil.org"); err == nil {
			t.Errorf("%s: evil.org resolved: %v", network, addrs)
		}
		cancel()
	}
}

// TestDenyNXDOMAIN: the deny answer is configurable.
func TestDenyNXDOMAIN(t *testing.T) {
	p := startProxy(t, func(c *Config, _ *CacheConfig) { c.DenyRcode = mdns.RcodeNameError })
	q := new(mdns.Msg)
	q.SetQuestion("evil.org.", mdns.TypeA)
	r, _, err := (&mdns.Client{Timeout: 3 * time.Second}).Exchange(q, p.addr.String())
	if err != nil || r.Rcode != mdns.RcodeNameError || len(r.Answer) != 0 {
		t.Fatalf("got %v %v", r, err)
	}
	if _, err := New(Config{Policy: p.cfg.Policy, OriginalDst: p.cfg.OriginalDst, DenyRcode: mdns.RcodeServerFailure}); err == nil {
		t.Fatal("SERVFAIL accepted as the deny rcode")
	}
}

// TestHostileFloodBounded: a flood of unique allowed names keeps the
// cache at MaxNames and counts the rest.
func TestHostileFloodBounded(t *testing.T) {
	p := startProxy(t, func(_ *Config, c *CacheConfig) { c.MaxNames = 100 })
	c := &mdns.Client{Timeout: 3 * time.Second}
	const n = 600
	for i := range n {
		q := new(mdns.Msg)
		q.SetQuestion("n"+strconv.Itoa(i)+".flood.example.", mdns.TypeA)
		r, _, err := c.Exchange(q, p.addr.String())
		if err != nil || r.Rcode != mdns.RcodeSuccess {
			t.Fatalf("query %d: %v %v", i, r, err)
		}
	}
	st := p.cache.Stats()
	if st.Names != 100 || st.Overflow != n-100 || p.Stats().CacheOverflow != n-100 || p.Stats().CacheInserts != 100 {
		t.Fatalf("cache %+v proxy %+v", st, p.Stats())
	}
}
