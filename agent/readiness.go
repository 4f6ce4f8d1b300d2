package agent

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/l7gate/l7gate/bpftranslate"
	"github.com/l7gate/l7gate/envoy"
	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/redirect"
	"github.com/l7gate/l7gate/xds"
	"github.com/l7gate/l7gate/xds/envoytranslate"
	"github.com/l7gate/l7gate/xds/server"
	"github.com/l7gate/l7gate/xds/translate"
)

type epDir struct {
	ep  string // namespace/name
	dir policy.Direction
}

// readiness is what each proxy has in force, as its ACKs say: which
// listener serves each (direction, parser) on which port, and which
// endpoint directions have their L7 policy there. A redirect is written
// only where both hold; why says what is missing otherwise.
type readiness struct {
	listeners map[consumerKind]map[redirect.PortKey]uint16
	endpoints map[consumerKind]map[epDir]bool
	lnWhy     map[consumerKind]map[redirect.PortKey]notReady
	epWhy     map[consumerKind]map[epDir]notReady
}

func newReadiness() readiness {
	r := readiness{listeners: map[consumerKind]map[redirect.PortKey]uint16{}, endpoints: map[consumerKind]map[epDir]bool{},
		lnWhy: map[consumerKind]map[redirect.PortKey]notReady{}, epWhy: map[consumerKind]map[epDir]notReady{}}
	for _, c := range []consumerKind{goProxy, envoyProxy} {
		r.listeners[c] = map[redirect.PortKey]uint16{}
		r.endpoints[c] = map[epDir]bool{}
		r.lnWhy[c] = map[redirect.PortKey]notReady{}
		r.epWhy[c] = map[epDir]notReady{}
	}
	return r
}

// redirects reports whether ep's redirects in dir may go to port.
func (r *readiness) redirects(c consumerKind, ep string, dir policy.Direction, k redirect.PortKey, port uint16) bool {
	return port != 0 && r.listeners[c] != nil && r.listeners[c][k] == port && r.endpoints[c][epDir{ep, dir}]
}

// why says why redirects does not hold.
func (r *readiness) why(c consumerKind, ep string, dir policy.Direction, k redirect.PortKey, port uint16) (string, string) {
	if r.listeners[c] == nil || r.listeners[c][k] != port {
		if w, ok := r.lnWhy[c][k]; ok {
			return w.step, w.msg
		}
		return StepProxyACK, fmt.Sprintf("%s has not ACKed listener %s on port %d", c, k, port)
	}
	if w, ok := r.epWhy[c][epDir{ep, dir}]; ok {
		return w.step, w.msg
	}
	return StepProxyACK, fmt.Sprintf("%s has not ACKed the endpoint's L7 policy", c)
}

// inForce: every resource in desired has the same version in acked.
func inForce(desired, acked map[string]string, names ...string) bool {
	if desired == nil {
		return false
	}
	for _, n := range names {
		if v, ok := desired[n]; !ok || acked[n] != v {
			return false
		}
	}
	return true
}

func allInForce(desired, acked map[string]string) bool {
	if desired == nil {
		return false
	}
	for n, v := range desired {
		if acked[n] != v {
			return false
		}
	}
	return true
}

// listenerResource is a listener as pushed: its key, port and resource name.
type listenerResource struct {
	key  redirect.PortKey
	port uint16
	name string
}

// setListeners records which of a proxy's listeners are in force, and why
// the others are not (excluded ones with their exclusion's reason).
func (r *readiness) setListeners(c consumerKind, lns []listenerResource, typeURL string, x XDS, id string,
	excluded map[redirect.PortKey]notReady, notACKed notReady) {
	desired, acked := x.ResourceVersions(id, typeURL)
	for _, l := range lns {
		if inForce(desired, acked, l.name) {
			r.listeners[c][l.key] = l.port
		} else {
			r.lnWhy[c][l.key] = notACKed
		}
	}
	for k, w := range excluded {
		r.lnWhy[c][k] = w
	}
}

// readinessAfter reads from the xDS server what each proxy has in force
// after pushing st; excl and the push's error name why the rest is not.
func (a *Agent) readinessAfter(st XDSState, snap *policy.Snapshot, local []bpftranslate.LocalEndpoint, excl *exclusions, pushErr error) readiness {
	r := newReadiness()
	notACKed := func(c consumerKind) notReady {
		id := a.consumerID(c)
		connected := false
		for _, cs := range a.xds.Consumers() {
			if cs.ID == id && cs.Streams > 0 {
				connected = true
			}
		}
		var pend *server.PendingError
		switch {
		case !connected:
			return notReady{StepProxyACK, fmt.Sprintf("%s (%s) is not connected to the xDS server", c, id)}
		case errors.As(pushErr, &pend), errors.Is(pushErr, errAgentACKTimeout):
			return notReady{StepProxyACK, fmt.Sprintf("%s (%s) did not ACK in time: %v", c, id, pushErr)}
		}
		return notReady{StepProxyACK, fmt.Sprintf("%s (%s) has not ACKed it", c, id)}
	}

	// The Go proxy: its listeners, the identity memberships every
	// endpoint's rules depend on, and each endpoint's NetworkPolicy.
	goID := a.consumerID(goProxy)
	var lns []listenerResource
	for _, l := range st.GoProxy.Listeners {
		lns = append(lns, listenerResource{portKey(l.Direction, l.Parser), l.ProxyPort, l.Name()})
	}
	r.setListeners(goProxy, lns, xds.TypeListener, a.xds, goID, excl.goListeners, notACKed(goProxy))
	dm, am := a.xds.ResourceVersions(goID, xds.TypeIdentityMembership)
	members := allInForce(dm, am)
	dp, ap := a.xds.ResourceVersions(goID, xds.TypeNetworkPolicy)
	sent := map[string]bool{}
	for _, ep := range st.GoProxy.LocalEndpoints {
		sent[ep.Namespace+"/"+ep.Name] = true
	}
	for _, ep := range local {
		k := ep.Key()
		set := func(ok bool, w notReady) {
			for _, d := range []policy.Direction{policy.Ingress, policy.Egress} {
				if ok {
					r.endpoints[goProxy][epDir{k, d}] = true
				} else {
					r.epWhy[goProxy][epDir{k, d}] = w
				}
			}
		}
		switch {
		case excl.goEndpoints[k] != (notReady{}):
			set(false, excl.goEndpoints[k])
		case !sent[k]:
		case members && inForce(dp, ap, translate.PolicyName(ep.Endpoint)):
			set(true, notReady{})
		default:
			set(false, notACKed(goProxy))
		}
	}
	if st.EnvoySnapshot == nil {
		return r
	}

	// Envoy: its listeners, the cluster every route forwards to, and each
	// endpoint identity's routes.
	envID := a.consumerID(envoyProxy)
	lns = nil
	for _, p := range st.Envoy.ProxyPorts {
		lns = append(lns, listenerResource{portKey(p.Direction, p.Parser), p.Port, envoytranslate.ListenerName(p)})
	}
	r.setListeners(envoyProxy, lns, resourcev3.ListenerType, a.xds, envID, excl.envoyPorts, notACKed(envoyProxy))
	dc, ac := a.xds.ResourceVersions(envID, resourcev3.ClusterType)
	clusters := allInForce(dc, ac)
	dr, ar := a.xds.ResourceVersions(envID, resourcev3.RouteType)
	for _, ep := range local {
		pol := snap.Policy(ep.Identity)
		if pol == nil {
			continue
		}
		for _, d := range []policy.Direction{policy.Ingress, policy.Egress} {
			var routes []string
			for _, rs := range pol.Direction(d).L7 {
				if rs.Parser == policy.ParserHTTP && rs.Protocol == policy.ProtoTCP {
					routes = append(routes, envoy.RouteName(d, ep.Identity, rs.Port))
				}
			}
			if len(routes) == 0 {
				continue
			}
			k := epDir{ep.Key(), d}
			switch w, out := excl.envoyIdentities[ep.Identity]; {
			case out:
				r.epWhy[envoyProxy][k] = w
			case clusters && inForce(dr, ar, routes...):
				r.endpoints[envoyProxy][k] = true
			default:
				r.epWhy[envoyProxy][k] = notACKed(envoyProxy)
			}
		}
	}
	return r
}

// ReadinessFile keeps, under a state dir, what the proxies had in force
// when the agent last looked: a restarted agent starts from it, so its
// first sync keeps the redirects the still-running proxies serve instead
// of dropping them until the first ACK. (A proxy that restarted meanwhile
// has no listener: the datapath drops what is redirected to it.)
func ReadinessFile(stateDir string) string { return filepath.Join(stateDir, "proxy-readiness.json") }

type savedReadiness struct {
	Listeners []savedListener `json:"listeners"`
	Endpoints []savedEndpoint `json:"endpoints"`
}

type savedListener struct {
	Envoy     bool   `json:"envoy,omitempty"`
	Direction string `json:"direction"`
	Parser    string `json:"parser"`
	Port      uint16 `json:"port"`
}

type savedEndpoint struct {
	Envoy     bool             `json:"envoy,omitempty"`
	Endpoint  string           `json:"endpoint"`
	Direction policy.Direction `json:"direction"`
}

func (r *readiness) saved() savedReadiness {
	var s savedReadiness
	for _, c := range []consumerKind{goProxy, envoyProxy} {
		for k, p := range r.listeners[c] {
			s.Listeners = append(s.Listeners, savedListener{Envoy: c == envoyProxy, Direction: k.Direction, Parser: k.Parser, Port: p})
		}
		for k, ok := range r.endpoints[c] {
			if ok {
				s.Endpoints = append(s.Endpoints, savedEndpoint{Envoy: c == envoyProxy, Endpoint: k.ep, Direction: k.dir})
			}
		}
	}
	slices.SortFunc(s.Listeners, func(x, y savedListener) int {
		return cmp.Or(compareBool(x.Envoy, y.Envoy), cmp.Compare(x.Direction, y.Direction), cmp.Compare(x.Parser, y.Parser))
	})
	slices.SortFunc(s.Endpoints, func(x, y savedEndpoint) int {
		return cmp.Or(compareBool(x.Envoy, y.Envoy), cmp.Compare(x.Endpoint, y.Endpoint), cmp.Compare(x.Direction, y.Direction))
	})
	return s
}

// compareBool orders false before true (the order of their names, which
// the saved file has always used), without formatting them per compare.
func compareBool(x, y bool) int {
	switch {
	case x == y:
		return 0
	case !x:
		return -1
	}
	return 1
}

func readinessFrom(s savedReadiness) readiness {
	r := newReadiness()
	kind := func(envoy bool) consumerKind {
		if envoy {
			return envoyProxy
		}
		return goProxy
	}
	for _, l := range s.Listeners {
		r.listeners[kind(l.Envoy)][redirect.PortKey{Direction: l.Direction, Parser: l.Parser}] = l.Port
	}
	for _, e := range s.Endpoints {
		r.endpoints[kind(e.Envoy)][epDir{e.Endpoint, e.Direction}] = true
	}
	return r
}

// loadReadiness starts from what the proxies had in force before a
// restart (nothing on a new node).
func (a *Agent) loadReadiness() readiness {
	data, err := os.ReadFile(ReadinessFile(a.cfg.StateDir))
	if err != nil {
		return newReadiness()
	}
	var s savedReadiness
	if err := json.Unmarshal(data, &s); err != nil {
		a.log.Warn("proxy readiness state unusable; redirects wait for the first ACK", "error", err)
		return newReadiness()
	}
	return readinessFrom(s)
}

// saveReadiness persists a.ready when it changed.
func (a *Agent) saveReadiness() {
	s := a.ready.saved()
	b, err := json.Marshal(s)
	if err != nil || string(b) == a.readySaved {
		return
	}
	if err := writeFileAtomic(ReadinessFile(a.cfg.StateDir), s); err != nil {
		a.log.Warn("persist proxy readiness", "error", err)
		return
	}
	a.readySaved = string(b)
}
