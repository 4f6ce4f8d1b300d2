package bpf

import (
	"errors"
	"math/rand/v2"
	"testing"
)

// reference is the policy contract evaluated directly on the entries.
func reference(dp DirectionPolicy, peer Identity, proto uint8, dport uint16) (Verdict, bool) {
	best := VerdictNone
	for _, e := range dp.Entries {
		if e.Peer != IdentityAny && e.Peer != peer {
			continue
		}
		if e.Protocol != ProtoAny && e.Protocol != proto {
			continue
		}
		if e.Protocol == ProtoICMP || e.Protocol == ProtoICMPv6 {
			if dport != e.Port {
				continue
			}
		} else if e.Port != 0 {
			if proto != ProtoTCP && proto != ProtoUDP && proto != ProtoSCTP {
				continue
			}
			end := e.EndPort
			if end == 0 {
				end = e.Port
			}
			if dport < e.Port || dport > end {
				continue
			}
		}
		best = max(best, e.Verdict)
	}
	return best, dp.Enforced
}

func randomEntry(r *rand.Rand) PolicyEntry {
	peers := []Identity{IdentityAny, 256, 257, IdentityWorld}
	protos := []uint8{ProtoAny, ProtoTCP, ProtoUDP, ProtoICMP, ProtoICMPv6}
	e := PolicyEntry{Peer: peers[r.IntN(len(peers))], Protocol: protos[r.IntN(len(protos))], RuleID: r.Uint32N(100)}
	if e.Protocol == ProtoICMP || e.Protocol == ProtoICMPv6 {
		e.Port = randomICMPType(r, e.Protocol)
		e.Verdict = []Verdict{VerdictAllow, VerdictDeny}[r.IntN(2)]
		return e
	}
	switch r.IntN(3) {
	case 0: // all ports
	case 1:
		e.Port = uint16(r.IntN(64))
	case 2:
		e.Port = uint16(r.IntN(64))
		e.EndPort = e.Port + uint16(r.IntN(40))
		if e.Port == 0 {
			e.Port = 1
		}
	}
	e.Verdict = []Verdict{VerdictAllow, VerdictDeny, VerdictRedirect}[r.IntN(3)]
	if e.Verdict == VerdictRedirect {
		e.Protocol, e.EndPort, e.ProxyPort = ProtoTCP, 0, 10000
		if e.Port == 0 {
			e.Port = 1
		}
	}
	return e
}

// randomICMPType is an ICMP type (0-15) or an ICMPv6 type of 124-132
// (echo request and reply among them; never neighbour discovery, which
// passes without policy).
func randomICMPType(r *rand.Rand, proto uint8) uint16 {
	if proto == ProtoICMPv6 {
		return 124 + uint16(r.IntN(9))
	}
	return uint16(r.IntN(16))
}

func TestCompileMatchesReference(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := range 300 {
		dp := DirectionPolicy{Enforced: round%2 == 0}
		for range r.IntN(12) {
			dp.Entries = append(dp.Entries, randomEntry(r))
		}
		c, err := compilePolicy([]EndpointPolicy{{Endpoint: 1, Egress: dp}})
		if err != nil {
			t.Fatal(err)
		}
		for _, peer := range []Identity{256, 257, 258, IdentityWorld} {
			for _, proto := range []uint8{ProtoTCP, ProtoUDP, ProtoSCTP, ProtoICMP, ProtoICMPv6} {
				for port := uint16(0); port < 140; port++ {
					if proto == ProtoICMP && port > 20 || proto != ProtoICMPv6 && port >= 110 {
						break
					}
					want, _ := reference(dp, peer, proto, port)
					got, _ := c.evaluate(1, Egress, peer, proto, port)
					if got.verdict != want {
						t.Fatalf("round %d peer %d proto %d port %d: got %v want %v\nentries %+v", round, peer, proto, port, got.verdict, want, dp.Entries)
					}
				}
			}
		}
	}
}

func TestPortPrefixes(t *testing.T) {
	for _, c := range []struct{ lo, hi uint16 }{{1, 1}, {0, 65535}, {1024, 65535}, {8000, 8080}, {65535, 65535}, {3, 17}} {
		covered := 0
		for _, p := range portPrefixes(c.lo, c.hi) {
			size := 1 << (16 - p.plen)
			if int(p.port)%size != 0 || int(p.port) < int(c.lo) || int(p.port)+size-1 > int(c.hi) {
				t.Errorf("[%d,%d]: bad prefix %d/%d", c.lo, c.hi, p.port, p.plen)
			}
			covered += size
		}
		if covered != int(c.hi)-int(c.lo)+1 {
			t.Errorf("[%d,%d]: covered %d ports", c.lo, c.hi, covered)
		}
	}
	if n := len(portPrefixes(1, 65535)); n != 16 {
		t.Errorf("[1,65535] took %d prefixes, want 16", n)
	}
}

func TestCompileRejects(t *testing.T) {
	bad := []PolicyEntry{
		{Peer: 256, Protocol: ProtoICMP, Port: 8, Verdict: VerdictRedirect, ProxyPort: 1},
		{Peer: 256, Protocol: ProtoUDP, Port: 53, EndPort: 54, Verdict: VerdictRedirect, ProxyPort: 1},
		{Peer: 256, Protocol: ProtoTCP, Port: 80, EndPort: 81, Verdict: VerdictRedirect, ProxyPort: 1},
		{Peer: 256, Protocol: ProtoTCP, Port: 80, Verdict: VerdictRedirect},
		{Peer: 256, Protocol: ProtoTCP, Port: 80, EndPort: 79, Verdict: VerdictAllow},
		{Peer: 256, Protocol: ProtoTCP, EndPort: 79, Verdict: VerdictAllow},
		{Peer: 256, Protocol: ProtoICMP, Port: 8, EndPort: 9, Verdict: VerdictAllow},
		{Peer: 256, Protocol: ProtoICMP, Port: 256, Verdict: VerdictAllow},
		{Peer: 256, Protocol: 47, Port: 8, Verdict: VerdictAllow},
		{Peer: 256, Verdict: VerdictNone},
	}
	for _, e := range bad {
		_, err := compilePolicy([]EndpointPolicy{{Endpoint: 1, Ingress: DirectionPolicy{Entries: []PolicyEntry{e}}}})
		if !errors.Is(err, ErrInvalidEntry) {
			t.Errorf("%+v: got %v, want ErrInvalidEntry", e, err)
		}
	}
	if _, err := compilePolicy([]EndpointPolicy{{Endpoint: 1}, {Endpoint: 1}}); !errors.Is(err, ErrInvalidEntry) {
		t.Errorf("duplicate endpoint: %v", err)
	}
}

func TestMarks(t *testing.T) {
	for _, id := range []Identity{1, 2, 256, 65535, 65536, 1<<24 - 1, FirstCIDRIdentity, FirstCIDRIdentity | 12345} {
		for _, dir := range []Direction{Ingress, Egress} {
			m := ProxyMark(dir, id)
			if MarkIdentity(m) != id {
				t.Errorf("identity %d: decoded %d", id, MarkIdentity(m))
			}
			want := MarkMagicProxyIngress
			if dir == Egress {
				want = MarkMagicProxyEgress
			}
			if m&MarkMagicMask != want {
				t.Errorf("identity %d %s: magic %#x", id, dir, m&MarkMagicMask)
			}
		}
	}
	if m := ToProxyMark(15001); m&MarkMagicMask != MarkMagicToProxy || m>>16 != 15001 {
		t.Errorf("to-proxy mark %#x", m)
	}
}

func TestTextRoundTrip(t *testing.T) {
	for _, v := range []Verdict{VerdictNone, VerdictAllow, VerdictRedirect, VerdictDeny} {
		b, _ := v.MarshalText()
		var got Verdict
		if err := got.UnmarshalText(b); err != nil || got != v {
			t.Errorf("verdict %v: %v %v", v, got, err)
		}
	}
	for _, d := range []Direction{Ingress, Egress} {
		b, _ := d.MarshalText()
		var got Direction
		if err := got.UnmarshalText(b); err != nil || got != d {
			t.Errorf("direction %v: %v %v", d, got, err)
		}
	}
}

// evaluate mirrors the program's lookup on compiled maps; tests use it to
// check compilation against the reference semantics.
func (c compiledPolicy) evaluate(ep uint32, dir Direction, peer Identity, proto uint8, dport uint16) (candidate, bool) {
	meta, ok := c.epPolicy[epPolicyKey{Endpoint: ep, Dir: uint8(dir)}]
	if !ok {
		return candidate{}, false
	}
	lookup := func(id Identity, levels uint32) candidate {
		for l := 16; l >= 0; l-- {
			if levels&(1<<l) == 0 {
				continue
			}
			k := policyKey{Endpoint: ep, Identity: uint32(id), Dir: uint8(dir), Proto: proto, PortPlen: uint8(l), Port: htons(dport & portMask(uint8(l)))}
			if v, ok := c.policy[k]; ok {
				return candidate{verdict: Verdict(v.Verdict), proxyPort: v.ProxyPort, ruleID: v.RuleId}
			}
		}
		if levels&(1<<levelAnyProto) != 0 {
			k := policyKey{Endpoint: ep, Identity: uint32(id), Dir: uint8(dir)}
			if v, ok := c.policy[k]; ok {
				return candidate{verdict: Verdict(v.Verdict), proxyPort: v.ProxyPort, ruleID: v.RuleId}
			}
		}
		return candidate{}
	}
	pc := protoClass(proto)
	a := lookup(peer, meta.LevelsPeer[pc])
	b := lookup(IdentityAny, meta.LevelsAny[pc])
	if a.verdict >= b.verdict {
		return a, meta.Flags&epPolicyEnforced != 0
	}
	return b, meta.Flags&epPolicyEnforced != 0
}
