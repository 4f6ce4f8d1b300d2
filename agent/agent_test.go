package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/bpftranslate"
	"github.com/l7gate/l7gate/policy"
	"github.com/l7gate/l7gate/redirect"
	"github.com/l7gate/l7gate/source"
	"github.com/l7gate/l7gate/xds"
	"github.com/l7gate/l7gate/xds/server"
)

// These tests run the agent's pipeline with fakes for the datapath, the
// xDS server, the port allocator and the node, so the ordering (attach →
// L3/L4 → xDS ACK → redirects) and the confinement of failures are tested
// without root.

// fakeDatapath keeps the maps' content and a log of what was done, and
// rejects the entries reject says (like the BPF compiler: nothing written).
type fakeDatapath struct {
	mu       sync.Mutex
	policy   map[uint32]bpf.EndpointPolicy
	ipcache  []bpf.IPCacheEntry
	attached map[int]bool
	eps      map[int]bpf.Endpoint // as last attached
	log      []string
	trusted  []uint64 // proxy cgroups (pinned across agent restarts)
	reject   func(bpf.EndpointPolicy) error
	// partial, when set, names endpoint directions SyncPolicy cannot
	// write (as the real one on a full map): they fail closed (drop all)
	// and the rest is synced.
	partial func(bpf.EndpointPolicy) []bpf.FailedDirection
	syncs   []bpf.SyncStats
	ct      map[netip.Addr]bool // tracked flows' addresses (ConntrackAddrs)
}

func newFakeDatapath() *fakeDatapath {
	return &fakeDatapath{policy: map[uint32]bpf.EndpointPolicy{}, attached: map[int]bool{}, eps: map[int]bpf.Endpoint{}}
}

func (d *fakeDatapath) AttachEndpoint(ep bpf.Endpoint) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.attached[ep.Ifindex] = true
	d.eps[ep.Ifindex] = ep
	d.log = append(d.log, fmt.Sprintf("attach %d", ep.Ifindex))
	return nil
}

func (d *fakeDatapath) DetachEndpoint(ifindex int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.attached, ifindex)
	d.log = append(d.log, fmt.Sprintf("detach %d", ifindex))
	return nil
}

func (d *fakeDatapath) CheckPolicy(p bpf.EndpointPolicy) error {
	if d.reject != nil {
		return d.reject(p)
	}
	return nil
}

func (d *fakeDatapath) SyncPolicy(desired []bpf.EndpointPolicy) (bpf.SyncStats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range desired {
		if d.reject != nil {
			if err := d.reject(p); err != nil {
				d.log = append(d.log, "sync rejected")
				return bpf.SyncStats{}, fmt.Errorf("endpoint %d: %w", p.Endpoint, err)
			}
		}
	}
	var st bpf.SyncStats
	var failed []bpf.FailedDirection
	want := map[uint32]bpf.EndpointPolicy{}
	for _, p := range desired {
		if d.partial != nil {
			for _, f := range d.partial(p) {
				failed = append(failed, f)
				dp := &p.Ingress
				if f.Direction == bpf.Egress {
					dp = &p.Egress
				}
				*dp = bpf.DirectionPolicy{Enforced: true} // drops everything
			}
		}
		want[p.Endpoint] = p
		cur, ok := d.policy[p.Endpoint]
		switch {
		case !ok:
			st.Added++
		case !reflect.DeepEqual(cur, p):
			st.Updated++
		default:
			st.Unchanged++
		}
	}
	for id := range d.policy {
		if _, ok := want[id]; !ok {
			st.Deleted++
		}
	}
	d.policy = want
	ids := slices.Sorted(maps.Keys(want))
	d.log = append(d.log, fmt.Sprintf("sync %v", ids))
	d.syncs = append(d.syncs, st)
	if len(failed) > 0 {
		return st, &bpf.SyncError{Failed: failed}
	}
	return st, nil
}

func (d *fakeDatapath) SyncIPCache(desired []bpf.IPCacheEntry) (bpf.SyncStats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var st bpf.SyncStats
	if fmt.Sprint(desired) != fmt.Sprint(d.ipcache) {
		st.Updated = 1
	}
	d.ipcache = slices.Clone(desired)
	return st, nil
}

func (d *fakeDatapath) RegisterProxyListener(uint16, syscall.Conn) error { return nil }

func (d *fakeDatapath) SetTrustedProxyCgroups(ids []uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.log = append(d.log, fmt.Sprintf("trust cgroups %v", ids))
	d.trusted = slices.Clone(ids)
	return nil
}

// TrustedProxyCgroups lists the trusted set (as pinned).
func (d *fakeDatapath) TrustedProxyCgroups() ([]uint64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.trusted), nil
}

func (d *fakeDatapath) Events(ctx context.Context) (<-chan bpf.Event, error) {
	ch := make(chan bpf.Event)
	context.AfterFunc(ctx, func() { close(ch) })
	return ch, nil
}

// entries returns the entries of endpoint id in dir.
func (d *fakeDatapath) entries(id int, dir policy.Direction) bpf.DirectionPolicy {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := d.policy[uint32(id)]
	if dir == policy.Egress {
		return p.Egress
	}
	return p.Ingress
}

func (d *fakeDatapath) logCopy() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.log)
}

// fakeXDS renders what the real server would (the same producers) and
// answers every update with decide's outcome for the Go proxy: nil (ACK),
// a *server.NACKError (the rejected type keeps its last ACKed version), or
// a *server.PendingError (nothing ACKed).
type fakeXDS struct {
	mu      sync.Mutex
	id      string
	desired map[string]map[string]string
	acked   map[string]map[string]string
	states  []XDSState
	decide  func(desired map[string]map[string]string) error
	hashes  map[proto.Message]string // of the last update's messages
	// hang: updates never resolve (a proxy that stopped answering and a
	// server whose own timeout never fires).
	hang bool
}

func newFakeXDS(node string) *fakeXDS {
	return &fakeXDS{id: xds.L7ProxyNodeID(node), acked: map[string]map[string]string{}}
}

type doneCompletion struct {
	done chan struct{}
	err  error
}

func (c doneCompletion) Done() <-chan struct{} { return c.done }
func (c doneCompletion) Err() error            { return c.err }

func resolved(err error) Completion {
	c := doneCompletion{done: make(chan struct{}), err: err}
	close(c.done)
	return c
}

func (f *fakeXDS) Update(_ context.Context, st XDSState) Completion {
	res, err := goProxyResources(f.id, st)
	if err != nil {
		return resolved(fmt.Errorf("xds: render resources for %q: %w", f.id, err))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	// Like the server, a message rendered before keeps its hash.
	desired := map[string]map[string]string{}
	hashes := map[proto.Message]string{}
	for t, msgs := range res {
		desired[t] = map[string]string{}
		for _, m := range msgs {
			v, ok := f.hashes[m]
			if !ok {
				b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(m)
				h := sha256.Sum256(b)
				v = hex.EncodeToString(h[:8])
			}
			hashes[m] = v
			desired[t][resourceName(m)] = v
		}
	}
	f.hashes = hashes
	f.states = append(f.states, st)
	f.desired = desired
	if f.hang {
		return doneCompletion{done: make(chan struct{})}
	}
	var out error
	if f.decide != nil {
		out = f.decide(desired)
	}
	var nack *server.NACKError
	var pend *server.PendingError
	for t := range desired {
		switch {
		case out == nil,
			errors.As(out, &nack) && t != nack.TypeURL,
			errors.As(out, &pend) && !slices.ContainsFunc(pend.Pending, func(p server.Pending) bool { return p.TypeURL == t }):
			f.acked[t] = maps.Clone(desired[t])
		}
	}
	return resolved(out)
}

func resourceName(m proto.Message) string {
	type named interface{ GetName() string }
	return m.(named).GetName()
}

func (f *fakeXDS) Consumers() []server.ConsumerStatus {
	return []server.ConsumerStatus{{ID: f.id, Streams: 1, Types: map[string]bool{xds.TypeListener: true}}}
}

func (f *fakeXDS) ResourceVersions(id, t string) (map[string]string, map[string]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if id != f.id {
		return nil, nil
	}
	return maps.Clone(f.desired[t]), maps.Clone(f.acked[t])
}

func (f *fakeXDS) setDecide(d func(map[string]map[string]string) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.decide = d
}

func (f *fakeXDS) lastState() XDSState {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.states[len(f.states)-1]
}

// nackPolicyOf rejects the NetworkPolicy resource name when it is in an
// update, as the Go proxy does (its message names the resource).
func nackPolicyOf(name string) func(map[string]map[string]string) error {
	return func(d map[string]map[string]string) error {
		if _, ok := d[xds.TypeNetworkPolicy][name]; !ok {
			return nil
		}
		return &server.NACKError{Consumer: "l7proxy~n1", TypeURL: xds.TypeNetworkPolicy, Version: "v",
			Resources: slices.Sorted(maps.Keys(d[xds.TypeNetworkPolicy])),
			Detail:    fmt.Sprintf("network policy %q: invalid resource: bad regex", name)}
	}
}

// pendingPolicies: the proxy ACKs listeners and identity memberships but
// never answers for the NetworkPolicy type.
func pendingPolicies(map[string]map[string]string) error {
	return &server.PendingError{Cause: server.ErrACKTimeout, Pending: []server.Pending{{Consumer: "l7proxy~n1", TypeURL: xds.TypeNetworkPolicy, Connected: true}}}
}

type fakePorts struct {
	mu    sync.Mutex
	next  uint16
	alloc map[redirect.PortKey]uint16
	fail  map[redirect.PortKey]bool
}

func (p *fakePorts) Allocate(k redirect.PortKey) (uint16, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fail[k] {
		return 0, fmt.Errorf("allocate proxy port for %s: no free port", k)
	}
	if port, ok := p.alloc[k]; ok {
		return port, nil
	}
	if p.next == 0 {
		p.next = 15001
	}
	p.alloc[k] = p.next
	p.next++
	return p.alloc[k], nil
}

func (p *fakePorts) Release(k redirect.PortKey) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.alloc, k)
	return nil
}

func (p *fakePorts) Allocations() map[redirect.PortKey]uint16 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.alloc)
}

// fakeHost has a veth (ifindex) for the endpoints listed in veths.
type fakeHost struct {
	mu    sync.Mutex
	veths map[string]int // namespace/name → ifindex
	links chan struct{}
}

func newFakeHost(veths map[string]int) *fakeHost {
	return &fakeHost{veths: veths, links: make(chan struct{}, 1)}
}

func (h *fakeHost) LocalEndpoints(eps []policy.Endpoint) ([]bpftranslate.LocalEndpoint, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []bpftranslate.LocalEndpoint
	for _, ep := range eps {
		if idx, ok := h.veths[ep.Namespace+"/"+ep.Name]; ok {
			out = append(out, bpftranslate.LocalEndpoint{Endpoint: ep, Ifindex: idx, Device: fmt.Sprintf("lxc%d", idx)})
		}
	}
	return out, nil
}

func (h *fakeHost) PrepareEndpoint(string) error { return nil }

func (h *fakeHost) Addresses(func(netip.Addr) bool) ([]netip.Addr, error) {
	return []netip.Addr{netip.MustParseAddr("198.18.255.254")}, nil
}

func (h *fakeHost) Watch(context.Context) (<-chan struct{}, error) { return h.links, nil }

// addVeth makes an endpoint local and signals it like a netlink event.
func (h *fakeHost) addVeth(ep string, idx int) {
	h.mu.Lock()
	h.veths[ep] = idx
	h.mu.Unlock()
	select {
	case h.links <- struct{}{}:
	default:
	}
}

// fakeProcs is a proxy that runs as pid 42 and whose listeners are
// loopback sockets.
type fakeProcs struct{}

func (fakeProcs) PID(bool) (int, error)            { return 42, nil }
func (fakeProcs) CgroupID(pid int) (uint64, error) { return 4200 + uint64(pid), nil }
func (fakeProcs) TakeListener(int, uint16) (*net.TCPListener, error) {
	return net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
}

// chanSource sends the updates given to it.
type chanSource chan source.Update

func (s chanSource) Run(ctx context.Context, updates chan<- source.Update) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case u := <-s:
			select {
			case updates <- u:
			case <-ctx.Done():
				return nil
			}
		}
	}
}

type report struct {
	rev      uint64
	failures []source.EndpointFailure
}

type chanReporter chan report

func (r chanReporter) Implemented(_ context.Context, rev uint64, _ source.Update, f []source.EndpointFailure) {
	r <- report{rev, f}
}

type harness struct {
	t        testing.TB
	dp       *fakeDatapath
	xds      *fakeXDS
	ports    *fakePorts
	host     *fakeHost
	src      chanSource
	reports  chanReporter
	stateDir string
	stop     func()
	lb       ServiceLB // nil: no socket load balancing
	runDir   string
	fqdn     FQDNStore // nil: no FQDN cache
	resync   time.Duration
	procs    ProxyProcesses   // nil: fakeProcs
	retry    time.Duration    // 0: 50ms
	now      func() time.Time // nil: time.Now
	datapath Datapath         // nil: dp
	logger   *slog.Logger     // nil: discarded
	// readHeap, collectGarbage: Config's (nil: the runtime's).
	readHeap       func() heapStats
	collectGarbage func()
}

func newHarness(t testing.TB, veths map[string]int) *harness {
	return &harness{t: t, dp: newFakeDatapath(), xds: newFakeXDS("n1"), ports: &fakePorts{alloc: map[redirect.PortKey]uint16{}},
		host: newFakeHost(veths), src: make(chanSource, 1), reports: make(chanReporter, 100), stateDir: t.TempDir(), runDir: t.TempDir()}
}

func (h *harness) start() {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var procs ProxyProcesses = fakeProcs{}
	if h.procs != nil {
		procs = h.procs
	}
	retry := 50 * time.Millisecond
	if h.retry != 0 {
		retry = h.retry
	}
	var dp Datapath = h.dp
	if h.datapath != nil {
		dp = h.datapath
	}
	go func() {
		done <- Run(ctx, Config{Node: "n1", Source: h.src, Reporter: h.reports, Datapath: dp, XDS: h.xds, Ports: h.ports,
			Host: h.host, Processes: procs, RunDir: h.runDir, StateDir: h.stateDir, WaitForProxy: -1, ACKTimeout: 2 * time.Second,
			RetryInterval: retry, ServiceLB: h.lb, FQDN: h.fqdn, ResyncInterval: h.resync, now: h.now, Logger: h.logger,
			readHeap: h.readHeap, collectGarbage: h.collectGarbage})
	}()
	h.stop = func() {
		cancel()
		if err := <-done; err != nil {
			h.t.Errorf("agent: %v", err)
		}
	}
	h.t.Cleanup(func() {
		if h.stop != nil {
			h.stop()
			h.stop = nil
		}
	})
}

func (h *harness) restart() {
	h.stop()
	h.stop = nil
	h.start()
}

func (h *harness) send(files ...string) {
	h.t.Helper()
	objs, errs := policy.Load(files...)
	if len(errs) > 0 {
		h.t.Fatal(errs)
	}
	h.sendObjects(objs)
}

func (h *harness) sendObjects(objs *policy.Objects) {
	h.src <- source.Update{Objects: objs, Digest: fmt.Sprint(time.Now().UnixNano())}
}

// await returns the first report that satisfies cond.
func (h *harness) await(what string, cond func(report) bool) report {
	h.t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case r := <-h.reports:
			if cond(r) {
				return r
			}
		case <-deadline:
			h.t.Fatalf("timed out waiting for %s; datapath log %v", what, h.dp.logCopy())
		}
	}
}

func anyReport(report) bool { return true }

// ifindexes of the starwars pods in these tests.
const (
	deathstar  = 10
	tiefighter = 11
	xwing      = 12
)

func starwarsVeths() map[string]int {
	return map[string]int{"default/deathstar": deathstar, "default/tiefighter": tiefighter, "default/xwing": xwing}
}

func hasVerdict(dp bpf.DirectionPolicy, v bpf.Verdict) bool {
	return slices.ContainsFunc(dp.Entries, func(e bpf.PolicyEntry) bool { return e.Verdict == v })
}

// TestImplementOrder: endpoints are in the maps before they are attached,
// and attached before the proxies are asked; a redirect is written only
// once the proxy ACKed its listener and the endpoint's policy — until then
// it is a drop.
func TestImplementOrder(t *testing.T) {
	h := newHarness(t, starwarsVeths())
	var seenAtPush []string
	h.xds.setDecide(func(map[string]map[string]string) error {
		seenAtPush = h.dp.logCopy()
		if !hasVerdict(h.dp.entries(deathstar, policy.Ingress), bpf.VerdictDeny) || hasVerdict(h.dp.entries(deathstar, policy.Ingress), bpf.VerdictRedirect) {
			t.Errorf("at the push the deathstar's L7 port is %+v, want a drop (not yet ACKed)", h.dp.entries(deathstar, policy.Ingress))
		}
		return nil
	})
	h.start()
	h.send("../examples/starwars/objects.yaml", "../examples/starwars/policy-l7.yaml")
	r := h.await("revision 1", anyReport)
	if len(r.failures) != 0 {
		t.Fatalf("failures %+v", r.failures)
	}
	// sync (all three) before any attach, attaches before the push
	want := []string{fmt.Sprintf("sync %v", []uint32{deathstar, tiefighter, xwing}), fmt.Sprint("attach ", deathstar), fmt.Sprint("attach ", tiefighter), fmt.Sprint("attach ", xwing)}
	if !slices.Equal(seenAtPush, want) {
		t.Errorf("before the push: %v, want %v", seenAtPush, want)
	}
	in := h.dp.entries(deathstar, policy.Ingress)
	if !in.Enforced || !hasVerdict(in, bpf.VerdictRedirect) || hasVerdict(in, bpf.VerdictDeny) {
		t.Errorf("after the ACK the deathstar's ingress is %+v, want redirects", in)
	}
	// The redirect sync writes only the endpoint whose entries changed.
	if n := len(h.dp.logCopy()); h.dp.logCopy()[n-1] != fmt.Sprintf("update policy %v", []uint32{deathstar}) {
		t.Errorf("last step %q, want the redirect sync of the deathstar only", h.dp.logCopy()[n-1])
	}
}

// twoL7Policy selects the deathstar (HTTP) and the tiefighter (Kafka on
// 9092 from the xwing) with L7 rules.
const twoL7Policy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: kafka-in, namespace: default}
spec:
  endpointSelector: {matchLabels: {class: tiefighter}}
  ingress:
  - fromEndpoints: [{matchLabels: {class: xwing}}]
    toPorts:
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka: [{role: consume, topic: public}]
`

func twoL7(t *testing.T) string {
	p := t.TempDir() + "/kafka.yaml"
	if err := os.WriteFile(p, []byte(twoL7Policy), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDatapathRejectionConfined: entries the datapath rejects for one
// endpoint make that endpoint's direction default-deny and are named; the
// other endpoints get their policy, and the next revision proceeds.
func TestDatapathRejectionConfined(t *testing.T) {
	h := newHarness(t, starwarsVeths())
	h.dp.reject = func(p bpf.EndpointPolicy) error {
		if p.Endpoint == tiefighter && len(p.Ingress.Entries) > 0 {
			return fmt.Errorf("%w: ports with protocol 1", bpf.ErrInvalidEntry)
		}
		return nil
	}
	h.start()
	h.send("../examples/starwars/objects.yaml", "../examples/starwars/policy-l7.yaml", twoL7(t))
	r := h.await("revision 1", anyReport)
	if len(r.failures) != 1 {
		t.Fatalf("failures %+v, want one for the tiefighter", r.failures)
	}
	f := r.failures[0]
	if f.Endpoint != "default/tiefighter" || f.Step != StepDatapathPolicy || !slices.Equal(f.Directions, []string{"ingress"}) ||
		!strings.Contains(f.Error, "ports with protocol 1") || len(f.Policies) != 1 || f.Policies[0].Name != "default/kafka-in" {
		t.Errorf("failure %+v", f)
	}
	if in := h.dp.entries(tiefighter, policy.Ingress); !in.Enforced || len(in.Entries) != 0 {
		t.Errorf("tiefighter ingress %+v, want default-deny", in)
	}
	if in := h.dp.entries(deathstar, policy.Ingress); !hasVerdict(in, bpf.VerdictRedirect) {
		t.Errorf("deathstar ingress %+v, want its redirects", in)
	}
	if !h.dp.attached[xwing] || !h.dp.attached[tiefighter] {
		t.Errorf("attached %v", h.dp.attached)
	}
	// A later revision (the rejected policy gone) proceeds and clears it.
	h.send("../examples/starwars/objects.yaml", "../examples/starwars/policy-l7.yaml")
	r = h.await("revision 2", func(r report) bool { return r.rev == 2 })
	if len(r.failures) != 0 {
		t.Errorf("revision 2 failures %+v", r.failures)
	}
	if in := h.dp.entries(tiefighter, policy.Ingress); in.Enforced {
		t.Errorf("tiefighter ingress %+v after the policy went away", in)
	}
}

// TestPartialSyncConfined: the datapath cannot write the tiefighter's
// egress (a full map, say): SyncPolicy returns a *bpf.SyncError naming it
// and keeps the rest. The agent names the failure and goes on: every
// endpoint is attached, the others keep their policy, and the next
// revision that fits clears it.
func TestPartialSyncConfined(t *testing.T) {
	h := newHarness(t, starwarsVeths())
	full := true
	h.dp.partial = func(p bpf.EndpointPolicy) []bpf.FailedDirection {
		if full && p.Endpoint == tiefighter {
			return []bpf.FailedDirection{{Endpoint: tiefighter, Direction: bpf.Egress,
				Err: fmt.Errorf("endpoint %d egress: %w", tiefighter, bpf.ErrMapFull)}}
		}
		return nil
	}
	h.start()
	h.send("../examples/starwars/objects.yaml", "../examples/starwars/policy-l7.yaml", twoL7(t))
	r := h.await("revision 1", anyReport)
	if len(r.failures) != 1 {
		t.Fatalf("failures %+v, want one for the tiefighter's egress", r.failures)
	}
	if f := r.failures[0]; f.Endpoint != "default/tiefighter" || f.Step != StepDatapathPolicy ||
		!slices.Equal(f.Directions, []string{"egress"}) || !strings.Contains(f.Error, "full") {
		t.Errorf("failure %+v", f)
	}
	if !h.dp.attached[xwing] || !h.dp.attached[tiefighter] || !h.dp.attached[deathstar] {
		t.Errorf("attached %v, want every endpoint", h.dp.attached)
	}
	if in := h.dp.entries(deathstar, policy.Ingress); !hasVerdict(in, bpf.VerdictRedirect) {
		t.Errorf("deathstar ingress %+v, want its redirects", in)
	}
	h.dp.mu.Lock()
	full = false
	h.dp.mu.Unlock()
	h.send("../examples/starwars/objects.yaml", "../examples/starwars/policy-l7.yaml")
	r = h.await("revision 2", func(r report) bool { return r.rev == 2 })
	if len(r.failures) != 0 {
		t.Errorf("revision 2 failures %+v", r.failures)
	}
}

// TestNACKConfined: the Go proxy rejects the deathstar's NetworkPolicy;
// the deathstar's redirects become drops and the failure names it, the
// tiefighter's Kafka redirects go to the proxy, which got everything but
// the rejected resource.
func TestNACKConfined(t *testing.T) {
	h := newHarness(t, starwarsVeths())
	h.xds.setDecide(nackPolicyOf("198.18.1.10"))
	h.start()
	h.send("../examples/starwars/objects.yaml", "../examples/starwars/policy-l7.yaml", twoL7(t))
	r := h.await("revision 1", anyReport)
	if len(r.failures) != 1 || r.failures[0].Endpoint != "default/deathstar" || r.failures[0].Step != StepProxyRejected ||
		!strings.Contains(r.failures[0].Error, "bad regex") || r.failures[0].Policies[0].Name != "default/rule1" {
		t.Fatalf("failures %+v", r.failures)
	}
	if in := h.dp.entries(deathstar, policy.Ingress); hasVerdict(in, bpf.VerdictRedirect) || !hasVerdict(in, bpf.VerdictDeny) {
		t.Errorf("deathstar ingress %+v, want drops", in)
	}
	if in := h.dp.entries(tiefighter, policy.Ingress); !hasVerdict(in, bpf.VerdictRedirect) {
		t.Errorf("tiefighter ingress %+v, want redirects", in)
	}
	last := h.xds.lastState()
	if len(last.GoProxy.LocalEndpoints) != 2 || slices.ContainsFunc(last.GoProxy.LocalEndpoints, func(ep policy.Endpoint) bool { return ep.Name == "deathstar" }) {
		t.Errorf("last push had %v, want every endpoint but the deathstar", last.GoProxy.LocalEndpoints)
	}
}

// TestListenerRejected: the proxy cannot bind the HTTP listener; the
// endpoints redirecting to it fail closed, Kafka goes on.
func TestListenerRejected(t *testing.T) {
	h := newHarness(t, starwarsVeths())
	h.xds.setDecide(func(d map[string]map[string]string) error {
		if _, ok := d[xds.TypeListener]["ingress/http"]; ok {
			return &server.NACKError{Consumer: "l7proxy~n1", TypeURL: xds.TypeListener, Resources: slices.Sorted(maps.Keys(d[xds.TypeListener])),
				Detail: `listener "ingress/http": bind: address already in use`}
		}
		return nil
	})
	h.start()
	h.send("../examples/starwars/objects.yaml", "../examples/starwars/policy-l7.yaml", twoL7(t))
	r := h.await("revision 1", anyReport)
	if len(r.failures) != 1 || r.failures[0].Endpoint != "default/deathstar" || r.failures[0].Step != StepProxyRejected {
		t.Fatalf("failures %+v", r.failures)
	}
	if in := h.dp.entries(tiefighter, policy.Ingress); !hasVerdict(in, bpf.VerdictRedirect) {
		t.Errorf("tiefighter ingress %+v, want redirects", in)
	}
}

// TestACKTimeoutConfined: the proxy stops answering for its endpoint
// policies (it ACKs the rest). A new revision still attaches a new pod and
// syncs L3/L4; the endpoint whose L7 policy changed fails closed (its new
// rules are not in force), the one whose policy did not change keeps its
// redirects; when the proxy answers again, a retry restores the redirect
// without a new source revision.
func TestACKTimeoutConfined(t *testing.T) {
	h := newHarness(t, starwarsVeths())
	h.start()
	kafka := twoL7(t)
	h.send("../examples/starwars/objects.yaml", "../examples/starwars/policy-l7.yaml", kafka)
	if r := h.await("revision 1", anyReport); len(r.failures) != 0 {
		t.Fatalf("revision 1 failures %+v", r.failures)
	}
	h.xds.setDecide(pendingPolicies)
	// The deathstar's rule changes; a new pod appears.
	dir := t.TempDir()
	l7, err := os.ReadFile("../examples/starwars/policy-l7.yaml")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(dir+"/policy.yaml", []byte(strings.Replace(string(l7), "/v1/request-landing", "/v1/other", 1)), 0o644)
	os.WriteFile(dir+"/probe.yaml", []byte("apiVersion: v1\nkind: Pod\nmetadata: {name: probe, namespace: default, labels: {class: probe}}\nstatus: {podIP: 198.18.1.13}\n"), 0o644)
	objs, errs := policy.Load("../examples/starwars/objects.yaml", dir+"/policy.yaml", dir+"/probe.yaml", kafka)
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	h.host.mu.Lock()
	h.host.veths["default/probe"] = 13
	h.host.mu.Unlock()
	h.sendObjects(objs)
	r := h.await("revision 2", func(r report) bool { return r.rev == 2 })
	if !h.dp.attached[13] {
		t.Errorf("the new pod was not attached while the proxy hung")
	}
	if len(r.failures) != 1 || r.failures[0].Endpoint != "default/deathstar" || r.failures[0].Step != StepProxyACK {
		t.Fatalf("revision 2 failures %+v", r.failures)
	}
	if in := h.dp.entries(deathstar, policy.Ingress); hasVerdict(in, bpf.VerdictRedirect) {
		t.Errorf("deathstar ingress %+v: its changed rules are not ACKed, want drops", in)
	}
	if in := h.dp.entries(tiefighter, policy.Ingress); !hasVerdict(in, bpf.VerdictRedirect) {
		t.Errorf("tiefighter ingress %+v: unchanged and ACKed, want redirects", in)
	}
	h.xds.setDecide(nil)
	h.await("the retry after the proxy came back", func(r report) bool { return r.rev == 2 && len(r.failures) == 0 })
	if in := h.dp.entries(deathstar, policy.Ingress); !hasVerdict(in, bpf.VerdictRedirect) {
		t.Errorf("deathstar ingress %+v after the ACK, want redirects", in)
	}
}

// TestPortAllocationConfined: no proxy port for the HTTP listener; the
// endpoints redirecting to it fail closed, Kafka goes on.
func TestPortAllocationConfined(t *testing.T) {
	h := newHarness(t, starwarsVeths())
	h.ports.fail = map[redirect.PortKey]bool{{Direction: "ingress", Parser: policy.ParserHTTP}: true}
	h.start()
	h.send("../examples/starwars/objects.yaml", "../examples/starwars/policy-l7.yaml", twoL7(t))
	r := h.await("revision 1", anyReport)
	if len(r.failures) != 1 || r.failures[0].Endpoint != "default/deathstar" || r.failures[0].Step != StepProxyPort {
		t.Fatalf("failures %+v", r.failures)
	}
	if in := h.dp.entries(tiefighter, policy.Ingress); !hasVerdict(in, bpf.VerdictRedirect) {
		t.Errorf("tiefighter ingress %+v, want redirects", in)
	}
}

// TestNewEndpointFromLinkEvent: a veth that appears (a link event) is
// attached with its policy without a source update.
func TestNewEndpointFromLinkEvent(t *testing.T) {
	veths := starwarsVeths()
	delete(veths, "default/xwing")
	h := newHarness(t, veths)
	h.start()
	h.send("../examples/starwars/objects.yaml", "../examples/starwars/policy-l7.yaml")
	h.await("revision 1", anyReport)
	if h.dp.attached[xwing] {
		t.Fatal("xwing attached without a veth")
	}
	h.host.addVeth("default/xwing", xwing)
	h.await("the xwing", func(report) bool { return h.dp.attached[xwing] })
	if _, ok := h.dp.policy[xwing]; !ok {
		t.Error("xwing attached without its policy in the maps")
	}
}

// TestIdentitiesSurviveRestart: a restarted agent, given the pods in
// another order, keeps every identity, so its first sync changes nothing.
// Without the state file the same restart renumbers (the test checks it
// can tell).
func TestIdentitiesSurviveRestart(t *testing.T) {
	for _, keepState := range []bool{true, false} {
		t.Run(fmt.Sprintf("state=%v", keepState), func(t *testing.T) {
			h := newHarness(t, starwarsVeths())
			h.start()
			objs, errs := policy.Load("../examples/starwars/objects.yaml", "../examples/starwars/policy-l7.yaml")
			if len(errs) > 0 {
				t.Fatal(errs)
			}
			h.sendObjects(objs)
			h.await("revision 1", anyReport)
			before := maps.Clone(h.dp.policy)
			syncsBefore := len(h.dp.syncs)
			if !keepState {
				os.Remove(IdentitiesFile(h.stateDir))
			}
			h.restart()
			reversed := *objs
			reversed.Pods = slices.Clone(objs.Pods)
			slices.Reverse(reversed.Pods)
			h.sendObjects(&reversed)
			h.await("revision 1 after the restart", anyReport)
			changed := 0
			for _, st := range h.dp.syncs[syncsBefore:] {
				changed += st.Added + st.Updated + st.Deleted
			}
			same := fmt.Sprint(before) == fmt.Sprint(h.dp.policy)
			if keepState && (changed != 0 || !same) {
				t.Errorf("restart with state: syncs %v, entries same %v", h.dp.syncs[syncsBefore:], same)
			}
			if !keepState && changed == 0 {
				t.Errorf("restart without state changed nothing: the test cannot tell renumbering apart")
			}
			t.Logf("restart (state kept: %v): syncs after the restart %v", keepState, h.dp.syncs[syncsBefore:])
		})
	}
}

// TestACKNeverAnswered: an update that never resolves is bounded by the
// agent's own timeout; the endpoints it concerns fail closed and the
// revision is implemented for the rest.
func TestACKNeverAnswered(t *testing.T) {
	h := newHarness(t, starwarsVeths())
	h.xds.hang = true
	h.start()
	start := time.Now()
	h.send("../examples/starwars/objects.yaml", "../examples/starwars/policy-l7.yaml")
	r := h.await("revision 1", anyReport)
	if len(r.failures) != 1 || r.failures[0].Endpoint != "default/deathstar" || r.failures[0].Step != StepProxyACK ||
		!strings.Contains(r.failures[0].Error, "no answer within") {
		t.Fatalf("failures %+v", r.failures)
	}
	if !h.dp.attached[deathstar] || hasVerdict(h.dp.entries(deathstar, policy.Ingress), bpf.VerdictRedirect) {
		t.Errorf("deathstar attached %v, ingress %+v; want attached with drops", h.dp.attached[deathstar], h.dp.entries(deathstar, policy.Ingress))
	}
	t.Logf("implemented after %v", time.Since(start).Round(time.Millisecond))
}
