package suggest

import (
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	"github.com/l7gate/l7gate/flow"
	"github.com/l7gate/l7gate/policy"
)

// Workload is the pods of one namespace that share their stable labels.
type Workload struct {
	Namespace string
	// Name is derived from its pods' names without the generated parts
	// (ReplicaSet hash, ordinal, random suffix); it names the suggested
	// policy, it never selects anything.
	Name string
	// Labels are the stable labels every pod of it carries.
	Labels map[string]string
	// ServiceAccount selects it when it has no stable labels.
	ServiceAccount string
	Pods           []string
	key            string
}

// selector returns the labels that select the workload's pods, or nil
// when nothing but the namespace does.
func (w *Workload) selector() map[string]string {
	if len(w.Labels) > 0 {
		return w.Labels
	}
	if w.ServiceAccount != "" && w.ServiceAccount != "default" {
		return map[string]string{policy.LabelServiceAccount: w.ServiceAccount}
	}
	return nil
}

// cluster maps addresses to workloads.
type cluster struct {
	byIP      map[netip.Addr]*Workload
	workloads []*Workload // sorted by namespace, name
}

func stableLabels(ls map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range ls {
		if policy.StableLabelKey(k) {
			out[k] = v
		}
	}
	return out
}

func labelKey(ls map[string]string) string {
	keys := make([]string, 0, len(ls))
	for k := range ls {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(ls[k])
		b.WriteByte(0)
	}
	return b.String()
}

var (
	ordinalSuffix = regexp.MustCompile(`-[0-9]+$`)
	randomSuffix  = regexp.MustCompile(`-[a-z0-9]{5}$`)
)

// baseName strips what controllers generate from a pod name.
func baseName(p *policy.Pod) string {
	name := p.Name
	if h := p.Labels["pod-template-hash"]; h != "" {
		if i := strings.LastIndex(name, "-"+h+"-"); i > 0 {
			return name[:i]
		}
	}
	for _, k := range []string{"batch.kubernetes.io/job-name", "job-name"} {
		if j := p.Labels[k]; j != "" {
			return j
		}
	}
	if p.Labels["statefulset.kubernetes.io/pod-name"] != "" || p.Labels["apps.kubernetes.io/pod-index"] != "" {
		if s := ordinalSuffix.ReplaceAllString(name, ""); s != "" {
			return s
		}
	}
	if p.Labels["controller-revision-hash"] != "" || p.Labels["pod-template-generation"] != "" {
		if s := randomSuffix.ReplaceAllString(name, ""); s != "" {
			return s
		}
	}
	return name
}

func newCluster(objs *policy.Objects) *cluster {
	c := &cluster{byIP: map[netip.Addr]*Workload{}}
	byKey := map[string]*Workload{}
	for i := range objs.Pods {
		p := &objs.Pods[i]
		if p.HostNetwork {
			continue // its address is the node's, not the pod's
		}
		ls := stableLabels(p.Labels)
		key := p.Namespace + "\x00" + labelKey(ls)
		sa := ""
		if len(ls) == 0 {
			sa = p.ServiceAccount
			key += "\x00sa=" + sa
		}
		w := byKey[key]
		if w == nil {
			w = &Workload{Namespace: p.Namespace, Labels: ls, ServiceAccount: sa, key: key}
			byKey[key] = w
			c.workloads = append(c.workloads, w)
		}
		if b := baseName(p); w.Name == "" || b < w.Name {
			w.Name = b
		}
		w.Pods = append(w.Pods, p.Name)
		for _, a := range p.IPs {
			c.byIP[a.Unmap()] = w
		}
	}
	// Two workloads of a namespace with one name: tell them apart by a
	// hash of their labels (stable across runs).
	count := map[string]int{}
	for _, w := range c.workloads {
		count[w.Namespace+"/"+w.Name]++
	}
	for _, w := range c.workloads {
		slices.Sort(w.Pods)
		if count[w.Namespace+"/"+w.Name] > 1 {
			sum := sha256.Sum256([]byte(w.key))
			w.Name += "-" + hex.EncodeToString(sum[:3])
		}
	}
	slices.SortFunc(c.workloads, func(a, b *Workload) int {
		if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return c
}

// peerKind orders peers: workloads, then entities, then addresses.
type peerKind int

const (
	peerWorkload peerKind = iota
	peerEntity
	peerCIDR
)

// peer is the other side of a flow as a rule names it.
type peer struct {
	kind   peerKind
	wl     *Workload
	entity string
	cidr   netip.Prefix
}

func (p peer) sortKey() string {
	switch p.kind {
	case peerWorkload:
		return "0" + p.wl.Namespace + "/" + p.wl.Name
	case peerEntity:
		return "1" + p.entity
	}
	// addresses in numeric order
	b, _ := p.cidr.Addr().MarshalBinary()
	return "2" + hex.EncodeToString(b)
}

func (p peer) String() string {
	switch p.kind {
	case peerWorkload:
		return p.wl.Namespace + "/" + p.wl.Name
	case peerEntity:
		return p.entity
	}
	return p.cidr.String()
}

// peerOf places an address: a pod of the objects is its workload; else a
// reserved identity the record names (but world) is that entity; anything
// else is the address itself.
func (c *cluster) peerOf(a netip.Addr, id flow.Identity) peer {
	a = a.Unmap()
	if w := c.byIP[a]; w != nil {
		return peer{kind: peerWorkload, wl: w}
	}
	if id.IsReserved() && id != flow.IdentityWorld {
		if n := flow.ReservedName(id); n != "" {
			return peer{kind: peerEntity, entity: n}
		}
	}
	return peer{kind: peerCIDR, cidr: netip.PrefixFrom(a, a.BitLen())}
}
