package bpf

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Socket-level load balancing (c/socklb.c)
//
// SocketLB translates Kubernetes Service frontends (ClusterIP, port,
// protocol) to backends in cgroup hooks, before a socket emits a packet:
// connect4 (TCP and connected UDP) and sendmsg4 (unconnected UDP) pick a
// backend and rewrite the destination; recvmsg4 and getpeername4 show the
// ClusterIP again to the application. Pods therefore send packets addressed
// to the backend pod, and the datapath's egress policy, the redirect to the
// proxy, the proxy's original destination and the flow records see the
// real peer. kube-proxy's ClusterIP rules are simply not hit by sockets in
// the cgroup; everything else (NodePort, external traffic, processes in
// other cgroups) stays kube-proxy's.
//
// IPv6 frontends are translated the same way by connect6, sendmsg6,
// recvmsg6 and getpeername6 with the lb6_* maps; a frontend's backends are
// of its own family (a mix is ErrInvalidEntry naming the service). A
// v4-mapped address (::ffff:a.b.c.d), which a dual-stack AF_INET6 socket
// uses to talk IPv4, is translated as its IPv4 form — lb4_services, an
// IPv4 backend given back v4-mapped, lb4_revnat — so such sockets cannot
// reach a ClusterIP untranslated; in LBService a v4-mapped frontend or
// backend is its IPv4 form.
//
// The programs attach (as pinned links) to one cgroup v2 directory
// (SetCgroup): the cgroup that holds the pods, by default the hierarchy's
// root. A process outside it is not translated.
//
// Maps (pinned beside the datapath's, in <BPFFSPath>/maps):
//
//	lb4_services       hash {vip, port, proto} -> {service id, count, gen,
//	                   flags, affinity timeout}
//	lb6_services       the same for IPv6 frontends
//	lb4_slots          hash {service id, slot, gen} -> backend id (both
//	                   families: service ids and backend ids are one space
//	                   each; the name predates IPv6 and is kept for pins)
//	lb4_backends       hash backend id -> {address, port, proto}
//	lb6_backends       the same for IPv6 backends
//	lb_affinity_match  hash {service id, backend id}: the backend is one of
//	                   the service's (a stale affinity is not followed)
//	lb_affinity        LRU {client netns cookie, service id} -> {backend
//	                   id, last used}
//	lb4_revnat         LRU {socket cookie, backend address, port} -> the
//	                   frontend, for recvmsg4 and getpeername4
//	lb6_revnat         the same for IPv6, for recvmsg6 and getpeername6
//
// Updates have the policy maps' guarantee (no half-applied state is
// visible): a service whose backends change gets its new slots written
// under the generation not in force (new backends first), then its
// lb4_services value — count and generation — is replaced in one update,
// then the old slots are deleted and backends no longer used removed. A
// connect() sees the old or the new backend set, never a mix, and once
// SyncServices returns no connect() picks a removed backend. A service
// whose backends cannot be written (a map is full) refuses connections
// rather than keep backends it should no longer have (LBSyncError names
// it); a service with no backends refuses connect() and sendmsg() with
// ECONNREFUSED, as kube-proxy rejects.
//
// Session affinity (sessionAffinity: ClientIP) is kept per client network
// namespace — a pod — as Cilium's socket LB does: the client's address is
// not known yet at connect(). An affinity entry is followed only while the
// backend is still one of the service's.

// LBService is one Service frontend and the backends connections to it are
// balanced over.
type LBService struct {
	// Frontend is the ClusterIP and service port.
	Frontend netip.AddrPort
	// Protocol is ProtoTCP or ProtoUDP.
	Protocol uint8
	// Backends: an empty list refuses connections (ECONNREFUSED).
	Backends []netip.AddrPort
	// Affinity, when positive, keeps each client network namespace on the
	// backend it was last given for this long (sessionAffinity: ClientIP).
	Affinity time.Duration
}

// LBMapSizes sets the socket LB's map capacities; zero fields take the
// defaults. As for MapSizes, a changed size of a pinned map is
// ErrIncompatiblePin.
type LBMapSizes struct {
	Services uint32 // frontends (default 65536)
	Backends uint32 // distinct backends (default 262144)
	// Slots: backends summed over services, plus the largest service
	// again while it is rewritten (default 524288); also the capacity of
	// lb_affinity_match.
	Slots    uint32
	Affinity uint32 // client × service affinity entries (LRU, default 65536)
	RevNAT   uint32 // translated sockets remembered for getpeername/recvmsg (LRU, default 262144)
}

func (s LBMapSizes) withDefaults() LBMapSizes {
	def := func(v *uint32, d uint32) {
		if *v == 0 {
			*v = d
		}
	}
	def(&s.Services, 65536)
	def(&s.Backends, 262144)
	def(&s.Slots, 524288)
	def(&s.Affinity, 65536)
	def(&s.RevNAT, 262144)
	return s
}

// SocketLBConfig configures OpenSocketLB.
type SocketLBConfig struct {
	// BPFFSPath: maps are pinned in BPFFSPath/maps and links in
	// BPFFSPath/links, as the datapath's (default DefaultBPFFSPath).
	BPFFSPath string
	Sizes     LBMapSizes
	Logger    *slog.Logger
}

// SocketLB owns the socket-level load balancer's programs and maps. As with
// Datapath, kernel state lives in pins: Close leaves the translation in
// force and a later OpenSocketLB adopts it.
type SocketLB struct {
	cfg  SocketLBConfig
	log  *slog.Logger
	objs socklbObjects
	LBMaps

	mu    sync.Mutex // guards everything below
	links map[string]link.Link
	// What the maps hold (SocketLB is their only writer).
	svcs     map[lbFrontend]*lbSvcState
	backends map[lbFrontend]*lbBackendState // keyed by address, port, proto
	byID     map[uint32]lbFrontend
	// orphans are the backends whose last reference went (dropSlots):
	// deleted at the end of a sync unless taken again meanwhile, so a sync
	// never scans every backend.
	orphans map[lbFrontend]struct{}
	epoch   uint64
	svcIDs  idAllocator
	beIDs   idAllocator
	// afterWrite, when set, runs after every map write of a sync (tests
	// check what a connect() could see at each point).
	afterWrite func()
}

// lbFrontend is an address, port and protocol: a frontend or a backend.
// addr is an IPv4 address (never v4-mapped) or an IPv6 one.
type lbFrontend struct {
	addr  netip.Addr
	port  uint16
	proto uint8
}

func (f lbFrontend) addrPort() netip.AddrPort {
	return netip.AddrPortFrom(f.addr, f.port)
}

func (f lbFrontend) is6() bool { return f.addr.Is6() }

func (f lbFrontend) String() string {
	return fmt.Sprintf("%s/%s", f.addrPort(), protoName(f.proto))
}

func protoName(p uint8) string {
	switch p {
	case ProtoTCP:
		return "TCP"
	case ProtoUDP:
		return "UDP"
	}
	return strconv.Itoa(int(p))
}

type lbSvcState struct {
	val      socklbLb4Service
	backends []lbFrontend // in slot order; nil for a refusing fallback
	ids      []uint32
	epoch    uint64
}

type lbBackendState struct {
	id   uint32
	refs int
}

// idAllocator hands out ids from 1; an id freed in one sync is reused only
// after the next one, so a connect() that read it just before it was freed
// never finds it naming something else.
type idAllocator struct {
	next       uint32
	free       []uint32
	quarantine []uint32
}

func (a *idAllocator) get() (uint32, error) {
	if n := len(a.free); n > 0 {
		id := a.free[n-1]
		a.free = a.free[:n-1]
		return id, nil
	}
	if a.next == math.MaxUint32 {
		return 0, fmt.Errorf("ids exhausted: %w", ErrMapFull)
	}
	a.next++
	return a.next, nil
}

func (a *idAllocator) put(id uint32) { a.quarantine = append(a.quarantine, id) }

// endSync makes the ids freed before this sync reusable.
func (a *idAllocator) endSync(freedNow int) {
	n := len(a.quarantine) - freedNow
	a.free = append(a.free, a.quarantine[:n]...)
	a.quarantine = slices.Delete(a.quarantine, 0, n)
}

// LBSyncError lists the frontends a SyncServices could not write. Each of
// them refuses connections (or, if even that could not be written for a
// new frontend, is not translated: Untranslated).
type LBSyncError struct {
	Failed []FailedService
}

// FailedService is one frontend whose backends were not written.
type FailedService struct {
	Frontend     netip.AddrPort
	Protocol     uint8
	Untranslated bool
	Err          error
}

func (e *LBSyncError) Error() string {
	parts := make([]string, len(e.Failed))
	for i, f := range e.Failed {
		what := "refuses connections"
		if f.Untranslated {
			what = "not translated"
		}
		parts[i] = fmt.Sprintf("%s/%s %s: %v", f.Frontend, protoName(f.Protocol), what, f.Err)
	}
	return fmt.Sprintf("%d service frontend(s) not synced: %s", len(e.Failed), strings.Join(parts, "; "))
}

// Unwrap exposes the causes to errors.Is.
func (e *LBSyncError) Unwrap() []error {
	out := make([]error, len(e.Failed))
	for i, f := range e.Failed {
		out[i] = f.Err
	}
	return out
}

const (
	lbFlagAffinity  = 1
	socklbPinPrefix = "socklb_"
)

// OpenSocketLB loads the socket-LB programs, creates or adopts their pinned
// maps and adopts pinned links (updating them to the new programs). It
// attaches nothing new: call SetCgroup.
func OpenSocketLB(ctx context.Context, cfg SocketLBConfig) (*SocketLB, error) {
	if cfg.BPFFSPath == "" {
		cfg.BPFFSPath = DefaultBPFFSPath
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Sizes = cfg.Sizes.withDefaults()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := checkBPFFS(cfg.BPFFSPath); err != nil {
		return nil, err
	}
	for _, dir := range []string{mapsDir, linksDir} {
		if err := os.MkdirAll(filepath.Join(cfg.BPFFSPath, dir), 0o700); err != nil {
			return nil, fmt.Errorf("create pin dir: %w", err)
		}
	}
	spec, err := loadSocklb()
	if err != nil {
		return nil, fmt.Errorf("load socket-lb spec: %w", err)
	}
	s := cfg.Sizes
	for name, size := range map[string]uint32{
		socklbMapLb4Services:     s.Services,
		socklbMapLb6Services:     s.Services,
		socklbMapLb4Backends:     s.Backends,
		socklbMapLb6Backends:     s.Backends,
		socklbMapLb4Slots:        s.Slots,
		socklbMapLbAffinityMatch: s.Slots,
		socklbMapLbAffinity:      s.Affinity,
		socklbMapLb4Revnat:       s.RevNAT,
		socklbMapLb6Revnat:       s.RevNAT,
	} {
		spec.Maps[name].MaxEntries = size
	}
	l := &SocketLB{cfg: cfg, log: cfg.Logger, links: map[string]link.Link{},
		svcs: map[lbFrontend]*lbSvcState{}, backends: map[lbFrontend]*lbBackendState{}, byID: map[uint32]lbFrontend{},
		orphans: map[lbFrontend]struct{}{}}
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: filepath.Join(cfg.BPFFSPath, mapsDir)}}
	if err := spec.LoadAndAssign(&l.objs, opts); err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("%w: %w", ErrIncompatiblePin, err)
		}
		return nil, fmt.Errorf("load socket-lb objects: %w", err)
	}
	l.LBMaps = lbMapsFrom(&l.objs.socklbMaps)
	if err := l.adoptMaps(); err != nil {
		l.objs.Close()
		return nil, err
	}
	if err := l.adoptLinks(); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

// socklbHooks are the programs and where they attach; the link pin of
// each is socklb_<cgroup id>_<name>.
func (l *SocketLB) socklbHooks() []struct {
	name   string
	attach ebpf.AttachType
	prog   *ebpf.Program
} {
	return []struct {
		name   string
		attach ebpf.AttachType
		prog   *ebpf.Program
	}{
		{"connect4", ebpf.AttachCGroupInet4Connect, l.objs.Sock4Connect},
		{"sendmsg4", ebpf.AttachCGroupUDP4Sendmsg, l.objs.Sock4Sendmsg},
		{"recvmsg4", ebpf.AttachCGroupUDP4Recvmsg, l.objs.Sock4Recvmsg},
		{"getpeername4", ebpf.AttachCgroupInet4GetPeername, l.objs.Sock4Getpeername},
		{"connect6", ebpf.AttachCGroupInet6Connect, l.objs.Sock6Connect},
		{"sendmsg6", ebpf.AttachCGroupUDP6Sendmsg, l.objs.Sock6Sendmsg},
		{"recvmsg6", ebpf.AttachCGroupUDP6Recvmsg, l.objs.Sock6Recvmsg},
		{"getpeername6", ebpf.AttachCgroupInet6GetPeername, l.objs.Sock6Getpeername},
	}
}

func (l *SocketLB) progForPin(name string) *ebpf.Program {
	if !strings.HasPrefix(name, socklbPinPrefix) {
		return nil
	}
	for _, h := range l.socklbHooks() {
		if strings.HasSuffix(name, "_"+h.name) {
			return h.prog
		}
	}
	return nil
}

func (l *SocketLB) adoptLinks() error {
	dir := filepath.Join(l.cfg.BPFFSPath, linksDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read links dir: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		prog := l.progForPin(name)
		if prog == nil {
			continue
		}
		path := filepath.Join(dir, name)
		ln, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			return fmt.Errorf("load pinned link %s: %w", name, err)
		}
		if err := ln.Update(prog); err != nil {
			ln.Close()
			if errors.Is(err, unix.ENOLINK) {
				// The cgroup is gone; the pin is stale.
				l.log.Info("removing stale socket-lb link pin", "pin", name)
				os.Remove(path)
				continue
			}
			return fmt.Errorf("update link %s: %w", name, err)
		}
		l.links[name] = ln
	}
	return nil
}

// SetCgroup attaches the programs to the cgroup v2 directory at path (or
// keeps them attached there) and detaches them from any other cgroup. An
// empty path detaches them everywhere: no socket is translated.
func (l *SocketLB) SetCgroup(path string) error {
	prefix := "\x00" // matches no pin
	if path != "" {
		id, err := CgroupID(path)
		if err != nil {
			return fmt.Errorf("socket-lb cgroup: %w", err)
		}
		prefix = fmt.Sprintf("%s%d_", socklbPinPrefix, id)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if path != "" {
		for _, h := range l.socklbHooks() {
			name := prefix + h.name
			if _, ok := l.links[name]; ok {
				continue
			}
			ln, err := link.AttachCgroup(link.CgroupOptions{Path: path, Attach: h.attach, Program: h.prog})
			if err != nil {
				return fmt.Errorf("attach %s to cgroup %s: %w", h.name, path, err)
			}
			if err := ln.Pin(filepath.Join(l.cfg.BPFFSPath, linksDir, name)); err != nil {
				ln.Close()
				return fmt.Errorf("pin link: %w", err)
			}
			l.links[name] = ln
		}
	}
	var errs []error
	for name, ln := range l.links {
		if strings.HasPrefix(name, prefix) {
			continue
		}
		errs = append(errs, ln.Unpin(), ln.Close())
		delete(l.links, name)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("detach socket-lb links: %w", err)
	}
	if path != "" {
		l.log.Info("socket load balancing attached", "cgroup", path)
	}
	return nil
}

// Close releases the loader's handles; pinned maps and links, and with them
// the translation, stay in the kernel.
func (l *SocketLB) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var errs []error
	for name, ln := range l.links {
		errs = append(errs, ln.Close())
		delete(l.links, name)
	}
	errs = append(errs, l.objs.Close())
	return errors.Join(errs...)
}

// adoptMaps reads the pinned maps into the cache: the slots of each
// service's generation in force, the backends they use. Leftovers of an
// interrupted sync (slots of the other generation, unused backends, stale
// affinity matches) are removed.
func (l *SocketLB) adoptMaps() error {
	svcs, err := dumpServices(l.objs.Lb4Services, l.objs.Lb6Services)
	if err != nil {
		return err
	}
	slots, err := dumpMap[socklbLb4SlotKey, uint32](l.objs.Lb4Slots)
	if err != nil {
		return err
	}
	bes, err := dumpBackends(l.objs.Lb4Backends, l.objs.Lb6Backends)
	if err != nil {
		return err
	}
	matches, err := dumpMap[socklbLbAffinityMatchKey, uint32](l.objs.LbAffinityMatch)
	if err != nil {
		return err
	}
	byID := map[uint32]*lbSvcState{}
	usedSvcIDs := map[uint32]bool{}
	for fe, v := range svcs {
		st := &lbSvcState{val: v}
		if v.Count > 0 {
			st.backends = make([]lbFrontend, v.Count)
			st.ids = make([]uint32, v.Count)
		}
		l.svcs[fe] = st
		byID[v.Id] = st
		usedSvcIDs[v.Id] = true
		l.svcIDs.next = max(l.svcIDs.next, v.Id)
	}
	for id, b := range bes {
		l.byID[id] = b
		l.beIDs.next = max(l.beIDs.next, id)
	}
	for k, bid := range slots {
		st := byID[k.Service]
		if st == nil || uint32(st.val.Gen) != k.Gen || k.Slot >= st.val.Count {
			if err := deleteIfPresent(l.objs.Lb4Slots, k); err != nil {
				return err
			}
			continue
		}
		st.ids[k.Slot] = bid
	}
	// Every id a slot in force names holds a reference (dropSlots releases
	// them when the service is rewritten); a service with a missing slot or
	// backend is rewritten by the next sync.
	for _, st := range l.svcs {
		complete := true
		for i, id := range st.ids {
			k, ok := l.byID[id]
			if id == 0 || !ok {
				complete = false
				continue
			}
			b := l.backends[k]
			if b == nil {
				b = &lbBackendState{id: id}
				l.backends[k] = b
			}
			if b.id != id {
				// Two ids for one backend (not written by this code):
				// the other one is removed below.
				complete = false
				continue
			}
			b.refs++
			st.backends[i] = k
		}
		if !complete {
			st.backends = []lbFrontend{{}}
		}
	}
	for id, k := range l.byID {
		if _, ok := l.backends[k]; !ok || l.backends[k].id != id {
			// Unused (or a duplicate of another id): removed now.
			if err := deleteIfPresent(l.backendsMap(k), id); err != nil {
				return err
			}
			delete(l.byID, id)
		}
	}
	for k := range matches {
		st := byID[k.Service]
		if st == nil || !slices.Contains(st.ids, k.Backend) {
			if err := deleteIfPresent(l.objs.LbAffinityMatch, k); err != nil {
				return err
			}
		}
	}
	// Ids below next that are unused become free.
	for id := uint32(1); id <= l.svcIDs.next && len(l.svcIDs.free) < 1<<20; id++ {
		if !usedSvcIDs[id] {
			l.svcIDs.free = append(l.svcIDs.free, id)
		}
	}
	for id := uint32(1); id <= l.beIDs.next && len(l.beIDs.free) < 1<<20; id++ {
		if _, ok := l.byID[id]; !ok {
			l.beIDs.free = append(l.beIDs.free, id)
		}
	}
	return nil
}

func deleteIfPresent[K any](m *ebpf.Map, k K) error {
	if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete: %w", err)
	}
	return nil
}

// dumpServices reads both families' service maps (v6 may be nil: a pin
// of an older agent that had none).
func dumpServices(v4, v6 *ebpf.Map) (map[lbFrontend]socklbLb4Service, error) {
	s4, err := dumpMap[socklbLb4Key, socklbLb4Service](v4)
	if err != nil {
		return nil, err
	}
	out := make(map[lbFrontend]socklbLb4Service, len(s4))
	for k, v := range s4 {
		out[lbFrontend{addr: addr4(k.Address), port: htons(k.Port), proto: k.Proto}] = v
	}
	if v6 == nil {
		return out, nil
	}
	s6, err := dumpMap[socklbLb6Key, socklbLb4Service](v6)
	if err != nil {
		return nil, err
	}
	for k, v := range s6 {
		out[lbFrontend{addr: addr6(k.Address), port: htons(k.Port), proto: k.Proto}] = v
	}
	return out, nil
}

// dumpBackends reads both families' backend maps (ids are one space).
func dumpBackends(v4, v6 *ebpf.Map) (map[uint32]lbFrontend, error) {
	b4, err := dumpMap[uint32, socklbLb4Backend](v4)
	if err != nil {
		return nil, err
	}
	out := make(map[uint32]lbFrontend, len(b4))
	for id, b := range b4 {
		out[id] = lbFrontend{addr: addr4(b.Address), port: htons(b.Port), proto: b.Proto}
	}
	if v6 == nil {
		return out, nil
	}
	b6, err := dumpMap[uint32, socklbLb6Backend](v6)
	if err != nil {
		return nil, err
	}
	for id, b := range b6 {
		out[id] = lbFrontend{addr: addr6(b.Address), port: htons(b.Port), proto: b.Proto}
	}
	return out, nil
}

// addr4 and addr6 read addresses stored in network byte order in native
// words, as the C structs hold them.
func addr4(w uint32) netip.Addr {
	var a [4]byte
	binary.NativeEndian.PutUint32(a[:], w)
	return netip.AddrFrom4(a)
}

func addr6(w [4]uint32) netip.Addr {
	var a [16]byte
	for i, x := range w {
		binary.NativeEndian.PutUint32(a[4*i:], x)
	}
	return netip.AddrFrom16(a)
}

func words4(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

func words6(a netip.Addr) [4]uint32 {
	b := a.As16()
	var w [4]uint32
	for i := range w {
		w[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return w
}

// key is f's key in its family's services map.
func (f lbFrontend) key() any {
	if f.is6() {
		return socklbLb6Key{Address: words6(f.addr), Port: htons(f.port), Proto: f.proto}
	}
	return socklbLb4Key{Address: words4(f.addr), Port: htons(f.port), Proto: f.proto}
}

// backend is f's value in its family's backends map.
func (f lbFrontend) backend() any {
	if f.is6() {
		return &socklbLb6Backend{Address: words6(f.addr), Port: htons(f.port), Proto: f.proto}
	}
	return &socklbLb4Backend{Address: words4(f.addr), Port: htons(f.port), Proto: f.proto}
}

func (l *SocketLB) servicesMap(f lbFrontend) *ebpf.Map {
	if f.is6() {
		return l.objs.Lb6Services
	}
	return l.objs.Lb4Services
}

func (l *SocketLB) backendsMap(f lbFrontend) *ebpf.Map {
	if f.is6() {
		return l.objs.Lb6Backends
	}
	return l.objs.Lb4Backends
}

// lbWant is one normalised desired service.
type lbWant struct {
	fe       lbFrontend
	backends []lbFrontend
	val      socklbLb4Service // id and gen filled in when written
}

func normalizeServices(desired []LBService) ([]lbWant, error) {
	out := make([]lbWant, 0, len(desired))
	seen := make(map[lbFrontend]bool, len(desired))
	for _, s := range desired {
		if s.Protocol != ProtoTCP && s.Protocol != ProtoUDP {
			return nil, fmt.Errorf("%w: service frontend %s: protocol %d (want TCP or UDP)", ErrInvalidEntry, s.Frontend, s.Protocol)
		}
		fe, err := lbAddr(s.Frontend, s.Protocol)
		if err != nil {
			return nil, fmt.Errorf("%w: service frontend %s: %w", ErrInvalidEntry, s.Frontend, err)
		}
		if seen[fe] {
			return nil, fmt.Errorf("%w: service frontend %s given twice", ErrInvalidEntry, fe)
		}
		seen[fe] = true
		w := lbWant{fe: fe, backends: make([]lbFrontend, 0, len(s.Backends))}
		for _, b := range s.Backends {
			be, err := lbAddr(b, s.Protocol)
			if err != nil {
				return nil, fmt.Errorf("%w: service %s: backend %s: %w", ErrInvalidEntry, fe, b, err)
			}
			if be.is6() != fe.is6() {
				// The programs rewrite within one family: a connect()
				// to an IPv6 ClusterIP cannot be given an IPv4 backend.
				return nil, fmt.Errorf("%w: service %s: backend %s is not of the frontend's address family", ErrInvalidEntry, fe, b)
			}
			w.backends = append(w.backends, be)
		}
		if !slices.IsSortedFunc(w.backends, compareFrontend) {
			slices.SortFunc(w.backends, compareFrontend)
		}
		w.backends = slices.Compact(w.backends)
		w.val.Count = uint32(len(w.backends))
		if s.Affinity > 0 {
			w.val.Flags = lbFlagAffinity
			w.val.AffinityTimeout = uint32(min(max(s.Affinity.Round(time.Second)/time.Second, 1), math.MaxUint32))
		}
		out = append(out, w)
	}
	return out, nil
}

// lbAddr checks a frontend or backend address: IPv4 (a v4-mapped IPv6
// address is taken as its IPv4 form, which is what the programs translate
// for dual-stack sockets) or IPv6 without a zone, not unspecified, and a
// port.
func lbAddr(ap netip.AddrPort, proto uint8) (lbFrontend, error) {
	a := ap.Addr().Unmap()
	switch {
	case !a.IsValid() || a.IsUnspecified():
		return lbFrontend{}, errors.New("want an IPv4 or IPv6 address")
	case a.Zone() != "":
		return lbFrontend{}, errors.New("an address with a zone")
	case ap.Port() == 0:
		return lbFrontend{}, errors.New("want a port")
	}
	return lbFrontend{addr: a, port: ap.Port(), proto: proto}, nil
}

// compareFrontend orders by address (IPv4 first), port and protocol.
func compareFrontend(a, b lbFrontend) int {
	return cmp.Or(a.addr.Compare(b.addr), cmp.Compare(a.port, b.port), cmp.Compare(a.proto, b.proto))
}

// SyncServices makes the socket LB translate exactly desired, writing only
// the services that changed, each atomically (see above). Duplicate or
// invalid frontends are an error before anything is written. Services that
// cannot be written refuse connections and are named in an *LBSyncError;
// the others are synced regardless. Stats count services.
func (l *SocketLB) SyncServices(desired []LBService) (SyncStats, error) {
	want, err := normalizeServices(desired)
	if err != nil {
		return SyncStats{}, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.epoch++
	for i := range want {
		if st := l.svcs[want[i].fe]; st != nil {
			st.epoch = l.epoch
		}
	}
	var gone []lbFrontend
	for fe, s := range l.svcs {
		if s.epoch != l.epoch {
			gone = append(gone, fe)
		}
	}
	return l.apply(gone, want)
}

// apply removes the frontends in gone that are there — first: they free
// room for new ones —, writes want and ends the sync. l.mu is held.
func (l *SocketLB) apply(gone []lbFrontend, want []lbWant) (SyncStats, error) {
	var st SyncStats
	freedSvc, freedBe := len(l.svcIDs.quarantine), len(l.beIDs.quarantine)
	var failed []FailedService
	for _, fe := range gone {
		s := l.svcs[fe]
		if s == nil {
			continue
		}
		if err := l.deleteService(fe, s); err != nil {
			failed = append(failed, FailedService{Frontend: fe.addrPort(), Protocol: fe.proto, Err: err})
			continue
		}
		st.Deleted++
	}
	for i := range want {
		if f, ok := l.upsert(&want[i], &st); !ok {
			failed = append(failed, f)
		}
	}
	return st, l.endSync(failed, freedSvc, freedBe)
}

// LBFrontend names a service frontend: the ClusterIP and port, and the
// protocol.
type LBFrontend struct {
	Frontend netip.AddrPort
	Protocol uint8
}

// UpdateServices is the incremental form of SyncServices: it writes the
// services in upsert (added, or changed: each atomically, as SyncServices
// does) and removes the frontends in remove, and leaves every other
// service as it is, so its cost is that of the services named, not of all
// of them (one changed EndpointSlice among 100k backends). Removing a
// frontend that is not there is no error. Invalid input — an invalid or
// duplicate frontend, or one both upserted and removed — is an error
// before anything is written; services that cannot be written refuse
// connections and are named in an *LBSyncError, as with SyncServices.
// Stats count the services named: Unchanged are upserts that were in force
// already.
func (l *SocketLB) UpdateServices(upsert []LBService, remove []LBFrontend) (SyncStats, error) {
	want, err := normalizeServices(upsert)
	if err != nil {
		return SyncStats{}, err
	}
	gone := make([]lbFrontend, 0, len(remove))
	for _, r := range remove {
		fe, err := lbAddr(r.Frontend, r.Protocol)
		if err == nil && r.Protocol != ProtoTCP && r.Protocol != ProtoUDP {
			err = errors.New("want TCP or UDP")
		}
		if err != nil {
			return SyncStats{}, fmt.Errorf("%w: frontend to remove %s/%s: %w", ErrInvalidEntry, r.Frontend, protoName(r.Protocol), err)
		}
		if slices.ContainsFunc(want, func(w lbWant) bool { return w.fe == fe }) {
			return SyncStats{}, fmt.Errorf("%w: frontend %s both updated and removed", ErrInvalidEntry, fe)
		}
		gone = append(gone, fe)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.apply(gone, want)
}

// upsert writes one wanted service and counts it in st; on failure the
// frontend refuses connections and the returned FailedService names it.
func (l *SocketLB) upsert(w *lbWant, st *SyncStats) (FailedService, bool) {
	changed, err := l.upsertService(w)
	if err != nil {
		f := FailedService{Frontend: w.fe.addrPort(), Protocol: w.fe.proto, Err: err}
		f.Untranslated = l.refuse(w.fe) != nil
		return f, false
	}
	switch changed {
	case "added":
		st.Added++
	case "updated":
		st.Updated++
	default:
		st.Unchanged++
	}
	return FailedService{}, true
}

// endSync ends a sync: it deletes the backends no service uses any more (a
// failed delete is retried by the next sync), lets the ids freed before
// this sync be reused, and reports the failed services.
func (l *SocketLB) endSync(failed []FailedService, freedSvc, freedBe int) error {
	for k := range l.orphans {
		b := l.backends[k]
		if b == nil || b.refs > 0 {
			delete(l.orphans, k)
			continue
		}
		if err := l.del(l.backendsMap(k), b.id); err != nil {
			l.log.Warn("socket-lb: delete backend", "backend", k, "error", err)
			continue
		}
		delete(l.orphans, k)
		delete(l.backends, k)
		delete(l.byID, b.id)
		l.beIDs.put(b.id)
	}
	l.svcIDs.endSync(len(l.svcIDs.quarantine) - freedSvc)
	l.beIDs.endSync(len(l.beIDs.quarantine) - freedBe)
	if len(failed) > 0 {
		slices.SortFunc(failed, func(a, b FailedService) int {
			return cmp.Or(a.Frontend.Compare(b.Frontend), cmp.Compare(a.Protocol, b.Protocol))
		})
		return &LBSyncError{Failed: failed}
	}
	return nil
}

// deleteService removes a frontend: its lb4_services entry first (new
// connections to it are no longer translated), then its slots and
// affinity matches.
func (l *SocketLB) deleteService(fe lbFrontend, s *lbSvcState) error {
	if err := l.del(l.servicesMap(fe), fe.key()); err != nil {
		return err
	}
	delete(l.svcs, fe)
	l.svcIDs.put(s.val.Id)
	l.dropSlots(s.val.Id, s.val.Gen, s.ids, nil)
	return nil
}

// dropSlots deletes a service's slots of generation gen and the affinity
// matches of the backends in ids that are not in keep, and releases their
// references.
func (l *SocketLB) dropSlots(svc uint32, gen uint8, ids []uint32, keep map[uint32]bool) {
	for i, id := range ids {
		if err := l.del(l.objs.Lb4Slots, socklbLb4SlotKey{Service: svc, Slot: uint32(i), Gen: uint32(gen)}); err != nil {
			l.log.Warn("socket-lb: delete slot", "service", svc, "slot", i, "error", err)
		}
		if id == 0 {
			continue
		}
		if !keep[id] {
			if err := l.del(l.objs.LbAffinityMatch, socklbLbAffinityMatchKey{Service: svc, Backend: id}); err != nil {
				l.log.Warn("socket-lb: delete affinity match", "service", svc, "error", err)
			}
		}
		if k, ok := l.byID[id]; ok {
			if b := l.backends[k]; b != nil && b.id == id {
				if b.refs--; b.refs <= 0 {
					l.orphans[k] = struct{}{}
				}
			}
		}
	}
}

func (l *SocketLB) upsertService(w *lbWant) (string, error) {
	cur := l.svcs[w.fe]
	if cur != nil && slices.Equal(cur.backends, w.backends) {
		val := w.val
		val.Id, val.Gen = cur.val.Id, cur.val.Gen
		if val == cur.val {
			return "", nil
		}
		// Only the affinity setting changed: same slots.
		if err := l.put(l.servicesMap(w.fe), w.fe.key(), &val); err != nil {
			return "", fmt.Errorf("update service: %w", err)
		}
		cur.val = val
		return "updated", nil
	}
	result := "updated"
	val := w.val
	if cur == nil {
		id, err := l.svcIDs.get()
		if err != nil {
			return "", err
		}
		val.Id = id
		result = "added"
	} else {
		val.Id, val.Gen = cur.val.Id, cur.val.Gen^1
	}
	// 1. Backends, then the new generation's slots and affinity matches.
	ids := make([]uint32, len(w.backends))
	var oldIDs []uint32
	keep := map[uint32]bool{}
	if cur != nil {
		oldIDs = cur.ids
	}
	undo := func() {
		l.dropSlots(val.Id, val.Gen, ids, nil)
		if cur == nil {
			l.svcIDs.put(val.Id)
		}
	}
	for i, b := range w.backends {
		id, err := l.backendID(b)
		if err != nil {
			undo()
			return "", err
		}
		ids[i] = id
		keep[id] = true
		if err := l.put(l.objs.Lb4Slots, socklbLb4SlotKey{Service: val.Id, Slot: uint32(i), Gen: uint32(val.Gen)}, id); err != nil {
			undo()
			return "", fmt.Errorf("write slot: %w", mapFull(err))
		}
		if err := l.put(l.objs.LbAffinityMatch, socklbLbAffinityMatchKey{Service: val.Id, Backend: id}, uint32(1)); err != nil {
			undo()
			return "", fmt.Errorf("write affinity match: %w", mapFull(err))
		}
	}
	// 2. The switch: count and generation in one update.
	if err := l.put(l.servicesMap(w.fe), w.fe.key(), &val); err != nil {
		undo()
		return "", fmt.Errorf("write service: %w", mapFull(err))
	}
	// 3. The old generation.
	if cur != nil {
		l.dropSlots(val.Id, cur.val.Gen, oldIDs, keep)
	}
	l.svcs[w.fe] = &lbSvcState{val: val, backends: w.backends, ids: ids, epoch: l.epoch}
	return result, nil
}

// backendID returns the id of backend b, writing it if new, and takes a
// reference.
func (l *SocketLB) backendID(b lbFrontend) (uint32, error) {
	if s := l.backends[b]; s != nil {
		s.refs++
		return s.id, nil
	}
	id, err := l.beIDs.get()
	if err != nil {
		return 0, err
	}
	if err := l.put(l.backendsMap(b), id, b.backend()); err != nil {
		l.beIDs.free = append(l.beIDs.free, id)
		return 0, fmt.Errorf("write backend: %w", mapFull(err))
	}
	l.backends[b] = &lbBackendState{id: id, refs: 1}
	l.byID[id] = b
	return id, nil
}

// refuse makes a frontend refuse connections after its backends could not
// be written: count 0, its old slots deleted.
func (l *SocketLB) refuse(fe lbFrontend) error {
	cur := l.svcs[fe]
	val := socklbLb4Service{}
	if cur != nil {
		val.Id, val.Gen = cur.val.Id, cur.val.Gen
	} else {
		id, err := l.svcIDs.get()
		if err != nil {
			return err
		}
		val.Id = id
	}
	if err := l.put(l.servicesMap(fe), fe.key(), &val); err != nil {
		if cur == nil {
			l.svcIDs.put(val.Id)
		}
		return fmt.Errorf("write refusing service: %w", mapFull(err))
	}
	if cur != nil {
		l.dropSlots(val.Id, cur.val.Gen, cur.ids, nil)
	}
	// backends nil never equals a desired list (even an empty one), so the
	// next sync writes it again.
	l.svcs[fe] = &lbSvcState{val: val, epoch: l.epoch, backends: nil}
	return nil
}

func mapFull(err error) error {
	if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOMEM) {
		return fmt.Errorf("%w: %w", ErrMapFull, err)
	}
	return err
}

// LBMaps gives typed read access to the socket LB's maps.
type LBMaps struct {
	services, services6, slots, backends, backends6 *ebpf.Map
}

func lbMapsFrom(m *socklbMaps) LBMaps {
	return LBMaps{services: m.Lb4Services, services6: m.Lb6Services, slots: m.Lb4Slots,
		backends: m.Lb4Backends, backends6: m.Lb6Backends}
}

// PinnedLBMaps are the socket LB's maps opened read-only from their pins.
type PinnedLBMaps struct {
	LBMaps
}

// OpenPinnedLBMaps opens the socket LB's maps pinned under bpffsPath.
func OpenPinnedLBMaps(bpffsPath string) (*PinnedLBMaps, error) {
	p := &PinnedLBMaps{}
	for _, m := range []struct {
		name     string
		dst      **ebpf.Map
		optional bool // the IPv6 maps: absent under an agent older than them
	}{
		{socklbMapLb4Services, &p.services, false},
		{socklbMapLb6Services, &p.services6, true},
		{socklbMapLb4Slots, &p.slots, false},
		{socklbMapLb4Backends, &p.backends, false},
		{socklbMapLb6Backends, &p.backends6, true},
	} {
		mp, err := ebpf.LoadPinnedMap(filepath.Join(bpffsPath, mapsDir, m.name), &ebpf.LoadPinOptions{ReadOnly: true})
		if m.optional && errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("open pinned map %s: %w", m.name, err)
		}
		*m.dst = mp
	}
	return p, nil
}

// Close closes the map handles.
func (p *PinnedLBMaps) Close() error {
	var errs []error
	for _, m := range []*ebpf.Map{p.services, p.services6, p.slots, p.backends, p.backends6} {
		if m != nil {
			errs = append(errs, m.Close())
		}
	}
	return errors.Join(errs...)
}

// LBServiceEntry is one frontend as the socket LB's maps hold it.
type LBServiceEntry struct {
	Frontend netip.AddrPort `json:"frontend"`
	Protocol string         `json:"protocol"`
	ID       uint32         `json:"id"`
	// Generation of the slots in force.
	Generation uint8 `json:"generation"`
	// Affinity is the session affinity timeout (0: none).
	Affinity time.Duration `json:"affinity,omitempty"`
	// Backends in slot order; empty: connections are refused.
	Backends []netip.AddrPort `json:"backends"`
	// Missing counts slots of the generation in force that are not in the
	// maps (0 unless something is broken: such a slot refuses).
	Missing int `json:"missing,omitempty"`
}

// Services lists the frontends, sorted by address, port and protocol.
func (m LBMaps) Services() ([]LBServiceEntry, error) {
	svcs, err := dumpServices(m.services, m.services6)
	if err != nil {
		return nil, err
	}
	slots, err := dumpMap[socklbLb4SlotKey, uint32](m.slots)
	if err != nil {
		return nil, err
	}
	bes, err := dumpBackends(m.backends, m.backends6)
	if err != nil {
		return nil, err
	}
	out := make([]LBServiceEntry, 0, len(svcs))
	for fe, v := range svcs {
		e := LBServiceEntry{Frontend: fe.addrPort(), Protocol: protoName(fe.proto), ID: v.Id, Generation: v.Gen, Backends: []netip.AddrPort{}}
		if v.Flags&lbFlagAffinity != 0 {
			e.Affinity = time.Duration(v.AffinityTimeout) * time.Second
		}
		for i := range v.Count {
			id, ok := slots[socklbLb4SlotKey{Service: v.Id, Slot: i, Gen: uint32(v.Gen)}]
			b, bok := bes[id]
			if !ok || !bok {
				e.Missing++
				continue
			}
			e.Backends = append(e.Backends, b.addrPort())
		}
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b LBServiceEntry) int {
		return cmp.Or(a.Frontend.Compare(b.Frontend), cmp.Compare(a.Protocol, b.Protocol))
	})
	return out, nil
}

// put writes one map entry of a sync.
func (l *SocketLB) put(m *ebpf.Map, k, v any) error {
	err := m.Update(k, v, ebpf.UpdateAny)
	if l.afterWrite != nil && err == nil {
		l.afterWrite()
	}
	return err
}

// del deletes one map entry of a sync (absent is fine).
func (l *SocketLB) del(m *ebpf.Map, k any) error {
	err := deleteIfPresent(m, k)
	if l.afterWrite != nil && err == nil {
		l.afterWrite()
	}
	return err
}
