package dnsproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	mdns "github.com/miekg/dns"

	"github.com/l7gate/l7gate/agentapi"
	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/policy"
)

// testClock is a clock the test moves.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// testAgent is the agent's side of POST /fqdn: the real API server on a
// Unix socket and the agent's FQDN store (a Cache, as cmd/l7gate gives
// the agent), on the test's clock. It counts round trips; fail makes
// LearnFQDN fail (the datapath not updated).
type testAgent struct {
	cache  *Cache
	trips  atomic.Int64
	fail   atomic.Bool
	sock   string
	stop   context.CancelFunc
	served chan struct{}
}

func (a *testAgent) Status() agentapi.Status              { return agentapi.Status{} }
func (a *testAgent) Rules() map[uint32]policy.Provenance  { return nil }
func (a *testAgent) Flows(uint64) ([]flow.Record, uint64) { return nil, 0 }
func (a *testAgent) LearnFQDN(_ context.Context, ans agentapi.FQDNAnswer) error {
	a.trips.Add(1)
	if a.fail.Load() {
		return errors.New("datapath not updated")
	}
	if !a.cache.Insert(ans.Name, ans.IPs, time.Duration(ans.TTLSeconds)*time.Second) {
		return errors.New("cache full")
	}
	return nil
}

// serve (re)starts the API server on the agent's socket.
func (a *testAgent) serve(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	a.stop, a.served = cancel, make(chan struct{})
	go func(done chan struct{}) {
		defer close(done)
		if err := agentapi.Serve(ctx, a.sock, a); err != nil {
			t.Errorf("agent api: %v", err)
		}
	}(a.served)
	waitFor(t, "the agent's socket", func() bool {
		c, err := net.Dial("unix", a.sock)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

func (a *testAgent) shutdown() {
	a.stop()
	<-a.served
}

// expiry is when the agent's cache lets ip of name expire (zero: absent).
func (a *testAgent) expiry(name string, ip netip.Addr) time.Time {
	for _, n := range a.cache.State().Names {
		if n.Name == name {
			for _, x := range n.IPs {
				if x.IP == ip {
					return x.Expires
				}
			}
		}
	}
	return time.Time{}
}

// fastSetup is a proxy in front of a server answering www.example.com
// with the addresses in ips (TTL 30), learning through a real agent API
// client and server.
type fastSetup struct {
	*testProxy
	clock *testClock
	agent *testAgent
	fc    *agentapi.FQDNClient
	ips   atomic.Pointer[[]string]
}

func startFast(t *testing.T, mod func(*Config)) *fastSetup {
	t.Helper()
	clock := &testClock{now: time.Date(2026, 12, 7, 8, 0, 0, 0, time.UTC)}
	// The agent's cache with a minimum TTL under the answers' (30 s), so
	// what it keeps is what the proxy asked for.
	cache, err := NewCache(CacheConfig{MinTTL: time.Second, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	s := &fastSetup{clock: clock}
	s.agent = &testAgent{cache: cache, sock: filepath.Join(t.TempDir(), "agent.sock")}
	s.agent.serve(t)
	t.Cleanup(s.agent.shutdown)
	s.fc = agentapi.NewFQDNClient(s.agent.sock)
	s.setIPs("198.18.2.1")
	h := mdns.HandlerFunc(func(w mdns.ResponseWriter, r *mdns.Msg) {
		m := new(mdns.Msg)
		m.SetReply(r)
		if q := r.Question[0]; strings.EqualFold(q.Name, "www.example.com.") && q.Qtype == mdns.TypeA {
			for _, ip := range *s.ips.Load() {
				rr, _ := mdns.NewRR("www.example.com. 30 IN A " + ip)
				m.Answer = append(m.Answer, rr)
			}
		} else {
			m.Rcode = mdns.RcodeNameError
		}
		w.WriteMsg(m)
	})
	s.testProxy = startProxyWith(t, h, func(c *Config, _ *CacheConfig) {
		c.Now = clock.Now
		c.HoldTimeout = 2 * time.Second
		c.Learn = func(ctx context.Context, name string, ips []netip.Addr, ttl time.Duration) error {
			return s.fc.Learn(ctx, agentapi.FQDNAnswer{Name: name, IPs: ips, TTLSeconds: uint32(ttl / time.Second)})
		}
		c.AgentEpoch = s.fc.Epoch
		if mod != nil {
			mod(c)
		}
	})
	return s
}

func (s *fastSetup) setIPs(ips ...string) { s.ips.Store(&ips) }

// query asks for www.example.com A (over proto) and checks the answer
// has the addresses the server gives now.
func (s *fastSetup) query(t *testing.T, proto string) {
	t.Helper()
	m := new(mdns.Msg)
	m.SetQuestion("www.example.com.", mdns.TypeA)
	r, _, err := (&mdns.Client{Net: proto, Timeout: 10 * time.Second}).Exchange(m, s.addr.String())
	if err != nil {
		t.Fatalf("query: %v", err)
	}
	var got []string
	for _, rr := range r.Answer {
		if a, ok := rr.(*mdns.A); ok {
			got = append(got, a.A.String())
		}
	}
	if want := *s.ips.Load(); r.Rcode != mdns.RcodeSuccess || !slices.Equal(got, want) {
		t.Fatalf("answer %s %v, want %v", mdns.RcodeToString[r.Rcode], got, want)
	}
}

// waitFor waits (bounded) until cond holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// settled waits until no refresh is in flight (every Learn started has
// returned).
func (s *fastSetup) settled(t *testing.T) {
	t.Helper()
	waitFor(t, "refreshes to finish", func() bool {
		st := s.Stats()
		return st.Learns == st.Held+st.HoldTimeouts+st.Refreshes
	})
}

// TestFastPathKnownAnswerReleasedWithoutRoundTrip: the first answer for
// a name is held for one round trip to the agent; the same answer again
// (UDP and TCP), its addresses confirmed for longer than its TTL, is
// released with none.
func TestFastPathKnownAnswerReleasedWithoutRoundTrip(t *testing.T) {
	s := startFast(t, nil)
	for i := range 10 {
		proto := "udp"
		if i%2 == 1 {
			proto = "tcp"
		}
		s.query(t, proto)
	}
	if n := s.agent.trips.Load(); n != 1 {
		t.Errorf("%d round trips to the agent for 10 answers of a known name, want 1", n)
	}
	if st := s.Stats(); st.Held != 1 || st.Known != 9 || st.HoldTimeouts != 0 || st.Refreshes != 0 {
		t.Errorf("stats %+v: want 1 held, 9 known", st)
	}
}

// TestFastPathChangedAddressesHeld: an answer with an address the agent
// did not confirm is held (a round trip); a subset of confirmed
// addresses is not.
func TestFastPathChangedAddressesHeld(t *testing.T) {
	s := startFast(t, nil)
	steps := []struct {
		ips   []string
		trips int64
	}{
		{[]string{"198.18.2.1"}, 1},               // new name: held
		{[]string{"198.18.2.1"}, 1},               // known
		{[]string{"198.18.2.2"}, 2},               // a new address: held
		{[]string{"198.18.2.1", "198.18.2.2"}, 2}, // both confirmed: known
		{[]string{"198.18.2.1", "198.18.2.3"}, 3}, // one new: held
		{[]string{"198.18.2.3"}, 3},               // subset: known
	}
	for i, st := range steps {
		s.setIPs(st.ips...)
		s.query(t, "udp")
		if n := s.agent.trips.Load(); n != st.trips {
			t.Fatalf("step %d (%v): %d round trips, want %d", i, st.ips, n, st.trips)
		}
	}
	if st := s.Stats(); st.Held != 3 || st.Known != 3 {
		t.Errorf("stats %+v: want 3 held, 3 known", st)
	}
}

// TestFastPathClearedOnConfigChange: a new config (policy or toFQDNs
// selectors from xDS) forgets what was confirmed: the next answer is
// held again.
func TestFastPathClearedOnConfigChange(t *testing.T) {
	s := startFast(t, nil)
	s.query(t, "udp")
	s.query(t, "udp")
	if n := s.agent.trips.Load(); n != 1 {
		t.Fatalf("%d round trips before the config change, want 1", n)
	}
	snap, sels := policyFor(t, s.server.Port())
	pol, err := NewSnapshotPolicy(snap)
	if err != nil {
		t.Fatal(err)
	}
	s.SetPolicy(pol)
	s.query(t, "udp")
	if n := s.agent.trips.Load(); n != 2 {
		t.Errorf("after SetPolicy: %d round trips, want 2 (held again)", n)
	}
	s.query(t, "udp")
	s.SetFQDNSelectors(sels)
	s.query(t, "udp")
	if n := s.agent.trips.Load(); n != 3 {
		t.Errorf("after SetFQDNSelectors: %d round trips, want 3 (held again)", n)
	}
	if st := s.Stats(); st.FastClears < 2 || st.Held != 3 || st.Known != 2 {
		t.Errorf("stats %+v: want 2 clears, 3 held, 2 known", st)
	}
}

// TestFastPathExpiredEntryHeld: once the agent's expiry (what the proxy
// asked for: TTL 30 s + 5 s headroom) no longer covers a new answer's
// whole TTL, the answer is held again.
func TestFastPathExpiredEntryHeld(t *testing.T) {
	s := startFast(t, nil)
	s.query(t, "udp")
	ip := netip.MustParseAddr("198.18.2.1")
	t0 := s.clock.Now()
	if exp := s.agent.expiry("www.example.com.", ip); !exp.Equal(t0.Add(35 * time.Second)) {
		t.Fatalf("agent expiry %v, want learn time + 35 s", exp)
	}
	// 0.9 s later: still covered (35 - 30 > 0.9), no refresh due yet.
	s.clock.Add(900 * time.Millisecond)
	s.query(t, "udp")
	if n := s.agent.trips.Load(); n != 1 {
		t.Fatalf("%d round trips 0.9 s later, want 1", n)
	}
	// 5.1 s after the learn: the agent keeps the address 29.9 s more,
	// an answer with TTL 30 s is not covered: held.
	s.clock.Add(4200 * time.Millisecond)
	s.query(t, "udp")
	if n := s.agent.trips.Load(); n != 2 {
		t.Errorf("%d round trips once the entry no longer covers the TTL, want 2 (held)", n)
	}
	if st := s.Stats(); st.Held != 2 || st.Known != 1 {
		t.Errorf("stats %+v: want 2 held, 1 known", st)
	}
}

// TestFastPathRefreshAtMostOncePerSecond: hits refresh the name at the
// agent in the background, at most once a second (one at a time), and
// that keeps the agent's expiry ahead of every answer released, so the
// fast path keeps going for far longer than one learn's headroom.
func TestFastPathRefreshAtMostOncePerSecond(t *testing.T) {
	s := startFast(t, nil)
	ip := netip.MustParseAddr("198.18.2.1")
	s.query(t, "udp")
	t0 := s.clock.Now()
	const step = 200 * time.Millisecond
	queries := 1
	for s.clock.Now().Sub(t0) < 20*time.Second {
		s.clock.Add(step)
		for range 3 {
			s.query(t, "udp")
			queries++
			// An answer just released (TTL 30 s): the agent keeps its
			// address for at least that long.
			now := s.clock.Now()
			if exp := s.agent.expiry("www.example.com.", ip); exp.Before(now.Add(30 * time.Second)) {
				t.Fatalf("at +%v: answer released, the agent keeps its address only until +%v", now.Sub(t0), exp.Sub(t0))
			}
		}
		s.settled(t)
		// What the proxy assumes never outruns the agent.
		s.fast.mu.Lock()
		for _, x := range s.fast.names["www.example.com."].ips {
			if exp := s.agent.expiry("www.example.com.", x.ip); x.until.After(exp) {
				t.Errorf("proxy assumes %v until +%v, the agent keeps it until +%v", x.ip, x.until.Sub(t0), exp.Sub(t0))
			}
		}
		s.fast.mu.Unlock()
	}
	st := s.Stats()
	// 20 s of hits: one refresh per second at most (the first due 1 s
	// after the learn) and, as hits never stopped, at least one every
	// 1.2 s (the clock's step past a second).
	if st.Refreshes > 20 || st.Refreshes < 16 {
		t.Errorf("%d refreshes over 20 s of hits, want 16..20 (at most one a second)", st.Refreshes)
	}
	if st.Held != 1 || st.Known != uint64(queries-1) || st.RefreshErrors != 0 {
		t.Errorf("stats %+v: want 1 held, %d known", st, queries-1)
	}
	if n := s.agent.trips.Load(); n != int64(1+st.Refreshes) {
		t.Errorf("%d round trips, want 1 + %d refreshes", n, st.Refreshes)
	}
}

// TestFastPathFailingAgent: a refresh the agent fails clears the fast
// path: the next answer takes the hold path, which (the agent failing)
// releases it after Learn failed, counted as documented.
func TestFastPathFailingAgent(t *testing.T) {
	s := startFast(t, nil)
	s.query(t, "udp")
	s.agent.fail.Store(true)
	s.clock.Add(time.Second)
	s.query(t, "udp") // known; its refresh fails
	s.settled(t)
	if st := s.Stats(); st.Known != 1 || st.RefreshErrors != 1 || st.FastNames != 0 {
		t.Fatalf("stats %+v: want 1 known, 1 refresh error, nothing remembered", st)
	}
	s.query(t, "udp")
	st := s.Stats()
	if st.Known != 1 || st.HoldTimeouts != 1 {
		t.Errorf("stats %+v: want the answer after the failed refresh held (1 hold timeout)", st)
	}
	if recs := s.recs.find("www.example.com.", "A"); len(recs) != 3 || !strings.Contains(recs[2].Error, "datapath not updated") {
		t.Errorf("records %+v: want the third answer named released before the datapath had it", recs)
	}
	// The agent recovers: held once, then known again.
	s.agent.fail.Store(false)
	s.query(t, "udp")
	s.query(t, "udp")
	if st := s.Stats(); st.Held != 2 || st.Known != 2 {
		t.Errorf("stats %+v after the agent recovered: want 2 held, 2 known", st)
	}
}

// TestFastPathHangingAgentHoldTimeout: an agent that does not answer
// holds a new answer for HoldTimeout, then it is released and counted.
func TestFastPathHangingAgentHoldTimeout(t *testing.T) {
	block := make(chan struct{})
	defer close(block)
	var calls atomic.Int64
	s := startFast(t, func(c *Config) {
		c.HoldTimeout = 300 * time.Millisecond
		learn := c.Learn
		c.Learn = func(ctx context.Context, name string, ips []netip.Addr, ttl time.Duration) error {
			if calls.Add(1) == 1 {
				return learn(ctx, name, ips, ttl)
			}
			select { // the agent hangs from now on
			case <-block:
			case <-ctx.Done():
			}
			return ctx.Err()
		}
	})
	s.query(t, "udp")
	s.setIPs("198.18.2.9") // a new address: held
	start := time.Now()
	s.query(t, "udp")
	if d := time.Since(start); d < 300*time.Millisecond {
		t.Errorf("answered after %v, before the hold timeout", d)
	}
	if st := s.Stats(); st.HoldTimeouts != 1 || st.Held != 1 || st.FastNames != 0 {
		t.Errorf("stats %+v: want 1 hold timeout, and the fast path cleared", st)
	}
}

// TestFastPathAgentReconnectClears: the agent's API goes away (a
// restart): the client's connection ends, the epoch changes and what
// the old agent confirmed is forgotten — answers are held again, against
// the new agent.
func TestFastPathAgentReconnectClears(t *testing.T) {
	s := startFast(t, nil)
	s.query(t, "udp")
	s.query(t, "udp")
	e := s.fc.Epoch()
	s.agent.shutdown()
	waitFor(t, "the agent connection to end", func() bool { return s.fc.Epoch() != e })
	s.agent.serve(t)
	s.query(t, "udp") // held: the new agent confirms it
	s.query(t, "udp") // known again
	st := s.Stats()
	if st.Known != 2 || st.Held != 2 || st.FastClears < 1 {
		t.Errorf("stats %+v: want 2 held (before and after the restart), 2 known", st)
	}
	if n := s.agent.trips.Load(); n != 2 {
		t.Errorf("%d round trips, want 2", n)
	}
}

// TestFastPathScopeAndBounds: a client identity that never had the
// name confirmed is held; names past FastPathNames are not remembered
// (counted) and keep being held.
func TestFastPathScopeAndBounds(t *testing.T) {
	f := newFastCache(2)
	now := time.Date(2026, 12, 7, 8, 0, 0, 0, time.UTC)
	ips := []netip.Addr{netip.MustParseAddr("198.18.2.1")}
	gen := f.begin(0)
	f.learned(gen, 100, "a.example.", ips, now, now.Add(35*time.Second), false)
	if ok, _ := f.hit(100, "a.example.", ips, 30*time.Second, now, 0); !ok {
		t.Fatal("confirmed answer not a hit")
	}
	if ok, _ := f.hit(101, "a.example.", ips, 30*time.Second, now, 0); ok {
		t.Error("another identity's answer released on the first's confirmation")
	}
	if ok, _ := f.hit(100, "a.example.", ips, 30*time.Second, now, 1); ok {
		t.Error("hit across an agent epoch change")
	}
	gen = f.begin(1)
	for i := range 3 {
		f.learned(gen, 100, fmt.Sprintf("n%d.example.", i), ips, now, now.Add(35*time.Second), false)
	}
	if names, _, overflow := f.stats(); names != 2 || overflow != 1 {
		t.Errorf("%d names, %d overflow: want 2 and 1", names, overflow)
	}
	if ok, _ := f.hit(100, "n2.example.", ips, 30*time.Second, now, 1); ok {
		t.Error("a name past the bound released")
	}
	// A Learn that started before a clear is not remembered.
	gen = f.begin(1)
	f.clear()
	f.learned(gen, 100, "late.example.", ips, now, now.Add(35*time.Second), false)
	if ok, _ := f.hit(100, "late.example.", ips, 30*time.Second, now, 1); ok {
		t.Error("a Learn from before the clear was remembered")
	}
}
