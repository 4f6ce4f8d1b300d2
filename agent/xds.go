package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/bpftranslate"
	"github.com/l7gate/l7gate/envoy"
	"github.com/l7gate/l7gate/envoy/bootstrap"
	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/redirect"
	"github.com/l7gate/l7gate/xds"
	"github.com/l7gate/l7gate/xds/envoytranslate"
	"github.com/l7gate/l7gate/xds/server"
	"github.com/l7gate/l7gate/xds/translate"
)

// XDSState is what the xDS server renders for every consumer.
type XDSState struct {
	// GoProxy is the Go proxy's input (xds/translate).
	GoProxy translate.Input
	// EnvoySnapshot is the policy Envoy enforces (nil: Envoy mode is off
	// and Envoy gets no resources); Envoy its translation config.
	EnvoySnapshot *policy.Snapshot
	Envoy         envoytranslate.Config
}

// XDSProducers render XDSState for the Go proxy ("l7proxy~") and Envoy
// ("envoy~").
func XDSProducers() map[string]server.Producer[XDSState] {
	return map[string]server.Producer[XDSState]{xds.L7ProxyPrefix: goProxyResources, xds.EnvoyPrefix: envoyResources}
}

// NewXDSServer returns the xDS server for the agent's state on socket;
// takeOver replaces a live socket (server.Config.TakeOver).
func NewXDSServer(socket string, ackTimeout time.Duration, takeOver bool, log *slog.Logger) (*server.Server[XDSState], error) {
	return server.New(server.Config[XDSState]{SocketPath: socket, Producers: XDSProducers(), ACKTimeout: ackTimeout, TakeOver: takeOver, Logger: log})
}

// ServerXDS adapts the xDS server to XDS.
type ServerXDS struct{ *server.Server[XDSState] }

// Update implements XDS.
func (s ServerXDS) Update(ctx context.Context, st XDSState) Completion {
	return s.Server.Update(ctx, st)
}

func goProxyResources(id string, st XDSState) (map[string][]proto.Message, error) {
	return translate.L7ProxyResources(id, st.GoProxy)
}

func envoyResources(_ string, st XDSState) (map[string][]proto.Message, error) {
	if st.EnvoySnapshot == nil {
		return map[string][]proto.Message{}, nil
	}
	res, err := envoytranslate.Translate(st.EnvoySnapshot, st.Envoy)
	if err != nil {
		return nil, err
	}
	out := map[string][]proto.Message{}
	for t, rs := range res.ByType() {
		msgs := make([]proto.Message, len(rs))
		for i, r := range rs {
			msgs[i] = r
		}
		out[string(t)] = msgs
	}
	return out, nil
}

// consumerKind is a kind of proxy.
type consumerKind int

const (
	goProxy consumerKind = iota
	envoyProxy
)

func (c consumerKind) String() string {
	if c == envoyProxy {
		return "Envoy"
	}
	return "the Go proxy"
}

// consumerOf is the proxy that serves parser.
func (a *Agent) consumerOf(parser string) consumerKind {
	if a.cfg.HTTPProxy == HTTPProxyEnvoy && parser == policy.ParserHTTP {
		return envoyProxy
	}
	return goProxy
}

func (a *Agent) consumerID(c consumerKind) string {
	if c == envoyProxy {
		return xds.EnvoyPrefix + a.cfg.Node
	}
	return xds.L7ProxyNodeID(a.cfg.Node)
}

// notReady says why something is not in force at a proxy.
type notReady struct{ step, msg string }

// exclusions are what a push leaves out after a proxy rejected it (or it
// could not be rendered): the endpoints and listeners concerned fail
// closed, the rest goes through.
type exclusions struct {
	goEndpoints     map[string]notReady // by endpoint key
	goListeners     map[redirect.PortKey]notReady
	envoyIdentities map[policy.Identity]notReady
	envoyPorts      map[redirect.PortKey]notReady
}

func newExclusions() *exclusions {
	return &exclusions{goEndpoints: map[string]notReady{}, goListeners: map[redirect.PortKey]notReady{},
		envoyIdentities: map[policy.Identity]notReady{}, envoyPorts: map[redirect.PortKey]notReady{}}
}

// errAgentACKTimeout: the agent's own bound on a wait (the server's
// completion has one too; this one guards against it never resolving).
var errAgentACKTimeout = errors.New("ACK timeout")

// maxPushAttempts bounds the pushes of one revision: each attempt after a
// rejection leaves out what the rejection concerned.
const maxPushAttempts = 5

// push publishes snap to the proxies and waits for their ACKs, leaving out
// what a proxy rejects; it then records what each proxy has in force
// (a.ready). Link changes while it waits attach new endpoints at once.
func (a *Agent) push(ctx context.Context, snap *policy.Snapshot, local []bpftranslate.LocalEndpoint,
	ports map[redirect.PortKey]uint16, portErrs map[redirect.PortKey]error) {
	excl := newExclusions()
	var st XDSState
	var lastErr error
	for range maxPushAttempts {
		st = a.xdsState(snap, local, ports, portErrs, excl)
		lastErr = a.wait(ctx, a.xds.Update(ctx, st), func() {
			if l, err := a.cfg.Host.LocalEndpoints(snap.Endpoints); err == nil {
				if _, err := a.syncDatapath(snap, l, ports, portErrs, nil); err != nil {
					a.log.Warn("attach new endpoints while waiting for the proxies", "error", err)
				}
			}
		})
		a.recordPush(lastErr)
		if lastErr == nil || ctx.Err() != nil || !a.exclude(lastErr, st, snap, local, ports, excl) {
			break
		}
		a.log.Warn("proxy rejected resources; pushing again without them", "error", lastErr)
	}
	if lastErr != nil && ctx.Err() == nil {
		a.log.Warn("proxies have not ACKed everything; the endpoints concerned fail closed", "error", lastErr)
	}
	if lastErr == nil && ctx.Err() == nil {
		t0 := a.cfg.now()
		a.awaitInForce(ctx)
		a.timing.inForce += a.cfg.now().Sub(t0)
	}
	a.ready = a.readinessAfter(st, snap, local, excl, lastErr)
	a.registerListeners(goProxy)
	a.registerListeners(envoyProxy)
	a.saveReadiness()
}

// awaitInForce waits (at most ACKTimeout) until every connected proxy
// ACKed the latest version of each type it was served: a completion can
// end before a stream that just connected has answered (a rolling
// update's new agent pushes as the new pod's proxy subscribes), and the
// readiness read then turned every redirect into a drop until the retry.
func (a *Agent) awaitInForce(ctx context.Context) {
	deadline := time.Now().Add(a.cfg.ACKTimeout)
	for {
		pending := ""
		for _, c := range a.xds.Consumers() {
			if c.Streams == 0 {
				continue
			}
			for t := range c.Types {
				if d, ack := a.xds.ResourceVersions(c.ID, t); d != nil && !allInForce(d, ack) {
					pending = c.ID + " " + shortType(t)
				}
			}
		}
		if pending == "" || ctx.Err() != nil {
			return
		}
		if time.Now().After(deadline) {
			a.log.Warn("proxy has not ACKed the latest resources", "pending", pending)
			return
		}
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// wait waits for a completion; onLinks runs when links change meanwhile.
func (a *Agent) wait(ctx context.Context, comp Completion, onLinks func()) error {
	timer := time.NewTimer(a.cfg.ACKTimeout + time.Second)
	defer timer.Stop()
	links := a.links
	for {
		select {
		case <-comp.Done():
			return comp.Err()
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
			return fmt.Errorf("xds: no answer within %s: %w", a.cfg.ACKTimeout, errAgentACKTimeout)
		case _, ok := <-links:
			if !ok {
				links, a.links = nil, nil
				continue
			}
			onLinks()
		}
	}
}

// xdsState renders what the proxies should have, leaving out excl. An
// endpoint whose L7 rule sets need a listener that has no port is left out
// of that proxy's resources (its redirects fail closed).
func (a *Agent) xdsState(snap *policy.Snapshot, local []bpftranslate.LocalEndpoint, ports map[redirect.PortKey]uint16,
	portErrs map[redirect.PortKey]error, excl *exclusions) XDSState {
	st := XDSState{GoProxy: translate.Input{Node: a.cfg.Node, Snapshot: snap, Cache: &a.goCache}}
	goListeners := map[redirect.PortKey]bool{}
	envoyPorts := map[redirect.PortKey]bool{}
	for _, k := range slices.SortedFunc(maps.Keys(ports), comparePortKey) {
		var dir policy.Direction
		dir.UnmarshalText([]byte(k.Direction))
		if a.consumerOf(k.Parser) == envoyProxy {
			if _, out := excl.envoyPorts[k]; !out {
				envoyPorts[k] = true
				st.Envoy.ProxyPorts = append(st.Envoy.ProxyPorts, envoytranslate.ProxyPort{Direction: dir, Parser: k.Parser, Port: ports[k]})
			}
			continue
		}
		if _, out := excl.goListeners[k]; !out {
			goListeners[k] = true
			st.GoProxy.Listeners = append(st.GoProxy.Listeners, translate.ListenerSpec{Direction: dir, Parser: k.Parser, ProxyPort: ports[k]})
		}
	}
	// missing says why an L7 rule set of ep has no listener, if it has none.
	missing := func(c consumerKind, dir policy.Direction, parser string) (notReady, bool) {
		k := portKey(dir, parser)
		have := goListeners
		out := excl.goListeners
		if c == envoyProxy {
			have, out = envoyPorts, excl.envoyPorts
		}
		switch {
		case have[k]:
			return notReady{}, false
		case !proxyParser(parser):
			return notReady{StepProxyConfig, "no proxy serves L7 parser " + parser}, true
		case portErrs[k] != nil:
			return notReady{StepProxyPort, portErrs[k].Error()}, true
		case out[k] != (notReady{}):
			return out[k], true
		}
		return notReady{StepProxyConfig, "no listener for " + k.String()}, true
	}
	envoyOut := maps.Clone(excl.envoyIdentities)
	for _, ep := range local {
		pol := snap.Policy(ep.Identity)
		hasHTTP := false
		var goWhy *notReady
		if pol != nil {
			for _, dir := range []policy.Direction{policy.Ingress, policy.Egress} {
				for _, rs := range pol.Direction(dir).L7 {
					c := a.consumerOf(rs.Parser)
					if c == envoyProxy {
						hasHTTP = true
					}
					w, miss := missing(c, dir, rs.Parser)
					switch {
					case !miss:
					case c == envoyProxy:
						if _, ok := envoyOut[ep.Identity]; !ok {
							envoyOut[ep.Identity] = w
						}
					case goWhy == nil:
						goWhy = &w
					}
				}
			}
		}
		if w, out := excl.goEndpoints[ep.Key()]; out {
			goWhy = &w
		}
		switch {
		case hasHTTP:
			// Envoy's: the Go proxy gets no endpoint whose HTTP rule sets it
			// would have no listener for.
		case goWhy != nil:
			excl.goEndpoints[ep.Key()] = *goWhy
		case len(ep.IPs) > 0:
			st.GoProxy.LocalEndpoints = append(st.GoProxy.LocalEndpoints, ep.Endpoint)
		}
	}
	if a.cfg.HTTPProxy == HTTPProxyEnvoy {
		es := *snap
		es.Endpoints = slices.DeleteFunc(slices.Clone(snap.Endpoints), func(ep policy.Endpoint) bool {
			_, out := envoyOut[ep.Identity]
			return out
		})
		st.EnvoySnapshot = &es
		maps.Copy(excl.envoyIdentities, envoyOut)
		st.Envoy.Node = a.cfg.Node
		st.Envoy.Marks = envoytranslate.Marks{Ingress: bpf.ProxyMark(bpf.Ingress, 0), Egress: bpf.ProxyMark(bpf.Egress, 0)}
		st.Envoy.EscapedSlashes = a.cfg.Envoy.EscapedSlashes
		st.Envoy.IPv6 = a.cfg.Envoy.IPv6
		st.Envoy.AccessLogCluster = bootstrap.AccessLogCluster
		st.Envoy.OpenTelemetry = a.cfg.Envoy.otel(a.cfg.Node)
	}
	return st
}

func comparePortKey(x, y redirect.PortKey) int { return strings.Compare(x.String(), y.String()) }

// exclude leaves out of the next push what err (a completion's error)
// concerns, and reports whether anything new was left out.
func (a *Agent) exclude(err error, st XDSState, snap *policy.Snapshot, local []bpftranslate.LocalEndpoint,
	ports map[redirect.PortKey]uint16, excl *exclusions) bool {
	progressed := false
	for _, e := range splitErrors(err) {
		var nack *server.NACKError
		var pend *server.PendingError
		switch {
		case errors.As(e, &nack):
			progressed = a.excludeNACK(nack, snap, local, ports, excl) || progressed
		case errors.As(e, &pend), errors.Is(e, errAgentACKTimeout), errors.Is(e, context.Canceled), errors.Is(e, context.DeadlineExceeded):
			// nothing to leave out: the proxy did not answer
		default:
			progressed = a.excludeUnrenderable(e, st, snap, excl) || progressed
		}
	}
	return progressed
}

func splitErrors(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, splitErrors(e)...)
		}
		return out
	}
	return []error{err}
}

// culprits are the rejected resources the NACK's message names, or all of
// them when it names none.
func culprits(n *server.NACKError) []string {
	var named []string
	for _, r := range n.Resources {
		if strings.Contains(n.Detail, `"`+r+`"`) || strings.Contains(n.Detail, "'"+r+"'") {
			named = append(named, r)
		}
	}
	if len(named) > 0 {
		return named
	}
	return n.Resources
}

func (a *Agent) excludeNACK(n *server.NACKError, snap *policy.Snapshot, local []bpftranslate.LocalEndpoint,
	ports map[redirect.PortKey]uint16, excl *exclusions) bool {
	why := notReady{StepProxyRejected, fmt.Sprintf("%s rejected %s %s: %s", n.Consumer, shortType(n.TypeURL), strings.Join(culprits(n), ","), n.Detail)}
	progressed := false
	envoyConsumer := strings.HasPrefix(n.Consumer, xds.EnvoyPrefix)
	set := func(m map[string]notReady, k string) {
		if _, ok := m[k]; !ok {
			m[k] = why
			progressed = true
		}
	}
	setEnvoy := func(id policy.Identity) {
		if _, ok := excl.envoyIdentities[id]; !ok {
			excl.envoyIdentities[id] = why
			progressed = true
		}
	}
	names := culprits(n)
	switch {
	case !envoyConsumer && n.TypeURL == xds.TypeNetworkPolicy:
		for _, ep := range local {
			if len(ep.IPs) > 0 && slices.Contains(names, translate.PolicyName(ep.Endpoint)) {
				set(excl.goEndpoints, ep.Key())
			}
		}
	case !envoyConsumer && n.TypeURL == xds.TypeListener:
		for k, port := range ports {
			var dir policy.Direction
			dir.UnmarshalText([]byte(k.Direction))
			if slices.Contains(names, (translate.ListenerSpec{Direction: dir, Parser: k.Parser, ProxyPort: port}).Name()) {
				if _, ok := excl.goListeners[k]; !ok {
					excl.goListeners[k] = why
					progressed = true
				}
			}
		}
	case !envoyConsumer:
		// Identity memberships are shared by every endpoint: all of the
		// Go proxy's endpoints fail closed.
		for _, ep := range local {
			set(excl.goEndpoints, ep.Key())
		}
	case n.TypeURL == resourcev3.RouteType:
		for _, name := range names {
			if _, id, _, ok := envoy.ParseRouteName(name); ok {
				setEnvoy(id)
			}
		}
	case n.TypeURL == resourcev3.ListenerType:
		for k, port := range ports {
			var dir policy.Direction
			dir.UnmarshalText([]byte(k.Direction))
			if slices.Contains(names, envoytranslate.ListenerName(envoytranslate.ProxyPort{Direction: dir, Parser: k.Parser, Port: port})) {
				if _, ok := excl.envoyPorts[k]; !ok {
					excl.envoyPorts[k] = why
					progressed = true
				}
			}
		}
	default:
		// Clusters and anything else Envoy shares between endpoints.
		for _, ep := range local {
			setEnvoy(ep.Identity)
		}
	}
	return progressed
}

func shortType(t string) string { return t[strings.LastIndex(t, ".")+1:] }

// excludeUnrenderable finds the endpoints whose resources cannot be
// rendered (each alone) and leaves them out.
func (a *Agent) excludeUnrenderable(err error, st XDSState, snap *policy.Snapshot, excl *exclusions) bool {
	progressed := false
	if _, gerr := translate.L7Proxy(st.GoProxy); gerr != nil {
		for _, ep := range st.GoProxy.LocalEndpoints {
			in := st.GoProxy
			in.Cache = nil // one endpoint's render would evict the others
			in.LocalEndpoints = []policy.Endpoint{ep}
			if _, e := translate.L7Proxy(in); e != nil {
				excl.goEndpoints[ep.Namespace+"/"+ep.Name] = notReady{StepProxyConfig, e.Error()}
				progressed = true
			}
		}
	}
	if st.EnvoySnapshot != nil {
		if _, eerr := envoytranslate.Translate(st.EnvoySnapshot, st.Envoy); eerr != nil {
			for _, id := range identitiesOf(st.EnvoySnapshot.Endpoints) {
				one := *st.EnvoySnapshot
				one.Endpoints = slices.DeleteFunc(slices.Clone(one.Endpoints), func(ep policy.Endpoint) bool { return ep.Identity != id })
				if _, e := envoytranslate.Translate(&one, st.Envoy); e != nil {
					excl.envoyIdentities[id] = notReady{StepProxyConfig, e.Error()}
					progressed = true
				}
			}
		}
	}
	if !progressed {
		a.log.Warn("xds update failed and no endpoint alone causes it", "error", err)
	}
	return progressed
}

func identitiesOf(eps []policy.Endpoint) []policy.Identity {
	var out []policy.Identity
	for _, ep := range eps {
		out = append(out, ep.Identity)
	}
	slices.Sort(out)
	return slices.Compact(out)
}
