package bpf

import (
	"net/netip"
	"os"
	"testing"
)

// TestPrivilegedEgressProxyMarkKeepsIngressRedirect: the ingress proxy's upstream
// traffic (0xA00) has passed the destination's ingress L7 rules and is not
// redirected again; the egress proxy's (0xB00) has only passed the
// source's egress rules, so it keeps its identity from the mark and is
// redirected to the ingress proxy when the destination's ingress says so.
func TestPrivilegedEgressProxyMarkKeepsIngressRedirect(t *testing.T) {
	requireRoot(t)
	d := fixture(t, enforcedIngress(
		PolicyEntry{Peer: peerID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictRedirect, ProxyPort: testProxyPrt, RuleID: 41},
		PolicyEntry{Peer: peerID, Protocol: ProtoTCP, Port: 81, Verdict: VerdictAllow, RuleID: 42},
	))
	if err := d.RegisterProxyListener(testProxyPrt, listen(t)); err != nil {
		t.Fatal(err)
	}
	trustTestCgroup(t, d)
	p := ingress(nodeIP, ProtoTCP, 80)

	r := run(t, d.objs.TcToPod, p, ProxyMark(Ingress, peerID))
	wantRet(t, "from the ingress proxy", r, actOK)

	p.sport++
	r = run(t, d.objs.TcToPod, p, ProxyMark(Egress, peerID))
	wantRet(t, "from the egress proxy", r, actRedirect)
	if want := TurnedAroundMark(testProxyPrt); r.mark != want {
		t.Errorf("from the egress proxy: mark %#x, want %#x", r.mark, want)
	}
	// Its next packets follow the redirect too.
	p.tcpFlags = tcpACK
	if r := run(t, d.objs.TcToPod, p, ProxyMark(Egress, peerID)); r.ret != actRedirect {
		t.Errorf("established flow from the egress proxy: ret %d, want redirect", r.ret)
	}
	// The mark's identity still decides L3/L4.
	p.sport++
	p.tcpFlags = tcpSYN
	wantRet(t, "egress proxy, identity not allowed", run(t, d.objs.TcToPod, p, ProxyMark(Egress, otherID)), actShot)
	p.sport++
	p.dport = 81
	wantRet(t, "egress proxy, plain allow", run(t, d.objs.TcToPod, p, ProxyMark(Egress, peerID)), actOK)
}

// trustTestCgroup trusts the cgroup of this process's sockets as a proxy
// cgroup: BPF_PROG_TEST_RUN's socket is created in the caller's cgroup,
// the root here, which SetTrustedProxyCgroups refuses; so it is written
// to the map directly.
func trustTestCgroup(t *testing.T, d *Datapath) {
	t.Helper()
	mnt, err := Cgroup2Mount()
	if err != nil {
		t.Skipf("needs cgroup2: %v", err)
	}
	id, err := CgroupIDOfPID(mnt, os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if err := d.objs.ProxyCgroups.Put(id, uint32(1)); err != nil {
		t.Fatal(err)
	}
}

// proxyDialer dials from the node as a proxy does: from a process whose
// sockets belong to a cgroup registered as a proxy cgroup.
type proxyDialer struct {
	t       *testing.T
	ns, dir string
}

func trustedDialer(t *testing.T, d *Datapath, ns string) proxyDialer {
	t.Helper()
	dir, id := testCgroup(t, "proxy")
	if err := d.SetTrustedProxyCgroups([]uint64{id}); err != nil {
		t.Fatal(err)
	}
	return proxyDialer{t: t, ns: ns, dir: dir}
}

func (p proxyDialer) dialRead(addr string, mark uint32) (string, error) {
	return dialFromCgroup(p.t, p.dir, p.ns, addr, mark)
}

// TestPrivilegedForgedProxyMarkProgTestRun: a from-proxy mark on a packet whose socket is not
// in a registered proxy cgroup is ignored: the packet is judged by its
// source address (the node: host), exactly as without the mark.
func TestPrivilegedForgedProxyMarkProgTestRun(t *testing.T) {
	requireRoot(t)
	d := fixture(t, enforcedIngress(
		PolicyEntry{Peer: peerID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictAllow, RuleID: 43},
		PolicyEntry{Peer: IdentityHost, Protocol: ProtoTCP, Port: 9000, Verdict: VerdictAllow, RuleID: 44},
	))
	evs := watchEvents(t, d)
	p := ingress(nodeIP, ProtoTCP, 80)
	forged := ProxyMark(Ingress, peerID)
	wantRet(t, "no proxy cgroup registered", run(t, d.objs.TcToPod, p, forged), actShot)
	ev := evs.waitFor(t, 1, dropReason(ReasonDefault))[0]
	if ev.SrcIdentity != IdentityHost || ev.FromProxy || !ev.UntrustedMark {
		t.Errorf("drop event %+v: want host, not from proxy, untrusted mark", ev)
	}
	p.sport++
	wantRet(t, "egress proxy mark, no proxy cgroup", run(t, d.objs.TcToPod, p, ProxyMark(Egress, peerID)), actShot)
	// As host it may reach what host may reach.
	h := ingress(nodeIP, ProtoTCP, 9000)
	wantRet(t, "forged mark to a port host may reach", run(t, d.objs.TcToPod, h, forged), actOK)
	cts, err := d.Conntrack()
	if err != nil {
		t.Fatal(err)
	}
	for _, ct := range cts {
		if ct.Flags&CTFromProxy != 0 || ct.Peer != IdentityHost {
			t.Errorf("conntrack entry of a forged mark: %+v", ct)
		}
	}

	// Another cgroup registered: still not this one.
	if err := d.SetTrustedProxyCgroups([]uint64{123456789}); err != nil {
		t.Fatal(err)
	}
	p.sport++
	wantRet(t, "other cgroup registered", run(t, d.objs.TcToPod, p, forged), actShot)

	// This process's cgroup registered: the mark is believed.
	trustTestCgroup(t, d)
	p.sport++
	wantRet(t, "proxy cgroup", run(t, d.objs.TcToPod, p, forged), actOK)
}

// TestPrivilegedRepliesToKeptSourceProxy: a proxy that kept its client's address as
// the source of its upstream connection (--keep-source) gets the pod's
// replies: the node would route them to the client, so tc steers them into
// the node's stack (to-proxy mark, port 0). A proxy connecting from the
// node's address, and a client connecting directly, get their replies
// routed as usual.
func TestPrivilegedRepliesToKeptSourceProxy(t *testing.T) {
	requireRoot(t)
	d := fixture(t, enforcedIngress(
		PolicyEntry{Peer: peerID, Protocol: ProtoTCP, Port: 81, Verdict: VerdictAllow, RuleID: 42},
		PolicyEntry{Peer: IdentityHost, Protocol: ProtoTCP, Port: 81, Verdict: VerdictAllow, RuleID: 43},
	))
	trustTestCgroup(t, d)
	reply := func(p pkt) pkt {
		return pkt{src: p.dst, dst: p.src, sport: p.dport, dport: p.sport, proto: ProtoTCP, tcpFlags: tcpSYN | tcpACK}
	}
	for i, c := range []struct {
		name      string
		src       netip.Addr
		mark      uint32
		replyMark uint32
	}{
		{"ingress proxy, client's address kept", peerIP, ProxyMark(Ingress, peerID), ToProxyMark(0)},
		{"egress proxy, client's address kept", peerIP, ProxyMark(Egress, peerID), ToProxyMark(0)},
		{"ingress proxy from the node's address", nodeIP, ProxyMark(Ingress, peerID), 0},
		{"client directly", peerIP, 0, 0},
	} {
		p := ingress(c.src, ProtoTCP, 81)
		p.sport = 41000 + uint16(i)
		wantRet(t, c.name, run(t, d.objs.TcToPod, p, c.mark), actOK)
		r := d.fromPod(t, reply(p))
		wantRet(t, c.name+": reply", r, actOK)
		if r.mark != c.replyMark {
			t.Errorf("%s: reply mark %#x, want %#x", c.name, r.mark, c.replyMark)
		}
	}
}
