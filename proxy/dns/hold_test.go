package dnsproxy

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// TestAnswerHeldUntilLearned: the answer for a toFQDNs name reaches the
// client only after Learn returned (the datapath then has its addresses);
// a Learn that does not return in time releases the answer and is counted.
func TestAnswerHeldUntilLearned(t *testing.T) {
	release := make(chan struct{})
	learned := make(chan []netip.Addr, 4)
	p := startProxy(t, func(c *Config, _ *CacheConfig) {
		c.HoldTimeout = 5 * time.Second
		c.Learn = func(ctx context.Context, name string, ips []netip.Addr, ttl time.Duration) error {
			if name != "www.example.com." {
				return errors.New("unexpected name " + name)
			}
			learned <- ips
			select {
			case <-release:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	})
	got := make(chan error, 1)
	var answeredAt time.Time
	go func() {
		m := new(mdns.Msg)
		m.SetQuestion("www.example.com.", mdns.TypeA)
		r, _, err := (&mdns.Client{Timeout: 10 * time.Second}).Exchange(m, p.addr.String())
		answeredAt = time.Now()
		if err == nil && (r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 1) {
			err = errors.New("answer: " + r.String())
		}
		got <- err
	}()
	ips := <-learned
	if !slices.Equal(ips, []netip.Addr{netip.MustParseAddr("198.18.2.1")}) {
		t.Errorf("learned %v", ips)
	}
	select {
	case err := <-got:
		t.Fatalf("answer released before Learn returned (%v)", err)
	case <-time.After(300 * time.Millisecond):
	}
	releasedAt := time.Now()
	close(release)
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	if answeredAt.Before(releasedAt) {
		t.Errorf("answered at %v, before the release at %v", answeredAt, releasedAt)
	}
	if s := p.Stats(); s.Held != 1 || s.HoldTimeouts != 0 {
		t.Errorf("stats %+v: want 1 held, 0 timeouts", s)
	}
}

// TestAnswerReleasedAfterHoldTimeout: Learn never returns; the answer
// goes out after HoldTimeout and the miss is counted.
func TestAnswerReleasedAfterHoldTimeout(t *testing.T) {
	p := startProxy(t, func(c *Config, _ *CacheConfig) {
		c.HoldTimeout = 200 * time.Millisecond
		c.Learn = func(ctx context.Context, _ string, _ []netip.Addr, _ time.Duration) error {
			<-ctx.Done()
			return ctx.Err()
		}
	})
	m := new(mdns.Msg)
	m.SetQuestion("www.example.com.", mdns.TypeA)
	start := time.Now()
	r, _, err := (&mdns.Client{Timeout: 5 * time.Second}).Exchange(m, p.addr.String())
	if err != nil || r.Rcode != mdns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("answer %v %v", r, err)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Errorf("answered after %v, before the hold timeout", d)
	}
	if s := p.Stats(); s.HoldTimeouts != 1 || s.Held != 0 {
		t.Errorf("stats %+v: want 1 hold timeout", s)
	}
	recs := p.recs.find("www.example.com.", "A")
	if len(recs) != 1 || recs[0].Error == "" {
		t.Errorf("record %+v: want the released answer named", recs)
	}
}
