package redirect

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"
)

// PortKey names a proxy listener: one per (direction, parser) on a node.
type PortKey struct {
	Direction string `json:"direction"`
	Parser    string `json:"parser"`
}

func (k PortKey) String() string { return k.Direction + "/" + k.Parser }

// PortAllocatorConfig configures proxy-port allocation.
type PortAllocatorConfig struct {
	// Min and Max bound the range (default 10000-20000).
	Min, Max uint16
	// StatePath persists allocations so a restarted agent reuses them
	// ("" keeps them in memory only).
	StatePath string
	// HoldBack keeps a released port unused this long (default 5m), so a
	// late connection to the old listener never reaches a new one.
	HoldBack time.Duration
	// Restore: allocations older than this are not restored (default 15m).
	Restore time.Duration
	// InUse reports whether a port is already taken on the node (default:
	// try to bind it on 0.0.0.0).
	InUse func(port uint16) bool
	// Now is the clock (tests).
	Now func() time.Time
	// Rand picks candidate ports (tests may seed it).
	Rand *rand.Rand
}

// PortAllocator hands out proxy ports from a range, persists them, and
// delays the reuse of released ports. Safe for concurrent use.
type PortAllocator struct {
	cfg   PortAllocatorConfig
	mu    sync.Mutex
	state portState
}

type portState struct {
	Allocated map[string]allocation `json:"allocated"`
	Released  map[string]time.Time  `json:"released"` // port → release time
}

type allocation struct {
	Key     PortKey   `json:"key"`
	Port    uint16    `json:"port"`
	Updated time.Time `json:"updated"`
}

// NewPortAllocator restores persisted allocations (younger than Restore).
func NewPortAllocator(cfg PortAllocatorConfig) (*PortAllocator, error) {
	if cfg.Min == 0 && cfg.Max == 0 {
		cfg.Min, cfg.Max = 10000, 20000
	}
	if cfg.Min == 0 || cfg.Max < cfg.Min {
		return nil, fmt.Errorf("invalid proxy port range %d-%d", cfg.Min, cfg.Max)
	}
	if cfg.HoldBack == 0 {
		cfg.HoldBack = 5 * time.Minute
	}
	if cfg.Restore == 0 {
		cfg.Restore = 15 * time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	if cfg.InUse == nil {
		cfg.InUse = portInUse
	}
	a := &PortAllocator{cfg: cfg, state: portState{Allocated: map[string]allocation{}, Released: map[string]time.Time{}}}
	if cfg.StatePath != "" {
		data, err := os.ReadFile(cfg.StatePath)
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			return nil, fmt.Errorf("read proxy port state: %w", err)
		default:
			var st portState
			if err := json.Unmarshal(data, &st); err != nil {
				return nil, fmt.Errorf("parse proxy port state %s: %w", cfg.StatePath, err)
			}
			now := cfg.Now()
			for k, al := range st.Allocated {
				if now.Sub(al.Updated) <= cfg.Restore && al.Port >= cfg.Min && al.Port <= cfg.Max {
					a.state.Allocated[k] = al
				}
			}
			for p, t := range st.Released {
				a.state.Released[p] = t
			}
		}
	}
	return a, nil
}

func portInUse(port uint16) bool {
	ln, err := net.Listen("tcp4", net.JoinHostPort("0.0.0.0", strconv.Itoa(int(port))))
	if err != nil {
		return true
	}
	ln.Close()
	return false
}

// Allocate returns the port for key, allocating one when needed. A port
// allocated earlier (also before a restart) is kept.
func (a *PortAllocator) Allocate(key PortKey) (uint16, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.cfg.Now()
	if al, ok := a.state.Allocated[key.String()]; ok {
		al.Updated = now
		a.state.Allocated[key.String()] = al
		return al.Port, a.save()
	}
	taken := map[uint16]bool{}
	for _, al := range a.state.Allocated {
		taken[al.Port] = true
	}
	for p, t := range a.state.Released {
		n, _ := strconv.Atoi(p)
		if now.Sub(t) < a.cfg.HoldBack {
			taken[uint16(n)] = true
		} else {
			delete(a.state.Released, p)
		}
	}
	size := int(a.cfg.Max-a.cfg.Min) + 1
	// Random walk from a random start: successive agents on one node do not
	// all race for the same first port.
	start := a.cfg.Rand.IntN(size)
	for i := range size {
		port := a.cfg.Min + uint16((start+i)%size)
		if taken[port] || a.cfg.InUse(port) {
			continue
		}
		a.state.Allocated[key.String()] = allocation{Key: key, Port: port, Updated: now}
		return port, a.save()
	}
	return 0, fmt.Errorf("allocate proxy port for %s: no free port in %d-%d", key, a.cfg.Min, a.cfg.Max)
}

// Release frees key's port; it is not handed out again for HoldBack.
func (a *PortAllocator) Release(key PortKey) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	al, ok := a.state.Allocated[key.String()]
	if !ok {
		return nil
	}
	delete(a.state.Allocated, key.String())
	a.state.Released[strconv.Itoa(int(al.Port))] = a.cfg.Now()
	return a.save()
}

// Allocations lists the current allocations, sorted by key.
func (a *PortAllocator) Allocations() map[PortKey]uint16 {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[PortKey]uint16{}
	for _, al := range a.state.Allocated {
		out[al.Key] = al.Port
	}
	return out
}

// save writes the state atomically. Called with mu held.
func (a *PortAllocator) save() error {
	if a.cfg.StatePath == "" {
		return nil
	}
	keys := make([]string, 0, len(a.state.Allocated))
	for k := range a.state.Allocated {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	data, err := json.MarshalIndent(a.state, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(a.cfg.StatePath), 0o755); err != nil {
		return fmt.Errorf("save proxy port state: %w", err)
	}
	tmp := a.cfg.StatePath + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("save proxy port state: %w", err)
	}
	if err := os.Rename(tmp, a.cfg.StatePath); err != nil {
		return fmt.Errorf("save proxy port state: %w", err)
	}
	return nil
}
