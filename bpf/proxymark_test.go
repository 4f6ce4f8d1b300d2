package bpf

import (
	"testing"
)

// TestEgressProxyMarkKeepsIngressRedirect: the ingress proxy's upstream
// traffic (0xA00) has passed the destination's ingress L7 rules and is not
// redirected again; the egress proxy's (0xB00) has only passed the
// source's egress rules, so it keeps its identity from the mark and is
// redirected to the ingress proxy when the destination's ingress says so.
func TestEgressProxyMarkKeepsIngressRedirect(t *testing.T) {
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
	if want := ToProxyMark(testProxyPrt); r.mark != want {
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

// trustTestCgroup trusts the cgroup of this process's sockets (the one
// BPF_PROG_TEST_RUN's socket gets) as a proxy cgroup.
func trustTestCgroup(t *testing.T, d *Datapath) {}

// proxyDialer dials from the node as a proxy would (for now: this process).
type proxyDialer struct{ ns string }

func trustedDialer(t *testing.T, d *Datapath, ns string) proxyDialer { return proxyDialer{ns: ns} }

func (p proxyDialer) dialRead(addr string, mark uint32) (string, error) {
	return dialRead(p.ns, addr, dialOpts{mark: mark})
}
