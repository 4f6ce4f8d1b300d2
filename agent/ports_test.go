package agent

import (
	"sync"
	"testing"
	"time"

	"github.com/l7gate/l7gate/bpftranslate"
	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/redirect"
)

// countingPorts is fakePorts counting Allocate calls.
type countingPorts struct {
	fakePorts
	mu    sync.Mutex
	calls int
}

func (p *countingPorts) Allocate(k redirect.PortKey) (uint16, error) {
	p.mu.Lock()
	p.calls++
	p.mu.Unlock()
	return p.fakePorts.Allocate(k)
}

// TestAllocatePortsRefreshesOncePerMinute: revisions within a minute take
// the port this agent allocated without writing the allocator's state
// again; after a minute, or once the port is no longer allocated
// (released), they allocate again.
func TestAllocatePortsRefreshesOncePerMinute(t *testing.T) {
	objs, errs := policy.Load("../examples/starwars/objects.yaml", "../examples/starwars/policy-l7.yaml")
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	snap, err := policy.Compute(objs, policy.NewIdentityAllocator())
	if err != nil {
		t.Fatal(err)
	}
	var local []bpftranslate.LocalEndpoint
	for i, ep := range snap.Endpoints {
		local = append(local, bpftranslate.LocalEndpoint{Endpoint: ep, Ifindex: 10 + i})
	}
	now := time.Unix(1000, 0)
	fp := &countingPorts{fakePorts: fakePorts{alloc: map[redirect.PortKey]uint16{}}}
	a := &Agent{cfg: Config{Ports: fp, now: func() time.Time { return now }}}
	first, ferrs := a.allocatePorts(snap, local)
	if len(first) == 0 || len(ferrs) > 0 {
		t.Fatalf("ports %v errors %v, want an HTTP listener's port", first, ferrs)
	}
	n := fp.calls
	check := func(step string, wantCalls int) {
		t.Helper()
		got, errs := a.allocatePorts(snap, local)
		if len(errs) > 0 || len(got) != len(first) {
			t.Fatalf("%s: ports %v errors %v", step, got, errs)
		}
		for k, p := range got {
			if want := fp.Allocations()[k]; p != want {
				t.Fatalf("%s: port %d for %s, the allocator holds %d", step, p, k, want)
			}
		}
		if fp.calls != wantCalls {
			t.Fatalf("%s: %d Allocate calls, want %d", step, fp.calls, wantCalls)
		}
	}
	now = now.Add(30 * time.Second)
	check("30 s later", n)
	for k := range first {
		fp.Release(k) // released (and re-allocated elsewhere: a new port)
		fp.next += 7
		break
	}
	check("released", n+1)
	now = now.Add(time.Minute)
	check("a minute later", n+1+len(first))
	now = now.Add(-time.Hour)
	check("the clock went back", n+1+2*len(first))
}
