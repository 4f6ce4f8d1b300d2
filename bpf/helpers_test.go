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
	}
	b = binary.BigEndian.AppendUint16(b, et)
	if et != unix.ETH_P_IP {
		return append(b, make([]byte, 46)...)
	}
	return append(b, p.ipv4()...)
}

// ipv4 is the IPv4 datagram of p (header checksum included).
func (p pkt) ipv4() []byte {
	var l4 []byte
	if p.fragOff == 0 {
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
		}
		if p.l4Len > 0 && p.l4Len < len(l4) {
			l4 = l4[:p.l4Len]
		}
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
