package agent

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"path/filepath"
	"slices"
	"time"

	"github.com/l7gate/l7gate/agentapi"
	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/envoy/als"
	"github.com/l7gate/l7gate/envoy/bootstrap"
	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/redirect"
	"github.com/l7gate/l7gate/xds/envoytranslate"
)

// EnvoyConfig configures Envoy mode.
type EnvoyConfig struct {
	// ProcessName finds Envoy's pid (/proc/PID/comm; default "envoy"): its
	// HTTP listeners are taken into the datapath's socket map.
	ProcessName string
	// EscapedSlashes: what Envoy does with %2F and %5C in request paths
	// (the Go proxy's --http-escaped-slashes; default reject).
	EscapedSlashes policy.EscapedSlashAction
	// AccessLog: how Envoy reports requests to the agent: "grpc" (default;
	// the gRPC access-log service) or "otel" (Envoy's OpenTelemetry
	// logger, to the agent's OTLP intake on the same socket).
	AccessLog string
	// OTLPCollector, "host:port" of an OTLP gRPC collector, also sends
	// Envoy's OpenTelemetry access logs straight there (the agent keeps
	// its gRPC stream); OTLPResource are the logs' resource attributes
	// besides k8s.node.name.
	OTLPCollector string
	OTLPResource  map[string]string
	// IPv6: the node has IPv6, so Envoy's listeners bind [::] beside
	// 0.0.0.0 (envoytranslate.Config.IPv6) and the agent takes both into
	// the socket map; without it IPv6 redirects to Envoy's ports drop
	// no-listener.
	IPv6 bool
}

// Envoy access-log modes.
const (
	EnvoyAccessLogGRPC = "grpc"
	EnvoyAccessLogOTel = "otel"
)

// envoyOTel is the OpenTelemetry logger config of Envoy mode (nil: the
// gRPC access-log stream only).
func (c EnvoyConfig) otel(node string) *envoytranslate.OTelConfig {
	if c.AccessLog != EnvoyAccessLogOTel && c.OTLPCollector == "" {
		return nil
	}
	res := map[string]string{"k8s.node.name": node, "service.name": "l7gate-envoy"}
	maps.Copy(res, c.OTLPResource)
	return &envoytranslate.OTelConfig{Collector: c.OTLPCollector, ResourceAttributes: res}
}

// EnvoyBootstrapConfig is the bootstrap an Envoy on this node needs.
func EnvoyBootstrapConfig(node, runDir string) bootstrap.Config {
	return bootstrap.Config{Node: node, XDSSocket: agentapi.XDSSocket(runDir), AccessLogSocket: agentapi.ALSSocket(runDir),
		AdminSocket: agentapi.EnvoyAdminSocket(runDir)}
}

// serveAccessLogs runs the gRPC access-log service Envoy's bootstrap
// points at; Envoy's requests become flow records in the flow pipeline.
func (a *Agent) serveAccessLogs(ctx context.Context) error {
	return als.Serve(ctx, als.Config{Socket: agentapi.ALSSocket(a.cfg.RunDir), Log: a.log, Sink: func(r *flow.Record) { a.pipe.Ingest(r) }})
}

// ProxyProcesses finds the proxies' processes and takes their listener
// sockets (pidfd_getfd: the agent needs CAP_SYS_PTRACE over them and a
// shared PID namespace), so the proxies themselves need no access to the
// datapath. The default (a nil Config.Processes) looks in /proc.
type ProxyProcesses interface {
	// PID returns the pid of a proxy, or 0 when none runs.
	PID(goProxy bool) (int, error)
	TakeListener(pid int, port uint16) (*net.TCPListener, error)
	// CgroupID returns the id of the cgroup v2 a proxy process runs in:
	// only sockets of that cgroup may carry from-proxy marks.
	CgroupID(pid int) (uint64, error)
}

// procProxies is ProxyProcesses from /proc: the Go proxy is whoever
// serves its admin socket, Envoy the process named EnvoyConfig.ProcessName.
type procProxies struct{ runDir, envoyName string }

// CgroupID finds the cgroup v2 hierarchy (mounting it under the run dir
// when this mount namespace has none, as under `ip netns exec`) and the
// cgroup pid is in there.
func (p procProxies) CgroupID(pid int) (uint64, error) {
	mount, err := bpf.EnsureCgroup2(filepath.Join(p.runDir, "cgroup2"))
	if err != nil {
		return 0, err
	}
	return bpf.CgroupIDOfPID(mount, pid)
}

func (p procProxies) PID(goProxy bool) (int, error) {
	if goProxy {
		pid, err := redirect.PeerPID(agentapi.ProxyAdminSocket(p.runDir))
		if err != nil {
			return 0, fmt.Errorf("find the Go proxy through its admin socket: %w", err)
		}
		return pid, nil
	}
	name := p.envoyName
	if name == "" {
		name = "envoy"
	}
	return redirect.FindProcess(name)
}

func (procProxies) TakeListener(pid int, port uint16) (*net.TCPListener, error) {
	return redirect.TakeListener(pid, port)
}

var errNoProxy = errors.New("no process found (does the proxy run in this PID namespace?)")

type listenerKey struct {
	kind consumerKind
	pid  int
	port uint16
	udp  bool // the DNS proxy's UDP socket of the port
}

// registerListeners takes the listeners a proxy ACKed into the datapath's
// socket map (once per port and process). A listener it cannot take is
// not ready: its redirects stay drops, and it is retried.
func (a *Agent) registerListeners(c consumerKind) {
	lns := a.ready.listeners[c]
	if len(lns) == 0 {
		return
	}
	pid, err := a.cfg.Processes.PID(c == goProxy)
	if err == nil && pid == 0 {
		err = errNoProxy
	}
	if err == nil {
		err = a.trustProxy(c, pid)
	}
	ports := map[uint16]bool{}
	for k, port := range lns {
		ports[port] = true
		err := err
		if err == nil {
			err = a.registerListener(listenerKey{kind: c, pid: pid, port: port})
		}
		if err == nil && k.Parser == policy.ParserDNS {
			// The UDP socket alone: a proxy that took the listener over
			// (a hand-over's successor, found at its admin socket before
			// its first config) opens its UDP socket with that config.
			// Until the agent takes it, the socket map keeps the previous
			// proxy's UDP socket while that one is open, else UDP DNS to
			// the port drops (no socket: fail closed); the listener stays.
			if uerr := a.registerUDP(pid, port); uerr != nil {
				a.log.Warn("take the DNS proxy's UDP socket (retried)", "port", port, "error", uerr)
			}
		}
		if err != nil {
			delete(lns, k)
			a.ready.lnWhy[c][k] = notReady{StepProxyListener, fmt.Sprintf("take %s's listener on port %d: %v", c, port, err)}
		}
	}
	if c == goProxy {
		a.held.keepOnly(ports)
	}
}

// registerVisibleProxy registers, at start, the listeners the saved
// readiness has in force with the Go proxy serving the admin socket if
// this agent can see it (its cgroup trusted, its sockets held), before the
// first push: in a rolling update the new pod's proxy may have taken the
// old one's sockets and the admin socket already, and serves connections
// as soon as this agent serves the run dir. A proxy it cannot see (the
// old pod's) is left alone: the first push finds the proxy again.
func (a *Agent) registerVisibleProxy() {
	if len(a.ready.listeners[goProxy]) == 0 {
		return
	}
	if pid, err := a.cfg.Processes.PID(true); err != nil || pid == 0 {
		return
	}
	a.registerListeners(goProxy)
}

// trustProxy makes the datapath believe the from-proxy marks of the
// sockets in the cgroup proxy c (pid) runs in, before any redirect can
// send traffic to it; a proxy that moved (restarted elsewhere) replaces
// its old cgroup. A proxy in the root cgroup cannot be told apart from
// every other process and is refused: its redirects stay drops.
//
// The cgroup a proxy leaves stays trusted for previousProxyGrace (see
// previousCgroups): in a rolling update the old pod's proxy, in a cgroup
// of its own, drains its connections after its successor took over, and
// its upstream packets must still be believed (untrusted, they no longer
// match their flow's conntrack entry and are dropped: in-flight requests
// time out). That includes the cgroups a previous agent trusted (the
// pinned set) when this agent trusts its first proxy.
func (a *Agent) trustProxy(c consumerKind, pid int) error {
	id, err := a.cfg.Processes.CgroupID(pid)
	if err != nil {
		return fmt.Errorf("find %s's cgroup: %w", c, err)
	}
	if a.trusted[c] == id {
		return nil
	}
	now := a.cfg.now()
	prev := maps.Clone(a.prevCgroups)
	if prev == nil {
		prev = map[uint64]time.Time{}
	}
	left := slices.Collect(maps.Values(a.trusted))
	if len(a.trusted) == 0 {
		if l, ok := a.dp.(trustedLister); ok {
			if pinned, err := l.TrustedProxyCgroups(); err == nil {
				left = append(left, pinned...) // a previous agent's proxies
			}
		}
	}
	next := maps.Clone(a.trusted)
	next[c] = id
	for _, old := range left {
		if _, ok := prev[old]; !ok && !slices.Contains(slices.Collect(maps.Values(next)), old) {
			prev[old] = now.Add(previousProxyGrace)
		}
	}
	delete(prev, id)
	if err := a.dp.SetTrustedProxyCgroups(trustedSet(next, prev, now)); err != nil {
		return fmt.Errorf("trust %s's cgroup %d (pid %d; a proxy needs a cgroup of its own): %w", c, id, pid, err)
	}
	a.trusted, a.prevCgroups = next, prev
	a.log.Info("proxy cgroup trusted", "proxy", c.String(), "pid", pid, "cgroup", id, "previous", slices.Sorted(maps.Keys(prev)))
	return nil
}

// previousProxyGrace is how long the cgroup of a proxy that was replaced
// stays trusted: the chart's proxy waits up to 30 s for its successor
// (preStop) and drains for up to 30 s (terminationGracePeriodSeconds 75).
// A cgroup id is never reused, so one whose processes are gone trusts
// nothing.
const previousProxyGrace = 2 * time.Minute

// trustedLister is a Datapath that lists the trusted cgroups (pinned: a
// previous agent's).
type trustedLister interface {
	TrustedProxyCgroups() ([]uint64, error)
}

// trustedSet is the current proxies' cgroups and the previous ones still
// in their grace period, sorted.
func trustedSet(cur map[consumerKind]uint64, prev map[uint64]time.Time, now time.Time) []uint64 {
	ids := slices.Collect(maps.Values(cur))
	for id, until := range prev {
		if now.Before(until) {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}

// expirePreviousCgroups stops trusting previous proxies' cgroups whose
// grace period ended.
func (a *Agent) expirePreviousCgroups() {
	now := a.cfg.now()
	expired := false
	for _, until := range a.prevCgroups {
		if !now.Before(until) {
			expired = true
		}
	}
	if !expired {
		return
	}
	prev := maps.Clone(a.prevCgroups)
	maps.DeleteFunc(prev, func(_ uint64, until time.Time) bool { return !now.Before(until) })
	if err := a.dp.SetTrustedProxyCgroups(trustedSet(a.trusted, prev, now)); err != nil {
		a.log.Warn("stop trusting previous proxies' cgroups", "error", err)
		return
	}
	a.prevCgroups = prev
	a.log.Info("previous proxy cgroups no longer trusted", "left", slices.Sorted(maps.Keys(prev)))
}

func (a *Agent) registerListener(key listenerKey) error {
	if a.registered[key] {
		return nil
	}
	lns, err := a.takeListeners(key.pid, key.port)
	if err != nil {
		return err
	}
	for _, l := range lns {
		if err == nil {
			err = a.dp.RegisterProxyListener(key.port, l)
		}
	}
	if err != nil || key.kind != goProxy {
		for _, l := range lns {
			l.Close() // the socket map holds its own reference
		}
	}
	if err != nil {
		return err
	}
	if key.kind == goProxy {
		// Kept, every family's: the sockets outlive a proxy crash (see
		// heldListeners).
		socks := make([]heldSocket, len(lns))
		for i, l := range lns {
			socks[i] = l
		}
		a.held.hold(key.port, false, socks...)
	}
	for k := range a.registered {
		if k.kind == key.kind && k.port == key.port && !k.udp {
			delete(a.registered, k) // an earlier process's
		}
	}
	a.registered[key] = true
	a.log.Info("proxy listener registered", "proxy", key.kind.String(), "pid", key.pid, "port", key.port, "sockets", len(lns))
	return nil
}

// listenersTaker is implemented by ProxyProcesses that can take every
// listener a proxy has on a port: a proxy serving both families listens
// on 127.0.0.1:port and [::1]:port, and the datapath keeps a socket per
// family (an IPv6 redirect finds no socket without the second).
type listenersTaker interface {
	TakeListeners(pid int, port uint16) ([]*net.TCPListener, error)
}

// TakeListeners implements listenersTaker.
func (procProxies) TakeListeners(pid int, port uint16) ([]*net.TCPListener, error) {
	return redirect.TakeListeners(pid, port)
}

// takeListeners takes a proxy's listeners of port, IPv4 first (the agent
// holds every one across a Go proxy crash, and the restarted proxy
// inherits them all).
func (a *Agent) takeListeners(pid int, port uint16) ([]*net.TCPListener, error) {
	if t, ok := a.cfg.Processes.(listenersTaker); ok {
		lns, err := t.TakeListeners(pid, port)
		if err == nil && len(lns) == 0 {
			err = fmt.Errorf("process %d has no TCP listener on port %d", pid, port)
		}
		return lns, err
	}
	ln, err := a.cfg.Processes.TakeListener(pid, port)
	if err != nil {
		return nil, err
	}
	return []*net.TCPListener{ln}, nil
}

// udpTaker is implemented by ProxyProcesses that can take a proxy's UDP
// socket (the DNS proxy's): without it, UDP redirects to a dns port stay
// drops (no UDP socket in the socket map).
type udpTaker interface {
	TakeUDPSocket(pid int, port uint16) (*net.UDPConn, error)
}

// TakeUDPSocket implements udpTaker.
func (procProxies) TakeUDPSocket(pid int, port uint16) (*net.UDPConn, error) {
	return redirect.TakeUDPSocket(pid, port)
}

// udpsTaker is implemented by ProxyProcesses that can take every UDP
// socket a proxy has on a port: a DNS proxy serving both families has
// one on 127.0.0.1 and one on [::1], a socket-map entry each (DNS over
// IPv6 finds no socket without the second).
type udpsTaker interface {
	TakeUDPSockets(pid int, port uint16) ([]*net.UDPConn, error)
}

// TakeUDPSockets implements udpsTaker.
func (procProxies) TakeUDPSockets(pid int, port uint16) ([]*net.UDPConn, error) {
	return redirect.TakeUDPSockets(pid, port)
}

// takeUDPSockets takes a proxy's UDP sockets of port, IPv4 first.
func (a *Agent) takeUDPSockets(pid int, port uint16) ([]*net.UDPConn, error) {
	if t, ok := a.cfg.Processes.(udpsTaker); ok {
		return t.TakeUDPSockets(pid, port)
	}
	t, ok := a.cfg.Processes.(udpTaker)
	if !ok {
		return nil, errors.New("cannot take UDP sockets from the proxy")
	}
	c, err := t.TakeUDPSocket(pid, port)
	if err != nil {
		return nil, err
	}
	return []*net.UDPConn{c}, nil
}

// registerUDP puts the Go proxy's UDP sockets of a dns port (one per
// family) in the socket map (once per proxy process, like its listener)
// and holds them across a proxy crash (heldListeners): queries sent
// meanwhile wait in their receive buffers for the restarted proxy, which
// inherits them.
func (a *Agent) registerUDP(pid int, port uint16) error {
	key := listenerKey{kind: goProxy, pid: pid, port: port, udp: true}
	if a.registered[key] {
		return nil
	}
	cs, err := a.takeUDPSockets(pid, port)
	if err != nil {
		return err
	}
	for _, c := range cs {
		if err == nil {
			err = a.dp.RegisterProxyListener(port, c)
		}
	}
	if err != nil {
		for _, c := range cs {
			c.Close() // the socket map holds its own reference
		}
		return err
	}
	// Kept: the sockets outlive a proxy crash (see heldListeners);
	// datagrams redirected meanwhile queue for the restarted proxy.
	socks := make([]heldSocket, len(cs))
	for i, c := range cs {
		socks[i] = c
	}
	a.held.hold(port, true, socks...)
	for k := range a.registered {
		if k.kind == key.kind && k.port == key.port && k.udp {
			delete(a.registered, k)
		}
	}
	a.registered[key] = true
	a.log.Info("proxy udp socket registered", "proxy", key.kind.String(), "pid", pid, "port", port, "sockets", len(cs))
	return nil
}

// listenersStale reports whether a ready listener's proxy process changed
// since its socket was taken (the proxy restarted: its new listener must
// go into the socket map), or an ACKed listener could not be taken (say,
// the admin socket was served from a PID namespace the agent cannot see:
// a rolling update's old pod).
func (a *Agent) listenersStale() bool {
	for _, c := range []consumerKind{goProxy, envoyProxy} {
		for _, w := range a.ready.lnWhy[c] {
			if w.step == StepProxyListener {
				return true // ACKed but not taken (no proxy found): try again
			}
		}
		if len(a.ready.listeners[c]) == 0 {
			continue
		}
		pid, err := a.cfg.Processes.PID(c == goProxy)
		if err != nil || pid == 0 {
			continue
		}
		for k, port := range a.ready.listeners[c] {
			if !a.registered[listenerKey{kind: c, pid: pid, port: port}] {
				return true
			}
			if c == goProxy && k.Parser == policy.ParserDNS && !a.registered[listenerKey{kind: c, pid: pid, port: port, udp: true}] {
				return true // its UDP socket not taken yet
			}
		}
	}
	return false
}
