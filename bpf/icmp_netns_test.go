package bpf

import (
	"os/exec"
	"strconv"
	"testing"
)

// ping runs iputils ping from ns: count echo requests, 0.2 s apart, one
// second for the last reply. It reports whether every request was answered.
func ping(t *testing.T, ns, addr string, count int) (bool, string) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "ping", "-n", "-c", strconv.Itoa(count), "-i", "0.2", "-W", "1", addr).CombinedOutput()
	return err == nil, string(out)
}

// TestPrivilegedPing: a real ping between pods with an icmps policy
// (EchoRequest allowed on the sender's egress and the receiver's
// ingress); the echo replies come back through conntrack. Without the
// receiver's rule the requests are dropped.
func TestPrivilegedPing(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("ping"); err != nil {
		t.Skip("needs ping (iputils-ping, hack/install-deps.sh)")
	}
	tp := newTopology(t)
	a := tp.addPod("a", "198.18.1.10", 1, identA)
	b := tp.addPod("b", "198.18.1.11", 2, identB)
	d := attachedDatapath(t, tp, a, b)
	evs := watchEvents(t, d)
	echo := func(peer Identity, rule uint32) PolicyEntry {
		return PolicyEntry{Peer: peer, Protocol: ProtoICMP, Port: icmpEcho, EndPort: icmpEcho, Verdict: VerdictAllow, RuleID: rule}
	}
	sync := func(bIngress ...PolicyEntry) {
		t.Helper()
		if _, err := d.SyncPolicy([]EndpointPolicy{
			{Endpoint: a.id, Egress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{echo(b.ident, 1)}},
				Ingress: DirectionPolicy{Enforced: true}},
			{Endpoint: b.id, Ingress: DirectionPolicy{Enforced: true, Entries: bIngress},
				Egress: DirectionPolicy{Enforced: true}},
		}); err != nil {
			t.Fatal(err)
		}
	}
	sync(echo(a.ident, 2))
	if ok, out := ping(t, a.ns, "198.18.1.11", 3); !ok {
		t.Errorf("ping a -> b with EchoRequest allowed both ways failed:\n%s", out)
	}
	if ok, out := ping(t, b.ns, "198.18.1.10", 1); ok {
		t.Errorf("ping b -> a (not allowed) succeeded:\n%s", out)
	}
	sync()
	if ok, out := ping(t, a.ns, "198.18.1.11", 1); ok {
		t.Errorf("ping a -> b without b's ingress rule succeeded:\n%s", out)
	}
	evs.waitFor(t, 1, func(ev Event) bool {
		return ev.Dropped && ev.Protocol == ProtoICMP && ev.Endpoint == b.id && ev.Reason == ReasonDefault
	})
}
