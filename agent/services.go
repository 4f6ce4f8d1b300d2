package agent

import (
	"errors"
	"fmt"
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
type ServiceLB interface {
	SyncServices([]bpf.LBService) (bpf.SyncStats, error)
}

// servicesState is what the socket load balancer was last given, for the
// status API.
type servicesState struct {
	mu        sync.Mutex
	frontends []agentapi.ServiceStatus
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
	st, err := a.cfg.ServiceLB.SyncServices(desired)
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
