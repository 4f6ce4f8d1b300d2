package bpf

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Socket-LB benchmarks (`make bench` section "socket LB"): what connect()
// costs with the programs attached and N services in the maps, against
// the same connect() with no program; and what SyncServices costs for one
// changed backend among 100k.

// benchServiceIP is the i-th benchmark ClusterIP (198.19.0.0/16: up to
// 65536 services per port; the port varies above that).
func benchService(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)}), uint16(80+i>>16))
}

// benchNS makes a network namespace with 198.18.9.1 on lo and a TCP
// server there that accepts and closes, and returns its name and address.
func benchNS(b *testing.B) (string, netip.AddrPort) {
	b.Helper()
	rb := make([]byte, 3)
	rand.Read(rb)
	ns := "l7gb" + hex.EncodeToString(rb)
	for _, args := range [][]string{{"netns", "add", ns}, {"-n", ns, "link", "set", "lo", "up"}, {"-n", ns, "addr", "add", "198.18.9.1/32", "dev", "lo"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			b.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		if args[0] == "netns" {
			b.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
		}
	}
	addr := netip.MustParseAddrPort("198.18.9.1:8080")
	var ln net.Listener
	if err := inNS(ns, func() (err error) {
		ln, err = net.Listen("tcp4", addr.String())
		return err
	}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return ns, addr
}

// joinCgroup moves this process into the cgroup v2 directory dir and
// returns a function that moves it back.
func joinCgroup(b *testing.B, mount, dir string) func() {
	b.Helper()
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		b.Fatal(err)
	}
	var orig string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if p, ok := strings.CutPrefix(sc.Text(), "0::"); ok {
			orig = p
		}
	}
	f.Close()
	if orig == "" {
		b.Skip("this process is in no cgroup v2")
	}
	pid := []byte(fmt.Sprint(os.Getpid()))
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), pid, 0); err != nil {
		b.Fatalf("join cgroup: %v", err)
	}
	return func() {
		if err := os.WriteFile(filepath.Join(mount, orig, "cgroup.procs"), pid, 0); err != nil {
			b.Errorf("leave cgroup: %v", err)
		}
	}
}

// connectLoop connects to dst n times from namespace ns: TCP, a blocking
// connect then close with SO_LINGER 0 (no TIME_WAIT fills the ports);
// UDP, connect (a route lookup, no packet) then close: the hook's own cost
// stands out.
func connectLoop(ns, proto string, dst netip.AddrPort, n int, b *testing.B) error {
	sa := &unix.SockaddrInet4{Addr: dst.Addr().As4(), Port: int(dst.Port())}
	typ := unix.SOCK_STREAM
	if proto == "udp" {
		typ = unix.SOCK_DGRAM
	}
	return inNS(ns, func() error {
		b.ResetTimer()
		cpu := cpuTime()
		for range n {
			fd, err := unix.Socket(unix.AF_INET, typ|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			if err := unix.Connect(fd, sa); err != nil {
				unix.Close(fd)
				return fmt.Errorf("connect %s: %w", dst, err)
			}
			if typ == unix.SOCK_STREAM {
				unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
			}
			unix.Close(fd)
		}
		b.StopTimer()
		reportCPU(b, cpu)
		return nil
	})
}

// BenchmarkSocketLBConnect: one connect() (socket, connect to a loopback
// server, close) per op. "no-program": to the server's address, nothing
// attached; "services=N": to a ClusterIP translated to the server, N
// services in the maps; "services=N/not-a-service": an address that is no
// service, programs attached (the cost every other connect pays).
func BenchmarkSocketLBConnect(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root: netns, cgroup, BPF programs")
	}
	mount, err := Cgroup2Mount()
	if err != nil {
		b.Skipf("needs a cgroup2 mount: %v", err)
	}
	ns, server := benchNS(b)
	for _, proto := range []string{"tcp", "udp"} {
		b.Run(proto+"/no-program", func(b *testing.B) {
			if err := connectLoop(ns, proto, server, b.N, b); err != nil {
				b.Fatal(err)
			}
		})
	}
	rb := make([]byte, 3)
	rand.Read(rb)
	cg := filepath.Join(mount, "l7gb"+hex.EncodeToString(rb)+"-lb")
	if err := os.Mkdir(cg, 0o755); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		for i := 0; unix.Rmdir(cg) != nil && i < 50; i++ {
			time.Sleep(20 * time.Millisecond)
		}
	})
	bpffs := mountBPFFS(b)
	lb, err := OpenSocketLB(b.Context(), SocketLBConfig{BPFFSPath: bpffs, Sizes: LBMapSizes{Services: 1 << 17}, Logger: testLogger(b)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		lb.SetCgroup("")
		lb.Close()
	})
	if err := lb.SetCgroup(cg); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(joinCgroup(b, mount, cg))
	for _, n := range []int{10, 10_000, 100_000} {
		svcs := make([]LBService, n, n+1)
		for i := range svcs {
			svcs[i] = LBService{Frontend: benchService(i), Protocol: ProtoTCP, Backends: []netip.AddrPort{server}}
		}
		vip := benchService(n / 2)
		svcs = append(svcs, LBService{Frontend: vip, Protocol: ProtoUDP, Backends: []netip.AddrPort{server}})
		start := time.Now()
		if _, err := lb.SyncServices(svcs); err != nil {
			b.Fatal(err)
		}
		b.Logf("%d services written in %s", n, time.Since(start).Round(time.Millisecond))
		for _, proto := range []string{"tcp", "udp"} {
			b.Run(fmt.Sprintf("%s/services=%d", proto, n), func(b *testing.B) {
				if err := connectLoop(ns, proto, vip, b.N, b); err != nil {
					b.Fatal(err)
				}
			})
			b.Run(fmt.Sprintf("%s/services=%d/not-a-service", proto, n), func(b *testing.B) {
				if err := connectLoop(ns, proto, server, b.N, b); err != nil {
					b.Fatal(err)
				}
			})
		}
	}
}

// BenchmarkSocketLBSyncOneBackend: 10k services × 10 backends (100k
// slots, 100k distinct backends); each op changes one backend of one
// service and syncs the whole desired set, as the agent does on an
// EndpointSlice change ("one-changed"), or gives only that service
// (UpdateServices: "one-changed/incremental"). "unchanged": the full sync
// with nothing changed (the diff alone).
func BenchmarkSocketLBSyncOneBackend(b *testing.B) {
	requireRoot(b)
	bpffs := mountBPFFS(b)
	lb, err := OpenSocketLB(b.Context(), SocketLBConfig{BPFFSPath: bpffs, Logger: testLogger(b)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { lb.Close() })
	const services, perService = 10_000, 10
	svcs := make([]LBService, services)
	for i := range svcs {
		bes := make([]netip.AddrPort, perService)
		for j := range bes {
			k := i*perService + j
			bes[j] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(k >> 16), byte(k >> 8), byte(k)}), 8080)
		}
		svcs[i] = LBService{Frontend: benchService(i), Protocol: ProtoTCP, Backends: bes}
	}
	start := time.Now()
	if _, err := lb.SyncServices(svcs); err != nil {
		b.Fatal(err)
	}
	b.Logf("%d services, %d backends written in %s", services, services*perService, time.Since(start).Round(time.Millisecond))
	b.Run("unchanged", func(b *testing.B) {
		cpu := cpuTime()
		for b.Loop() {
			if st, err := lb.SyncServices(svcs); err != nil || st.Updated+st.Added+st.Deleted != 0 {
				b.Fatalf("%v %v", st, err)
			}
		}
		reportCPU(b, cpu)
	})
	// The map writes alone for one changed backend (new backend, the
	// service's new slot generation, the switch, the old generation
	// deleted), on maps holding 100k backends: what a change costs beyond
	// the diff over the desired set.
	b.Run("one-changed/writes-only", func(b *testing.B) {
		want, err := normalizeServices(svcs)
		if err != nil {
			b.Fatal(err)
		}
		j := 0
		cpu := cpuTime()
		for b.Loop() {
			w := want[(j*104729)%services]
			w.backends = slices.Clone(w.backends)
			w.backends[0] = lbFrontend{addr: netip.AddrFrom4([4]byte{12, byte(j >> 16), byte(j >> 8), byte(j)}), port: 8080, proto: ProtoTCP}
			j++
			lb.mu.Lock()
			changed, err := lb.upsertService(&w)
			lb.mu.Unlock()
			if err != nil || changed != "updated" {
				b.Fatalf("%s %v", changed, err)
			}
		}
		b.StopTimer()
		reportCPU(b, cpu)
		// Back to svcs (the replaced backends' entries are removed).
		if _, err := lb.SyncServices(svcs); err != nil {
			b.Fatal(err)
		}
	})
	// One counter across runs (-count): every op writes a backend no run
	// wrote before.
	i := 0
	// The incremental sync: only the changed service is given
	// (UpdateServices), as an agent that knows which EndpointSlice
	// changed would.
	b.Run("one-changed/incremental", func(b *testing.B) {
		cpu := cpuTime()
		for b.Loop() {
			s := &svcs[(i*7919)%services]
			s.Backends[0] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{11, byte(i >> 16), byte(i >> 8), byte(i)}), 8080)
			i++
			if st, err := lb.UpdateServices([]LBService{*s}, nil); err != nil || st.Updated != 1 {
				b.Fatalf("%v %v", st, err)
			}
		}
		reportCPU(b, cpu)
	})
	b.Run("one-changed", func(b *testing.B) {
		cpu := cpuTime()
		for b.Loop() {
			s := &svcs[(i*7919)%services]
			// a new backend in place of the first one (a pod replaced)
			s.Backends[0] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{11, byte(i >> 16), byte(i >> 8), byte(i)}), 8080)
			i++
			if st, err := lb.SyncServices(svcs); err != nil || st.Updated != 1 {
				b.Fatalf("%v %v", st, err)
			}
		}
		reportCPU(b, cpu)
	})
}

// cpuTime is this process's user+system CPU time. The benchmarks report
// it per op beside the wall time: on a shared machine wall time mostly
// measures the other tenants.
func cpuTime() time.Duration {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the CPU time per op since start.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
}
