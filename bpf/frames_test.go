package bpf

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Raw Ethernet frames for hostile-input tests.

// vlanTag is one 802.1Q/802.1ad tag: TPID and TCI (priority, DEI, VID).
type vlanTag struct{ tpid, tci uint16 }

const (
	tpid8021Q  = 0x8100
	tpid8021AD = 0x88a8
	tpidOld    = 0x9100 // pre-standard QinQ
)

// ethFrame builds dst MAC, src MAC, the tags, the ethertype and payload.
func ethFrame(dst, src net.HardwareAddr, tags []vlanTag, etherType uint16, payload []byte) []byte {
	b := make([]byte, 0, 18+4*len(tags)+len(payload))
	b = append(b, dst...)
	b = append(b, src...)
	for _, tg := range tags {
		b = binary.BigEndian.AppendUint16(b, tg.tpid)
		b = binary.BigEndian.AppendUint16(b, tg.tci)
	}
	b = binary.BigEndian.AppendUint16(b, etherType)
	b = append(b, payload...)
	for len(b) < 60 {
		b = append(b, 0) // minimum frame size, as a NIC pads
	}
	return b
}

var (
	testDstMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02}
	testSrcMAC = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
)

// tagged is p's IPv4 datagram behind the given tags.
func (p pkt) tagged(tags ...vlanTag) []byte {
	return ethFrame(testDstMAC, testSrcMAC, tags, unix.ETH_P_IP, p.ipv4())
}

// arpPayload is an Ethernet/IPv4 ARP packet.
func arpPayload(op uint16, sha net.HardwareAddr, spa netip.Addr, tha net.HardwareAddr, tpa netip.Addr) []byte {
	b := []byte{0, 1, 0x08, 0, 6, 4}
	b = binary.BigEndian.AppendUint16(b, op)
	b = append(b, sha...)
	s := spa.As4()
	b = append(b, s[:]...)
	b = append(b, tha...)
	t := tpa.As4()
	return append(b, t[:]...)
}

func arpFrame(op uint16, spa, tpa netip.Addr) []byte {
	return ethFrame(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, testSrcMAC, nil, unix.ETH_P_ARP,
		arpPayload(op, testSrcMAC, spa, make(net.HardwareAddr, 6), tpa))
}

// runFrame runs prog on a raw frame (BPF_PROG_TEST_RUN sets skb->protocol
// from the frame's ethertype, as eth_type_trans does).
func runFrame(t testing.TB, prog *ebpf.Program, frame []byte, mark uint32) runResult {
	t.Helper()
	in := skbCtx{Mark: mark}
	var out struct {
		skbCtx
		_ [192 - 68]byte
	}
	ret, err := prog.Run(&ebpf.RunOptions{Data: frame, DataOut: make([]byte, len(frame)+256), Context: in, ContextOut: &out})
	if err != nil {
		t.Fatalf("test run: %v", err)
	}
	return runResult{ret: ret, mark: out.Mark}
}

// eventLog collects a datapath's events for the rest of the test.
type eventLog struct {
	mu   sync.Mutex
	evs  []Event
	cond chan struct{} // closed and replaced on every event
}

func watchEvents(t testing.TB, d *Datapath) *eventLog {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch, err := d.Events(ctx)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	l := &eventLog{cond: make(chan struct{})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range ch {
			l.mu.Lock()
			l.evs = append(l.evs, ev)
			close(l.cond)
			l.cond = make(chan struct{})
			l.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return l
}

// waitFor waits (at most 5 s) until n events match and returns them all.
func (l *eventLog) waitFor(t testing.TB, n int, match func(Event) bool) []Event {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		l.mu.Lock()
		var got []Event
		for _, ev := range l.evs {
			if match(ev) {
				got = append(got, ev)
			}
		}
		cond := l.cond
		l.mu.Unlock()
		if len(got) >= n {
			return got
		}
		select {
		case <-cond:
		case <-deadline:
			t.Fatalf("waited for %d matching events, got %d: %v", n, len(got), got)
			return nil
		}
	}
}

// all returns the events seen so far.
func (l *eventLog) all() []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Event(nil), l.evs...)
}

func netip4(a, b, c, d byte) netip.Addr { return netip.AddrFrom4([4]byte{a, b, c, d}) }

func dropReason(r Reason) func(Event) bool {
	return func(ev Event) bool { return ev.Dropped && ev.Reason == r }
}

// sendFrames writes raw frames to dev in network namespace ns with an
// AF_PACKET socket (as a pod with CAP_NET_RAW can).
func sendFrames(ns, dev string, frames ...[]byte) error {
	return inNS(ns, func() error {
		ifc, err := net.InterfaceByName(dev)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		for _, f := range frames {
			sa := &unix.SockaddrLinklayer{Ifindex: ifc.Index, Protocol: htons(binary.BigEndian.Uint16(f[12:14]))}
			if err := unix.Sendto(fd, f, 0, sa); err != nil {
				return err
			}
		}
		return nil
	})
}

// macOf is the hardware address of dev in ns.
func macOf(t *testing.T, ns, dev string) net.HardwareAddr {
	t.Helper()
	var mac net.HardwareAddr
	mustInNS(t, ns, func() error {
		ifc, err := net.InterfaceByName(dev)
		if err != nil {
			return err
		}
		mac = ifc.HardwareAddr
		return nil
	})
	return mac
}

// udpSink records every datagram received on addr in ns.
type udpSink struct {
	mu   sync.Mutex
	got  []string
	cond chan struct{}
}

func listenUDPSink(t *testing.T, ns, addr string) *udpSink {
	t.Helper()
	var pc net.PacketConn
	mustInNS(t, ns, func() error {
		var err error
		pc, err = net.ListenPacket("udp4", addr)
		return err
	})
	s := &udpSink{cond: make(chan struct{})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			s.mu.Lock()
			s.got = append(s.got, string(buf[:n]))
			close(s.cond)
			s.cond = make(chan struct{})
			s.mu.Unlock()
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return s
}

// waitFor waits (at most 5 s) for a datagram with this payload.
func (s *udpSink) waitFor(payload string) bool {
	deadline := time.After(5 * time.Second)
	for {
		s.mu.Lock()
		cond := s.cond
		for _, g := range s.got {
			if g == payload {
				s.mu.Unlock()
				return true
			}
		}
		s.mu.Unlock()
		select {
		case <-cond:
		case <-deadline:
			return false
		}
	}
}

func (s *udpSink) received() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.got...)
}

func netDial(network, addr string) (net.Conn, error) { return net.Dial(network, addr) }
