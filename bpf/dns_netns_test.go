package bpf

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/l7gate/l7gate/flow"
	dnsmsg "github.com/l7gate/l7gate/parsers/dns"
	"github.com/l7gate/l7gate/policy"
	dnsproxy "github.com/l7gate/l7gate/proxy/dns"
	"github.com/l7gate/l7gate/redirect"
)

const (
	dnsProxyPort = 15053
	dnsProxyEnv  = "L7GATE_BPF_TEST_DNSPROXY"
)

// dnsProxySpec is what the DNS proxy child serves.
type dnsProxySpec struct {
	BPFFS   string
	Port    uint16
	Pattern string // rules.dns matchPattern
	Client  uint32 // identities for the access records
	Server  uint32
}

// oneRulePolicy gives every client the same rules.dns.
type oneRulePolicy struct {
	d dnsproxy.Decider
}

func (p oneRulePolicy) Lookup(netip.Addr, netip.AddrPort, policy.Protocol) (dnsproxy.Decider, error) {
	return p.d, nil
}

// dnsProxyChild plays the Go proxy's DNS listener: a UDP socket and a
// transparent TCP listener on 127.0.0.1 in the node namespace, both in
// the sockmap under the spec's proxy port, until stdin closes. It writes
// one JSON access record per query to stdout after "ready".
func dnsProxyChild(raw string) error {
	var spec dnsProxySpec
	if err := json.Unmarshal([]byte(raw), &spec); err != nil {
		return err
	}
	sel, err := policy.CompileDNSPattern(spec.Pattern)
	if err != nil {
		return err
	}
	checker, err := dnsmsg.NewChecker(&policy.L7RuleSet{Parser: policy.ParserDNS, Rules: []policy.L7Rule{{AnyPeer: true, DNS: &sel}}})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	udp, err := dnsproxy.ListenUDP(ctx, "127.0.0.1:0", true)
	if err != nil {
		return err
	}
	tcp, err := redirect.ListenTransparent(ctx, "127.0.0.1:0", true)
	if err != nil {
		return err
	}
	socks, err := OpenProxySockets(spec.BPFFS)
	if err != nil {
		return err
	}
	defer socks.Close()
	if err := socks.Register(spec.Port, udp); err != nil {
		return err
	}
	if err := socks.Register(spec.Port, tcp); err != nil {
		return err
	}
	var mu sync.Mutex
	out := json.NewEncoder(os.Stdout)
	p, err := dnsproxy.New(dnsproxy.Config{
		Policy: oneRulePolicy{dnsproxy.Decider{Client: policy.Identity(spec.Client), Server: policy.Identity(spec.Server),
			Checker: checker}},
		OriginalDst: dnsproxy.LocalDst{},
		AccessLog: func(r *flow.Record) {
			mu.Lock()
			out.Encode(r)
			mu.Unlock()
		},
	})
	if err != nil {
		return err
	}
	go p.ServeUDP(ctx, udp)
	go p.ServeTCP(ctx, tcp)
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	return nil
}

type dnsProxyProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	mu    sync.Mutex
	recs  []flowRecord
	done  chan struct{}
}

// startDNSProxy runs dnsProxyChild in the node namespace.
func startDNSProxy(t *testing.T, node string, spec dnsProxySpec) *dnsProxyProc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(spec)
	cmd := exec.Command("ip", "netns", "exec", node, exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), dnsProxyEnv+"="+string(raw))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pp := &dnsProxyProc{cmd: cmd, stdin: stdin, done: make(chan struct{})}
	t.Cleanup(pp.kill)
	rd := bufio.NewReader(stdout)
	line, err := rd.ReadString('\n')
	if err != nil || line != "ready\n" {
		t.Fatalf("dns proxy did not get ready: %q %v", line, err)
	}
	go func() {
		defer close(pp.done)
		dec := json.NewDecoder(rd)
		for {
			var r flowRecord
			if err := dec.Decode(&r); err != nil {
				return
			}
			pp.mu.Lock()
			pp.recs = append(pp.recs, r)
			pp.mu.Unlock()
		}
	}()
	return pp
}

func (pp *dnsProxyProc) records() []flowRecord {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	return append([]flowRecord(nil), pp.recs...)
}

// kill is SIGKILL, as a crash: the kernel closes the sockets, which
// leaves the sockmap.
func (pp *dnsProxyProc) kill() {
	if pp.cmd.ProcessState != nil {
		return
	}
	pp.cmd.Process.Signal(syscall.SIGKILL)
	pp.cmd.Wait()
	<-pp.done
}

// dnsZone answers A queries for api/www.example.test and denied.test and
// records the source of every query.
type dnsZone struct {
	mu      sync.Mutex
	sources []string
}

func (z *dnsZone) ServeDNS(w mdns.ResponseWriter, r *mdns.Msg) {
	z.mu.Lock()
	z.sources = append(z.sources, w.RemoteAddr().Network()+" "+w.RemoteAddr().String())
	z.mu.Unlock()
	m := new(mdns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	a := map[string]string{"api.example.test.": "198.18.7.1", "www.example.test.": "198.18.7.2", "denied.test.": "198.18.7.3"}
	if ip, ok := a[strings.ToLower(r.Question[0].Name)]; ok && r.Question[0].Qtype == mdns.TypeA {
		rr, _ := mdns.NewRR(r.Question[0].Name + " 30 IN A " + ip)
		m.Answer = append(m.Answer, rr)
	} else if !ok {
		m.Rcode = mdns.RcodeNameError
	}
	w.WriteMsg(m)
}

func (z *dnsZone) seen() []string {
	z.mu.Lock()
	defer z.mu.Unlock()
	return append([]string(nil), z.sources...)
}

// serveDNS runs the zone on addr (UDP and TCP) inside ns.
func serveDNS(t *testing.T, ns, addr string) *dnsZone {
	t.Helper()
	z := &dnsZone{}
	var pc net.PacketConn
	var ln net.Listener
	mustInNS(t, ns, func() error {
		var err error
		if pc, err = net.ListenPacket("udp4", addr); err != nil {
			return err
		}
		ln, err = net.Listen("tcp4", addr)
		return err
	})
	udp := &mdns.Server{PacketConn: pc, Handler: z}
	tcp := &mdns.Server{Listener: ln, Handler: z}
	go udp.ActivateAndServe()
	go tcp.ActivateAndServe()
	t.Cleanup(func() { udp.Shutdown(); tcp.Shutdown() })
	return z
}

var digStatus = regexp.MustCompile(`status: ([A-Z]+)`)

// dig runs the real dig in ns; it returns the status and the A records
// (status "" when no answer came).
func dig(t *testing.T, ns, server, name string, tcp bool) (string, []string) {
	t.Helper()
	args := []string{"netns", "exec", ns, "dig", "@" + server, "+tries=1", "+time=2", "+nocookie", name, "A"}
	if tcp {
		args = append(args, "+tcp")
	}
	out, _ := exec.Command("ip", args...).CombinedOutput()
	m := digStatus.FindStringSubmatch(string(out))
	if m == nil {
		return "", nil
	}
	var ips []string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) == 5 && f[3] == "A" && !strings.HasPrefix(l, ";") {
			ips = append(ips, f[4])
		}
	}
	return m[1], ips
}

// goLookup resolves name with Go's own resolver from ns, talking to server.
func goLookup(ns, server, name string) ([]string, error) {
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var c net.Conn
		err := inNS(ns, func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, server)
			return err
		})
		return c, err
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return r.LookupHost(ctx, name)
}

// TestPrivilegedDNSRedirect: a pod's DNS (UDP and TCP port 53) to a server
// pod, redirected by policy to the DNS proxy on the node. Real clients
// (dig over UDP and TCP, Go's resolver) see answers from the server they
// asked: the allowed name is resolved (by the server, queried from the
// proxy), a denied name is answered REFUSED by the proxy, and with the
// proxy gone the queries are dropped with the no-listener reason, never
// forwarded.
func TestPrivilegedDNSRedirect(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("dig"); err != nil {
		t.Fatal("dig is required (hack/install-deps.sh installs bind9-dnsutils)")
	}
	bpffs := mountBPFFS(t)
	tp := newTopology(t)
	a := tp.addPod("a", "198.18.1.10", 1, identA)
	s := tp.addPod("s", "198.18.1.11", 2, identB)
	zone := serveDNS(t, s.ns, "198.18.1.11:53")
	d := openTest(t, Config{BPFFSPath: bpffs})
	for _, p := range []*testPod{a, s} {
		ifindex := tp.ifindex(p.hostDev)
		mustInNS(t, tp.node, func() error {
			return d.AttachEndpoint(Endpoint{ID: p.id, Ifindex: ifindex, IPv4: p.ip})
		})
	}
	if err := d.AttachSocketLookup(filepath.Join("/var/run/netns", tp.node)); err != nil {
		t.Fatal(err)
	}
	if _, err := d.SyncIPCache(tp.ipcache()); err != nil {
		t.Fatal(err)
	}
	// a may use DNS on s only, through the DNS proxy (rules.dns).
	if _, err := d.SyncPolicy([]EndpointPolicy{{
		Endpoint: a.id,
		Egress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{
			{Peer: s.ident, Protocol: ProtoUDP, Port: 53, Verdict: VerdictRedirect, ProxyPort: dnsProxyPort, RuleID: 301},
			{Peer: s.ident, Protocol: ProtoTCP, Port: 53, Verdict: VerdictRedirect, ProxyPort: dnsProxyPort, RuleID: 302},
		}},
	}}); err != nil {
		t.Fatal(err)
	}
	evs := watchEvents(t, d)
	proxy := startDNSProxy(t, tp.node, dnsProxySpec{BPFFS: bpffs, Port: dnsProxyPort, Pattern: "*.example.test",
		Client: uint32(identA), Server: uint32(identB)})
	fromProxy := func() {
		t.Helper()
		for _, src := range zone.seen() {
			if !strings.Contains(src, nodeAddr+":") {
				t.Errorf("server saw a query from %s, want only the proxy (%s)", src, nodeAddr)
			}
		}
	}

	t.Run("allowed name over udp", func(t *testing.T) {
		st, ips := dig(t, a.ns, "198.18.1.11", "api.example.test", false)
		if st != "NOERROR" || len(ips) != 1 || ips[0] != "198.18.7.1" {
			t.Errorf("dig: status %q, A %v; want NOERROR 198.18.7.1", st, ips)
		}
	})
	t.Run("allowed name over tcp", func(t *testing.T) {
		st, ips := dig(t, a.ns, "198.18.1.11", "www.example.test", true)
		if st != "NOERROR" || len(ips) != 1 || ips[0] != "198.18.7.2" {
			t.Errorf("dig +tcp: status %q, A %v; want NOERROR 198.18.7.2", st, ips)
		}
	})
	t.Run("go resolver", func(t *testing.T) {
		addrs, err := goLookup(a.ns, "198.18.1.11:53", "api.example.test")
		if err != nil || len(addrs) != 1 || addrs[0] != "198.18.7.1" {
			t.Errorf("go resolver: %v %v; want [198.18.7.1]", addrs, err)
		}
	})
	t.Run("denied name refused", func(t *testing.T) {
		before := len(zone.seen())
		for _, tcp := range []bool{false, true} {
			st, ips := dig(t, a.ns, "198.18.1.11", "denied.test", tcp)
			if st != "REFUSED" || len(ips) != 0 {
				t.Errorf("dig tcp=%v: status %q, A %v; want REFUSED", tcp, st, ips)
			}
		}
		if _, err := goLookup(a.ns, "198.18.1.11:53", "denied.test"); err == nil {
			t.Error("go resolver resolved denied.test")
		}
		if n := len(zone.seen()); n != before {
			t.Errorf("server got %d queries for the denied name, want none", n-before)
		}
	})
	fromProxy()
	if len(zone.seen()) == 0 {
		t.Error("server saw no query")
	}
	t.Run("conntrack addresses", func(t *testing.T) {
		addrs, err := d.ConntrackAddrs(time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if !addrs[s.ip] || !addrs[a.ip] {
			t.Errorf("conntrack addresses %v: want the pod's DNS flows (%s, %s)", addrs, a.ip, s.ip)
		}
		if addrs[netip.MustParseAddr("198.18.7.1")] {
			t.Error("an address no flow used is in conntrack")
		}
	})
	t.Run("access records", func(t *testing.T) {
		var allowed, denied int
		for _, r := range proxy.records() {
			switch {
			case r.DNSQuery == "api.example.test." && r.Verdict == "allowed" && r.Destination == "198.18.1.11:53":
				allowed++
			case r.DNSQuery == "denied.test." && r.Verdict == "denied" && r.DNSRcode == "REFUSED":
				denied++
			}
		}
		if allowed == 0 || denied == 0 {
			t.Errorf("records %+v: want allowed api.example.test and REFUSED denied.test to 198.18.1.11:53", proxy.records())
		}
	})
	t.Run("no listener drops", func(t *testing.T) {
		proxy.kill()
		before := len(zone.seen())
		for _, tcp := range []bool{false, true} {
			if st, ips := dig(t, a.ns, "198.18.1.11", "api.example.test", tcp); st != "" {
				t.Errorf("dig tcp=%v with no proxy: status %q, A %v; want no answer", tcp, st, ips)
			}
		}
		for _, proto := range []uint8{uint8(ProtoUDP), uint8(ProtoTCP)} {
			evs.waitFor(t, 1, func(ev Event) bool {
				return ev.Dropped && ev.Reason == ReasonNoListener && ev.Protocol == proto && ev.Endpoint == a.id &&
					ev.Dst == netip.MustParseAddrPort("198.18.1.11:53")
			})
		}
		if n := len(zone.seen()); n != before {
			t.Errorf("server got %d queries with no proxy, want none (fail closed)", n-before)
		}
	})
}

// flowRecord is the part of flow.Record's JSON form the test reads.
type flowRecord struct {
	DNSQuery    string `json:"dnsQuery"`
	DNSRcode    string `json:"dnsRcode"`
	Verdict     string `json:"verdict"`
	Destination string `json:"destination"`
}
