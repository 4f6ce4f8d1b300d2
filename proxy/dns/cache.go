package dnsproxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/l7gate/l7gate/policy"
)

// Defaults of CacheConfig.
const (
	DefaultMinTTL        = 60 * time.Second
	DefaultMaxIPsPerName = 64
	DefaultMaxNames      = 65536
	DefaultMaxIPs        = 65536
	// maxStateFile bounds the state file read at start.
	maxStateFile = 64 << 20
)

// CacheConfig tunes the FQDN cache. The zero value is the defaults.
type CacheConfig struct {
	// MinTTL: an address is kept at least this long after an answer,
	// whatever TTL the answer gave (0: DefaultMinTTL).
	MinTTL time.Duration
	// MaxIPsPerName bounds a name's addresses; past it the addresses that
	// expire first are evicted (0: DefaultMaxIPsPerName).
	MaxIPsPerName int
	// MaxNames bounds the names; a new name past it is not cached and is
	// counted (Overflow): its toFQDNs allow nothing (fail closed).
	MaxNames int
	// MaxIPs bounds the addresses of all names together (each becomes an
	// identity, an ipcache entry and policy entries); a new address past
	// it is not cached and is counted (IPOverflow) (0: DefaultMaxIPs).
	MaxIPs int
	// StatePath: where Save writes the cache and NewCache reads it back
	// ("": not persisted).
	StatePath string
	// Now is the clock (nil: time.Now).
	Now func() time.Time
}

// CacheStats are the cache's counters.
type CacheStats struct {
	Names      int    `json:"names"`
	IPs        int    `json:"ips"`
	Overflow   uint64 `json:"overflow"`   // new names not cached: MaxNames reached
	EvictedIPs uint64 `json:"evictedIPs"` // addresses evicted by MaxIPsPerName
	IPOverflow uint64 `json:"ipOverflow"` // new addresses not cached: MaxIPs reached
	Expired    uint64 `json:"expired"`    // addresses removed by GC
	Extended   uint64 `json:"extended"`   // expiries pushed back: the address was in use (Extend)
}

// Cache is the FQDN cache: normalised name → address → expiry. Safe for
// concurrent use. It implements policy.FQDNCache.
type Cache struct {
	cfg CacheConfig

	mu sync.Mutex
	// names: name → its addresses (at most MaxIPsPerName: a slice
	// scans faster than a map at that size, and iterating 10k names for
	// policy must be cheap).
	names   map[string][]ipExpiry
	ips     int // addresses over all names
	stats   CacheStats
	lastGC  time.Time
	version uint64 // bumped by every change (Save skips unchanged)
	saved   uint64
}

type ipExpiry struct {
	ip  netip.Addr
	exp time.Time
}

// NewCache returns a cache, with the entries of cfg.StatePath that have
// not expired. A missing file is an empty cache; an unreadable or invalid
// one is an empty cache and an error (fewer names only allow less).
func NewCache(cfg CacheConfig) (*Cache, error) {
	if cfg.MinTTL <= 0 {
		cfg.MinTTL = DefaultMinTTL
	}
	if cfg.MaxIPsPerName <= 0 {
		cfg.MaxIPsPerName = DefaultMaxIPsPerName
	}
	if cfg.MaxNames <= 0 {
		cfg.MaxNames = DefaultMaxNames
	}
	if cfg.MaxIPs <= 0 {
		cfg.MaxIPs = DefaultMaxIPs
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &Cache{cfg: cfg, names: map[string][]ipExpiry{}}
	if cfg.StatePath == "" {
		return c, nil
	}
	st, err := ReadState(cfg.StatePath)
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, err
	}
	now := cfg.Now()
	for _, n := range st.Names {
		for _, e := range n.IPs {
			if e.Expires.After(now) {
				c.insertLocked(n.Name, e.IP, e.Expires)
			}
		}
	}
	c.saved = c.version
	return c, nil
}

// Insert records that name answered with ips for ttl (raised to MinTTL).
// It reports false when any of the addresses is not cached: the name is new
// and MaxNames is reached (counted in Overflow), or MaxIPs is reached
// (IPOverflow) — what fits is still cached. A full cache first collects
// expired entries (at most once a second). Names that do not normalise are
// ignored.
func (c *Cache) Insert(name string, ips []netip.Addr, ttl time.Duration) bool {
	n, err := policy.NormalizeDNSName(name)
	if err != nil || len(ips) == 0 {
		return true
	}
	now := c.cfg.Now()
	exp := now.Add(max(ttl, c.cfg.MinTTL))
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.names[n]; !ok && len(c.names) >= c.cfg.MaxNames {
		// Full: collect expired entries (at most once a second, so a
		// flood of new names costs no scan per query), then give up.
		if now.Sub(c.lastGC) >= time.Second {
			c.gcLocked(now)
		}
		if len(c.names) >= c.cfg.MaxNames {
			c.stats.Overflow++
			return false
		}
	}
	if c.ips+len(ips) > c.cfg.MaxIPs && now.Sub(c.lastGC) >= time.Second {
		c.gcLocked(now)
	}
	all := true
	for _, ip := range ips {
		all = c.insertLocked(n, ip.Unmap(), exp) && all
	}
	return all
}

// insertLocked reports whether ip is cached for name afterwards.
func (c *Cache) insertLocked(name string, ip netip.Addr, exp time.Time) bool {
	if !ip.IsValid() {
		return true // nothing to cache
	}
	m, known := c.names[name]
	if !known && len(c.names) >= c.cfg.MaxNames {
		c.stats.Overflow++
		return false
	}
	for i := range m {
		if m[i].ip == ip {
			if exp.After(m[i].exp) {
				m[i].exp = exp
				c.version++
			}
			return true
		}
	}
	if c.ips >= c.cfg.MaxIPs {
		c.stats.IPOverflow++
		return false
	}
	m = append(m, ipExpiry{ip, exp})
	c.ips++
	c.version++
	for len(m) > c.cfg.MaxIPsPerName {
		// evict the address that expires first
		v := 0
		for i := range m {
			if m[i].exp.Before(m[v].exp) || (m[i].exp.Equal(m[v].exp) && m[i].ip.Less(m[v].ip)) {
				v = i
			}
		}
		m = slices.Delete(m, v, v+1)
		c.ips--
		c.stats.EvictedIPs++
	}
	c.names[name] = m
	return slices.ContainsFunc(m, func(e ipExpiry) bool { return e.ip == ip })
}

// GC removes expired addresses (and names left without any); it returns
// how many addresses it removed.
func (c *Cache) GC() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gcLocked(c.cfg.Now())
}

func (c *Cache) gcLocked(now time.Time) int {
	c.lastGC = now
	removed := 0
	for n, m := range c.names {
		kept := m[:0]
		for _, e := range m {
			if e.exp.After(now) {
				kept = append(kept, e)
			}
		}
		removed += len(m) - len(kept)
		c.ips -= len(m) - len(kept)
		if len(kept) == 0 {
			delete(c.names, n)
		} else if len(kept) != len(m) {
			c.names[n] = kept
		}
	}
	if removed > 0 {
		c.version++
		c.stats.Expired += uint64(removed)
	}
	return removed
}

// Extend keeps the addresses inUse reports (say, used by a tracked
// connection) from expiring: each one that expires within the next
// `within` (or has expired but not been collected) gets now+within. It
// returns how many it extended (counted in Extended).
func (c *Cache) Extend(inUse func(netip.Addr) bool, within time.Duration) int {
	now := c.cfg.Now()
	until := now.Add(within)
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, m := range c.names {
		for i := range m {
			if m[i].exp.Before(until) && inUse(m[i].ip) {
				m[i].exp = until
				n++
			}
		}
	}
	if n > 0 {
		c.version++
		c.stats.Extended += uint64(n)
	}
	return n
}

// FQDNNames returns the live names and addresses, sorted (policy.FQDNCache).
func (c *Cache) FQDNNames() []policy.FQDNName {
	now := c.cfg.Now()
	c.mu.Lock()
	out := make([]policy.FQDNName, 0, len(c.names))
	for n, m := range c.names {
		e := policy.FQDNName{Name: n, IPs: make([]netip.Addr, 0, len(m))}
		for _, x := range m {
			if x.exp.After(now) {
				e.IPs = append(e.IPs, x.ip)
			}
		}
		if len(e.IPs) > 0 {
			slices.SortFunc(e.IPs, netip.Addr.Compare)
			out = append(out, e)
		}
	}
	c.mu.Unlock()
	slices.SortFunc(out, func(a, b policy.FQDNName) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Stats returns the counters and sizes.
func (c *Cache) Stats() CacheStats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.stats
	s.Names, s.IPs = len(c.names), c.ips
	return s
}

// State is the cache's persisted form (also `l7gate fqdn cache list`'s).
type State struct {
	Version int         `json:"version"`
	Names   []StateName `json:"names"`
}

// StateName is one name of State.
type StateName struct {
	Name string    `json:"name"`
	IPs  []StateIP `json:"ips"`
}

// StateIP is one address and when it expires.
type StateIP struct {
	IP      netip.Addr `json:"ip"`
	Expires time.Time  `json:"expires"`
}

// State returns every entry (expired ones not yet collected included),
// sorted.
func (c *Cache) State() State {
	c.mu.Lock()
	st := State{Version: 1, Names: make([]StateName, 0, len(c.names))}
	for n, m := range c.names {
		sn := StateName{Name: n}
		for _, x := range m {
			sn.IPs = append(sn.IPs, StateIP{IP: x.ip, Expires: x.exp.UTC()})
		}
		slices.SortFunc(sn.IPs, func(a, b StateIP) int { return a.IP.Compare(b.IP) })
		st.Names = append(st.Names, sn)
	}
	c.mu.Unlock()
	slices.SortFunc(st.Names, func(a, b StateName) int { return strings.Compare(a.Name, b.Name) })
	return st
}

// Save writes the cache to StatePath (atomically: a temporary file
// renamed), unless nothing changed since the last Save or load.
func (c *Cache) Save() error {
	if c.cfg.StatePath == "" {
		return nil
	}
	c.mu.Lock()
	v := c.version
	unchanged := v == c.saved
	c.mu.Unlock()
	if unchanged {
		return nil
	}
	b, err := json.Marshal(c.State())
	if err != nil {
		return fmt.Errorf("encode fqdn cache: %w", err)
	}
	dir := filepath.Dir(c.cfg.StatePath)
	tmp, err := os.CreateTemp(dir, ".fqdn-cache-*")
	if err != nil {
		return fmt.Errorf("save fqdn cache: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("save fqdn cache: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("save fqdn cache: %w", err)
	}
	if err := os.Rename(tmp.Name(), c.cfg.StatePath); err != nil {
		return fmt.Errorf("save fqdn cache: %w", err)
	}
	c.mu.Lock()
	c.saved = max(c.saved, v)
	c.mu.Unlock()
	return nil
}

// ReadState reads a state file (bounded in size, strictly decoded, names
// normalised).
func ReadState(path string) (State, error) {
	var st State
	f, err := os.Open(path)
	if err != nil {
		return st, fmt.Errorf("read fqdn cache: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxStateFile+1))
	if err != nil {
		return st, fmt.Errorf("read fqdn cache: %w", err)
	}
	if len(b) > maxStateFile {
		return st, fmt.Errorf("read fqdn cache %s: larger than %d bytes", path, maxStateFile)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return State{}, fmt.Errorf("read fqdn cache %s: %w", path, err)
	}
	if st.Version != 1 {
		return State{}, fmt.Errorf("read fqdn cache %s: version %d, want 1", path, st.Version)
	}
	for i := range st.Names {
		n, err := policy.NormalizeDNSName(st.Names[i].Name)
		if err != nil {
			return State{}, fmt.Errorf("read fqdn cache %s: name %d: %w", path, i, err)
		}
		st.Names[i].Name = n
	}
	return st, nil
}

// FQDNNames returns the state's names with the addresses still live at
// now (policy.FQDNCache for a saved cache, as trace uses it).
func (st State) FQDNNames(now time.Time) policy.StaticFQDNCache {
	var out policy.StaticFQDNCache
	for _, n := range st.Names {
		e := policy.FQDNName{Name: n.Name}
		for _, ip := range n.IPs {
			if ip.Expires.After(now) {
				e.IPs = append(e.IPs, ip.IP)
			}
		}
		if len(e.IPs) > 0 {
			out = append(out, e)
		}
	}
	return out
}

// Run collects expired entries and saves the cache every interval until
// ctx ends, then saves once more. Save errors are logged, not fatal: the
// cache in memory stays authoritative.
func (c *Cache) Run(ctx context.Context, interval time.Duration, log *slog.Logger) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if err := c.Save(); err != nil {
				log.Warn("fqdn cache", "err", err)
			}
			return
		case <-t.C:
			c.GC()
			if err := c.Save(); err != nil {
				log.Warn("fqdn cache", "err", err)
			}
		}
	}
}
