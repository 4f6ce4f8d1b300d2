package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/l7gate/l7gate/agentapi"
	"github.com/l7gate/l7gate/policy"
)

// FQDNStore is the FQDN cache toFQDNs resolve through: the DNS proxy's
// answers go in (LearnFQDN, from the Go proxy over POST /fqdn), policy
// computation reads it. cmd/l7gate gives a persisted dnsproxy.Cache.
type FQDNStore interface {
	policy.FQDNCache
	// Insert records an answer; false: the cache is full (not cached).
	Insert(name string, ips []netip.Addr, ttl time.Duration) bool
}

// maxAnswerIPs bounds the addresses of one learned answer.
const maxAnswerIPs = 256

// fqdnState tracks which learned names the datapath has: a LearnFQDN
// waits for the generation its answer started to be implemented.
type fqdnState struct {
	kick chan struct{} // buffered: a recompute is wanted

	mu     sync.Mutex
	wanted uint64        // generations asked for (one per new answer)
	done   uint64        // generation the last implemented compute covered
	cond   chan struct{} // closed (and replaced) when done changes
	// computing: the names and generation of the compute in flight;
	// have: those of the last implemented one.
	computing    map[string][]netip.Addr
	computingGen uint64
	have         map[string][]netip.Addr
}

func newFQDNState() *fqdnState {
	return &fqdnState{kick: make(chan struct{}, 1), cond: make(chan struct{}), have: map[string][]netip.Addr{}}
}

// LearnFQDN implements agentapi.FQDNLearner: the answer's addresses go
// into the FQDN cache and the call returns once a revision computed with
// them is implemented (ipcache and policy entries for the toFQDNs
// identities they belong to), so the proxy can release the answer.
func (a *Agent) LearnFQDN(ctx context.Context, ans agentapi.FQDNAnswer) error {
	if a.cfg.FQDN == nil {
		return errors.New("this agent resolves no toFQDNs (no FQDN cache)")
	}
	name, err := policy.NormalizeDNSName(ans.Name)
	if err != nil {
		return fmt.Errorf("fqdn answer: %w", err)
	}
	if len(ans.IPs) == 0 || len(ans.IPs) > maxAnswerIPs {
		return fmt.Errorf("fqdn answer for %s: %d addresses (want 1 to %d)", name, len(ans.IPs), maxAnswerIPs)
	}
	ips := make([]netip.Addr, 0, len(ans.IPs))
	for _, ip := range ans.IPs {
		if !ip.IsValid() {
			return fmt.Errorf("fqdn answer for %s: invalid address", name)
		}
		ips = append(ips, ip.Unmap())
	}
	if !a.cfg.FQDN.Insert(name, ips, time.Duration(ans.TTLSeconds)*time.Second) {
		return fmt.Errorf("fqdn cache full: %s not cached", name)
	}
	f := a.fq
	f.mu.Lock()
	have := f.have[name]
	if !slices.ContainsFunc(ips, func(ip netip.Addr) bool { return !slices.Contains(have, ip) }) {
		f.mu.Unlock()
		return nil // implemented already
	}
	f.wanted++
	gen := f.wanted
	f.mu.Unlock()
	select {
	case f.kick <- struct{}{}:
	default:
	}
	for {
		f.mu.Lock()
		done, ch := f.done, f.cond
		f.mu.Unlock()
		if done >= gen {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("%s: datapath not updated in time: %w", name, ctx.Err())
		}
	}
}

// fqdnOptions returns the policy options for a compute: the FQDN cache's
// names as of now (remembered, to be published once implemented).
func (a *Agent) fqdnOptions() policy.Options {
	opts := a.cfg.Policy
	if a.cfg.FQDN == nil {
		return opts
	}
	names := a.cfg.FQDN.FQDNNames()
	f := a.fq
	f.mu.Lock()
	f.computingGen = f.wanted
	f.computing = make(map[string][]netip.Addr, len(names))
	for _, n := range names {
		f.computing[n.Name] = n.IPs
	}
	f.mu.Unlock()
	opts.FQDNCache = policy.StaticFQDNCache(names)
	return opts
}

// fqdnImplemented publishes the names of the compute just implemented and
// wakes the answers waiting for them.
func (a *Agent) fqdnImplemented() {
	if a.cfg.FQDN == nil {
		return
	}
	f := a.fq
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.computing == nil {
		return
	}
	f.have, f.computing = f.computing, nil
	if f.computingGen > f.done {
		f.done = f.computingGen
		close(f.cond)
		f.cond = make(chan struct{})
	}
}

// conntrackIdle: a tracked flow seen within this long still uses its
// addresses (the datapath's established-TCP lifetime).
const conntrackIdle = 6 * time.Hour

// fqdnExtender is an FQDNStore that can keep addresses in use alive
// (dnsproxy.Cache); conntrackReader a Datapath that lists the addresses
// of tracked flows (bpf.Datapath).
type fqdnExtender interface {
	Extend(inUse func(netip.Addr) bool, within time.Duration) int
}

type conntrackReader interface {
	ConntrackAddrs(maxIdle time.Duration) (map[netip.Addr]bool, error)
}

// keepFQDNInUse pushes back the expiry of cached addresses a tracked
// connection still uses, by three resync intervals (the resync runs this
// before it looks for expired names): an address stays allowed while a
// connection uses it, and expires after its TTL otherwise.
func (a *Agent) keepFQDNInUse() {
	ext, ok := a.cfg.FQDN.(fqdnExtender)
	ct, ok2 := a.dp.(conntrackReader)
	if !ok || !ok2 {
		return
	}
	addrs, err := ct.ConntrackAddrs(conntrackIdle)
	if err != nil {
		a.log.Warn("fqdn: cannot read conntrack; cached addresses expire by TTL only", "error", err)
		return
	}
	if n := ext.Extend(func(ip netip.Addr) bool { return addrs[ip] }, 3*a.cfg.ResyncInterval); n > 0 {
		a.log.Debug("fqdn addresses kept: in use", "addresses", n)
	}
}

// fqdnChanged reports whether the cache's names differ from those last
// implemented (expiry: the resync recomputes then).
func (a *Agent) fqdnChanged() bool {
	if a.cfg.FQDN == nil {
		return false
	}
	names := a.cfg.FQDN.FQDNNames()
	f := a.fq
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(names) != len(f.have) {
		return true
	}
	for _, n := range names {
		if !slices.Equal(n.IPs, f.have[n.Name]) {
			return true
		}
	}
	return false
}
