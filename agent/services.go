package agent

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/l7gate/l7gate/agentapi"
	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/source"
)

// ServiceLB is the socket-level load balancer (*bpf.SocketLB): Service
// frontends are translated to backends at connect()/sendmsg(), so the
// datapath's egress policy sees the backend pod.
//
// The agent gives it the whole set once (SyncServices, which also removes
// frontends pinned by a previous agent that no longer exist), then only
// what changed (UpdateServices): one changed EndpointSlice costs that
// Service's write, not a pass over every backend of the node.
type ServiceLB interface {
	SyncServices([]bpf.LBService) (bpf.SyncStats, error)
	UpdateServices(upsert []bpf.LBService, remove []bpf.LBFrontend) (bpf.SyncStats, error)
}

// servicesState is what the socket load balancer was last given, for the
// status API, and what is in force in it, for the next incremental update.
type servicesState struct {
	mu        sync.Mutex
	frontends []agentapi.ServiceStatus

	// synced: a full SyncServices has written the maps (inForce is
	// meaningful). inForce holds the services last written, by frontend;
	// retry the ones of those that failed (they refuse connections) and
	// are written again next time. Only syncServices (the agent's one
	// pipeline goroutine) touches them.
	synced  bool
	inForce map[bpf.LBFrontend]bpf.LBService
	retry   map[bpf.LBFrontend]bool
}

func (s *servicesState) list() []agentapi.ServiceStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := slices.Clone(s.frontends)
	if out == nil {
		out = []agentapi.ServiceStatus{}
	}
	return out
}

// syncServices gives the socket load balancer the frontends of u's
// Services as seen from this node. It runs after the ipcache and the
// policy maps are synced (implement step 1), so a connection sent to a new
// backend is judged by that backend's identity, never by a stale one. A
// frontend that cannot be written refuses connections (bpf.LBSyncError)
// and is named in the status; the others are synced. It returns the notes
// (frontends left to kube-proxy) as warnings.
func (a *Agent) syncServices(u *source.Update) []string {
	if a.cfg.ServiceLB == nil {
		return nil
	}
	fronts, notes := policy.ServiceFrontends(u.Objects, a.cfg.Node)
	desired := make([]bpf.LBService, 0, len(fronts))
	for _, f := range fronts {
		if f.State == policy.FrontendConflict {
			continue
		}
		s := bpf.LBService{Frontend: f.Address, Protocol: uint8(f.Protocol), Affinity: f.Affinity}
		for _, b := range f.Backends {
			s.Backends = append(s.Backends, b.Address)
		}
		desired = append(desired, s)
	}
	status := make([]agentapi.ServiceStatus, len(fronts))
	for i, f := range fronts {
		status[i] = agentapi.ServiceStatus{ServiceFrontend: f}
	}
	st, err := a.writeServices(desired)
	var se *bpf.LBSyncError
	switch {
	case errors.As(err, &se):
		for _, f := range se.Failed {
			i := slices.IndexFunc(status, func(s agentapi.ServiceStatus) bool {
				return s.Address == f.Frontend && uint8(s.Protocol) == f.Protocol
			})
			if i < 0 {
				continue
			}
			if f.Untranslated {
				status[i].Error = fmt.Sprintf("not load-balanced (left to kube-proxy): %v", f.Err)
			} else {
				status[i].Error = fmt.Sprintf("refuses connections: %v", f.Err)
			}
			a.log.Warn("service frontend not synced", "service", status[i].Service, "frontend", f.Frontend, "error", status[i].Error)
		}
	case err != nil:
		// Nothing was written: the previous frontends stay in force.
		for i := range status {
			status[i].Error = "not synced (previous state in force): " + err.Error()
		}
		a.log.Warn("service frontends not synced", "error", err)
	}
	if st.Added+st.Updated+st.Deleted > 0 {
		a.log.Info("service frontends synced", "frontends", len(desired), "stats", st.String())
	}
	a.services.mu.Lock()
	a.services.frontends = status
	a.services.mu.Unlock()
	return notes
}

// writeServices puts desired in force: the first time (or after a write
// that left the maps unknown) with one full SyncServices, afterwards with
// UpdateServices of the services that differ from what is in force and the
// frontends that are gone. A service named in an *LBSyncError is not in
// force (it refuses connections) and is sent again next time; any other
// error means nothing was written, so what is in force stays as it was.
func (a *Agent) writeServices(desired []bpf.LBService) (bpf.SyncStats, error) {
	s := &a.services
	want := make(map[bpf.LBFrontend]bpf.LBService, len(desired))
	for _, d := range desired {
		want[bpf.LBFrontend{Frontend: d.Frontend, Protocol: d.Protocol}] = d
	}
	var (
		st  bpf.SyncStats
		err error
	)
	if !s.synced {
		st, err = a.cfg.ServiceLB.SyncServices(desired)
		var se *bpf.LBSyncError
		if err != nil && !errors.As(err, &se) {
			return st, err
		}
		s.synced, s.inForce, s.retry = true, want, map[bpf.LBFrontend]bool{}
		s.markFailed(se)
		return st, err
	}
	var upsert []bpf.LBService
	var remove []bpf.LBFrontend
	for k, d := range want {
		if cur, ok := s.inForce[k]; !ok || s.retry[k] || !sameService(cur, d) {
			upsert = append(upsert, d)
		}
	}
	for k := range s.inForce {
		if _, ok := want[k]; !ok {
			remove = append(remove, k)
		}
	}
	if len(upsert) == 0 && len(remove) == 0 {
		return st, nil
	}
	slices.SortFunc(upsert, func(x, y bpf.LBService) int { return compareFrontend(x.Frontend, x.Protocol, y.Frontend, y.Protocol) })
	slices.SortFunc(remove, func(x, y bpf.LBFrontend) int { return compareFrontend(x.Frontend, x.Protocol, y.Frontend, y.Protocol) })
	st, err = a.cfg.ServiceLB.UpdateServices(upsert, remove)
	var se *bpf.LBSyncError
	if err != nil && !errors.As(err, &se) {
		return st, err
	}
	for _, r := range remove {
		delete(s.inForce, r)
		delete(s.retry, r)
	}
	for _, u := range upsert {
		k := bpf.LBFrontend{Frontend: u.Frontend, Protocol: u.Protocol}
		s.inForce[k] = u
		delete(s.retry, k)
	}
	s.markFailed(se)
	return st, err
}

// markFailed notes the services se names: they are in the maps but refuse
// connections, so they are written again on the next update (and removed
// when their Service goes, like any other).
func (s *servicesState) markFailed(se *bpf.LBSyncError) {
	if se == nil {
		return
	}
	for _, f := range se.Failed {
		s.retry[bpf.LBFrontend{Frontend: f.Frontend, Protocol: f.Protocol}] = true
	}
}

func sameService(a, b bpf.LBService) bool {
	return a.Frontend == b.Frontend && a.Protocol == b.Protocol && a.Affinity == b.Affinity && slices.Equal(a.Backends, b.Backends)
}

func compareFrontend(a netip.AddrPort, ap uint8, b netip.AddrPort, bp uint8) int {
	if c := a.Compare(b); c != 0 {
		return c
	}
	return int(ap) - int(bp)
}
