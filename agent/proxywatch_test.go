package agent

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/l7gate/l7gate/agentapi"
	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/source"
)

// swapProcs is a Go proxy whose pid changes when the test hands it over;
// every listener taken is reported with the pid it was taken from.
type swapProcs struct {
	pid   atomic.Int64
	taken chan int
}

func (p *swapProcs) PID(goProxy bool) (int, error) {
	if !goProxy {
		return 0, errNoProxy
	}
	return int(p.pid.Load()), nil
}
func (p *swapProcs) CgroupID(pid int) (uint64, error) { return 4200 + uint64(pid), nil }
func (p *swapProcs) TakeListener(pid int, _ uint16) (*net.TCPListener, error) {
	p.taken <- pid
	return net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
}

// takeOverAdmin does what a successor proxy does with the admin socket:
// binds it at a temporary name and renames it over the path.
func takeOverAdmin(t *testing.T, runDir string, i int) {
	t.Helper()
	path := agentapi.ProxyAdminSocket(runDir)
	tmp := filepath.Join(runDir, ".p-"+strings.Repeat("x", i))
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	t.Cleanup(func() { ln.Close() })
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestSuccessorRegisteredAtOnce: a proxy that takes the admin socket over
// (a hand-over's successor) has its listeners registered, and its cgroup
// trusted, as soon as it serves the socket, not at the agent's next poll
// (RetryInterval): a successor that serves for less than that (handed
// over again, or crashed) was never registered — the flaky
// TestPrivilegedProxyHandOver ("registered proxy listeners 3 times").
// The poll is set to an hour here, so only the take-over can cause it.
func TestSuccessorRegisteredAtOnce(t *testing.T) {
	h := newHarness(t, starwarsVeths())
	procs := &swapProcs{taken: make(chan int, 100)}
	procs.pid.Store(42)
	h.procs, h.retry = procs, time.Hour
	takeOverAdmin(t, h.runDir, 1)
	h.start()
	h.send("../examples/starwars/objects.yaml", "../examples/starwars/policy-l7.yaml")
	if r := h.await("revision 1", anyReport); len(r.failures) != 0 {
		t.Fatalf("failures %+v", r.failures)
	}
	wait := func(pid int) {
		t.Helper()
		deadline := time.After(3 * time.Second)
		for {
			select {
			case got := <-procs.taken:
				if got == pid {
					return
				}
			case <-deadline:
				t.Fatalf("proxy %d serves the admin socket but its listener was not taken within 3s (datapath log %v)", pid, h.dp.logCopy())
			}
		}
	}
	wait(42)
	for i, pid := range []int{43, 44, 45} {
		// The successor serves for a moment only, then is handed over again.
		procs.pid.Store(int64(pid))
		takeOverAdmin(t, h.runDir, i+2)
		wait(pid)
		cg := fmt.Sprint(4200 + pid)
		if !slices.ContainsFunc(h.dp.logCopy(), func(l string) bool { return strings.HasPrefix(l, "trust cgroups") && strings.Contains(l, cg) }) {
			t.Errorf("cgroup of proxy %d not trusted: %v", pid, h.dp.logCopy())
		}
	}
}

// TestInvisibleProxyRegisteredOnTakeOver: while the admin socket is
// served from a PID namespace the agent cannot see (a rolling update's
// old pod: SO_PEERCRED says pid 0), the ACKed listener cannot be taken and
// its redirects are drops (fail closed); when the agent's own pod's proxy
// takes the socket over, the listener is registered and the redirects
// written at once, not at the next retry (an hour here).
func TestInvisibleProxyRegisteredOnTakeOver(t *testing.T) {
	h := newHarness(t, starwarsVeths())
	procs := &swapProcs{taken: make(chan int, 100)}
	h.procs, h.retry = procs, time.Hour // pid 0: not visible
	h.start()
	h.send("../examples/starwars/objects.yaml", "../examples/starwars/policy-l7.yaml")
	r := h.await("revision 1", anyReport)
	if !slices.ContainsFunc(r.failures, func(f source.EndpointFailure) bool { return f.Step == StepProxyListener }) {
		t.Fatalf("failures %+v, want the deathstar's listener not taken", r.failures)
	}
	if in := h.dp.entries(deathstar, policy.Ingress); hasVerdict(in, bpf.VerdictRedirect) {
		t.Fatalf("redirect written to a listener not taken: %+v", in)
	}
	procs.pid.Store(43)
	takeOverAdmin(t, h.runDir, 1)
	deadline := time.Now().Add(3 * time.Second)
	for !hasVerdict(h.dp.entries(deathstar, policy.Ingress), bpf.VerdictRedirect) {
		if time.Now().After(deadline) {
			t.Fatalf("proxy 43 took the admin socket; 3s later the deathstar's ingress is %+v (datapath log %v)", h.dp.entries(deathstar, policy.Ingress), h.dp.logCopy())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestPreviousProxyCgroupTrustedWhileDraining: when a proxy in another
// cgroup takes over (a rolling update's new pod), the cgroup of the one it
// replaced stays trusted for the drain (its in-flight requests' upstream
// packets must still be believed), also when a previous agent trusted it
// (the pinned set), and is dropped once the grace period ended.
func TestPreviousProxyCgroupTrustedWhileDraining(t *testing.T) {
	h := newHarness(t, starwarsVeths())
	h.dp.trusted = []uint64{4100} // the previous agent's proxy (pinned)
	var offset atomic.Int64
	h.now = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	procs := &swapProcs{taken: make(chan int, 100)}
	procs.pid.Store(42)
	h.procs = procs
	takeOverAdmin(t, h.runDir, 1)
	h.start()
	h.send("../examples/starwars/objects.yaml", "../examples/starwars/policy-l7.yaml")
	if r := h.await("revision 1", anyReport); len(r.failures) != 0 {
		t.Fatalf("failures %+v", r.failures)
	}
	trusted := func(want []uint64, what string) {
		t.Helper()
		deadline := time.Now().Add(3 * time.Second)
		for {
			got, _ := h.dp.TrustedProxyCgroups()
			if slices.Equal(got, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: trusted cgroups %v, want %v (datapath log %v)", what, got, want, h.dp.logCopy())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	trusted([]uint64{4100, 4242}, "first proxy of this agent")
	procs.pid.Store(43)
	takeOverAdmin(t, h.runDir, 2)
	trusted([]uint64{4100, 4242, 4243}, "after a hand-over to another cgroup")
	offset.Store(int64(previousProxyGrace + time.Second))
	trusted([]uint64{4243}, "after the grace period")
}

// TestTakeOverRegisteredBeforeFirstPolicy: a restarted (or a rolling
// update's new) agent has no policy until its source synced, but the
// saved readiness has the listeners; a proxy taking the admin socket then
// is registered (cgroup trusted) at once, before it gets a config and
// serves connections the datapath would otherwise not believe.
func TestTakeOverRegisteredBeforeFirstPolicy(t *testing.T) {
	h := newHarness(t, starwarsVeths())
	procs := &swapProcs{taken: make(chan int, 100)}
	procs.pid.Store(42)
	h.procs, h.retry = procs, time.Hour
	takeOverAdmin(t, h.runDir, 1)
	h.start()
	h.send("../examples/starwars/objects.yaml", "../examples/starwars/policy-l7.yaml")
	if r := h.await("revision 1", anyReport); len(r.failures) != 0 {
		t.Fatalf("failures %+v", r.failures)
	}
	h.stop()
	h.stop = nil
	for len(procs.taken) > 0 {
		<-procs.taken
	}
	h.start() // no source update: no policy yet
	// It registers the proxy it sees at start (registerVisibleProxy).
	select {
	case pid := <-procs.taken:
		if pid != 42 {
			t.Fatalf("restarted agent took proxy %d's listener, want 42's", pid)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("restarted agent did not register the running proxy at start")
	}
	procs.pid.Store(43)
	takeOverAdmin(t, h.runDir, 2)
	deadline := time.After(3 * time.Second)
	for {
		select {
		case pid := <-procs.taken:
			if pid == 43 {
				return
			}
		case <-deadline:
			t.Fatalf("proxy 43 took the admin socket of an agent without a policy yet; not registered within 3s (datapath log %v)", h.dp.logCopy())
		}
	}
}
