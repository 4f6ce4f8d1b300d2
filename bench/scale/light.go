package scale

import (
	"context"
	"encoding/json"
	"maps"
	"strconv"
	"sync"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"

	"github.com/l7gate/l7gate/k8s"
	"github.com/l7gate/l7gate/source"
)

// A light agent stands for a node whose source would compute exactly
// what the full agent 0 computed (every node sees the same cluster): it
// keeps its own watches of the resources the agent's source watches (same
// clients, same encodings, its own connection, counted like a full
// agent's), its own status writer (its own report writes and
// election), but no informer cache and no view of its own. It implements
// a view once agent 0 published it AND its own watch delivered the
// changes that view holds: the later of the two is its implement time.
// What that leaves out is its own debounce and view computation (on a
// real node they run on that node's CPU, in parallel with the others);
// agent 0's are in the time. On 2 cores, N full agents would each
// re-assemble the whole cluster's view per change one after another, and
// with P = 10k each holds ~160 MiB: the simulation, not the cluster,
// would set the numbers (make scale: "light agents").

// viewHub is agent 0's latest implemented view, published to the light
// agents.
type viewHub struct {
	mu      sync.Mutex
	u       *source.Update
	pols    map[string]int
	pods    map[string]string
	changed chan struct{} // closed and replaced on publish
}

func newViewHub() *viewHub { return &viewHub{changed: make(chan struct{})} }

func (h *viewHub) publish(u source.Update, pols map[string]int, pods map[string]string) {
	h.mu.Lock()
	h.u, h.pols, h.pods = &u, pols, pods
	close(h.changed)
	h.changed = make(chan struct{})
	h.mu.Unlock()
}

// latest returns the view (nil before the first) and a channel closed at
// the next publish.
func (h *viewHub) latest() (*source.Update, map[string]int, map[string]string, <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.u, h.pols, h.pods, h.changed
}

// lightSeen is what a light agent's own watches delivered: per scale
// policy the highest change number, per marked pod its mark.
type lightSeen struct {
	mu     sync.Mutex
	pols   map[string]int
	pods   map[string]string
	notify chan struct{}
}

func (s *lightSeen) note(f func()) {
	s.mu.Lock()
	f()
	s.mu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// caughtUp reports whether the watches delivered every change the view
// (pols, pods) holds.
func (s *lightSeen) caughtUp(pols map[string]int, pods map[string]string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, n := range pols {
		if s.pols[k] < n {
			return false
		}
	}
	for k, m := range pods {
		if s.pods[k] != m {
			return false
		}
	}
	return true
}

// policyMarks is the highest change number in a policy object's spec.
func policyMarks(u *unstructured.Unstructured) int {
	b, err := json.Marshal(u.Object["spec"])
	if err != nil {
		return 0
	}
	n := 0
	for _, m := range changeRE.FindAllSubmatch(b, -1) {
		v, _ := strconv.Atoi(string(m[1]))
		n = max(n, v)
	}
	return n
}

// runLightAgent is one light agent (see viewHub).
func runLightAgent(ctx context.Context, cfg agentsConfig, idx int, node string, client kubernetes.Interface, dyn dynamic.Interface,
	shared *k8s.Source, hub *viewHub, logs *logCounter, emit func(agentEvent)) error {
	log := newAgentLogger(logs, node)
	w, err := k8s.NewStatusWriter(k8s.StatusWriterConfig{Client: client, Dynamic: dyn, Node: node, Source: shared, Logger: log,
		Election: k8s.ElectionConfig{StatusNodesLimit: cfg.StatusNodesLimit, StatusNodeSelector: cfg.StatusNodeSelector}})
	if err != nil {
		return err
	}
	go w.Run(ctx)
	seen := &lightSeen{pols: map[string]int{}, pods: map[string]string{}, notify: make(chan struct{}, 1)}
	// The first view: what the agent would list (agent 0's first view),
	// then its watches from the current resource version.
	var first *source.Update
	for first == nil {
		u, pols, pods, ch := hub.latest()
		if u != nil {
			first = u
			seen.note(func() { seen.pols, seen.pods = maps.Clone(pols), maps.Clone(pods) })
			break
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ch:
		}
	}
	watches := lightWatches(client, dyn)
	started := make(chan error, len(watches))
	for _, lw := range watches {
		go lw.run(ctx, seen, started)
	}
	for range watches {
		select {
		case <-ctx.Done():
			return nil
		case err := <-started:
			if err != nil {
				return err
			}
		}
	}
	var rev uint64
	last := ""
	for {
		u, pols, pods, ch := hub.latest()
		if u.Digest != last && seen.caughtUp(pols, pods) {
			rev++
			w.Implemented(ctx, rev, *u, nil)
			emit(agentEvent{Ev: "impl", Agent: idx, T: time.Now().UnixNano(), Rev: rev, Policies: pols, Pods: pods})
			last = u.Digest
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ch:
		case <-seen.notify:
		}
	}
}

// lightWatch is one resource a light agent watches.
type lightWatch struct {
	name string
	// list lists one item (for the resource version); watch watches from rv.
	list  func(ctx context.Context) (string, error)
	watch func(ctx context.Context, rv string) (watch.Interface, error)
	// event notes what an event delivered.
	event func(seen *lightSeen, ev watch.Event)
}

// lightWatches are the watches of the agent's source (k8s.Source.Run):
// typed clients for the built-in resources (protobuf), the dynamic client
// for the Cilium policies (JSON), as its informers use.
func lightWatches(client kubernetes.Interface, dyn dynamic.Interface) []lightWatch {
	one := metav1.ListOptions{Limit: 1}
	wopts := func(rv string) metav1.ListOptions {
		return metav1.ListOptions{ResourceVersion: rv, AllowWatchBookmarks: true}
	}
	typed := func(name string, list func(context.Context, metav1.ListOptions) (string, error),
		w func(context.Context, metav1.ListOptions) (watch.Interface, error)) lightWatch {
		return lightWatch{name: name,
			list:  func(ctx context.Context) (string, error) { return list(ctx, one) },
			watch: func(ctx context.Context, rv string) (watch.Interface, error) { return w(ctx, wopts(rv)) },
			event: func(*lightSeen, watch.Event) {}}
	}
	core, net, disc := client.CoreV1(), client.NetworkingV1(), client.DiscoveryV1()
	pods := typed("pods", func(ctx context.Context, o metav1.ListOptions) (string, error) {
		l, err := core.Pods("").List(ctx, o)
		if err != nil {
			return "", err
		}
		return l.ResourceVersion, nil
	}, core.Pods("").Watch)
	pods.event = func(seen *lightSeen, ev watch.Event) {
		p, ok := ev.Object.(interface {
			GetNamespace() string
			GetName() string
			GetLabels() map[string]string
		})
		if !ok || ev.Type == watch.Bookmark {
			return
		}
		if m, ok := p.GetLabels()[markLabel]; ok {
			seen.note(func() { seen.pods[p.GetNamespace()+"/"+p.GetName()] = m })
		}
	}
	dynWatch := func(name string, ri dynamic.NamespaceableResourceInterface, policies bool) lightWatch {
		lw := lightWatch{name: name,
			list: func(ctx context.Context) (string, error) {
				l, err := ri.List(ctx, one)
				if err != nil {
					return "", err
				}
				return l.GetResourceVersion(), nil
			},
			watch: func(ctx context.Context, rv string) (watch.Interface, error) { return ri.Watch(ctx, wopts(rv)) },
			event: func(*lightSeen, watch.Event) {}}
		if policies {
			lw.event = func(seen *lightSeen, ev watch.Event) {
				u, ok := ev.Object.(*unstructured.Unstructured)
				if !ok || ev.Type == watch.Bookmark || ev.Type == watch.Deleted {
					return
				}
				if n := policyMarks(u); n > 0 {
					key := u.GetNamespace() + "/" + u.GetName()
					seen.note(func() { seen.pols[key] = max(seen.pols[key], n) })
				}
			}
		}
		return lw
	}
	rvOf := func(l interface{ GetResourceVersion() string }, err error) (string, error) {
		if err != nil {
			return "", err
		}
		return l.GetResourceVersion(), nil
	}
	return []lightWatch{
		pods,
		typed("namespaces", func(ctx context.Context, o metav1.ListOptions) (string, error) {
			l, err := core.Namespaces().List(ctx, o)
			return rvOf(l, err)
		}, core.Namespaces().Watch),
		typed("networkpolicies", func(ctx context.Context, o metav1.ListOptions) (string, error) {
			l, err := net.NetworkPolicies("").List(ctx, o)
			return rvOf(l, err)
		}, net.NetworkPolicies("").Watch),
		typed("nodes", func(ctx context.Context, o metav1.ListOptions) (string, error) {
			l, err := core.Nodes().List(ctx, o)
			return rvOf(l, err)
		}, core.Nodes().Watch),
		typed("services", func(ctx context.Context, o metav1.ListOptions) (string, error) {
			l, err := core.Services("").List(ctx, o)
			return rvOf(l, err)
		}, core.Services("").Watch),
		typed("endpointslices", func(ctx context.Context, o metav1.ListOptions) (string, error) {
			l, err := disc.EndpointSlices("").List(ctx, o)
			return rvOf(l, err)
		}, disc.EndpointSlices("").Watch),
		dynWatch("ciliumnetworkpolicies", dyn.Resource(k8s.CNPResource()), true),
		dynWatch("ciliumclusterwidenetworkpolicies", dyn.Resource(k8s.CCNPResource()), true),
	}
}

// run lists (one item) for the resource version, watches from it, and
// re-watches from the last version seen when the watch ends (re-listing
// if that fails). started gets one value: nil once the first watch is
// open, or the error that prevented it.
func (lw lightWatch) run(ctx context.Context, seen *lightSeen, started chan<- error) {
	rv, err := lw.list(ctx)
	if err != nil {
		started <- err
		return
	}
	first := true
	for ctx.Err() == nil {
		wi, err := lw.watch(ctx, rv)
		if err != nil {
			if first {
				started <- err
				return
			}
			time.Sleep(time.Second)
			if rv, err = lw.list(ctx); err != nil {
				continue
			}
			continue
		}
		if first {
			started <- nil
			first = false
		}
		failed := false
		for ev := range wi.ResultChan() {
			if ev.Type == watch.Error {
				failed = true // e.g. 410 Gone: list again
				break
			}
			if o, ok := ev.Object.(interface{ GetResourceVersion() string }); ok && o.GetResourceVersion() != "" {
				rv = o.GetResourceVersion()
			}
			lw.event(seen, ev)
		}
		wi.Stop()
		if failed {
			if r, err := lw.list(ctx); err == nil {
				rv = r
			}
		}
	}
}
