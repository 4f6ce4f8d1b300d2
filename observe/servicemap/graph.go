package servicemap

import (
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/policy"
)

// Node kinds.
const (
	// KindWorkload: the pods of one namespace that share their stable labels.
	KindWorkload = "workload"
	// KindEntity: a reserved identity (host, world, …), a CIDR or FQDN
	// identity, or an unknown peer.
	KindEntity = "entity"
)

// Node is one vertex of the map.
type Node struct {
	ID        string `json:"id"`
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	// Name is what the page shows: the workload's app/name label, else its
	// stable labels; the entity's name.
	Name string `json:"name"`
	// Labels are the stable labels that define the workload (never
	// pod-template-hash and the other per-replica labels), or the entity's
	// labels.
	Labels []string `json:"labels,omitempty"`
}

// Edge is the flows from one node to another with one verdict, decided by
// the same policies.
type Edge struct {
	ID      string `json:"id"`
	Source  string `json:"source"`
	Target  string `json:"target"`
	Verdict string `json:"verdict"`
	// Policy names what decided ("default/rule1", "default-deny
	// default/rule1"), or the drop reason when no policy is named.
	Policy string    `json:"policy,omitempty"`
	Count  uint64    `json:"count"`
	Last   time.Time `json:"last"`
	// Flows are the most recent flows, oldest first (in a snapshot only).
	Flows []Flow `json:"flows,omitempty"`
}

// Flow is one record as the page lists it under an edge.
type Flow struct {
	Seq       uint64    `json:"seq"`
	Time      time.Time `json:"time"`
	Verdict   string    `json:"verdict"`
	Protocol  string    `json:"protocol,omitempty"`
	Direction string    `json:"direction,omitempty"`
	Observer  string    `json:"observer,omitempty"`
	Source    string    `json:"source,omitempty"`
	Dest      string    `json:"destination,omitempty"`
	SrcPod    string    `json:"srcPod,omitempty"`
	DstPod    string    `json:"dstPod,omitempty"`
	// DecidedBy are the deciding rules in their text form.
	DecidedBy []string `json:"decidedBy,omitempty"`
	Reason    string   `json:"reason,omitempty"`
	// L7: HTTP (gRPC is HTTP with the method as path), Kafka, DNS.
	Method    string   `json:"method,omitempty"`
	Path      string   `json:"path,omitempty"`
	Status    int      `json:"status,omitempty"`
	APIKey    string   `json:"apiKey,omitempty"`
	Topics    []string `json:"topics,omitempty"`
	ErrorCode int16    `json:"errorCode,omitempty"`
	DNSQuery  string   `json:"dnsQuery,omitempty"`
	DNSRcode  string   `json:"dnsRcode,omitempty"`
}

// Graph is a snapshot of the map, nodes and edges sorted by id.
type Graph struct {
	Nodes []Node `json:"nodes"`
	Edges []Edge `json:"edges"`
	// Dropped counts flows not drawn because the map reached its bounds.
	Dropped uint64 `json:"dropped,omitempty"`
	// LastSeq is the sequence number of the newest flow in the map.
	LastSeq uint64 `json:"lastSeq"`
}

// Update is what one flow changed: the nodes it added, its edge (without
// flows) and the flow itself.
type Update struct {
	Nodes []Node `json:"nodes,omitempty"`
	Edge  Edge   `json:"edge"`
	Flow  Flow   `json:"flow"`
}

// Limits bound an Aggregator's memory.
type Limits struct {
	// MaxNodes and MaxEdges bound the map; flows that would add beyond them
	// are counted in Graph.Dropped.
	MaxNodes, MaxEdges int
	// RecentFlows is how many flows each edge keeps for its list.
	RecentFlows int
}

// Default limits.
const (
	DefaultMaxNodes    = 1000
	DefaultMaxEdges    = 4000
	DefaultRecentFlows = 20
)

func (l Limits) withDefaults() Limits {
	if l.MaxNodes <= 0 {
		l.MaxNodes = DefaultMaxNodes
	}
	if l.MaxEdges <= 0 {
		l.MaxEdges = DefaultMaxEdges
	}
	if l.RecentFlows <= 0 {
		l.RecentFlows = DefaultRecentFlows
	}
	return l
}

type edgeState struct {
	Edge
	recent []Flow // ring
	next   int
}

// Aggregator folds flow records into the map. It is not safe for
// concurrent use (each page stream has its own).
type Aggregator struct {
	lim Limits
	// places caches NodeOf by peer: the agent's enrichment shares one
	// *flow.Endpoint per pod between records (reset when it grows).
	places  map[peerKey]Node
	nodes   map[string]*Node
	edges   map[string]*edgeState
	dropped uint64
	lastSeq uint64
}

// NewAggregator returns an empty map with the given bounds (zero values
// take the defaults).
func NewAggregator(lim Limits) *Aggregator {
	return &Aggregator{lim: lim.withDefaults(), nodes: map[string]*Node{}, edges: map[string]*edgeState{}, places: map[peerKey]Node{}}
}

type peerKey struct {
	ep *flow.Endpoint
	id flow.Identity
}

// maxPlaces bounds the NodeOf cache.
const maxPlaces = 4096

func (a *Aggregator) place(ep *flow.Endpoint, id flow.Identity) Node {
	k := peerKey{ep, id}
	if n, ok := a.places[k]; ok {
		return n
	}
	if len(a.places) >= maxPlaces {
		clear(a.places)
	}
	n := NodeOf(ep, id)
	a.places[k] = n
	return n
}

// Add folds one record in. It returns false when the record is not drawn:
// the reply direction of a connection, or the map is full.
func (a *Aggregator) Add(seq uint64, r *flow.Record) (Update, bool) {
	if r == nil || r.IsReply {
		return Update{}, false
	}
	src, dst := a.place(r.SrcEndpoint, r.SrcIdentity), a.place(r.DstEndpoint, r.DstIdentity)
	verdict, pol := string(r.Verdict), PolicyOf(r)
	if verdict == "" {
		verdict = string(flow.VerdictUnknown)
	}
	key := src.ID + "\x00" + dst.ID + "\x00" + verdict + "\x00" + pol
	e := a.edges[key]
	var added []Node
	if e == nil {
		newNodes := 0
		for _, n := range []Node{src, dst} {
			if a.nodes[n.ID] == nil && (len(added) == 0 || added[0].ID != n.ID) {
				newNodes++
				added = append(added, n)
			}
		}
		if len(a.edges) >= a.lim.MaxEdges || len(a.nodes)+newNodes > a.lim.MaxNodes {
			a.dropped++
			return Update{}, false
		}
		for i := range added {
			a.nodes[added[i].ID] = &added[i]
		}
		e = &edgeState{Edge: Edge{ID: "e" + strconv.Itoa(len(a.edges)+1), Source: src.ID, Target: dst.ID, Verdict: verdict, Policy: pol}}
		a.edges[key] = e
	}
	f := flowOf(seq, r)
	e.Count++
	e.Last = r.Time
	if len(e.recent) < a.lim.RecentFlows {
		e.recent = append(e.recent, f)
	} else {
		e.recent[e.next] = f
		e.next = (e.next + 1) % len(e.recent)
	}
	a.lastSeq = max(a.lastSeq, seq)
	return Update{Nodes: added, Edge: e.Edge, Flow: f}, true
}

// Graph returns the map: nodes and edges sorted by id, each edge with its
// recent flows.
func (a *Aggregator) Graph() Graph {
	g := Graph{Nodes: make([]Node, 0, len(a.nodes)), Edges: make([]Edge, 0, len(a.edges)), Dropped: a.dropped, LastSeq: a.lastSeq}
	for _, n := range a.nodes {
		g.Nodes = append(g.Nodes, *n)
	}
	for _, e := range a.edges {
		ed := e.Edge
		ed.Flows = make([]Flow, 0, len(e.recent))
		ed.Flows = append(ed.Flows, e.recent[e.next:]...)
		ed.Flows = append(ed.Flows, e.recent[:e.next]...)
		g.Edges = append(g.Edges, ed)
	}
	slices.SortFunc(g.Nodes, func(x, y Node) int { return strings.Compare(x.ID, y.ID) })
	slices.SortFunc(g.Edges, func(x, y Edge) int {
		if c := len(x.ID) - len(y.ID); c != 0 {
			return c
		}
		return strings.Compare(x.ID, y.ID)
	})
	return g
}

// nameKeys are the label keys that name a workload, in order of preference.
var nameKeys = []string{"app.kubernetes.io/name", "app", "k8s-app", "name", "class", "component"}

// NodeOf places a flow's peer on the map. A pod is its workload: the pods
// of its namespace with the same stable labels (labels every replica and
// every rollout keeps: policy.StableLabelKey, so never pod-template-hash;
// the namespace and cluster labels are left out as the namespace is part
// of the id), or its controller when the record names one. A peer without
// a pod is its entity: the reserved identity's name, else its labels (CIDR,
// FQDN), else the identity number.
func NodeOf(ep *flow.Endpoint, id flow.Identity) Node {
	if ep == nil {
		return entityNode(ep, id)
	}
	ns := ep.Namespace
	if ep.Pod == "" {
		// a pod identity's labels without the pod (an address the agent
		// does not know, e.g. the pod's IPv6 link-local one): its workload
		if ns = podNamespace(ep.Labels); ns == "" {
			return entityNode(ep, id)
		}
	}
	n := Node{Kind: KindWorkload, Namespace: ns}
	var sa string
	for _, l := range ep.Labels {
		src, kv, ok := strings.Cut(l, ":")
		if !ok {
			src, kv = policy.SourceK8s, l
		}
		if src != policy.SourceK8s {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		switch {
		case k == policy.LabelServiceAccount:
			sa = v
			continue
		case strings.HasPrefix(k, "io.kubernetes.") || strings.HasPrefix(k, "io.cilium.k8s."):
			continue
		case !policy.StableLabelKey(k):
			continue
		}
		n.Labels = append(n.Labels, k+"="+v)
	}
	slices.Sort(n.Labels)
	switch {
	case ep.Workload != "":
		n.ID = "w:" + ns + "/" + strings.ToLower(ep.WorkloadKind) + "/" + ep.Workload
		n.Name = ep.Workload
	case len(n.Labels) > 0:
		n.ID = "w:" + ns + "/" + strings.Join(n.Labels, ",")
		n.Name = displayName(n.Labels)
	case sa != "":
		n.ID = "w:" + ns + "/serviceaccount=" + sa
		n.Name = "serviceaccount " + sa
		n.Labels = []string{policy.LabelServiceAccount + "=" + sa}
	default:
		n.ID = "w:" + ns + "/"
		n.Name = "(pods without labels)"
	}
	return n
}

// podNamespace is the namespace a pod identity's labels name.
func podNamespace(labels []string) string {
	for _, l := range labels {
		if ns, ok := strings.CutPrefix(l, policy.SourceK8s+":"+policy.LabelPodNamespace+"="); ok {
			return ns
		}
	}
	return ""
}

func displayName(labels []string) string {
	for _, key := range nameKeys {
		for _, l := range labels {
			if k, v, _ := strings.Cut(l, "="); k == key && v != "" {
				return v
			}
		}
	}
	return strings.Join(labels, ",")
}

func entityNode(ep *flow.Endpoint, id flow.Identity) Node {
	if name := flow.ReservedName(id); name != "" {
		return Node{ID: "x:" + name, Kind: KindEntity, Name: name, Labels: []string{"reserved:" + name}}
	}
	if ep != nil && len(ep.Labels) > 0 {
		labels := slices.Sorted(slices.Values(ep.Labels))
		n := Node{ID: "x:" + strings.Join(labels, ","), Kind: KindEntity, Namespace: ep.Namespace, Labels: labels}
		n.Name = strings.Join(labels, ",")
		for _, l := range labels {
			if name, ok := strings.CutPrefix(l, "reserved:"); ok {
				n.Name = name
				break
			}
		}
		return n
	}
	if id == 0 {
		return Node{ID: "x:unknown", Kind: KindEntity, Name: "unknown"}
	}
	return Node{ID: "x:identity/" + id.String(), Kind: KindEntity, Name: "identity " + id.String()}
}

// PolicyOf names what decided a record: each deciding policy once, in
// order ("default-deny NS/NAME" for a default-deny), else the reason a
// denial gives.
func PolicyOf(r *flow.Record) string {
	var names []string
	for _, p := range r.DecidedBy {
		s := p.Policy
		if p.Kind == flow.KindDefaultDeny {
			s = "default-deny " + s
		}
		s = strings.TrimSpace(s)
		if s != "" && !slices.Contains(names, s) {
			names = append(names, s)
		}
	}
	if len(names) == 0 && r.Verdict != flow.VerdictAllowed && r.Verdict != flow.VerdictRedirected {
		return r.Reason
	}
	return strings.Join(names, ", ")
}

func flowOf(seq uint64, r *flow.Record) Flow {
	f := Flow{Seq: seq, Time: r.Time, Verdict: string(r.Verdict), Protocol: r.Protocol, Observer: r.Observer, Reason: r.Reason,
		Method: r.Method, Path: r.Path, Status: r.Status, APIKey: r.APIKey, Topics: r.Topics, ErrorCode: r.ErrorCode,
		DNSQuery: r.DNSQuery, DNSRcode: r.DNSRcode}
	f.Direction = r.Direction.String()
	if r.Source.IsValid() {
		f.Source = r.Source.String()
	}
	if r.Destination.IsValid() {
		f.Dest = r.Destination.String()
	}
	if e := r.SrcEndpoint; e != nil && e.Pod != "" {
		f.SrcPod = e.Namespace + "/" + e.Pod
	}
	if e := r.DstEndpoint; e != nil && e.Pod != "" {
		f.DstPod = e.Namespace + "/" + e.Pod
	}
	for _, p := range r.DecidedBy {
		f.DecidedBy = append(f.DecidedBy, p.String())
	}
	return f
}
