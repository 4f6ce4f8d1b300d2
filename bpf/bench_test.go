package bpf

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// benchSizes are the policy sizes BenchmarkDatapath compares.
func benchSizes() []int { return []int{10, 10_000, 100_000} }

// benchDatapath opens a datapath whose endpoint has n single-port entries
// (50 ports per peer) plus the same few broad ones at every size.
func benchDatapath(b *testing.B, n int) *Datapath {
	d := openTest(b, Config{DisableEvents: true, MapSizes: MapSizes{Policy: 131072, Conntrack: 65536}})
	// Both addresses: each family's packets from the pod are checked
	// against the pod's own address (anti-spoofing), as in production.
	if err := d.objs.Endpoints.Update(uint32(testIfindex), &datapathEndpointInfo{Id: testEP, Ipv4: podIP.As4(), Ipv6: podIP6.As16()}, 0); err != nil {
		b.Fatal(err)
	}
	entries := make([]PolicyEntry, 0, n+3)
	for i := range n {
		entries = append(entries, PolicyEntry{Peer: benchPeer(i), Protocol: ProtoTCP, Port: 1000 + uint16(i%50), Verdict: VerdictAllow, RuleID: uint32(i + 1)})
	}
	entries = append(entries,
		PolicyEntry{Peer: IdentityAny, Protocol: ProtoUDP, Port: 5000, EndPort: 5100, Verdict: VerdictAllow, RuleID: 1 << 30},
		PolicyEntry{Peer: IdentityWorld, Protocol: ProtoTCP, Port: 443, Verdict: VerdictAllow, RuleID: 1<<30 + 1},
		PolicyEntry{Peer: benchPeer(n / 2), Protocol: ProtoTCP, Port: 2000, Verdict: VerdictDeny, RuleID: 1<<30 + 2},
	)
	if _, err := d.SyncIPCache([]IPCacheEntry{
		{Prefix: netip.PrefixFrom(peerIP, 32), Identity: benchPeer(n / 2)},
		{Prefix: netip.PrefixFrom(podIP, 32), Identity: podID},
		{Prefix: netip.PrefixFrom(peerIP6, 128), Identity: benchPeer(n / 2)},
		{Prefix: netip.PrefixFrom(podIP6, 128), Identity: podID},
	}); err != nil {
		b.Fatal(err)
	}
	ingress := DirectionPolicy{Enforced: true, Entries: []PolicyEntry{
		{Peer: benchPeer(n / 2), Protocol: ProtoTCP, Port: 8080, Verdict: VerdictAllow, RuleID: 1<<30 + 3},
	}}
	if _, err := d.SyncPolicy([]EndpointPolicy{{Endpoint: testEP, Egress: DirectionPolicy{Enforced: true, Entries: entries}, Ingress: ingress}}); err != nil {
		b.Fatal(err)
	}
	// An allowed flow into the pod, for the reply path.
	if r := run(b, d.objs.TcToPod, pkt{src: peerIP, dst: podIP, sport: 50000, dport: 8080, proto: ProtoTCP, tcpFlags: tcpSYN}, 0); r.ret != actOK {
		b.Fatalf("prime the reply flow: %d", r.ret)
	}
	if r := run(b, d.objs.TcToPod, pkt{src: peerIP6, dst: podIP6, sport: 50000, dport: 8080, proto: ProtoTCP, tcpFlags: tcpSYN}, 0); r.ret != actOK {
		b.Fatalf("prime the IPv6 reply flow: %d", r.ret)
	}
	setProxyFamilies(b, d, true)
	// 10k recorded proxy upstream sockets of the pod (5k per family, to
	// the peer's port 443), none of them the ACK paths' 4-tuple: the
	// pre-filter's miss on a loaded map.
	for i := range 10_000 {
		l, r := podIP, peerIP
		if i%2 == 1 {
			l, r = podIP6, peerIP6
		}
		k, _ := upstreamKey(net.IP(l.AsSlice()), uint16(20000+i), net.IP(r.AsSlice()), 443)
		if err := d.objs.ProxyUpstreams.Update(k, uint32(upstreamRecorded), ebpf.UpdateAny); err != nil {
			b.Fatal(err)
		}
	}
	return d
}

// setUpstreamFilter turns the proxy upstream pre-filter on (as the agent
// does once the recorder is attached and the map seeded) or off (before
// that, or after the map overflowed: every candidate is looked up).
func setUpstreamFilter(b *testing.B, d *Datapath, on bool) {
	v := uint32(0)
	if on {
		v = 1
	}
	if err := d.objs.UpstreamFilter.Update(uint32(upstreamFilterOn), v, ebpf.UpdateAny); err != nil {
		b.Fatal(err)
	}
}

// setProxied records the bench endpoint's pod as a proxied client of
// both families (a TCP flow of each leaving it was redirected to a proxy:
// untracked ACKs into it look for the proxy's upstream sockets) or
// forgets it (the lookup is skipped).
func setProxied(b *testing.B, d *Datapath, proxied bool) {
	for _, af := range []uint32{unix.AF_INET, unix.AF_INET6} {
		k := proxiedKey{Endpoint: testEP, Family: af}
		var err error
		if proxied {
			err = d.objs.ProxiedClients.Update(k, uint32(1), ebpf.UpdateAny)
		} else if err = d.objs.ProxiedClients.Delete(k); errors.Is(err, ebpf.ErrKeyNotExist) {
			err = nil
		}
		if err != nil {
			b.Fatal(err)
		}
	}
}

// benchProxy sets up the proxy state a to-pod-ack path names: "-noproxy"
// no proxy socket ever registered on the node, "-proxied" the pod's
// flows were redirected to the proxy (with the upstream pre-filter on,
// "-proxied-nofilter" off), else a proxy on the node that the pod's flows
// never went to.
func benchProxy(b *testing.B, d *Datapath, path string) {
	setProxyFamilies(b, d, !strings.HasSuffix(path, "-noproxy"))
	setProxied(b, d, strings.Contains(path, "-proxied"))
	setUpstreamFilter(b, d, strings.HasSuffix(path, "-proxied"))
}

// setProxyFamilies marks both families as served by a proxy socket (as
// on a node whose proxy registered its listeners: untracked ACKs into a
// pod then look for a proxy's upstream socket) or as never served (no
// proxy on the node: the lookup is skipped).
func setProxyFamilies(b *testing.B, d *Datapath, proxy bool) {
	v := uint32(0)
	if proxy {
		v = 1
	}
	for _, k := range []uint32{proxyFamV4, proxyFamV6} {
		if err := d.objs.ProxyFamilies.Update(k, v, ebpf.UpdateAny); err != nil {
			b.Fatal(err)
		}
	}
}

func benchPeer(i int) Identity { return FirstClusterIdentity + Identity(i/50) }

// BenchmarkDatapath reports ns per packet (BPF_PROG_TEST_RUN with repeat)
// at 10, 10k and 100k policy entries. Paths:
//   - established: conntrack hit of an allowed flow;
//   - deny-entry: a new flow denied by an entry (full evaluation; no
//     conntrack entry is created, so every repeat evaluates policy);
//   - default-deny: a new flow no entry matches (every present level is
//     probed, the worst case);
//   - non-ip: an ARP request from the pod, checked and passed right after
//     parsing (the floor: test-run overhead plus the program's fixed costs);
//   - reply: the pod answering a flow it admitted on ingress (a reverse
//     conntrack hit, where replies to proxies are told apart);
//   - to-pod-ack-denied (tc_to_pod): a mid-stream segment of no tracked
//     flow into the pod, default-denied (a full evaluation; nothing is
//     stored), on a node whose proxy registered sockets of both families
//     but no flow of this pod went to it (the socket lookup for replies to
//     a proxy's upstream sockets is skipped: proxied_clients);
//   - to-pod-ack-denied-proxied: the same into a pod whose flows of both
//     families were redirected to the proxy, with the proxy upstream
//     pre-filter on (10k recorded sockets, none this packet's: the kernel
//     lookup is skipped);
//   - to-pod-ack-denied-proxied-nofilter: the same with the pre-filter off
//     (before the agent enabled it, or after the map overflowed: the
//     kernel lookup runs and finds nothing);
//   - to-pod-ack-denied-noproxy: the same where no proxy socket was ever
//     registered (the lookup is skipped: proxy_families).
//
// This VM's speed drifts by tens of percent over seconds, so each
// sub-benchmark measures its size and the 10-entry datapath in alternating
// rounds on one CPU and reports the best round of each: ns/pkt, and
// x-vs-10, the ratio to the 10-entry datapath measured alongside.
func BenchmarkDatapath(b *testing.B) {
	requireRoot(b)
	dps := make(map[int]*Datapath)
	for _, n := range benchSizes() {
		dps[n] = benchDatapath(b, n)
	}
	// Let the setup's garbage go before measuring.
	runtime.GC()
	debug.FreeOSMemory()
	time.Sleep(200 * time.Millisecond)

	paths := []struct {
		name  string
		p     func(n int) []byte
		want  uint32
		toPod bool
	}{
		{"established", func(n int) []byte {
			return pkt{src: podIP, dst: peerIP, sport: 40000, dport: 1000 + uint16((n/2)%50), proto: ProtoTCP, tcpFlags: tcpACK}.bytes()
		}, actOK, false},
		{"deny-entry", func(int) []byte {
			return pkt{src: podIP, dst: peerIP, sport: 40000, dport: 2000, proto: ProtoTCP, tcpFlags: tcpSYN}.bytes()
		}, actShot, false},
		{"default-deny", func(int) []byte {
			return pkt{src: podIP, dst: peerIP, sport: 40000, dport: 3000, proto: ProtoTCP, tcpFlags: tcpSYN}.bytes()
		}, actShot, false},
		{"non-ip", func(int) []byte { return arpFrame(1, podIP, nodeIP) }, actOK, false},
		{"reply", func(int) []byte {
			return pkt{src: podIP, dst: peerIP, sport: 8080, dport: 50000, proto: ProtoTCP, tcpFlags: tcpACK}.bytes()
		}, actOK, false},
		{"to-pod-ack-denied", func(int) []byte {
			return pkt{src: peerIP, dst: podIP, sport: 50001, dport: 9090, proto: ProtoTCP, tcpFlags: tcpACK}.bytes()
		}, actShot, true},
		{"to-pod-ack-denied-proxied", func(int) []byte {
			return pkt{src: peerIP, dst: podIP, sport: 50001, dport: 9090, proto: ProtoTCP, tcpFlags: tcpACK}.bytes()
		}, actShot, true},
		{"to-pod-ack-denied-proxied-nofilter", func(int) []byte {
			return pkt{src: peerIP, dst: podIP, sport: 50001, dport: 9090, proto: ProtoTCP, tcpFlags: tcpACK}.bytes()
		}, actShot, true},
		{"to-pod-ack-denied-noproxy", func(int) []byte {
			return pkt{src: peerIP, dst: podIP, sport: 50001, dport: 9090, proto: ProtoTCP, tcpFlags: tcpACK}.bytes()
		}, actShot, true},
	}
	for _, n := range benchSizes() {
		for _, path := range paths {
			b.Run(fmt.Sprintf("entries=%d/%s", n, path.name), func(b *testing.B) {
				pinToOneCPU(b)
				for _, m := range []int{10, n} {
					benchProxy(b, dps[m], path.name)
				}
				b.Cleanup(func() {
					for _, m := range []int{10, n} {
						benchProxy(b, dps[m], "")
					}
				})
				const rounds = 10
				per := max(b.N/rounds, 1)
				best := map[int]time.Duration{n: math.MaxInt64, 10: math.MaxInt64}
				for range rounds {
					for _, m := range []int{10, n} {
						prog := dps[m].objs.TcFromPod
						if path.toPod {
							prog = dps[m].objs.TcToPod
						}
						ret, t, err := prog.Benchmark(path.p(m), per, nil)
						if err != nil {
							b.Fatal(err)
						}
						if ret != path.want {
							b.Fatalf("ret %d, want %d", ret, path.want)
						}
						best[m] = min(best[m], t)
					}
				}
				b.ReportMetric(float64(best[n].Nanoseconds()), "ns/pkt")
				b.ReportMetric(float64(best[n])/float64(best[10]), "x-vs-10")
			})
		}
	}
}

// pinToOneCPU keeps the calling goroutine on one OS thread and CPU for the
// rest of the (sub-)benchmark: BPF_PROG_TEST_RUN runs where it is called.
func pinToOneCPU(b *testing.B) {
	runtime.LockOSThread()
	var orig, one unix.CPUSet
	if err := unix.SchedGetaffinity(0, &orig); err != nil {
		b.Fatal(err)
	}
	one.Set(0)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		unix.SchedSetaffinity(0, &orig)
		runtime.UnlockOSThread()
	})
}

// BenchmarkDatapathIPv6 compares IPv6 with IPv4 on the same datapath
// (10k entries) and the same paths as BenchmarkDatapath, measured in
// alternating rounds on one CPU (best round of each): ns/pkt-v4,
// ns/pkt-v6 and v6-vs-v4, their ratio. IPv6 packets carry no extension
// headers (the common case); "v6-ext" adds hop-by-hop and destination
// options to the established path (the walk's cost).
func BenchmarkDatapathIPv6(b *testing.B) {
	requireRoot(b)
	const n = 10_000
	d := benchDatapath(b, n)
	runtime.GC()
	debug.FreeOSMemory()
	time.Sleep(200 * time.Millisecond)
	both := func(p pkt) [2]pkt {
		p6 := p
		p6.src, p6.dst = map[netip.Addr]netip.Addr{podIP: podIP6, peerIP: peerIP6}[p.src], map[netip.Addr]netip.Addr{podIP: podIP6, peerIP: peerIP6}[p.dst]
		return [2]pkt{p, p6}
	}
	established := pkt{src: podIP, dst: peerIP, sport: 40000, dport: 1000 + uint16((n/2)%50), proto: ProtoTCP, tcpFlags: tcpACK}
	withExts := both(established)
	withExts[1].exts = []ext6{optsExt(extHopByHop, 0), optsExt(extDestOpts, 0)}
	paths := []struct {
		name  string
		p     [2]pkt
		want  uint32
		toPod bool
	}{
		{"established", both(established), actOK, false},
		{"established-v6-ext", withExts, actOK, false},
		{"deny-entry", both(pkt{src: podIP, dst: peerIP, sport: 40000, dport: 2000, proto: ProtoTCP, tcpFlags: tcpSYN}), actShot, false},
		{"default-deny", both(pkt{src: podIP, dst: peerIP, sport: 40000, dport: 3000, proto: ProtoTCP, tcpFlags: tcpSYN}), actShot, false},
		{"reply", both(pkt{src: podIP, dst: peerIP, sport: 8080, dport: 50000, proto: ProtoTCP, tcpFlags: tcpACK}), actOK, false},
		{"to-pod-ack-denied", both(pkt{src: peerIP, dst: podIP, sport: 50001, dport: 9090, proto: ProtoTCP, tcpFlags: tcpACK}), actShot, true},
		{"to-pod-ack-denied-proxied", both(pkt{src: peerIP, dst: podIP, sport: 50001, dport: 9090, proto: ProtoTCP, tcpFlags: tcpACK}), actShot, true},
		{"to-pod-ack-denied-noproxy", both(pkt{src: peerIP, dst: podIP, sport: 50001, dport: 9090, proto: ProtoTCP, tcpFlags: tcpACK}), actShot, true},
	}
	for _, path := range paths {
		b.Run(path.name, func(b *testing.B) {
			pinToOneCPU(b)
			benchProxy(b, d, path.name)
			b.Cleanup(func() { benchProxy(b, d, "") })
			prog := d.objs.TcFromPod
			if path.toPod {
				prog = d.objs.TcToPod
			}
			const rounds = 10
			per := max(b.N/rounds, 1)
			best := [2]time.Duration{math.MaxInt64, math.MaxInt64}
			for range rounds {
				for fam := range 2 {
					ret, t, err := prog.Benchmark(path.p[fam].bytes(), per, nil)
					if err != nil {
						b.Fatal(err)
					}
					if ret != path.want {
						b.Fatalf("family %d: ret %d, want %d", fam, ret, path.want)
					}
					best[fam] = min(best[fam], t)
				}
			}
			b.ReportMetric(float64(best[0].Nanoseconds()), "ns/pkt-v4")
			b.ReportMetric(float64(best[1].Nanoseconds()), "ns/pkt-v6")
			b.ReportMetric(float64(best[1])/float64(best[0]), "v6-vs-v4")
		})
	}
}
