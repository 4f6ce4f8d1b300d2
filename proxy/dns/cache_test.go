package dnsproxy

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func ips(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, x := range s {
		out = append(out, netip.MustParseAddr(x))
	}
	return out
}

// TestCacheTTL: an answer's TTL is raised to MinTTL; GC removes what
// expired; FQDNNames never returns expired addresses.
func TestCacheTTL(t *testing.T) {
	clk := &clock{time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)}
	c, err := NewCache(CacheConfig{MinTTL: 10 * time.Second, Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	c.Insert("A.example.com", ips("198.18.0.1"), time.Second) // raised to 10s
	c.Insert("b.example.com.", ips("198.18.0.2"), time.Minute)
	clk.t = clk.t.Add(9 * time.Second)
	if got := c.FQDNNames(); len(got) != 2 || got[0].Name != "a.example.com." {
		t.Fatalf("at 9s: %v", got)
	}
	clk.t = clk.t.Add(2 * time.Second)
	if got := c.FQDNNames(); len(got) != 1 || got[0].Name != "b.example.com." {
		t.Fatalf("at 11s: %v", got)
	}
	if n := c.GC(); n != 1 || c.Stats().Names != 1 || c.Stats().Expired != 1 {
		t.Fatalf("GC removed %d, stats %+v", n, c.Stats())
	}
	// a later answer extends, an earlier-expiring one does not shorten
	c.Insert("b.example.com", ips("198.18.0.2"), 20*time.Second)
	if st := c.State(); !st.Names[0].IPs[0].Expires.Equal(time.Date(2026, 12, 6, 12, 1, 0, 0, time.UTC)) {
		t.Fatalf("expiry shortened: %+v", st)
	}
}

// TestCacheCaps: per-name address cap evicts the addresses expiring
// first; the name cap refuses new names and counts them.
func TestCacheCaps(t *testing.T) {
	clk := &clock{time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)}
	c, _ := NewCache(CacheConfig{MinTTL: time.Second, MaxIPsPerName: 2, MaxNames: 2, Now: clk.now})
	c.Insert("a.", ips("198.18.0.1"), 10*time.Second)
	c.Insert("a.", ips("198.18.0.2"), 30*time.Second)
	c.Insert("a.", ips("198.18.0.3"), 20*time.Second)
	if got := cachedIPs(c, "a."); !slices.Equal(got, []string{"198.18.0.2", "198.18.0.3"}) || c.Stats().EvictedIPs != 1 {
		t.Fatalf("per-name cap: %v %+v", got, c.Stats())
	}
	if !c.Insert("b.", ips("198.18.1.1"), time.Minute) || c.Insert("c.", ips("198.18.1.2"), time.Minute) {
		t.Fatal("name cap not enforced")
	}
	if !c.Insert("a.", ips("198.18.0.4"), time.Hour) {
		t.Fatal("a known name refused when full")
	}
	// once names expire, a new one fits again
	clk.t = clk.t.Add(2 * time.Minute)
	c.Insert("a.", ips("198.18.0.4"), time.Hour)
	if !c.Insert("d.", ips("198.18.1.3"), time.Minute) {
		t.Fatalf("new name refused after expiry: %+v", c.Stats())
	}
	if st := c.Stats(); st.Overflow != 1 || st.Names != 2 {
		t.Fatalf("stats %+v", st)
	}
}

// TestCacheSurvivesRestart: Save writes the state file; a new cache reads
// the live entries back (expired ones dropped).
func TestCacheSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "fqdn-cache.json")
	clk := &clock{time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)}
	c, err := NewCache(CacheConfig{StatePath: path, MinTTL: time.Second, Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	c.Insert("api.example.com", ips("198.18.0.1", "2001:db8::1"), time.Hour)
	c.Insert("short.example.com", ips("198.18.0.2"), 5*time.Second)
	if err := c.Save(); err != nil {
		t.Fatal(err)
	}
	clk.t = clk.t.Add(time.Minute)
	c2, err := NewCache(CacheConfig{StatePath: path, MinTTL: time.Second, Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	got := c2.FQDNNames()
	if len(got) != 1 || got[0].Name != "api.example.com." || len(got[0].IPs) != 2 {
		t.Fatalf("after restart: %v", got)
	}
	st, err := ReadState(path)
	if err != nil || len(st.FQDNNames(clk.t)) != 1 {
		t.Fatalf("ReadState: %v %v", st, err)
	}
}

// TestHostileStateFile: a corrupt, oversized or wrong state file is an
// error and an empty cache (fewer names only allow less).
func TestHostileStateFile(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{
		"garbage":   "{not json",
		"version":   `{"version":2,"names":[]}`,
		"bad name":  `{"version":1,"names":[{"name":"a b.","ips":[]}]}`,
		"long name": `{"version":1,"names":[{"name":"` + strings.Repeat("a.", 200) + `","ips":[]}]}`,
		"bad ip":    `{"version":1,"names":[{"name":"a.","ips":[{"ip":"999.1.1.1","expires":"2030-01-01T00:00:00Z"}]}]}`,
	} {
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
		os.WriteFile(path, []byte(content), 0o600)
		c, err := NewCache(CacheConfig{StatePath: path})
		if err == nil || c == nil || c.Stats().Names != 0 {
			t.Errorf("%s: err %v, cache %+v", name, err, c)
		}
	}
	big := filepath.Join(dir, "big")
	f, _ := os.Create(big)
	f.Truncate(maxStateFile + 10)
	f.Close()
	if _, err := NewCache(CacheConfig{StatePath: big}); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized: %v", err)
	}
	if c, err := NewCache(CacheConfig{StatePath: filepath.Join(dir, "missing")}); err != nil || errors.Is(err, os.ErrNotExist) || c.Stats().Names != 0 {
		t.Errorf("missing file: %v", err)
	}
}

// TestCacheTotalIPCap: addresses over all names are bounded; past the
// cap new addresses are counted, not cached; GC frees room.
func TestCacheTotalIPCap(t *testing.T) {
	clk := &clock{time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)}
	c, _ := NewCache(CacheConfig{MinTTL: time.Second, MaxIPs: 3, Now: clk.now})
	c.Insert("a.", ips("198.18.0.1", "198.18.0.2"), time.Second)
	c.Insert("b.", ips("198.18.0.3", "198.18.0.4"), time.Minute)
	if st := c.Stats(); st.IPs != 3 || st.IPOverflow != 1 {
		t.Fatalf("stats %+v", st)
	}
	clk.t = clk.t.Add(2 * time.Second)
	c.GC()
	c.Insert("b.", ips("198.18.0.4"), time.Minute)
	if got := cachedIPs(c, "b."); !slices.Equal(got, []string{"198.18.0.3", "198.18.0.4"}) || c.Stats().IPs != 2 {
		t.Fatalf("after GC: %v %+v", got, c.Stats())
	}
}

// TestCacheIPCapReported: an answer with an address the total cap left out
// is reported as not cached (the agent then fails the proxy's Learn: before,
// Insert said true and the proxy released the answer as in force, and its
// fast path remembered it); a full cache collects expired addresses first.
func TestCacheIPCapReported(t *testing.T) {
	clk := &clock{time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)}
	c, _ := NewCache(CacheConfig{MinTTL: time.Second, MaxIPs: 2, Now: clk.now})
	if !c.Insert("a.", ips("198.18.0.1"), time.Second) || !c.Insert("b.", ips("198.18.0.2"), time.Minute) {
		t.Fatal("inserts below the cap reported as not cached")
	}
	if c.Insert("c.", ips("198.18.0.3"), time.Minute) {
		t.Errorf("an address past the total cap reported as cached (cached: %v)", cachedIPs(c, "c."))
	}
	if !c.Insert("b.", ips("198.18.0.2"), time.Minute) {
		t.Error("an address already cached reported as not cached at the cap")
	}
	clk.t = clk.t.Add(2 * time.Second) // a. expired, no GC run since
	if !c.Insert("c.", ips("198.18.0.3"), time.Minute) || !slices.Equal(cachedIPs(c, "c."), []string{"198.18.0.3"}) {
		t.Errorf("a full cache with an expired address: c. %v, stats %+v; want it collected and c. cached", cachedIPs(c, "c."), c.Stats())
	}
}

// TestCacheRunSaves: Run collects and saves periodically and on exit.
func TestCacheRunSaves(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fqdn-cache.json")
	c, _ := NewCache(CacheConfig{StatePath: path})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx, 20*time.Millisecond, nil); close(done) }()
	c.Insert("a.example.", ips("198.18.0.1"), time.Hour)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if st, err := ReadState(path); err == nil && len(st.Names) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("not saved within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.Insert("b.example.", ips("198.18.0.2"), time.Hour)
	cancel()
	<-done
	if st, err := ReadState(path); err != nil || len(st.Names) != 2 {
		t.Fatalf("final save: %v %v", st, err)
	}
}
