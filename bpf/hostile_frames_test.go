package bpf

import (
	"encoding/binary"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// hostileCase is one frame and its expected fate: a drop with a reason, or
// pass (want actOK, no reason).
type hostileCase struct {
	name   string
	toPod  bool // run tc_to_pod instead of tc_from_pod
	frame  []byte
	want   uint32
	reason Reason
}

// runHostile runs the cases in order on d and checks each verdict and,
// for drops, that a drop event with the expected reason followed it.
func runHostile(t *testing.T, d *Datapath, evs *eventLog, cases []hostileCase) {
	t.Helper()
	dropped := 0
	for _, c := range cases {
		prog := d.objs.TcFromPod
		if c.toPod {
			prog = d.objs.TcToPod
		}
		before := 0 // index of the first event after the previous drop's
		if all := evs.all(); dropped > 0 {
			before = lastDrop(all) + 1
		}
		r := runFrame(t, prog, c.frame, 0)
		if r.ret != c.want {
			t.Errorf("%s: ret %d, want %d", c.name, r.ret, c.want)
			continue
		}
		if c.want != actShot {
			continue
		}
		// The next drop event is this frame's (each drop is awaited).
		deadline := time.Now().Add(5 * time.Second)
		for {
			all := evs.all()
			i := slices.IndexFunc(all[min(before, len(all)):], func(ev Event) bool { return ev.Dropped })
			if i >= 0 {
				before += i
				if ev := all[before]; ev.Reason != c.reason {
					t.Errorf("%s: dropped for %s, want %s (%s)", c.name, ev.Reason, c.reason, ev)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("%s: no drop event", c.name)
				break
			}
			time.Sleep(time.Millisecond)
		}
		dropped++
	}
}

func lastDrop(evs []Event) int {
	for i := len(evs) - 1; i >= 0; i-- {
		if evs[i].Dropped {
			return i
		}
	}
	return -1
}

func ethIPv4(p pkt) []byte { return ethFrame(testDstMAC, testSrcMAC, nil, unix.ETH_P_IP, p.ipv4()) }

// raw is p's frame with the IPv4 header edited by f (checksum left as is:
// the datapath does not check it, the kernel drops what is wrong).
func raw(p pkt, f func(ip []byte) []byte) []byte {
	ip := f(p.ipv4())
	return append(append(append([]byte{}, testDstMAC...), testSrcMAC...), append([]byte{0x08, 0}, ip...)...)
}

// TestPrivilegedHostileFramesProgTestRun: malformed, truncated, source-routed, spoofed and
// fragmented frames against the real programs (BPF_PROG_TEST_RUN). The
// policy allows the pod UDP 53 and TCP 80 to its peer, and TCP 80 in.
func TestPrivilegedHostileFramesProgTestRun(t *testing.T) {
	requireRoot(t)
	d := fixture(t, EndpointPolicy{
		Egress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{
			{Peer: peerID, Protocol: ProtoUDP, Port: 53, Verdict: VerdictAllow, RuleID: 130},
			{Peer: peerID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictAllow, RuleID: 131},
		}},
		Ingress: DirectionPolicy{Enforced: true, Entries: []PolicyEntry{
			{Peer: peerID, Protocol: ProtoTCP, Port: 80, Verdict: VerdictAllow, RuleID: 132},
		}},
	})
	evs := watchEvents(t, d)
	udp := func(sport uint16) pkt {
		p := egress(peerIP, ProtoUDP, 53)
		p.sport = sport
		return p
	}
	tcp := func(sport uint16) pkt {
		p := egress(peerIP, ProtoTCP, 80)
		p.sport = sport
		return p
	}
	withOpts := func(p pkt, opts ...byte) pkt {
		for len(opts)%4 != 0 {
			opts = append(opts, 0) // end of options
		}
		p.ipOpts = opts
		return p
	}
	peer4 := peerIP.As4()
	lsrr := append([]byte{131, 7, 4}, peer4[:]...)
	ssrr := append([]byte{137, 7, 4}, peer4[:]...)
	frag := func(p pkt, id, off uint16, more bool) pkt {
		p.ipID, p.fragOff, p.moreFrags, p.payload = id, off, more, 32
		return p
	}
	cases := []hostileCase{
		{"control: allowed udp", false, ethIPv4(udp(1000)), actOK, 0},
		// (BPF_PROG_TEST_RUN refuses IPv4 frames shorter than 34 bytes;
		// TestPrivilegedHostileFramesProgTestRun sends those through a veth.)
		{"IPv4 header of zeros", false, ethFrame(testDstMAC, testSrcMAC, nil, unix.ETH_P_IP, nil)[:40], actShot, ReasonMalformed},
		{"version 6 behind the IPv4 ethertype", false, raw(udp(1002), func(ip []byte) []byte { ip[0] = 0x65; return ip }), actShot, ReasonMalformed},
		{"ihl 4", false, raw(udp(1003), func(ip []byte) []byte { ip[0] = 0x44; return ip }), actShot, ReasonMalformed},
		{"ihl 15 beyond the datagram", false, raw(udp(1004), func(ip []byte) []byte { ip[0] = 0x4F; return ip }), actShot, ReasonMalformed},
		{"total length beyond the frame", false, raw(udp(1005), func(ip []byte) []byte { binary.BigEndian.PutUint16(ip[2:], 1500); return ip }), actShot, ReasonMalformed},
		{"total length below the header", false, raw(udp(1006), func(ip []byte) []byte { binary.BigEndian.PutUint16(ip[2:], 12); return ip }), actShot, ReasonMalformed},
		{"total length 0", false, raw(udp(1007), func(ip []byte) []byte { binary.BigEndian.PutUint16(ip[2:], 0); return ip }), actShot, ReasonMalformed},
		{"tcp header cut", false, ethIPv4(func() pkt { p := tcp(1008); p.l4Len = 12; return p }()), actShot, ReasonMalformed},
		{"tcp header in the frame's padding", false, raw(tcp(1009), func(ip []byte) []byte { binary.BigEndian.PutUint16(ip[2:], 20+8); return ip }), actShot, ReasonMalformed},
		{"udp header cut", false, ethIPv4(func() pkt { p := udp(1010); p.l4Len = 4; return p }()), actShot, ReasonMalformed},
		{"loose source route", false, ethIPv4(withOpts(udp(1011), lsrr...)), actShot, ReasonIPOptions},
		{"strict source route", false, ethIPv4(withOpts(udp(1012), ssrr...)), actShot, ReasonIPOptions},
		{"source route after no-ops", false, ethIPv4(withOpts(udp(1013), append([]byte{1, 1, 1}, lsrr...)...)), actShot, ReasonIPOptions},
		{"source route into the pod", true, ethIPv4(withOpts(ingress(peerIP, ProtoTCP, 80), lsrr...)), actShot, ReasonIPOptions},
		{"option length 0", false, ethIPv4(withOpts(udp(1014), 7, 0)), actShot, ReasonMalformed},
		{"option longer than the header", false, ethIPv4(withOpts(udp(1015), 7, 12, 4, 0)), actShot, ReasonMalformed},
		{"record route passes", false, ethIPv4(withOpts(udp(1016), 7, 7, 4, 0, 0, 0, 0)), actOK, 0},
		{"router alert passes", false, ethIPv4(withOpts(udp(1017), 148, 4, 0, 0)), actOK, 0},
		{"spoofed source", false, ethIPv4(func() pkt { p := udp(1018); p.src = otherIP; return p }()), actShot, ReasonSpoofed},
		{"source 0.0.0.0", false, ethIPv4(func() pkt { p := udp(1019); p.src = netip4(0, 0, 0, 0); return p }()), actShot, ReasonSpoofed},
		{"spoofed source into the pod's own address", false, ethIPv4(func() pkt { p := udp(1020); p.src = peerIP; p.dst = podIP; return p }()), actShot, ReasonSpoofed},

		// Fragments.
		{"tiny first tcp fragment", false, ethIPv4(func() pkt { p := frag(tcp(1100), 500, 0, true); p.l4Len = 8; p.payload = 0; return p }()), actShot, ReasonMalformed},
		{"first tcp fragment", false, ethIPv4(frag(tcp(1101), 501, 0, true)), actOK, 0},
		{"tcp fragment at offset 8 (rewrites flags)", false, ethIPv4(frag(tcp(1101), 501, 1, true)), actShot, ReasonFragment},
		{"later tcp fragment", false, ethIPv4(frag(tcp(1101), 501, 6, false)), actOK, 0},
		{"later fragment before its first", false, ethIPv4(frag(udp(1102), 502, 6, false)), actShot, ReasonFragment},
		{"then the first", false, ethIPv4(frag(udp(1102), 502, 0, true)), actOK, 0},
		{"then the later one again", false, ethIPv4(frag(udp(1102), 502, 6, false)), actOK, 0},
		{"denied first fragment", false, ethIPv4(frag(egress(peerIP, ProtoUDP, 54), 503, 0, true)), actShot, ReasonDefault},
		{"its later fragment", false, ethIPv4(frag(egress(peerIP, ProtoUDP, 54), 503, 6, false)), actShot, ReasonFragment},
		{"allowed first fragment", false, ethIPv4(frag(udp(1104), 504, 0, true)), actOK, 0},
		{"overlapping first fragment, denied port", false, ethIPv4(frag(egress(peerIP, ProtoUDP, 54), 504, 0, true)), actShot, ReasonDefault},
		{"later fragment follows the admitted first", false, ethIPv4(frag(udp(1104), 504, 6, false)), actOK, 0},
		{"later fragment with a spoofed source", false, ethIPv4(func() pkt { p := frag(udp(1104), 504, 6, false); p.src = otherIP; return p }()), actShot, ReasonFragment},
		{"fragment of an unknown datagram into the pod", true, ethIPv4(frag(ingress(peerIP, ProtoTCP, 80), 505, 6, false)), actShot, ReasonFragment},

		// ICMP errors that are not about a tracked flow.
		{"icmp error quoting a truncated datagram", true, ethIPv4(func() pkt {
			p := icmpPkt(peerIP, podIP, icmpUnreachable, 0)
			p.inner = &pkt{src: podIP, dst: peerIP, proto: ProtoUDP, sport: 1000, dport: 53}
			p.l4Len = 8 + 12
			return p
		}()), actShot, ReasonDefault},
		{"icmp error quoting another source", true, ethIPv4(func() pkt {
			p := icmpPkt(peerIP, podIP, icmpUnreachable, 0)
			p.inner = &pkt{src: otherIP, dst: peerIP, proto: ProtoUDP, sport: 1000, dport: 53}
			return p
		}()), actShot, ReasonDefault},
	}
	runHostile(t, d, evs, cases)
}

// TestPrivilegedHostileFramesNoCrash feeds every prefix of a set of frames (each
// truncation point from 34 bytes, the shortest IPv4 frame
// BPF_PROG_TEST_RUN accepts) to both programs: the program must never pass
// a truncated IPv4 datagram.
func TestPrivilegedHostileFramesNoCrash(t *testing.T) {
	requireRoot(t)
	d := fixture(t, EndpointPolicy{Egress: DirectionPolicy{Entries: []PolicyEntry{
		{Peer: IdentityAny, Verdict: VerdictAllow, RuleID: 140}}},
		Ingress: DirectionPolicy{Entries: []PolicyEntry{{Peer: IdentityAny, Verdict: VerdictAllow, RuleID: 141}}},
	})
	icmpErr := icmpPkt(peerIP, podIP, icmpUnreachable, 0)
	icmpErr.inner = &pkt{src: podIP, dst: peerIP, proto: ProtoTCP, sport: 1, dport: 80}
	frames := [][]byte{
		ethIPv4(egress(peerIP, ProtoTCP, 80)),
		ethIPv4(egress(peerIP, ProtoUDP, 53)),
		ethIPv4(egress(peerIP, ProtoSCTP, 9)),
		ethIPv4(icmpPkt(podIP, peerIP, icmpEcho, 1)),
		ethIPv4(icmpErr),
		ethIPv4(func() pkt {
			p := egress(peerIP, ProtoUDP, 53)
			p.ipOpts = []byte{1, 1, 7, 7, 4, 0, 0, 0, 0, 0, 0, 0}
			return p
		}()),
		arpFrame(1, podIP, nodeIP),
	}
	for i, f := range frames {
		// Without padding: cut exactly where the datagram ends.
		ipLen := len(f)
		if binary.BigEndian.Uint16(f[12:]) == unix.ETH_P_IP {
			ipLen = 14 + int(binary.BigEndian.Uint16(f[16:]))
		}
		for n := 34; n < ipLen; n++ {
			cut := append([]byte{}, f[:n]...)
			for _, prog := range []struct {
				name string
				run  func([]byte) runResult
			}{
				{"from pod", func(b []byte) runResult { return runFrame(t, d.objs.TcFromPod, b, 0) }},
				{"to pod", func(b []byte) runResult { return runFrame(t, d.objs.TcToPod, b, 0) }},
			} {
				r := prog.run(cut)
				if r.ret == actOK && binary.BigEndian.Uint16(f[12:]) == unix.ETH_P_IP {
					t.Errorf("frame %d cut at %d of %d bytes passed %s", i, n, ipLen, prog.name)
				}
			}
		}
	}
}
