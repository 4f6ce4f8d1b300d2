package dnsproxy

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/l7gate/l7gate/policy"
)

// The fast path for answers already in force. Holding every answer for a
// toFQDNs name for a Learn round trip costs most of the proxy's time when
// clients ask for the same names again and again (their addresses are in
// the datapath already). An answer is released at once, without Learn,
// when all of these hold (fastCache.hit):
//
//   - a Learn for the same name, from a query of the same client identity,
//     succeeded under the current config (no SetPolicy/SetFQDNSelectors
//     since it started) and the current agent connection epoch
//     (Config.AgentEpoch unchanged since it started);
//   - every address of the answer was in that Learn (or a later one), at
//     most maxFastIPs addresses for the name;
//   - for every address, the expiry the agent was asked for — the start
//     of the Learn plus the TTL sent (the answer's TTL plus
//     FastPathHeadroom) — is at least now plus the answer's TTL: the
//     agent keeps an address at least as long as it was asked (its FQDN
//     cache raises TTLs to its minimum and only ever pushes an expiry
//     later), so the client can use the answer for its whole TTL.
//
// Anything else (a miss, a new address, an expired entry, a cleared cache)
// takes the hold path. A hit refreshes the name at the agent in the
// background (Learn again, at most once a second per name, one at a time),
// which keeps its expiry — and so the fast path — ahead of what clients
// are told. A failed Learn or refresh clears the whole fast-path cache, as
// does every config change and every change of the agent epoch (the
// agent's connection closed: it may have restarted from an older saved
// cache). A fast-path mistake can only release an answer before its
// addresses are in force (the client races the policy, its first packets
// dropped, as after a HoldTimeout): it never adds an address to any
// policy, the agent alone does that.

// Defaults of the fast path.
const (
	// DefaultFastPathNames bounds the names the fast path remembers.
	DefaultFastPathNames = 16384
	// DefaultFastPathHeadroom is added to the TTL the agent is asked to
	// keep an answer's addresses for (see Config.FastPathHeadroom).
	DefaultFastPathHeadroom = 5 * time.Second
	// fastRefreshEvery: at most one background refresh per name this often.
	fastRefreshEvery = time.Second
	// maxFastIPs: a name with more addresses is not remembered (the
	// agent evicts addresses of names with many; this stays far below).
	maxFastIPs = 32
	// maxFastScopes: client identities remembered per name; others hold.
	maxFastScopes = 16
)

// fastCache remembers what Learn confirmed. Safe for concurrent use.
type fastCache struct {
	max int // names; 0: disabled

	mu    sync.Mutex
	gen   uint64 // bumped by every clear: a Learn started before it is ignored
	epoch uint64 // the agent epoch the entries were learned in
	names map[string]*fastName
	sweep time.Time

	// counters (under mu)
	clears, overflow uint64
}

type fastName struct {
	ips         []fastIP
	scopes      []policy.Identity
	lastRefresh time.Time // start of the last Learn (held or refresh)
	refreshing  bool
}

type fastIP struct {
	ip    netip.Addr
	until time.Time // the agent keeps ip at least until then
}

func newFastCache(max int) *fastCache {
	return &fastCache{max: max, names: map[string]*fastName{}}
}

// begin returns what a Learn starting now, in agent epoch epoch, is
// checked against when it returns (learned). Entries of another epoch
// are forgotten.
func (f *fastCache) begin(epoch uint64) uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	if epoch != f.epoch {
		f.clearLocked()
		f.epoch = epoch
	}
	return f.gen
}

// clear forgets everything (config change, agent error or reconnect).
func (f *fastCache) clear() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.clearLocked()
}

func (f *fastCache) clearLocked() {
	f.gen++
	f.clears++
	clear(f.names)
}

// hit reports whether an answer (name, ips, ttl) for a query of scope can
// be released at once at now, in agent epoch epoch; refresh: a background
// Learn of the name is due (the caller runs it: learn with refresh set).
func (f *fastCache) hit(scope policy.Identity, name string, ips []netip.Addr, ttl time.Duration, now time.Time, epoch uint64) (ok, refresh bool) {
	if f.max <= 0 || len(ips) == 0 || len(ips) > maxFastIPs {
		return false, false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if epoch != f.epoch {
		// The agent connection changed since the entries were learned.
		f.clearLocked()
		f.epoch = epoch
		return false, false
	}
	fn := f.names[name]
	if fn == nil || !slices.Contains(fn.scopes, scope) {
		return false, false
	}
	need := now.Add(ttl)
	for _, ip := range ips {
		i := slices.IndexFunc(fn.ips, func(x fastIP) bool { return x.ip == ip })
		if i < 0 || fn.ips[i].until.Before(need) {
			return false, false
		}
	}
	if !fn.refreshing && now.Sub(fn.lastRefresh) >= fastRefreshEvery {
		fn.refreshing, fn.lastRefresh = true, now
		refresh = true
	}
	return true, refresh
}

// learned records that a Learn started at start (begin gave gen)
// succeeded: the agent keeps ips of name until at least until. Ignored
// when the cache was cleared since (a config change, an agent error, an
// agent epoch change). It reports false when the name could not be
// remembered (full; counted).
func (f *fastCache) learned(gen uint64, scope policy.Identity, name string, ips []netip.Addr, start, until time.Time, refresh bool) bool {
	if f.max <= 0 {
		return true
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	fn := f.names[name]
	if refresh && fn != nil {
		fn.refreshing = false
	}
	if gen != f.gen {
		return true
	}
	if fn == nil {
		if len(f.names) >= f.max {
			if start.Sub(f.sweep) >= time.Second {
				f.sweepLocked(start)
			}
			if len(f.names) >= f.max {
				f.overflow++
				return false
			}
		}
		fn = &fastName{}
		f.names[name] = fn
	}
	if start.After(fn.lastRefresh) {
		fn.lastRefresh = start
	}
	for _, ip := range ips {
		i := slices.IndexFunc(fn.ips, func(x fastIP) bool { return x.ip == ip })
		if i < 0 {
			fn.ips = append(fn.ips, fastIP{ip, until})
		} else if until.After(fn.ips[i].until) {
			fn.ips[i].until = until
		}
	}
	if len(fn.ips) > maxFastIPs {
		delete(f.names, name) // too many addresses: always held
		return true
	}
	if !slices.Contains(fn.scopes, scope) && len(fn.scopes) < maxFastScopes {
		fn.scopes = append(fn.scopes, scope)
	}
	return true
}

// sweepLocked forgets names whose addresses have all expired.
func (f *fastCache) sweepLocked(now time.Time) {
	f.sweep = now
	for n, fn := range f.names {
		if !fn.refreshing && !slices.ContainsFunc(fn.ips, func(x fastIP) bool { return x.until.After(now) }) {
			delete(f.names, n)
		}
	}
}

func (f *fastCache) stats() (names int, clears, overflow uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.names), f.clears, f.overflow
}

// learnTTL is the TTL the agent is asked to keep an answer's addresses
// for: the answer's plus the headroom (whole seconds, as the agent API
// carries them).
func (p *Proxy) learnTTL(ttl time.Duration) time.Duration {
	return (ttl + p.cfg.FastPathHeadroom).Truncate(time.Second)
}

func (p *Proxy) epoch() uint64 {
	if p.cfg.AgentEpoch == nil {
		return 0
	}
	return p.cfg.AgentEpoch()
}

// learn asks the agent (Learn, bounded by HoldTimeout) and records a
// success for the fast path; a failure clears it.
func (p *Proxy) learn(ctx context.Context, scope policy.Identity, name string, ips []netip.Addr, ttl time.Duration, refresh bool) error {
	epoch := p.epoch()
	gen := p.fast.begin(epoch)
	start := p.cfg.Now()
	sent := p.learnTTL(ttl)
	hctx, cancel := context.WithTimeout(ctx, p.cfg.HoldTimeout)
	err := p.cfg.Learn(hctx, name, ips, sent)
	cancel()
	p.learns.Add(1)
	if err != nil {
		p.fast.clear()
		if refresh {
			p.refreshErrs.Add(1)
		}
		return err
	}
	if p.epoch() != epoch {
		p.fast.clear() // the agent connection changed meanwhile
		return nil
	}
	p.fast.learned(gen, scope, name, ips, start, start.Add(sent), refresh)
	return nil
}

// refresh learns a name again in the background (fastCache.hit said it
// is due), so the agent's expiry stays ahead of the answers released.
func (p *Proxy) refresh(scope policy.Identity, name string, ips []netip.Addr, ttl time.Duration) {
	p.refreshes.Add(1)
	ips = slices.Clone(ips)
	go func() {
		_ = p.learn(context.Background(), scope, name, ips, ttl, true)
	}()
}

// ForgetLearned clears the fast path: every answer is held again until
// Learn confirms it (the agent restarted, say).
func (p *Proxy) ForgetLearned() { p.fast.clear() }
