package bpf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"
)

// newLBEnv6 is newLBEnv with dual-stack pods: each backend serves the TCP
// banner on :8080 and the UDP echo on :5353 on both of its addresses.
func newLBEnv6(t *testing.T, nBackends int) *lbEnv {
	t.Helper()
	requireRoot(t)
	e := &lbEnv{tp: newTopology(t)}
	e.client = e.tp.addDualPod("cli", "198.18.1.1", "2001:db8:1::1", 1, 256)
	for i := range nBackends {
		be := e.tp.addDualPod(fmt.Sprintf("be%d", i), fmt.Sprintf("198.18.2.%d", i+1), fmt.Sprintf("2001:db8:2::%d", i+1), uint32(i+2), 257)
		tag := "be" + fmt.Sprint(i)
		serveBanner(t, listenTCP(t, be.ns, be.ip.String()+":8080", false), tag)
		serveBanner(t, listenTCP6(t, be.ns, netip.AddrPortFrom(be.ip6, 8080).String()), tag)
		udpEcho(t, be.ns, be.ip.String()+":5353")
		udpEcho6(t, be.ns, netip.AddrPortFrom(be.ip6, 5353).String())
		e.backends = append(e.backends, be)
	}
	// IPv6 between fresh namespaces is usable only once neighbour
	// discovery (and the node's link-local addresses) are: wait for a
	// direct connection to each backend before timing any check.
	for _, be := range e.backends {
		addr := netip.AddrPortFrom(be.ip6, 8080).String()
		deadline := time.Now().Add(20 * time.Second)
		for {
			_, err := dialRead6(e.client.ns, addr, time.Second)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("IPv6 to backend %s never worked: %v", addr, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	e.cgroup, _ = testCgroup(t, "lb6")
	e.bpffs = mountBPFFS(t)
	e.lb = openLB(t, e.bpffs, LBMapSizes{})
	if err := e.lb.SetCgroup(e.cgroup); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *lbEnv) backendPorts6(port uint16, idx ...int) []netip.AddrPort {
	var out []netip.AddrPort
	for _, i := range idx {
		out = append(out, netip.AddrPortFrom(e.backends[i].ip6, port))
	}
	return out
}

// udpEcho6 is udpEcho on an IPv6 address.
func udpEcho6(t *testing.T, ns, addr string) {
	t.Helper()
	var pc net.PacketConn
	mustInNS(t, ns, func() error {
		var err error
		pc, err = net.ListenPacket("udp6", addr)
		return err
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte("echo "+pc.LocalAddr().String()), from)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
}

var (
	vip6Web     = netip.MustParseAddrPort("[2001:db8:ff::10]:80")
	vip6DNS     = netip.MustParseAddrPort("[2001:db8:ff::10]:53")
	vip6Empty   = netip.MustParseAddrPort("[2001:db8:ff::11]:80")
	vip6Unknown = netip.MustParseAddrPort("[2001:db8:ff::99]:80")
)

// mapped is the v4-mapped IPv6 form of an IPv4 address and port, as a
// dual-stack socket's getpeername or recvfrom gives it.
func mapped(ap netip.AddrPort) string {
	return netip.AddrPortFrom(netip.AddrFrom16(ap.Addr().As16()), ap.Port()).String()
}

// TestPrivilegedSocketLBIPv6: real sockets of a process in the LB's cgroup,
// in a dual-stack pod's network namespace, through IPv6 ClusterIPs (the
// connect6/sendmsg6/recvmsg6/getpeername6 programs), IPv4 ClusterIPs in the
// same sync (unchanged), and IPv4 ClusterIPs reached from a dual-stack
// AF_INET6 socket by their v4-mapped form (translated as IPv4).
func TestPrivilegedSocketLBIPv6(t *testing.T) {
	e := newLBEnv6(t, 3)
	all := []int{0, 1, 2}
	e.sync(t,
		LBService{Frontend: vip6Web, Protocol: ProtoTCP, Backends: e.backendPorts6(8080, all...)},
		LBService{Frontend: vip6DNS, Protocol: ProtoUDP, Backends: e.backendPorts6(5353, all...)},
		LBService{Frontend: vip6Empty, Protocol: ProtoTCP},
		LBService{Frontend: netip.AddrPortFrom(vip6Empty.Addr(), 53), Protocol: ProtoUDP},
		LBService{Frontend: vipWeb, Protocol: ProtoTCP, Backends: e.backendPorts(8080, all...)},
		LBService{Frontend: vipDNS, Protocol: ProtoUDP, Backends: e.backendPorts(5353, all...)},
		LBService{Frontend: vipEmpty, Protocol: ProtoTCP},
	)
	backend6, backend4 := map[string]bool{}, map[string]bool{}
	for _, b := range e.backends {
		backend6[b.ip6.String()] = true
		backend4[b.ip.String()] = true
	}

	t.Run("tcp6", func(t *testing.T) {
		seen := map[string]int{}
		for _, r := range runLBClient(t, e.cgroup, e.client.ns, lbOp{Kind: "tcp", Family: "6", Addr: vip6Web.String(), Count: 30}) {
			be := backendOfReply(r)
			if !backend6[be] {
				t.Fatalf("not an IPv6 backend's answer: %s", r)
			}
			if r.Peer != vip6Web.String() {
				t.Errorf("getpeername %s, want %s", r.Peer, vip6Web)
			}
			seen[be]++
		}
		if len(seen) < 2 {
			t.Errorf("30 connections all went to %v: not balanced", seen)
		}
		t.Logf("balanced over %v", seen)
	})

	t.Run("udp6", func(t *testing.T) {
		res := runLBClient(t, e.cgroup, e.client.ns,
			lbOp{Kind: "udp", Family: "6", Addr: vip6DNS.String(), Count: 10},
			lbOp{Kind: "udpto", Family: "6", Addr: vip6DNS.String(), Count: 10})
		for _, r := range res {
			if !backend6[backendOfReply(r)] {
				t.Fatalf("not an IPv6 backend's answer: %s", r)
			}
			// connected: getpeername6; unconnected: recvmsg6 shows the
			// ClusterIP as the reply's source.
			if r.Peer != vip6DNS.String() {
				t.Errorf("%s: peer %s, want %s", r, r.Peer, vip6DNS)
			}
		}
	})

	t.Run("no backends refuses", func(t *testing.T) {
		res := runLBClient(t, e.cgroup, e.client.ns,
			lbOp{Kind: "tcp", Family: "6", Addr: vip6Empty.String()},
			lbOp{Kind: "udp", Family: "6", Addr: netip.AddrPortFrom(vip6Empty.Addr(), 53).String()},
			lbOp{Kind: "udpto", Family: "6", Addr: netip.AddrPortFrom(vip6Empty.Addr(), 53).String()},
			lbOp{Kind: "tcp", Family: "mapped", Addr: vipEmpty.String()})
		for _, r := range res {
			if r.Errno != int(syscall.ECONNREFUSED) {
				t.Errorf("%s: want ECONNREFUSED at once", r)
			}
		}
	})

	t.Run("ipv4 unchanged", func(t *testing.T) {
		res := runLBClient(t, e.cgroup, e.client.ns,
			lbOp{Kind: "tcp", Addr: vipWeb.String(), Count: 5},
			lbOp{Kind: "udp", Addr: vipDNS.String(), Count: 3},
			lbOp{Kind: "udpto", Addr: vipDNS.String(), Count: 3})
		for _, r := range res {
			if !backend4[backendOfReply(r)] {
				t.Fatalf("not an IPv4 backend's answer: %s", r)
			}
			if want := []string{vipWeb.String(), vipDNS.String()}; r.Peer != want[min(r.Op, 1)] {
				t.Errorf("%s: peer %s, want %s", r, r.Peer, want[min(r.Op, 1)])
			}
		}
	})

	t.Run("v4-mapped", func(t *testing.T) {
		// A dual-stack socket reaching an IPv4 ClusterIP by its
		// v4-mapped form is translated as IPv4 is, and sees the
		// ClusterIP (v4-mapped) as its peer.
		res := runLBClient(t, e.cgroup, e.client.ns,
			lbOp{Kind: "tcp", Family: "mapped", Addr: vipWeb.String(), Count: 10},
			lbOp{Kind: "udp", Family: "mapped", Addr: vipDNS.String(), Count: 3},
			lbOp{Kind: "udpto", Family: "mapped", Addr: vipDNS.String(), Count: 3})
		seen := map[string]int{}
		for _, r := range res {
			be := backendOfReply(r)
			if !backend4[be] {
				t.Fatalf("not an IPv4 backend's answer: %s", r)
			}
			seen[be]++
			if want := []string{mapped(vipWeb), mapped(vipDNS)}; r.Peer != want[min(r.Op, 1)] {
				t.Errorf("%s: peer %s, want %s", r, r.Peer, want[min(r.Op, 1)])
			}
		}
		if len(seen) < 2 {
			t.Errorf("16 connections all went to %v: not balanced", seen)
		}
	})

	t.Run("other cgroups and addresses untranslated", func(t *testing.T) {
		for _, r := range runLBClient(t, "", e.client.ns, lbOp{Kind: "tcp", Family: "6", Addr: vip6Web.String()}) {
			if r.Err == "" {
				t.Errorf("translated outside the cgroup: %s", r)
			}
		}
		direct := netip.AddrPortFrom(e.backends[0].ip6, 8080)
		for _, r := range runLBClient(t, e.cgroup, e.client.ns, lbOp{Kind: "tcp", Family: "6", Addr: direct.String()}) {
			if backendOfReply(r) != e.backends[0].ip6.String() || r.Peer != direct.String() {
				t.Errorf("direct connection: %s", r)
			}
		}
		for _, r := range runLBClient(t, e.cgroup, e.client.ns, lbOp{Kind: "tcp", Family: "6", Addr: vip6Unknown.String()}) {
			if r.Err == "" || r.Errno == int(syscall.ECONNREFUSED) {
				t.Errorf("an address that is no service: %s (want the kernel's own failure)", r)
			}
		}
	})

	t.Run("listed", func(t *testing.T) {
		got, err := e.lb.Services()
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, s := range got {
			names = append(names, fmt.Sprintf("%s/%s:%d", s.Frontend, s.Protocol, len(s.Backends)))
		}
		want := "198.19.0.10:53/UDP:3 198.19.0.10:80/TCP:3 198.19.0.11:80/TCP:0 " +
			"[2001:db8:ff::10]:53/UDP:3 [2001:db8:ff::10]:80/TCP:3 [2001:db8:ff::11]:53/UDP:0 [2001:db8:ff::11]:80/TCP:0"
		if g := strings.Join(names, " "); g != want {
			t.Errorf("Services():\n got %s\nwant %s", g, want)
		}
	})
}

// TestPrivilegedSocketLBFamilyMix: a frontend's backends must be of its own
// family (the programs rewrite within one); a mix is an error naming the
// service, before anything is written.
func TestPrivilegedSocketLBFamilyMix(t *testing.T) {
	requireRoot(t)
	lb := openLB(t, mountBPFFS(t), LBMapSizes{})
	v4be := netip.MustParseAddrPort("198.18.2.1:8080")
	v6be := netip.MustParseAddrPort("[2001:db8:2::1]:8080")
	ok := LBService{Frontend: vipWeb, Protocol: ProtoTCP, Backends: []netip.AddrPort{v4be}}
	for _, bad := range []LBService{
		{Frontend: vip6Web, Protocol: ProtoTCP, Backends: []netip.AddrPort{v6be, v4be}},
		{Frontend: vipDNS, Protocol: ProtoUDP, Backends: []netip.AddrPort{v6be}},
		{Frontend: netip.MustParseAddrPort("[::]:80"), Protocol: ProtoTCP},
		{Frontend: netip.MustParseAddrPort("[fe80::1%eth0]:80"), Protocol: ProtoTCP},
	} {
		_, err := lb.SyncServices([]LBService{ok, bad})
		if !errors.Is(err, ErrInvalidEntry) || !strings.Contains(err.Error(), bad.Frontend.Addr().Unmap().String()) {
			t.Errorf("SyncServices(%v): %v, want ErrInvalidEntry naming the service", bad, err)
		}
		_, err = lb.UpdateServices([]LBService{ok, bad}, nil)
		if !errors.Is(err, ErrInvalidEntry) || !strings.Contains(err.Error(), bad.Frontend.Addr().Unmap().String()) {
			t.Errorf("UpdateServices(%v): %v, want ErrInvalidEntry naming the service", bad, err)
		}
		t.Logf("%v", err)
	}
	if got, err := lb.Services(); err != nil || len(got) != 0 {
		t.Errorf("after invalid input: %v %v, want nothing written", got, err)
	}
	// A v4-mapped frontend or backend is its IPv4 form.
	if _, err := lb.SyncServices([]LBService{{Frontend: netip.MustParseAddrPort("[::ffff:198.19.0.10]:80"), Protocol: ProtoTCP,
		Backends: []netip.AddrPort{netip.MustParseAddrPort("[::ffff:198.18.2.1]:8080")}}}); err != nil {
		t.Fatal(err)
	}
	got, err := lb.Services()
	if err != nil || len(got) != 1 || got[0].Frontend != vipWeb || len(got[0].Backends) != 1 || got[0].Backends[0] != v4be {
		t.Errorf("v4-mapped service: %v %v, want %s -> %s", got, err, vipWeb, v4be)
	}
}
