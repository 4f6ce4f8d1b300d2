package bpf

import (
	"context"
	"encoding/binary"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/l7gate/l7gate/internal/testutil"
)

// requireRoot skips without root and fails a root-only test that is not
// named TestPrivileged… (internal/testutil).
func requireRoot(t testing.TB) {
	t.Helper()
	testutil.RequirePrivileged(t, "loads BPF programs")
}

// mountBPFFS mounts a private bpf filesystem for the test's pins.
func mountBPFFS(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount bpffs: %v", err)
		}
	})
	return dir
}

type testLogWriter struct{ t testing.TB }

func (w testLogWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p))
	return len(p), nil
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// openTest opens a Datapath on a private bpffs; the programs are only run
// through BPF_PROG_TEST_RUN, never attached.
func openTest(t testing.TB, cfg Config) *Datapath {
	t.Helper()
	requireRoot(t)
	if cfg.BPFFSPath == "" {
		cfg.BPFFSPath = mountBPFFS(t)
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	d, err := Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// skbCtx is the head of struct __sk_buff up to cb[]: the part
// BPF_PROG_TEST_RUN lets us set (mark, ifindex, …).
type skbCtx struct {
	Len            uint32
	PktType        uint32
	Mark           uint32
	QueueMapping   uint32
	Protocol       uint32
	VlanPresent    uint32
	VlanTCI        uint32
	VlanProto      uint32
	Priority       uint32
	IngressIfindex uint32
	Ifindex        uint32
	TCIndex        uint32
	Cb             [5]uint32
}

type pkt struct {
	src, dst     netip.Addr
	sport, dport uint16
	proto        uint8
	tcpFlags     uint8
	fragOff      uint16 // in 8-byte units
	moreFrags    bool
	ipID         uint16
	etherType    uint16
	payload      int
	// ICMP: type (default echo request), code and identifier; inner is
	// the datagram an ICMP error quotes (its IP header and 8 bytes).
	icmpType *uint8
	icmpCode uint8
	icmpID   uint16
	inner    *pkt
	// Hostile IPv4 headers: options (padded to 4 bytes by the caller),
	// an ihl override, and a total length override (0: computed).
	ipOpts []byte
	ihl    uint8
	totLen uint16
	// l4Len cuts the transport header to this many bytes (0: whole).
	l4Len int
	// data follows the transport header (after payload zero bytes).
	data []byte
	// IPv6 (src and dst IPv6): extension headers before the transport
	// header (a fragment header for fragOff/moreFrags/ipID follows them),
	// hop limit (0: 64, or 255 for neighbour discovery), a payload length
	// override (0: computed) and a next header override for the last
	// header (0: proto).
	exts       []ext6
	hopLimit   uint8
	payloadLen uint16
	lastNext   uint8
}

// ext6 is one IPv6 extension header: its type and its bytes (a multiple
// of 8 with the length field set; byte 0, the next header, is filled in).
type ext6 struct {
	typ uint8
	b   []byte
}

// IPv6 extension header types.
const (
	extHopByHop = 0
	extRouting  = 43
	extFragment = 44
	extAH       = 51
	extDestOpts = 60
)

// optsExt is a hop-by-hop or destination options header of 8*(n+1) bytes
// (PadN filled).
func optsExt(typ uint8, n int) ext6 {
	b := make([]byte, 8*(n+1))
	b[1] = uint8(n)
	b[2], b[3] = 1, uint8(len(b)-4) // PadN
	return ext6{typ: typ, b: b}
}

// routingExt is a routing header of the type with segments left.
func routingExt(rtype, segLeft uint8) ext6 {
	b := make([]byte, 24) // one address
	b[1], b[2], b[3] = 2, rtype, segLeft
	return ext6{typ: extRouting, b: b}
}

// fragExt is a fragment header (offset in 8-byte units).
func fragExt(off uint16, more bool, id uint32) ext6 {
	b := make([]byte, 8)
	fo := off << 3
	if more {
		fo |= 1
	}
	binary.BigEndian.PutUint16(b[2:], fo)
	binary.BigEndian.PutUint32(b[4:], id)
	return ext6{typ: extFragment, b: b}
}

// ahExt is an authentication header with a 12-byte ICV (24 bytes).
func ahExt() ext6 {
	b := make([]byte, 24)
	b[1] = 4 // (24/4) - 2
	return ext6{typ: extAH, b: b}
}

const (
	tcpSYN = 0x02
	tcpACK = 0x10
	tcpFIN = 0x01
)

func (p pkt) bytes() []byte {
	b := make([]byte, 0, 128)
	b = append(b, 0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01) // dst, src MAC
	et := p.etherType
	if et == 0 {
		et = unix.ETH_P_IP
		if p.src.Is6() {
			et = unix.ETH_P_IPV6
		}
	}
	b = binary.BigEndian.AppendUint16(b, et)
	if et == unix.ETH_P_IPV6 && p.src.Is6() {
		return append(b, p.ipv6()...)
	}
	if et != unix.ETH_P_IP {
		return append(b, make([]byte, 46)...)
	}
	return append(b, p.ipv4()...)
}

// isND: an ICMPv6 neighbour discovery type (133-137).
func isND(t uint8) bool { return t >= 133 && t <= 137 }

// ipv6 is the IPv6 packet of p (transport checksums are not computed:
// the datapath does not read them).
func (p pkt) ipv6() []byte {
	var l4 []byte
	if p.fragOff == 0 {
		l4 = p.l4()
	}
	l4 = append(l4, make([]byte, p.payload)...)
	l4 = append(l4, p.data...)
	if p.fragOff == 0 && p.proto == ProtoUDP && p.l4Len == 0 {
		binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
	}
	exts := p.exts
	if p.fragOff != 0 || p.moreFrags {
		exts = append(append([]ext6(nil), exts...), fragExt(p.fragOff, p.moreFrags, uint32(p.ipID)))
	}
	var hdrs []byte
	first := p.proto
	if len(exts) > 0 {
		first = exts[0].typ
	}
	for i, e := range exts {
		b := append([]byte(nil), e.b...)
		b[0] = p.proto
		if i+1 < len(exts) {
			b[0] = exts[i+1].typ
		} else if p.lastNext != 0 {
			b[0] = p.lastNext
		}
		hdrs = append(hdrs, b...)
	}
	if len(exts) == 0 && p.lastNext != 0 {
		first = p.lastNext
	}
	ip := make([]byte, 40)
	ip[0] = 0x60
	plen := uint16(len(hdrs) + len(l4))
	if p.payloadLen != 0 {
		plen = p.payloadLen
	}
	binary.BigEndian.PutUint16(ip[4:], plen)
	ip[6] = first
	ip[7] = 64
	if p.proto == ProtoICMPv6 && p.icmpType != nil && isND(*p.icmpType) {
		ip[7] = 255
	}
	if p.hopLimit != 0 {
		ip[7] = p.hopLimit
	}
	s, d := p.src.As16(), p.dst.As16()
	copy(ip[8:], s[:])
	copy(ip[24:], d[:])
	return append(append(ip, hdrs...), l4...)
}

// l4 is p's transport header (cut to l4Len).
func (p pkt) l4() []byte {
	var l4 []byte
	switch p.proto {
	case ProtoTCP:
		l4 = make([]byte, 20)
		binary.BigEndian.PutUint16(l4[0:], p.sport)
		binary.BigEndian.PutUint16(l4[2:], p.dport)
		l4[12] = 5 << 4
		l4[13] = p.tcpFlags
	case ProtoUDP:
		l4 = make([]byte, 8)
		binary.BigEndian.PutUint16(l4[0:], p.sport)
		binary.BigEndian.PutUint16(l4[2:], p.dport)
	case ProtoSCTP:
		l4 = make([]byte, 12) // common header: ports, verification tag, checksum
		binary.BigEndian.PutUint16(l4[0:], p.sport)
		binary.BigEndian.PutUint16(l4[2:], p.dport)
	case ProtoICMP:
		typ := uint8(8)
		if p.icmpType != nil {
			typ = *p.icmpType
		}
		l4 = []byte{typ, p.icmpCode, 0, 0, 0, 0, 0, 1}
		binary.BigEndian.PutUint16(l4[4:], p.icmpID)
		if p.inner != nil {
			in := p.inner.ipv4()
			l4 = append(l4, in[:min(len(in), int(in[0]&0xF)*4+8)]...)
		}
		binary.BigEndian.PutUint16(l4[2:], ^checksum(l4))
	case ProtoICMPv6:
		typ := uint8(128)
		if p.icmpType != nil {
			typ = *p.icmpType
		}
		l4 = []byte{typ, p.icmpCode, 0, 0, 0, 0, 0, 1}
		binary.BigEndian.PutUint16(l4[4:], p.icmpID)
		if p.inner != nil {
			in := p.inner.ipv6()
			l4 = append(l4, in[:min(len(in), 48)]...)
		}
	}
	if p.l4Len > 0 && p.l4Len < len(l4) {
		l4 = l4[:p.l4Len]
	}
	return l4
}

// ipv4 is the IPv4 datagram of p (header checksum included).
func (p pkt) ipv4() []byte {
	var l4 []byte
	if p.fragOff == 0 {
		l4 = p.l4()
	}
	l4 = append(l4, make([]byte, p.payload)...)
	l4 = append(l4, p.data...)
	if p.fragOff == 0 && p.proto == ProtoUDP && p.l4Len == 0 {
		binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
	}
	hl := 20 + len(p.ipOpts)
	ip := make([]byte, hl)
	ihl := p.ihl
	if ihl == 0 {
		ihl = uint8(hl / 4)
	}
	ip[0] = 0x40 | ihl&0xF
	tot := uint16(hl + len(l4))
	if p.totLen != 0 {
		tot = p.totLen
	}
	binary.BigEndian.PutUint16(ip[2:], tot)
	binary.BigEndian.PutUint16(ip[4:], p.ipID)
	frag := p.fragOff & 0x1FFF
	if p.moreFrags {
		frag |= 0x2000
	}
	binary.BigEndian.PutUint16(ip[6:], frag)
	ip[8] = 64
	ip[9] = p.proto
	s, d := p.src.As4(), p.dst.As4()
	copy(ip[12:], s[:])
	copy(ip[16:], d[:])
	copy(ip[20:], p.ipOpts)
	binary.BigEndian.PutUint16(ip[10:], ^checksum(ip))
	return append(ip, l4...)
}

// checksum is the ones' complement sum of b (RFC 1071), not inverted.
func checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xFFFF + s>>16
	}
	return uint16(s)
}

func (p pkt) reply() pkt {
	r := p
	r.src, r.dst = p.dst, p.src
	r.sport, r.dport = p.dport, p.sport
	return r
}

type runResult struct {
	ret  uint32
	mark uint32
}

func run(t testing.TB, prog *ebpf.Program, p pkt, mark uint32) runResult {
	t.Helper()
	in := skbCtx{Mark: mark}
	// The kernel writes back the whole __sk_buff (192 bytes).
	var out struct {
		skbCtx
		_ [192 - 68]byte
	}
	data := p.bytes()
	ret, err := prog.Run(&ebpf.RunOptions{Data: data, DataOut: make([]byte, len(data)+256), Context: in, ContextOut: &out})
	if err != nil {
		t.Fatalf("test run: %v", err)
	}
	return runResult{ret: ret, mark: out.Mark}
}
