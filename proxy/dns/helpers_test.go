package dnsproxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/policy"
)

// serverAddr is the test DNS server's address (loopback: 127/8 is local).
const serverAddr = "127.0.0.53"

// zoneHandler answers from a small zone, as a real server would:
// truncating UDP answers that do not fit the client's size.
func zoneHandler(w mdns.ResponseWriter, r *mdns.Msg) {
	m := new(mdns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	rr := func(s string) {
		x, err := mdns.NewRR(s)
		if err != nil {
			panic(err)
		}
		m.Answer = append(m.Answer, x)
	}
	switch {
	case name == "www.example.com." && q.Qtype == mdns.TypeA:
		rr("www.example.com. 30 IN A 198.18.2.1")
	case name == "www.example.com." && q.Qtype == mdns.TypeAAAA:
		rr("www.example.com. 30 IN AAAA 2001:db8::1")
	case name == "www.example.com.":
	case name == "big.example.com." && q.Qtype == mdns.TypeA:
		for i := range 60 {
			rr(fmt.Sprintf("big.example.com. 30 IN A 198.18.4.%d", i+1))
		}
	case name == "cname.example.com." && q.Qtype == mdns.TypeA:
		rr("cname.example.com. 300 IN CNAME lb.cdn.net.")
		rr("lb.cdn.net. 20 IN A 198.18.3.3")
	case strings.HasSuffix(name, ".flood.example.") && q.Qtype == mdns.TypeA:
		rr(name + " 30 IN A 198.18.5.1")
	case name == "evil.org.":
		rr("evil.org. 30 IN A 198.18.6.6")
	default:
		m.Rcode = mdns.RcodeNameError
	}
	size := 512
	if o := r.IsEdns0(); o != nil {
		size = int(o.UDPSize())
		m.SetEdns0(o.UDPSize(), false) // a server echoes EDNS0
	}
	if w.LocalAddr().Network() == "udp" {
		m.Truncate(size)
	}
	w.WriteMsg(m)
}

// startServer runs a miekg/dns server on serverAddr (UDP and TCP, one
// port) and returns its address.
func startServer(t *testing.T) netip.AddrPort {
	t.Helper()
	return startServerWith(t, mdns.HandlerFunc(zoneHandler))
}

// startServerWith runs a miekg/dns server answering with h.
func startServerWith(t *testing.T, h mdns.Handler) netip.AddrPort {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp", serverAddr+":0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err != nil {
			pc.Close()
			continue // port taken for TCP: try another
		}
		udp := &mdns.Server{PacketConn: pc, Handler: h}
		tcp := &mdns.Server{Listener: ln, Handler: h}
		go udp.ActivateAndServe()
		go tcp.ActivateAndServe()
		t.Cleanup(func() { udp.Shutdown(); tcp.Shutdown() })
		return netip.MustParseAddrPort(pc.LocalAddr().String())
	}
	t.Fatal("no free port for the DNS server")
	return netip.AddrPort{}
}

// policyFor is the client's policy: DNS to the server's port (UDP and
// TCP) for *.example.com and names under flood.example; toFQDNs for
// **.example.com and *.flood.example.
func policyFor(t testing.TB, port uint16) (*policy.Snapshot, []policy.DNSSelector) {
	t.Helper()
	doc := fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: client, namespace: default, labels: {app: client}}
status: {podIP: 127.0.0.1, podIPs: [{ip: 127.0.0.1}, {ip: "::1"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: coredns, namespace: kube-system, labels: {k8s-app: kube-dns}}
status: {podIP: %s}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: dns, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints:
    - matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, "k8s:k8s-app": kube-dns}
    toPorts:
    - ports: [{port: "%d", protocol: ANY}]
      rules:
        dns:
        - matchPattern: "*.example.com"
        - matchPattern: "**.flood.example"
  - toFQDNs:
    - matchPattern: "**.example.com"
    - matchPattern: "*.flood.example"
`, serverAddr, port)
	objs, errs := policy.Decode("test.yaml", []byte(doc))
	if len(errs) > 0 || len(objs.Warnings) > 0 {
		t.Fatalf("policy: %v %v", errs, objs.Warnings)
	}
	snap, err := policy.Compute(objs, policy.NewIdentityAllocator())
	if err != nil {
		t.Fatal(err)
	}
	// the selectors as the policy gives them to the proxy
	pol, err := NewSnapshotPolicy(snap)
	if err != nil {
		t.Fatal(err)
	}
	sels := pol.FQDNSelectors()
	if len(sels) != 2 || sels[0].Key() != "**.example.com" || sels[1].Key() != "*.flood.example" {
		t.Fatalf("toFQDNs selectors from the policy: %v", sels)
	}
	return snap, sels
}

// records collects access records.
type records struct {
	mu  sync.Mutex
	all []flow.Record
}

func (r *records) add(x *flow.Record) {
	r.mu.Lock()
	r.all = append(r.all, *x)
	r.mu.Unlock()
}

func (r *records) find(name, typ string) []flow.Record {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []flow.Record
	for _, x := range r.all {
		if x.DNSQuery == name && (typ == "" || x.DNSType == typ) {
			out = append(out, x)
		}
	}
	return out
}

type testProxy struct {
	*Proxy
	addr   netip.AddrPort // UDP and TCP, one port
	server netip.AddrPort
	cache  *Cache
	recs   *records
}

// startProxy starts a DNS proxy on 127.0.0.1 in front of a fresh server.
func startProxy(t *testing.T, mod func(*Config, *CacheConfig)) *testProxy {
	t.Helper()
	return startProxyWith(t, mdns.HandlerFunc(zoneHandler), mod)
}

// startProxyWith starts a DNS proxy in front of a server answering with h.
func startProxyWith(t *testing.T, h mdns.Handler, mod func(*Config, *CacheConfig)) *testProxy {
	t.Helper()
	server := startServerWith(t, h)
	snap, sels := policyFor(t, server.Port())
	pol, err := NewSnapshotPolicy(snap)
	if err != nil {
		t.Fatal(err)
	}
	ccfg := CacheConfig{}
	cfg := Config{Policy: pol, OriginalDst: FixedDst(server), UpstreamTimeout: 2 * time.Second}
	if mod != nil {
		mod(&cfg, &ccfg)
	}
	cache, err := NewCache(ccfg)
	if err != nil {
		t.Fatal(err)
	}
	recs := &records{}
	cfg.Cache, cfg.AccessLog = cache, recs.add
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p.SetFQDNSelectors(sels)
	var pc *net.UDPConn
	var ln net.Listener
	for range 20 {
		c, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:0")))
		if err != nil {
			t.Fatal(err)
		}
		l, err := net.Listen("tcp", c.LocalAddr().String())
		if err != nil {
			c.Close()
			continue
		}
		pc, ln = c, l
		break
	}
	if pc == nil {
		t.Fatal("no free port for the proxy")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { p.ServeUDP(ctx, pc); done <- struct{}{} }()
	go func() { p.ServeTCP(ctx, ln); done <- struct{}{} }()
	t.Cleanup(func() {
		cancel()
		<-done
		<-done
	})
	return &testProxy{Proxy: p, addr: netip.MustParseAddrPort(pc.LocalAddr().String()), server: server, cache: cache, recs: recs}
}

func cachedIPs(c *Cache, name string) []string {
	for _, n := range c.FQDNNames() {
		if n.Name == name {
			var out []string
			for _, ip := range n.IPs {
				out = append(out, ip.String())
			}
			return out
		}
	}
	return nil
}

func netipAddrPort(t *testing.T, s string) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		t.Fatal(err)
	}
	return ap
}

func mustSnap(t *testing.T, port uint16) *policy.Snapshot {
	snap, _ := policyFor(t, port)
	return snap
}
