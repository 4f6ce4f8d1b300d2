package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/l7gate/l7gate/agentapi"
	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/policy"
)

// fakeLB models the socket LB's maps: what each call was given, what
// the datapath's ipcache held then, and the services in force after it.
type fakeLB struct {
	mu    sync.Mutex
	dp    *fakeDatapath
	syncs []lbSync
	state map[bpf.LBFrontend]bpf.LBService
	fail  netip.AddrPort // this frontend fails (map full)
	err   error          // the next call fails with this and writes nothing
}

type lbSync struct {
	full     bool // SyncServices; else UpdateServices
	upsert   []bpf.LBService
	remove   []bpf.LBFrontend
	services []bpf.LBService // in force after the call, by frontend
	ipcache  map[netip.Addr]bool
}

func (l *fakeLB) SyncServices(s []bpf.LBService) (bpf.SyncStats, error) {
	return l.write(true, s, nil)
}

func (l *fakeLB) UpdateServices(upsert []bpf.LBService, remove []bpf.LBFrontend) (bpf.SyncStats, error) {
	return l.write(false, upsert, remove)
}

func (l *fakeLB) write(full bool, upsert []bpf.LBService, remove []bpf.LBFrontend) (bpf.SyncStats, error) {
	l.dp.mu.Lock()
	ipc := map[netip.Addr]bool{}
	for _, e := range l.dp.ipcache {
		ipc[e.Prefix.Addr()] = true
	}
	l.dp.mu.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		err := l.err
		l.err = nil
		return bpf.SyncStats{}, err
	}
	if full || l.state == nil {
		l.state = map[bpf.LBFrontend]bpf.LBService{}
	}
	for _, r := range remove {
		delete(l.state, r)
	}
	var failed []bpf.FailedService
	for _, x := range upsert {
		k := bpf.LBFrontend{Frontend: x.Frontend, Protocol: x.Protocol}
		if x.Frontend == l.fail {
			// Written as refusing connections, as the real one does.
			l.state[k] = bpf.LBService{Frontend: x.Frontend, Protocol: x.Protocol}
			failed = append(failed, bpf.FailedService{Frontend: x.Frontend, Protocol: x.Protocol, Err: bpf.ErrMapFull})
			continue
		}
		l.state[k] = x
	}
	var now []bpf.LBService
	for _, v := range l.state {
		now = append(now, v)
	}
	slices.SortFunc(now, func(a, b bpf.LBService) int { return a.Frontend.Compare(b.Frontend) })
	l.syncs = append(l.syncs, lbSync{full: full, upsert: slices.Clone(upsert), remove: slices.Clone(remove), services: now, ipcache: ipc})
	st := bpf.SyncStats{Added: len(upsert) - len(failed), Deleted: len(remove)}
	if failed != nil {
		return st, &bpf.LBSyncError{Failed: failed}
	}
	return st, nil
}

func (l *fakeLB) last() lbSync {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.syncs[len(l.syncs)-1]
}

func (l *fakeLB) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.syncs)
}

const deathstarService = `
apiVersion: v1
kind: Service
metadata: {name: deathstar, namespace: default}
spec: {clusterIP: 198.19.1.10, selector: {class: deathstar}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: stuck, namespace: default}
spec: {clusterIP: 198.19.1.11, ports: [{port: 80}]}
`

// TestServicesFollowIPCache: the socket load balancer is given the
// Service frontends after the ipcache holds their backends (a connection
// to a new backend is judged by its identity, never by the address's
// previous owner), and the status names each frontend and what failed.
func TestServicesFollowIPCache(t *testing.T) {
	h := newHarness(t, starwarsVeths())
	lb := &fakeLB{dp: h.dp, fail: netip.MustParseAddrPort("198.19.1.11:80")}
	h.lb = lb
	h.start()
	objs, errs := policy.Load("../examples/starwars/objects.yaml")
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	svc := mustDecodeObjects(t, deathstarService)
	objs.Merge(svc)
	objs.DeriveEndpointSlices()
	h.sendObjects(objs)
	h.await("revision 1", anyReport)
	got := lb.last()
	if len(got.services) != 2 || got.services[0].Frontend.String() != "198.19.1.10:80" ||
		fmt.Sprint(got.services[0].Backends) != "[198.18.1.10:80]" || len(got.services[1].Backends) != 0 {
		t.Fatalf("services %+v", got.services)
	}
	if !got.ipcache[netip.MustParseAddr("198.18.1.10")] {
		t.Error("the backend was not in the ipcache when the socket LB got it")
	}
	// A new backend pod: in the ipcache before the LB sends anything there.
	more := mustDecodeObjects(t, `apiVersion: v1
kind: Pod
metadata: {name: deathstar-2, namespace: default, labels: {class: deathstar}}
status: {podIP: 198.18.1.20}
`)
	objs2, _ := policy.Load("../examples/starwars/objects.yaml")
	objs2.Merge(svc)
	objs2.Merge(more)
	objs2.DeriveEndpointSlices()
	h.sendObjects(objs2)
	h.await("revision 2", func(r report) bool { return r.rev == 2 })
	got = lb.last()
	if fmt.Sprint(got.services[0].Backends) != "[198.18.1.10:80 198.18.1.20:80]" {
		t.Fatalf("backends %v", got.services[0].Backends)
	}
	if !got.ipcache[netip.MustParseAddr("198.18.1.20")] {
		t.Error("a new backend reached the socket LB before the ipcache")
	}
	st := fetchStatus(t, h)
	if len(st.Services) != 2 || st.Services[0].Error != "" || st.Services[1].Error == "" || st.Services[0].State != policy.FrontendReady {
		t.Errorf("status services %+v", st.Services)
	}
}

func mustDecodeObjects(t *testing.T, doc string) *policy.Objects {
	t.Helper()
	objs, errs := policy.Decode("test.yaml", []byte(doc))
	if len(errs) > 0 {
		t.Fatal(errors.Join(errs...))
	}
	return objs
}

// fetchStatus reads the agent's status API; the server starts beside the
// pipeline, so its socket may not exist yet when the first revisions are in.
func fetchStatus(t *testing.T, h *harness) *agentapi.Status {
	t.Helper()
	var err error
	for range 250 {
		var st *agentapi.Status
		if st, err = agentapi.FetchStatus(context.Background(), h.runDir); err == nil {
			return st
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal(err)
	return nil
}

// TestServicesIncremental: after one full sync the agent writes only what
// changed (one Service's new backend, a Service gone), resends a frontend
// that failed until it is written (or removes it when its Service goes),
// and after a write that wrote nothing it sends the change again.
func TestServicesIncremental(t *testing.T) {
	h := newHarness(t, starwarsVeths())
	lb := &fakeLB{dp: h.dp, fail: netip.MustParseAddrPort("198.19.1.11:80")}
	h.lb = lb
	h.start()
	svc := mustDecodeObjects(t, deathstarService)
	pod := func(name, ip string) *policy.Objects {
		return mustDecodeObjects(t, fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %s, namespace: default, labels: {class: deathstar}}
status: {podIP: %s}
`, name, ip))
	}
	send := func(rev uint64, svcs *policy.Objects, extra ...*policy.Objects) {
		t.Helper()
		objs, errs := policy.Load("../examples/starwars/objects.yaml")
		if len(errs) > 0 {
			t.Fatal(errs)
		}
		if svcs != nil {
			objs.Merge(svcs)
		}
		for _, e := range extra {
			objs.Merge(e)
		}
		objs.DeriveEndpointSlices()
		h.sendObjects(objs)
		h.await(fmt.Sprintf("revision %d", rev), func(r report) bool { return r.rev == rev })
	}
	frontends := func(fs []bpf.LBFrontend) string {
		var out []string
		for _, f := range fs {
			out = append(out, f.Frontend.String())
		}
		return fmt.Sprint(out)
	}
	upserted := func(s []bpf.LBService) string {
		var out []string
		for _, x := range s {
			out = append(out, fmt.Sprintf("%s%v", x.Frontend, x.Backends))
		}
		return fmt.Sprint(out)
	}

	send(1, svc)
	if n, first := lb.count(), lb.last(); n != 1 || !first.full || len(first.services) != 2 {
		t.Fatalf("first write: %d calls, last %+v", n, first)
	}

	// One more deathstar backend: deathstar written, and stuck again
	// (it failed); nothing else.
	send(2, svc, pod("deathstar-2", "198.18.1.20"))
	got := lb.last()
	if got.full || upserted(got.upsert) != "[198.19.1.10:80[198.18.1.10:80 198.18.1.20:80] 198.19.1.11:80[]]" || len(got.remove) != 0 {
		t.Fatalf("one backend added: full=%v upsert %s remove %s", got.full, upserted(got.upsert), frontends(got.remove))
	}

	// The failing Service deleted: removed from the maps (it refused
	// connections there), the other one untouched.
	deathstarOnly := mustDecodeObjects(t, deathstarService[:strings.Index(deathstarService, "---")])
	send(3, deathstarOnly, pod("deathstar-2", "198.18.1.20"))
	got = lb.last()
	if got.full || len(got.upsert) != 0 || frontends(got.remove) != "[198.19.1.11:80]" {
		t.Fatalf("service deleted: full=%v upsert %s remove %s", got.full, upserted(got.upsert), frontends(got.remove))
	}
	if len(got.services) != 1 || got.services[0].Frontend.String() != "198.19.1.10:80" {
		t.Fatalf("in force after the delete: %+v", got.services)
	}

	// A write that writes nothing: the status says so, and the next
	// revision sends the change again.
	calls := lb.count()
	lb.mu.Lock()
	lb.err = errors.New("map update: boom")
	lb.mu.Unlock()
	send(4, deathstarOnly, pod("deathstar-2", "198.18.1.20"), pod("deathstar-3", "198.18.1.30"))
	if lb.count() != calls {
		t.Fatalf("the failed write was recorded as written")
	}
	st := fetchStatus(t, h)
	if len(st.Services) != 1 || !strings.Contains(st.Services[0].Error, "boom") {
		t.Errorf("status after a failed write: %+v", st.Services)
	}
	unrelated := mustDecodeObjects(t, `apiVersion: v1
kind: Pod
metadata: {name: bystander, namespace: default, labels: {class: bystander}}
status: {podIP: 198.18.1.40}
`)
	send(5, deathstarOnly, pod("deathstar-2", "198.18.1.20"), pod("deathstar-3", "198.18.1.30"), unrelated)
	got = lb.last()
	if got.full || upserted(got.upsert) != "[198.19.1.10:80[198.18.1.10:80 198.18.1.20:80 198.18.1.30:80]]" {
		t.Fatalf("after a failed write: full=%v upsert %s", got.full, upserted(got.upsert))
	}
}
