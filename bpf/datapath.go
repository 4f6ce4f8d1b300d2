package bpf

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// DefaultBPFFSPath is where maps and links are pinned unless configured.
const DefaultBPFFSPath = "/sys/fs/bpf/l7gate"

// Pin layout under Config.BPFFSPath.
const (
	mapsDir  = "maps"
	linksDir = "links"
)

// Config configures Open.
type Config struct {
	// BPFFSPath is a directory on a bpf filesystem; maps are pinned in
	// BPFFSPath/maps, links in BPFFSPath/links.
	BPFFSPath string
	MapSizes  MapSizes
	// CTTimeouts: zero fields take the defaults.
	CTTimeouts CTTimeouts
	// EventsPerSecond limits events per CPU (default 1000); EventBurst is
	// the bucket depth (default EventsPerSecond). DisableEvents turns the
	// ring buffer off.
	EventsPerSecond uint32
	EventBurst      uint32
	DisableEvents   bool
	Logger          *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.BPFFSPath == "" {
		c.BPFFSPath = DefaultBPFFSPath
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	def := func(v *uint32, d uint32) {
		if *v == 0 {
			*v = d
		}
	}
	s, d := &c.MapSizes, defaultMapSizes()
	def(&s.IPCache, d.IPCache)
	def(&s.Endpoints, d.Endpoints)
	// Two directions per endpoint: a direction that cannot get an
	// ep_policy value cannot fail closed either (see SyncPolicy).
	def(&s.EndpointPolicy, max(d.EndpointPolicy, 2*s.Endpoints))
	def(&s.Policy, d.Policy)
	def(&s.Conntrack, d.Conntrack)
	def(&s.Fragments, d.Fragments)
	def(&s.ProxySockets, d.ProxySockets)
	def(&s.ProxyUpstreams, d.ProxyUpstreams)
	def(&s.RuleStats, d.RuleStats)
	def(&s.EventsBytes, d.EventsBytes)
	t, dt := &c.CTTimeouts, defaultCTTimeouts()
	if t.TCP <= 0 {
		t.TCP = dt.TCP
	}
	if t.TCPSyn <= 0 {
		t.TCPSyn = dt.TCPSyn
	}
	if t.TCPClosing <= 0 {
		t.TCPClosing = dt.TCPClosing
	}
	if t.Other <= 0 {
		t.Other = dt.Other
	}
	def(&c.EventsPerSecond, 1000)
	def(&c.EventBurst, c.EventsPerSecond)
	return c
}

// Datapath owns the loaded programs and maps of the node's datapath. Kernel
// state lives in pins, so Close leaves traffic enforced; a later Open on the
// same BPFFSPath adopts the pins and swaps in its programs atomically.
type Datapath struct {
	cfg  Config
	log  *slog.Logger
	objs datapathObjects
	Maps

	mu       sync.Mutex // guards links, settings and syncs
	links    map[string]link.Link
	settings datapathConfig
	// pm mirrors the policy maps as this Datapath wrote them (see
	// policyMirror); nil until a sync loads it from the maps.
	pm    policyMirror
	epoch uint64 // counts syncs (dirPlan marks)
	// policyWritten, when set (tests), runs after each policy map write
	// of a sync, with d.mu held: the state packets can see then.
	policyWritten func()
}

// Open loads the programs, creates or adopts the pinned maps and adopts
// pinned links (updating them to the new programs).
func Open(ctx context.Context, cfg Config) (*Datapath, error) {
	cfg = cfg.withDefaults()
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
	spec, err := loadDatapath()
	if err != nil {
		return nil, fmt.Errorf("load spec: %w", err)
	}
	s := cfg.MapSizes
	for name, size := range map[string]uint32{
		datapathMapIpcache:        s.IPCache,
		datapathMapEndpoints:      s.Endpoints,
		datapathMapEpPolicy:       s.EndpointPolicy,
		datapathMapPolicy:         s.Policy,
		datapathMapConntrack:      s.Conntrack,
		datapathMapFragments:      s.Fragments,
		datapathMapFragments6:     s.Fragments,
		datapathMapProxySocks:     s.ProxySockets,
		datapathMapProxyUpstreams: s.ProxyUpstreams,
		datapathMapRuleStats:      s.RuleStats,
		datapathMapEvents:         s.EventsBytes,
		// Two families per endpoint: it cannot be full (see
		// proxied_clients in c/datapath.c).
		datapathMapProxiedClients: 2 * s.Endpoints,
	} {
		spec.Maps[name].MaxEntries = size
	}
	d := &Datapath{cfg: cfg, log: cfg.Logger, links: make(map[string]link.Link)}
	proxiedPin := filepath.Join(cfg.BPFFSPath, mapsDir, datapathMapProxiedClients)
	_, err = os.Stat(proxiedPin)
	proxiedNew := errors.Is(err, os.ErrNotExist)
	opts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: filepath.Join(cfg.BPFFSPath, mapsDir)}}
	if err := spec.LoadAndAssign(&d.objs, opts); err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("%w: %w", ErrIncompatiblePin, err)
		}
		return nil, fmt.Errorf("load objects: %w", err)
	}
	d.Maps = mapsFrom(&d.objs.datapathMaps)
	if err := d.adoptProxyFamilies(); err != nil {
		d.objs.Close()
		return nil, err
	}
	// Before the programs are swapped in (adoptLinks): from then on they
	// look for proxy upstream sockets only where proxied_clients says so.
	if err := d.adoptProxiedClients(proxiedNew); err != nil {
		if proxiedNew {
			// Created here but not filled: the next Open fills it.
			os.Remove(proxiedPin)
		}
		d.objs.Close()
		return nil, err
	}
	if err := d.initSettings(); err != nil {
		d.objs.Close()
		return nil, err
	}
	if err := d.adoptLinks(); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

func checkBPFFS(path string) error {
	if err := os.MkdirAll(path, 0o700); err != nil {
		return fmt.Errorf("create bpffs dir: %w", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", path, err)
	}
	if uint32(st.Type) != unix.BPF_FS_MAGIC {
		return fmt.Errorf("%s is not on a bpf filesystem", path)
	}
	return nil
}

// adoptProxyFamilies marks both families as served while the (pinned)
// sockmap holds any socket: a proxy_families map created after proxies
// registered (an upgrade) must not make the datapath stop looking for
// their upstream sockets.
func (d *Datapath) adoptProxyFamilies() error {
	var key uint32
	err := d.objs.ProxySocks.NextKey(nil, &key)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("proxy sockmap: %w", err)
	}
	return markProxyFamilies(d.objs.ProxyFamilies, proxyFamV4, proxyFamV6)
}

// proxiedKey is struct proxied_key (c/datapath.c).
type proxiedKey struct {
	Endpoint uint32
	Family   uint32
}

// adoptProxiedClients keeps proxied_clients in step with the endpoints
// map. A map created now (created is true) next to a proxy family already
// served (an upgrade from a datapath that did not record its redirects)
// records every endpoint for that family: their proxies' upstream
// connections may be open. Entries of endpoints no longer in the
// endpoints map are deleted (detached while no agent ran), so the map,
// two entries per endpoint, cannot fill up.
func (d *Datapath) adoptProxiedClients(created bool) error {
	ids := make(map[uint32]bool)
	var ifindex uint32
	var info datapathEndpointInfo
	it := d.objs.Endpoints.Iterate()
	for it.Next(&ifindex, &info) {
		ids[info.Id] = true
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read endpoints: %w", err)
	}
	if created {
		for fam, af := range map[uint32]uint32{proxyFamV4: unix.AF_INET, proxyFamV6: unix.AF_INET6} {
			var served uint32
			if err := d.objs.ProxyFamilies.Lookup(fam, &served); err != nil {
				return fmt.Errorf("read proxy families: %w", err)
			}
			if served == 0 {
				continue
			}
			for id := range ids {
				if err := d.objs.ProxiedClients.Update(proxiedKey{Endpoint: id, Family: af}, uint32(1), ebpf.UpdateAny); err != nil {
					return fmt.Errorf("record proxied endpoint %d: %w", id, err)
				}
			}
		}
		return nil
	}
	var stale []proxiedKey
	var k proxiedKey
	var v uint32
	pit := d.objs.ProxiedClients.Iterate()
	for pit.Next(&k, &v) {
		if !ids[k.Endpoint] {
			stale = append(stale, k)
		}
	}
	if err := pit.Err(); err != nil {
		return fmt.Errorf("read proxied clients: %w", err)
	}
	for _, k := range stale {
		if err := d.objs.ProxiedClients.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("forget proxied endpoint %d: %w", k.Endpoint, err)
		}
	}
	return nil
}

// forgetProxied deletes an endpoint's proxied_clients entries, unless
// the endpoint is still registered on another veth.
func (d *Datapath) forgetProxied(id uint32) error {
	var ifindex uint32
	var info datapathEndpointInfo
	it := d.objs.Endpoints.Iterate()
	for it.Next(&ifindex, &info) {
		if info.Id == id {
			return nil
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read endpoints: %w", err)
	}
	for _, af := range []uint32{unix.AF_INET, unix.AF_INET6} {
		if err := d.objs.ProxiedClients.Delete(proxiedKey{Endpoint: id, Family: af}); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("forget proxied endpoint %d: %w", id, err)
		}
	}
	return nil
}

func (d *Datapath) initSettings() error {
	var cur datapathConfig
	if err := d.objs.Settings.Lookup(uint32(0), &cur); err != nil {
		return fmt.Errorf("read settings: %w", err)
	}
	c := d.cfg
	d.settings = datapathConfig{
		// Keep counting from the pinned revision so that flows admitted by
		// the previous loader are revalidated after our first sync.
		Revision:       cur.Revision + 1,
		EventsPerSec:   c.EventsPerSecond,
		EventsBurst:    c.EventBurst,
		CtTcpNs:        uint64(c.CTTimeouts.TCP.Nanoseconds()),
		CtTcpSynNs:     uint64(c.CTTimeouts.TCPSyn.Nanoseconds()),
		CtTcpClosingNs: uint64(c.CTTimeouts.TCPClosing.Nanoseconds()),
		CtOtherNs:      uint64(c.CTTimeouts.Other.Nanoseconds()),
	}
	if c.DisableEvents {
		d.settings.EventsPerSec = 0
	}
	if err := d.objs.Settings.Update(uint32(0), &d.settings, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write settings: %w", err)
	}
	return nil
}

// bumpRevision makes every established flow re-check policy on its next
// packet. Callers hold d.mu.
func (d *Datapath) bumpRevision() error {
	d.settings.Revision++
	if err := d.objs.Settings.Update(uint32(0), &d.settings, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("write settings: %w", err)
	}
	return nil
}

// Link pin names: tcx_<ifindex>_from_pod, tcx_<ifindex>_to_pod,
// sk_lookup_<netns inode> and sockops_upstreams (upstreams.go).
func tcxPinName(ifindex int, toPod bool) string {
	if toPod {
		return fmt.Sprintf("tcx_%d_to_pod", ifindex)
	}
	return fmt.Sprintf("tcx_%d_from_pod", ifindex)
}

func (d *Datapath) progForPin(name string) *ebpf.Program {
	switch {
	case strings.HasPrefix(name, "sk_lookup_"):
		return d.objs.SkLookupProxy
	case name == upstreamOpsPin:
		return d.objs.ProxyUpstreamOps
	case strings.HasSuffix(name, "_from_pod"):
		return d.objs.TcFromPod
	case strings.HasSuffix(name, "_to_pod"):
		return d.objs.TcToPod
	}
	return nil
}

func (d *Datapath) adoptLinks() error {
	dir := filepath.Join(d.cfg.BPFFSPath, linksDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read links dir: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		prog := d.progForPin(name)
		if prog == nil {
			continue
		}
		path := filepath.Join(dir, name)
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			return fmt.Errorf("load pinned link %s: %w", name, err)
		}
		if err := l.Update(prog); err != nil {
			l.Close()
			if errors.Is(err, unix.ENOLINK) {
				// The interface or netns is gone; the pin is stale.
				d.log.Info("removing stale link pin", "pin", name)
				os.Remove(path)
				continue
			}
			return fmt.Errorf("update link %s: %w", name, err)
		}
		d.links[name] = l
		d.log.Debug("adopted link", "pin", name)
	}
	return nil
}

// Close releases the loader's handles. Pinned maps and links, and with
// them enforcement, stay in the kernel.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for name, l := range d.links {
		errs = append(errs, l.Close())
		delete(d.links, name)
	}
	errs = append(errs, d.objs.Close())
	return errors.Join(errs...)
}

// AttachEndpoint registers ep and attaches the programs to its veth (or
// keeps the existing attachment). Sync the endpoint's policy first: a
// direction with no policy for the endpoint is not enforced (allow all),
// as for a pod no rule selects.
func (d *Datapath) AttachEndpoint(ep Endpoint) error {
	if ep.ID == 0 || ep.Ifindex <= 0 {
		return fmt.Errorf("endpoint %d ifindex %d: %w", ep.ID, ep.Ifindex, ErrInvalidEntry)
	}
	info := datapathEndpointInfo{Id: ep.ID}
	if ep.IPv4.Is4() {
		info.Ipv4 = ep.IPv4.As4()
	}
	if ep.IPv6.Is6() {
		info.Ipv6 = ep.IPv6.As16()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	// Programs first, the endpoint entry second: the programs drop what
	// they cannot attribute to an endpoint, so a veth whose entry cannot
	// be written (endpoints map full) fails closed instead of staying
	// without a program (unenforced). A retry finds the links and writes
	// the entry.
	for _, a := range []struct {
		toPod  bool
		attach ebpf.AttachType
		prog   *ebpf.Program
	}{
		// Traffic leaving the pod enters the host at the veth's ingress.
		{false, ebpf.AttachTCXIngress, d.objs.TcFromPod},
		{true, ebpf.AttachTCXEgress, d.objs.TcToPod},
	} {
		name := tcxPinName(ep.Ifindex, a.toPod)
		if _, ok := d.links[name]; ok {
			continue
		}
		l, err := link.AttachTCX(link.TCXOptions{Interface: ep.Ifindex, Program: a.prog, Attach: a.attach})
		if err != nil {
			return fmt.Errorf("attach tcx to ifindex %d: %w", ep.Ifindex, err)
		}
		if err := l.Pin(filepath.Join(d.cfg.BPFFSPath, linksDir, name)); err != nil {
			l.Close()
			return fmt.Errorf("pin link: %w", err)
		}
		d.links[name] = l
	}
	if err := d.objs.Endpoints.Update(uint32(ep.Ifindex), &info, ebpf.UpdateAny); err != nil {
		if errors.Is(err, unix.E2BIG) {
			return fmt.Errorf("endpoints (the veth drops everything until the entry is written): %w", ErrMapFull)
		}
		return fmt.Errorf("write endpoint (the veth drops everything until it is written): %w", err)
	}
	d.log.Info("endpoint attached", "endpoint", ep.ID, "ifindex", ep.Ifindex)
	return nil
}

// DetachEndpoint detaches the programs from the veth and forgets the
// endpoint.
func (d *Datapath) DetachEndpoint(ifindex int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for _, toPod := range []bool{false, true} {
		name := tcxPinName(ifindex, toPod)
		l, ok := d.links[name]
		if !ok {
			continue
		}
		errs = append(errs, l.Unpin(), l.Close())
		delete(d.links, name)
	}
	var info datapathEndpointInfo
	lookupErr := d.objs.Endpoints.Lookup(uint32(ifindex), &info)
	if err := d.objs.Endpoints.Delete(uint32(ifindex)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		errs = append(errs, fmt.Errorf("delete endpoint: %w", err))
	}
	if lookupErr == nil {
		errs = append(errs, d.forgetProxied(info.Id))
	}
	return errors.Join(errs...)
}

// AttachSocketLookup attaches the sk_lookup program to the network
// namespace at netnsPath (e.g. /proc/self/ns/net of the node), pinned so it
// outlives the loader. Attaching twice to the same namespace is a no-op.
func (d *Datapath) AttachSocketLookup(netnsPath string) error {
	f, err := os.Open(netnsPath)
	if err != nil {
		return fmt.Errorf("open netns: %w", err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("stat netns: %w", err)
	}
	name := "sk_lookup_" + strconv.FormatUint(st.Ino, 10)
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.links[name]; ok {
		return nil
	}
	l, err := link.AttachNetNs(int(f.Fd()), d.objs.SkLookupProxy)
	if err != nil {
		return fmt.Errorf("attach sk_lookup: %w", err)
	}
	if err := l.Pin(filepath.Join(d.cfg.BPFFSPath, linksDir, name)); err != nil {
		l.Close()
		return fmt.Errorf("pin link: %w", err)
	}
	d.links[name] = l
	return nil
}

// RegisterProxyListener puts a proxy listener socket in the sockmap under
// its proxy port; see ProxySockets.Register.
func (d *Datapath) RegisterProxyListener(port uint16, conn syscall.Conn) error {
	return registerProxy(d.objs.ProxySocks, d.objs.ProxyFamilies, port, conn)
}

// UnregisterProxyListener removes the listener of a proxy port.
func (d *Datapath) UnregisterProxyListener(port uint16) error {
	return unregisterProxy(d.objs.ProxySocks, port)
}

// SyncIPCache makes the ipcache hold exactly desired, writing only what
// changed. A prefix listed twice with different identities is an error.
func (d *Datapath) SyncIPCache(desired []IPCacheEntry) (SyncStats, error) {
	want := make(map[datapathIpcacheKey]datapathIpcacheValue, len(desired))
	for _, e := range desired {
		k, err := ipcacheKey(e.Prefix)
		if err != nil {
			return SyncStats{}, err
		}
		v := datapathIpcacheValue{Identity: uint32(e.Identity)}
		if old, ok := want[k]; ok && old != v {
			return SyncStats{}, fmt.Errorf("%w: prefix %s has identities %d and %d", ErrInvalidEntry, e.Prefix, old.Identity, e.Identity)
		}
		want[k] = v
	}
	if n := uint32(len(want)); n > d.cfg.MapSizes.IPCache {
		return SyncStats{}, fmt.Errorf("ipcache needs %d prefixes, map holds %d: %w", n, d.cfg.MapSizes.IPCache, ErrMapFull)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	cur, err := dumpMap[datapathIpcacheKey, datapathIpcacheValue](d.objs.Ipcache)
	if err != nil {
		return SyncStats{}, err
	}
	stats, err := syncMap(d.objs.Ipcache, want, cur, nil)
	if err != nil {
		return stats, fmt.Errorf("ipcache: %w", err)
	}
	if stats.Added+stats.Updated+stats.Deleted > 0 {
		// Some address may resolve to another identity now (a new, more
		// specific prefix too): established flows re-check policy.
		if err := d.bumpRevision(); err != nil {
			return stats, err
		}
	}
	return stats, nil
}

func ipcacheKey(p netip.Prefix) (datapathIpcacheKey, error) {
	if !p.IsValid() {
		return datapathIpcacheKey{}, fmt.Errorf("%w: invalid prefix", ErrInvalidEntry)
	}
	p = p.Masked()
	k := datapathIpcacheKey{Prefixlen: 32 + uint32(p.Bits())}
	a := p.Addr()
	if a.Is4() {
		k.Family = unix.AF_INET
		a4 := a.As4()
		copy(k.Addr[:], a4[:])
	} else {
		k.Family = unix.AF_INET6
		k.Addr = a.As16()
	}
	return k, nil
}

// syncMap writes want into m given its current content cur and deletes
// stale keys. Upserts whose value is urgent (denies) go first, deletes of
// urgent values last, so a sync never opens more than either state allows.
func syncMap[K comparable, V comparable](m *ebpf.Map, want, cur map[K]V, urgent func(V) bool) (SyncStats, error) {
	st, err := upsertChanged(m, want, cur, urgent)
	if err != nil {
		return st, err
	}
	var staleFirst, staleLater []K
	for k, v := range cur {
		if _, ok := want[k]; ok {
			continue
		}
		if urgent != nil && urgent(v) {
			staleLater = append(staleLater, k)
		} else {
			staleFirst = append(staleFirst, k)
		}
	}
	for _, ks := range [][]K{staleFirst, staleLater} {
		for _, k := range ks {
			if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return st, fmt.Errorf("delete: %w", err)
			}
			st.Deleted++
		}
	}
	return st, nil
}

func upsertChanged[K comparable, V comparable](m *ebpf.Map, want, cur map[K]V, urgent func(V) bool) (SyncStats, error) {
	var st SyncStats
	var first, later []K
	for k, v := range want {
		old, ok := cur[k]
		switch {
		case ok && old == v:
			st.Unchanged++
			continue
		case ok:
			st.Updated++
		default:
			st.Added++
		}
		if urgent != nil && urgent(v) {
			first = append(first, k)
		} else {
			later = append(later, k)
		}
	}
	for _, ks := range [][]K{first, later} {
		for _, k := range ks {
			if err := m.Update(k, want[k], ebpf.UpdateAny); err != nil {
				if errors.Is(err, unix.E2BIG) || errors.Is(err, unix.ENOMEM) {
					return st, fmt.Errorf("%w: %w", ErrMapFull, err)
				}
				return st, fmt.Errorf("update: %w", err)
			}
		}
	}
	return st, nil
}

var (
	errE2BIG  = unix.E2BIG
	errENOMEM = unix.ENOMEM
)

// dumpMap reads a whole map, in batches where the map type allows.
func dumpMap[K comparable, V any](m *ebpf.Map) (map[K]V, error) {
	out := make(map[K]V)
	const chunk = 4096
	keys := make([]K, chunk)
	vals := make([]V, chunk)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			out[keys[i]] = vals[i]
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return out, nil
		}
		if errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.EINVAL) {
			break // e.g. LPM tries: iterate instead
		}
		if err != nil {
			return nil, fmt.Errorf("dump map: %w", err)
		}
	}
	clear(out)
	var k K
	var v V
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("dump map: %w", err)
	}
	return out, nil
}
