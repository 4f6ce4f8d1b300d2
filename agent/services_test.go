package agent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/l7gate/l7gate/agentapi"
	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/policy"
)

// fakeLB records each sync with what the datapath's ipcache held then.
type fakeLB struct {
	mu    sync.Mutex
	dp    *fakeDatapath
	syncs []lbSync
	fail  netip.AddrPort // this frontend fails (map full)
}

type lbSync struct {
	services []bpf.LBService
	ipcache  map[netip.Addr]bool
}

func (l *fakeLB) SyncServices(s []bpf.LBService) (bpf.SyncStats, error) {
	l.dp.mu.Lock()
	ipc := map[netip.Addr]bool{}
	for _, e := range l.dp.ipcache {
		ipc[e.Prefix.Addr()] = true
	}
	l.dp.mu.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.syncs = append(l.syncs, lbSync{services: slices.Clone(s), ipcache: ipc})
	for _, x := range s {
		if x.Frontend == l.fail {
			return bpf.SyncStats{Added: len(s) - 1}, &bpf.LBSyncError{Failed: []bpf.FailedService{{Frontend: x.Frontend, Protocol: x.Protocol, Err: bpf.ErrMapFull}}}
		}
	}
	return bpf.SyncStats{Added: len(s)}, nil
}

func (l *fakeLB) last() lbSync {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.syncs[len(l.syncs)-1]
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
