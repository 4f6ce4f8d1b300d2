package bpf

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// lbEnv is a node namespace with a client pod and backend pods (TCP banner
// servers on :8080, UDP echo on :5353) and a socket LB attached to a
// cgroup of the test's own: only client children started in that cgroup
// are translated.
type lbEnv struct {
	tp       *topology
	client   *testPod
	backends []*testPod
	cgroup   string
	lb       *SocketLB
	bpffs    string
}

func newLBEnv(t *testing.T, nBackends int) *lbEnv {
	t.Helper()
	requireRoot(t)
	e := &lbEnv{tp: newTopology(t)}
	e.client = e.tp.addPod("cli", "198.18.1.1", 0, 0)
	for i := range nBackends {
		be := e.tp.addPod(fmt.Sprintf("be%d", i), fmt.Sprintf("198.18.2.%d", i+1), 0, 0)
		serveBanner(t, listenTCP(t, be.ns, be.ip.String()+":8080", false), "be"+fmt.Sprint(i))
		udpEcho(t, be.ns, be.ip.String()+":5353")
		e.backends = append(e.backends, be)
	}
	e.cgroup, _ = testCgroup(t, "lb")
	e.bpffs = mountBPFFS(t)
	e.lb = openLB(t, e.bpffs, LBMapSizes{})
	if err := e.lb.SetCgroup(e.cgroup); err != nil {
		t.Fatal(err)
	}
	return e
}

// openLB opens a SocketLB whose links are detached at the end of the test
// (before its cgroup is removed).
func openLB(t *testing.T, bpffs string, sizes LBMapSizes) *SocketLB {
	t.Helper()
	lb, err := OpenSocketLB(context.Background(), SocketLBConfig{BPFFSPath: bpffs, Sizes: sizes, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := lb.SetCgroup(""); err != nil {
			t.Errorf("detach: %v", err)
		}
		lb.Close()
	})
	return lb
}

func (e *lbEnv) backendPorts(port uint16, idx ...int) []netip.AddrPort {
	var out []netip.AddrPort
	for _, i := range idx {
		out = append(out, netip.AddrPortFrom(e.backends[i].ip, port))
	}
	return out
}

var (
	vipWeb     = netip.MustParseAddrPort("198.19.0.10:80")
	vipDNS     = netip.MustParseAddrPort("198.19.0.10:53")
	vipEmpty   = netip.MustParseAddrPort("198.19.0.11:80")
	vipSticky  = netip.MustParseAddrPort("198.19.0.12:80")
	vipUnknown = netip.MustParseAddrPort("198.19.0.99:80")
)

func (e *lbEnv) sync(t *testing.T, svcs ...LBService) SyncStats {
	t.Helper()
	st, err := e.lb.SyncServices(svcs)
	if err != nil {
		t.Fatalf("sync: %v", err)
	}
	return st
}

// backendOfReply names the backend a banner or echo came from.
func backendOfReply(r lbResult) string {
	if r.Err != "" {
		return ""
	}
	f := strings.Fields(r.Reply)
	if len(f) < 2 {
		return ""
	}
	ap, err := netip.ParseAddrPort(f[1])
	if err != nil {
		return ""
	}
	return ap.Addr().String()
}

// TestPrivilegedSocketLB: real sockets of a process in the LB's cgroup,
// in a pod's network namespace, through ClusterIPs.
func TestPrivilegedSocketLB(t *testing.T) {
	e := newLBEnv(t, 3)
	all := []int{0, 1, 2}
	e.sync(t,
		LBService{Frontend: vipWeb, Protocol: ProtoTCP, Backends: e.backendPorts(8080, all...)},
		LBService{Frontend: vipDNS, Protocol: ProtoUDP, Backends: e.backendPorts(5353, all...)},
		LBService{Frontend: vipEmpty, Protocol: ProtoTCP},
		LBService{Frontend: netip.AddrPortFrom(vipEmpty.Addr(), 53), Protocol: ProtoUDP},
		LBService{Frontend: vipSticky, Protocol: ProtoTCP, Backends: e.backendPorts(8080, all...), Affinity: time.Hour},
	)
	backendIPs := map[string]bool{}
	for _, b := range e.backends {
		backendIPs[b.ip.String()] = true
	}

	t.Run("tcp", func(t *testing.T) {
		seen := map[string]int{}
		for _, r := range runLBClient(t, e.cgroup, e.client.ns, lbOp{Kind: "tcp", Addr: vipWeb.String(), Count: 30}) {
			be := backendOfReply(r)
			if !backendIPs[be] {
				t.Fatalf("not a backend's answer: %s", r)
			}
			// the server saw the connection addressed to itself; the
			// application sees the ClusterIP (getpeername)
			if r.Peer != vipWeb.String() {
				t.Errorf("getpeername %s, want %s", r.Peer, vipWeb)
			}
			seen[be]++
		}
		if len(seen) < 2 {
			t.Errorf("30 connections all went to %v: not balanced", seen)
		}
		t.Logf("balanced over %v", seen)
	})

	t.Run("udp", func(t *testing.T) {
		res := runLBClient(t, e.cgroup, e.client.ns,
			lbOp{Kind: "udp", Addr: vipDNS.String(), Count: 10},
			lbOp{Kind: "udpto", Addr: vipDNS.String(), Count: 10})
		for _, r := range res {
			if !backendIPs[backendOfReply(r)] {
				t.Fatalf("not a backend's answer: %s", r)
			}
			// connected: getpeername; unconnected: recvfrom's source —
			// both the ClusterIP (recvmsg4 reverse-translates).
			if r.Peer != vipDNS.String() {
				t.Errorf("%s: peer %s, want %s", r, r.Peer, vipDNS)
			}
		}
	})

	t.Run("no backends refuses", func(t *testing.T) {
		res := runLBClient(t, e.cgroup, e.client.ns,
			lbOp{Kind: "tcp", Addr: vipEmpty.String()},
			lbOp{Kind: "udp", Addr: netip.AddrPortFrom(vipEmpty.Addr(), 53).String()},
			lbOp{Kind: "udpto", Addr: netip.AddrPortFrom(vipEmpty.Addr(), 53).String()})
		for _, r := range res {
			if r.Errno != int(syscall.ECONNREFUSED) {
				t.Errorf("%s: want ECONNREFUSED at once", r)
			}
		}
	})

	t.Run("affinity", func(t *testing.T) {
		seen := map[string]int{}
		for _, r := range runLBClient(t, e.cgroup, e.client.ns, lbOp{Kind: "tcp", Addr: vipSticky.String(), Count: 15}) {
			seen[backendOfReply(r)]++
		}
		if len(seen) != 1 || seen[""] > 0 {
			t.Errorf("sessionAffinity ClientIP: one client reached %v", seen)
		}
		// A backend leaving the service is not followed any more.
		var stuck string
		for be := range seen {
			stuck = be
		}
		var rest []int
		for i, b := range e.backends {
			if b.ip.String() != stuck {
				rest = append(rest, i)
			}
		}
		e.sync(t,
			LBService{Frontend: vipWeb, Protocol: ProtoTCP, Backends: e.backendPorts(8080, all...)},
			LBService{Frontend: vipDNS, Protocol: ProtoUDP, Backends: e.backendPorts(5353, all...)},
			LBService{Frontend: vipEmpty, Protocol: ProtoTCP},
			LBService{Frontend: netip.AddrPortFrom(vipEmpty.Addr(), 53), Protocol: ProtoUDP},
			LBService{Frontend: vipSticky, Protocol: ProtoTCP, Backends: e.backendPorts(8080, rest...), Affinity: time.Hour},
		)
		seen2 := map[string]int{}
		for _, r := range runLBClient(t, e.cgroup, e.client.ns, lbOp{Kind: "tcp", Addr: vipSticky.String(), Count: 10}) {
			seen2[backendOfReply(r)]++
		}
		if len(seen2) != 1 || seen2[stuck] > 0 || seen2[""] > 0 {
			t.Errorf("after %s left the service: %v, want one other backend", stuck, seen2)
		}
	})

	t.Run("other cgroups untranslated", func(t *testing.T) {
		// A process outside the cgroup keeps its destination: nothing
		// routes the ClusterIP in this topology, so it fails.
		for _, r := range runLBClient(t, "", e.client.ns, lbOp{Kind: "tcp", Addr: vipWeb.String()}) {
			if r.Err == "" {
				t.Errorf("translated outside the cgroup: %s", r)
			}
		}
		// Addresses that are no service pass untouched.
		for _, r := range runLBClient(t, e.cgroup, e.client.ns, lbOp{Kind: "tcp", Addr: netip.AddrPortFrom(e.backends[0].ip, 8080).String()}) {
			if backendOfReply(r) != e.backends[0].ip.String() || r.Peer != netip.AddrPortFrom(e.backends[0].ip, 8080).String() {
				t.Errorf("direct connection: %s", r)
			}
		}
		for _, r := range runLBClient(t, e.cgroup, e.client.ns, lbOp{Kind: "tcp", Addr: vipUnknown.String()}) {
			if r.Err == "" || r.Errno == int(syscall.ECONNREFUSED) {
				t.Errorf("an address that is no service: %s (want the kernel's own failure)", r)
			}
		}
	})
}

// TestPrivilegedSocketLBChurn: a client connects in a loop while the
// backend set changes. Every connection succeeds (no refusal, no half-set
// state), and a connection started after a sync returned only reaches the
// backends that sync (or the next one, already running) installed.
func TestPrivilegedSocketLBChurn(t *testing.T) {
	e := newLBEnv(t, 4)
	sets := [][]int{{0, 1, 2}, {1, 2, 3}, {3}, {0, 3}, {0, 1, 2, 3}, {2}, {0, 1}}
	const rounds = 21
	setOf := func(round int) map[string]bool {
		m := map[string]bool{}
		for _, i := range sets[round%len(sets)] {
			m[e.backends[i].ip.String()] = true
		}
		return m
	}
	svc := func(round int) LBService {
		return LBService{Frontend: vipWeb, Protocol: ProtoTCP, Backends: e.backendPorts(8080, sets[round%len(sets)]...)}
	}
	e.sync(t, svc(0))
	c := startLBClient(t, e.cgroup, lbClientSpec{NetNS: e.client.ns, Loop: true, Ops: []lbOp{{Kind: "tcp", Addr: vipWeb.String()}}})
	results := make(chan lbResult, 4096)
	go func() {
		defer close(results)
		for {
			r, ok := c.next(t)
			if !ok {
				return
			}
			results <- r
		}
	}()
	var got []lbResult
	drain := func(d time.Duration) {
		deadline := time.After(d)
		for {
			select {
			case r, ok := <-results:
				if !ok {
					return
				}
				got = append(got, r)
			case <-deadline:
				return
			}
		}
	}
	drain(100 * time.Millisecond)
	start := time.Now()
	for round := 1; round < rounds; round++ {
		e.sync(t, svc(round))
		// The sync returned: tell the client (connections it starts from
		// now on are in epoch `round`).
		if _, err := c.w.Write([]byte("synced\n")); err != nil {
			t.Fatal(err)
		}
		drain(40 * time.Millisecond)
	}
	c.stdin.Close()
	drain(5 * time.Second)
	perEpoch := map[int64]int{}
	for _, r := range got {
		if r.Err != "" {
			t.Errorf("epoch %d: %s (connections must never fail while backends change)", r.Epoch, r)
			continue
		}
		be := backendOfReply(r)
		round := int(r.Epoch)
		if !setOf(round)[be] && !(round+1 < rounds && setOf(round + 1)[be]) {
			t.Errorf("epoch %d: reached %s, not in set %v (or the next %v)", r.Epoch, be, sets[round%len(sets)], sets[(round+1)%len(sets)])
		}
		perEpoch[r.Epoch]++
	}
	if len(perEpoch) < rounds/2 {
		t.Errorf("connections in only %d of %d epochs: %v", len(perEpoch), rounds, perEpoch)
	}
	t.Logf("%d connections over %d syncs in %s", len(got), rounds-1, time.Since(start).Round(time.Millisecond))
}

// TestPrivilegedSocketLBRestart: a new loader adopts the pinned maps and
// links; translation never stops, and an identical sync writes nothing.
func TestPrivilegedSocketLBRestart(t *testing.T) {
	e := newLBEnv(t, 2)
	svcs := []LBService{{Frontend: vipWeb, Protocol: ProtoTCP, Backends: e.backendPorts(8080, 0, 1)}}
	e.sync(t, svcs...)
	before, err := e.lb.Services()
	if err != nil {
		t.Fatal(err)
	}
	if err := e.lb.Close(); err != nil { // the agent exits: pins stay
		t.Fatal(err)
	}
	for _, r := range runLBClient(t, e.cgroup, e.client.ns, lbOp{Kind: "tcp", Addr: vipWeb.String(), Count: 3}) {
		if backendOfReply(r) == "" {
			t.Fatalf("no loader running: %s", r)
		}
	}
	lb2 := openLB(t, e.bpffs, LBMapSizes{})
	after, err := lb2.Services()
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(before) != fmt.Sprint(after) {
		t.Errorf("adopted maps differ:\n%v\n%v", before, after)
	}
	st, err := lb2.SyncServices(svcs)
	if err != nil || st.Added+st.Updated+st.Deleted != 0 || st.Unchanged != 1 {
		t.Errorf("identical sync after restart: %s %v", st, err)
	}
	if err := lb2.SetCgroup(e.cgroup); err != nil {
		t.Fatal(err)
	}
	for _, r := range runLBClient(t, e.cgroup, e.client.ns, lbOp{Kind: "tcp", Addr: vipWeb.String(), Count: 3}) {
		if backendOfReply(r) == "" {
			t.Fatalf("after restart: %s", r)
		}
	}
	// Detaching (socket LB turned off) stops the translation.
	if err := lb2.SetCgroup(""); err != nil {
		t.Fatal(err)
	}
	for _, r := range runLBClient(t, e.cgroup, e.client.ns, lbOp{Kind: "tcp", Addr: vipWeb.String()}) {
		if r.Err == "" {
			t.Errorf("detached, still translated: %s", r)
		}
	}
}

// TestPrivilegedSocketLBSync checks the maps a sync leaves: the generation in force,
// no stale slots or backends, unchanged services untouched.
func TestPrivilegedSocketLBSync(t *testing.T) {
	requireRoot(t)
	lb := openLB(t, mountBPFFS(t), LBMapSizes{})
	ap := netip.MustParseAddrPort
	web := LBService{Frontend: ap("198.19.0.10:80"), Protocol: ProtoTCP, Backends: []netip.AddrPort{ap("198.18.2.2:8080"), ap("198.18.2.1:8080")}}
	dns := LBService{Frontend: ap("198.19.0.10:53"), Protocol: ProtoUDP, Backends: []netip.AddrPort{ap("198.18.2.1:53")}}
	st, err := lb.SyncServices([]LBService{web, dns})
	if err != nil || st.Added != 2 {
		t.Fatalf("first sync: %s %v", st, err)
	}
	list := func() []LBServiceEntry {
		t.Helper()
		l, err := lb.Services()
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	got := list()
	if len(got) != 2 || got[0].Frontend != dns.Frontend || got[1].Generation != 0 ||
		!slices.Equal(got[1].Backends, []netip.AddrPort{ap("198.18.2.1:8080"), ap("198.18.2.2:8080")}) {
		t.Fatalf("services %+v", got)
	}
	if st, err := lb.SyncServices([]LBService{dns, web}); err != nil || st.Unchanged != 2 || st.Added+st.Updated+st.Deleted != 0 {
		t.Errorf("same services again: %s %v", st, err)
	}
	// A changed backend set flips the generation; the old slots go.
	web.Backends = []netip.AddrPort{ap("198.18.2.3:8080")}
	if st, err := lb.SyncServices([]LBService{web, dns}); err != nil || st.Updated != 1 || st.Unchanged != 1 {
		t.Fatalf("changed: %s %v", st, err)
	}
	got = list()
	if got[1].Generation != 1 || !slices.Equal(got[1].Backends, web.Backends) {
		t.Errorf("after change %+v", got[1])
	}
	slots, _ := dumpMap[socklbLb4SlotKey, uint32](lb.objs.Lb4Slots)
	bes, _ := dumpMap[uint32, socklbLb4Backend](lb.objs.Lb4Backends)
	if len(slots) != 2 || len(bes) != 2 {
		t.Errorf("%d slots and %d backends in the maps, want 2 and 2 (stale ones removed)", len(slots), len(bes))
	}
	// Affinity only: same slots, same generation.
	web.Affinity = 30 * time.Second
	if st, err := lb.SyncServices([]LBService{web, dns}); err != nil || st.Updated != 1 {
		t.Fatalf("affinity: %s %v", st, err)
	}
	if g := list()[1]; g.Generation != 1 || g.Affinity != 30*time.Second {
		t.Errorf("affinity %+v", g)
	}
	// Removing a service removes everything of it.
	if st, err := lb.SyncServices([]LBService{dns}); err != nil || st.Deleted != 1 {
		t.Fatalf("remove: %s %v", st, err)
	}
	slots, _ = dumpMap[socklbLb4SlotKey, uint32](lb.objs.Lb4Slots)
	bes, _ = dumpMap[uint32, socklbLb4Backend](lb.objs.Lb4Backends)
	matches, _ := dumpMap[socklbLbAffinityMatchKey, uint32](lb.objs.LbAffinityMatch)
	if len(list()) != 1 || len(slots) != 1 || len(bes) != 1 || len(matches) != 1 {
		t.Errorf("after removal: %d slots, %d backends, %d matches", len(slots), len(bes), len(matches))
	}
	// Invalid input is refused before anything is written.
	for _, bad := range [][]LBService{
		{dns, dns},
		{{Frontend: ap("198.19.0.1:80"), Protocol: ProtoSCTP}},
		{{Frontend: ap("198.19.0.1:0"), Protocol: ProtoTCP}},
		{{Frontend: ap("198.19.0.1:80"), Protocol: ProtoTCP, Backends: []netip.AddrPort{ap("[::1]:80")}}},
	} {
		if _, err := lb.SyncServices(bad); !errors.Is(err, ErrInvalidEntry) {
			t.Errorf("%v: %v, want ErrInvalidEntry", bad, err)
		}
	}
	if len(list()) != 1 {
		t.Error("an invalid sync changed the maps")
	}
}

// TestPrivilegedSocketLBFull: a service whose backends do not fit refuses
// connections (never keeps backends it should not have); the others are
// synced.
func TestPrivilegedSocketLBFull(t *testing.T) {
	requireRoot(t)
	lb := openLB(t, mountBPFFS(t), LBMapSizes{Slots: 4})
	ap := netip.MustParseAddrPort
	small := LBService{Frontend: ap("198.19.0.10:80"), Protocol: ProtoTCP, Backends: []netip.AddrPort{ap("198.18.2.1:80")}}
	big := LBService{Frontend: ap("198.19.0.11:80"), Protocol: ProtoTCP, Backends: []netip.AddrPort{ap("198.18.2.2:80")}}
	if _, err := lb.SyncServices([]LBService{small, big}); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		big.Backends = append(big.Backends, netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 3, byte(i)}), 80))
	}
	_, err := lb.SyncServices([]LBService{small, big})
	var se *LBSyncError
	if !errors.As(err, &se) || len(se.Failed) != 1 || se.Failed[0].Frontend != big.Frontend || se.Failed[0].Untranslated || !errors.Is(err, ErrMapFull) {
		t.Fatalf("want an LBSyncError naming %s (map full): %v", big.Frontend, err)
	}
	got, err := lb.Services()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || len(got[0].Backends) != 1 || len(got[1].Backends) != 0 || got[1].Missing != 0 {
		t.Errorf("want %s synced and %s refusing: %+v", small.Frontend, big.Frontend, got)
	}
	// It fits again: written.
	big.Backends = big.Backends[:2]
	if st, err := lb.SyncServices([]LBService{small, big}); err != nil || st.Updated != 1 {
		t.Errorf("fits again: %s %v", st, err)
	}
}

// TestPrivilegedSocketLBSyncNeverHalfApplied checks, after every single map write of
// a sync, what a connect() could read: each frontend's slots of the
// generation in force all exist and name existing backends, and the set is
// the old one or the new one — never a mix, never a removed backend; an
// affinity match never names a backend outside both sets.
func TestPrivilegedSocketLBSyncNeverHalfApplied(t *testing.T) {
	requireRoot(t)
	lb := openLB(t, mountBPFFS(t), LBMapSizes{})
	ap := netip.MustParseAddrPort
	be := func(n ...byte) []netip.AddrPort {
		var out []netip.AddrPort
		for _, i := range n {
			out = append(out, netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 2, i}), 8080))
		}
		return out
	}
	be6 := func(n ...byte) []netip.AddrPort {
		var out []netip.AddrPort
		for _, i := range n {
			out = append(out, netip.AddrPortFrom(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 2, 15: i}), 8080))
		}
		return out
	}
	// c is an IPv6 frontend: its ids share the IPv4 services' spaces.
	a, b, c := ap("198.19.0.10:80"), ap("198.19.0.11:80"), ap("[2001:db8:ff::10]:80")
	steps := []map[netip.AddrPort][]netip.AddrPort{
		{a: be(1, 2, 3), b: be(1), c: be6(1, 2)},
		{a: be(2, 3, 4), b: be(1, 5), c: be6(2, 3)}, // one replaced; one added
		{a: be(4), b: be(6, 7, 8, 9), c: be6(4)},    // shrink; all replaced
		{a: be(1, 2, 3, 4, 5, 6)},                   // grow; b and c removed
		{a: be(), b: be(2), c: be6()},               // no backends (refuse); b, c back
		{a: be(7), b: be(2), c: be6(1, 2, 3)},
	}
	desired := func(m map[netip.AddrPort][]netip.AddrPort) []LBService {
		var out []LBService
		for fe, bs := range m {
			out = append(out, LBService{Frontend: fe, Protocol: ProtoTCP, Backends: bs, Affinity: time.Minute})
		}
		return out
	}
	if _, err := lb.SyncServices(desired(steps[0])); err != nil {
		t.Fatal(err)
	}
	writes := 0
	for i := 1; i < len(steps); i++ {
		old, cur := steps[i-1], steps[i]
		lb.afterWrite = func() {
			writes++
			svcs, _ := dumpServices(lb.objs.Lb4Services, lb.objs.Lb6Services)
			slots, _ := dumpMap[socklbLb4SlotKey, uint32](lb.objs.Lb4Slots)
			bes, _ := dumpBackends(lb.objs.Lb4Backends, lb.objs.Lb6Backends)
			matches, _ := dumpMap[socklbLbAffinityMatchKey, uint32](lb.objs.LbAffinityMatch)
			for k, v := range svcs {
				fe := k.addrPort()
				var visible []netip.AddrPort
				for s := range v.Count {
					id, ok := slots[socklbLb4SlotKey{Service: v.Id, Slot: s, Gen: uint32(v.Gen)}]
					bk, bok := bes[id]
					if !ok || !bok {
						t.Fatalf("step %d write %d: %s slot %d of generation %d: slot %v backend %v", i, writes, fe, s, v.Gen, ok, bok)
					}
					visible = append(visible, bk.addrPort())
				}
				oldSet, inOld := old[fe]
				newSet, inNew := cur[fe]
				if !(inOld && slices.Equal(visible, oldSet)) && !(inNew && slices.Equal(visible, newSet)) {
					t.Fatalf("step %d write %d: %s shows %v: neither the old %v nor the new %v", i, writes, fe, visible, oldSet, newSet)
				}
				for mk := range matches {
					if mk.Service != v.Id {
						continue
					}
					bk, ok := bes[mk.Backend]
					if !ok {
						continue // a match without its backend leads nowhere
					}
					addr := bk.addrPort()
					if !slices.Contains(oldSet, addr) && !slices.Contains(newSet, addr) {
						t.Fatalf("step %d write %d: %s affinity may follow %s, in neither set", i, writes, fe, addr)
					}
				}
			}
		}
		if _, err := lb.SyncServices(desired(cur)); err != nil {
			t.Fatal(err)
		}
		lb.afterWrite = nil
		got, err := lb.Services()
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != len(cur) {
			t.Fatalf("step %d: %d services, want %d", i, len(got), len(cur))
		}
		for _, g := range got {
			if !slices.Equal(g.Backends, cur[g.Frontend]) {
				t.Errorf("step %d: %s has %v, want %v", i, g.Frontend, g.Backends, cur[g.Frontend])
			}
		}
	}
	t.Logf("checked %d intermediate states", writes)
}

// TestPrivilegedSocketLBUpdateServices: the incremental sync writes the
// services it is given and removes the frontends named, leaves the others
// untouched (same id, same generation, same slots), leaves the maps as a
// full sync of the same result would (a SyncServices afterwards changes
// nothing), and refuses invalid input before writing anything.
func TestPrivilegedSocketLBUpdateServices(t *testing.T) {
	requireRoot(t)
	lb := openLB(t, mountBPFFS(t), LBMapSizes{})
	ap := netip.MustParseAddrPort
	web := LBService{Frontend: ap("198.19.0.10:80"), Protocol: ProtoTCP, Backends: []netip.AddrPort{ap("198.18.2.1:8080"), ap("198.18.2.2:8080")}}
	api := LBService{Frontend: ap("198.19.0.11:443"), Protocol: ProtoTCP, Backends: []netip.AddrPort{ap("198.18.2.2:8443")}}
	dns := LBService{Frontend: ap("198.19.0.10:53"), Protocol: ProtoUDP, Backends: []netip.AddrPort{ap("198.18.2.3:53")}}
	if _, err := lb.SyncServices([]LBService{web, api, dns}); err != nil {
		t.Fatal(err)
	}
	list := func() map[string]LBServiceEntry {
		t.Helper()
		l, err := lb.Services()
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]LBServiceEntry{}
		for _, e := range l {
			m[e.Frontend.String()+"/"+e.Protocol] = e
		}
		return m
	}
	before := list()

	// web: one backend replaced; dns removed; a new one added; api untouched.
	web.Backends = []netip.AddrPort{ap("198.18.2.1:8080"), ap("198.18.2.4:8080")}
	extra := LBService{Frontend: ap("198.19.0.12:80"), Protocol: ProtoTCP, Backends: []netip.AddrPort{ap("198.18.2.5:80")}}
	st, err := lb.UpdateServices([]LBService{web, extra}, []LBFrontend{{dns.Frontend, ProtoUDP}, {ap("198.19.9.9:80"), ProtoTCP}})
	if err != nil || st.Updated != 1 || st.Added != 1 || st.Deleted != 1 || st.Unchanged != 0 {
		t.Fatalf("update: %s %v, want 1 updated, 1 added, 1 deleted", st, err)
	}
	after := list()
	if _, ok := after["198.19.0.10:53/UDP"]; ok || len(after) != 3 {
		t.Errorf("after update: %+v, want web, api and the new one", after)
	}
	if a, b := after["198.19.0.11:443/TCP"], before["198.19.0.11:443/TCP"]; a.ID != b.ID || a.Generation != b.Generation || !slices.Equal(a.Backends, b.Backends) {
		t.Errorf("api changed: %+v, was %+v", a, b)
	}
	if w := after["198.19.0.10:80/TCP"]; w.Generation != 1 || !slices.Equal(w.Backends, web.Backends) {
		t.Errorf("web %+v, want generation 1 and %v", w, web.Backends)
	}
	slots, _ := dumpMap[socklbLb4SlotKey, uint32](lb.objs.Lb4Slots)
	bes, _ := dumpMap[uint32, socklbLb4Backend](lb.objs.Lb4Backends)
	// web 2 + api 1 + extra 1 slots; backends .1, .2:8443, .4, .5 (.2:8080
	// and dns's .3 gone)
	if len(slots) != 4 || len(bes) != 4 {
		t.Errorf("%d slots and %d backends in the maps, want 4 and 4 (stale ones removed)", len(slots), len(bes))
	}
	// The same again: nothing to write.
	if st, err := lb.UpdateServices([]LBService{web}, nil); err != nil || st.Unchanged != 1 || st.Updated+st.Added+st.Deleted != 0 {
		t.Errorf("same service again: %s %v", st, err)
	}
	// A full sync of the same result finds nothing to do.
	if st, err := lb.SyncServices([]LBService{web, api, extra}); err != nil || st.Unchanged != 3 || st.Updated+st.Added+st.Deleted != 0 {
		t.Errorf("full sync after the update: %s %v, want 3 unchanged", st, err)
	}
	// Invalid input is refused before anything is written.
	for _, bad := range []struct {
		up  []LBService
		rem []LBFrontend
	}{
		{[]LBService{web, web}, nil},
		{[]LBService{web}, []LBFrontend{{web.Frontend, ProtoTCP}}},
		{[]LBService{{Frontend: ap("198.19.0.1:80"), Protocol: ProtoSCTP}}, nil},
		{nil, []LBFrontend{{ap("198.19.0.11:0"), ProtoTCP}}},
		{[]LBService{api}, []LBFrontend{{api.Frontend, ProtoSCTP}}},
	} {
		if _, err := lb.UpdateServices(append([]LBService{{Frontend: ap("198.19.0.13:80"), Protocol: ProtoTCP}}, bad.up...), bad.rem); !errors.Is(err, ErrInvalidEntry) {
			t.Errorf("%v remove %v: %v, want ErrInvalidEntry", bad.up, bad.rem, err)
		}
	}
	if got := list(); len(got) != 3 {
		t.Errorf("an invalid update changed the maps: %+v", got)
	}
}
