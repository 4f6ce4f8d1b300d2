package k8s

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strconv"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/tools/cache"

	"github.com/l7gate/l7gate/policy"
)

// fakeCluster is the informers' stores of a small cluster: pods (store 0)
// and every other kind the source renders (store 1), with an invalid
// policy and one with warnings.
type fakeCluster struct {
	t       testing.TB
	stores  []cache.Store
	changed map[storeKey]bool
	rv      int
}

func newFakeCluster(t testing.TB, pods int) *fakeCluster {
	t.Helper()
	c := &fakeCluster{t: t, stores: []cache.Store{cache.NewStore(cache.MetaNamespaceKeyFunc), cache.NewStore(cache.MetaNamespaceKeyFunc)},
		changed: map[storeKey]bool{}}
	for i := range pods {
		c.set(0, testPod(fmt.Sprintf("p%05d", i), fmt.Sprintf("198.18.%d.%d", i/250, 1+i%250), func(p *corev1.Pod) {
			p.Namespace = fmt.Sprintf("ns%d", i%3)
			p.Labels["tier"] = strconv.Itoa(i % 7)
			p.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}
		}))
	}
	for i := range 3 {
		c.set(1, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("ns%d", i), Labels: map[string]string{"team": "a"}}})
	}
	c.set(1, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}, Status: corev1.NodeStatus{
		Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "198.19.0.1"}}}})
	c.set(1, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "np", Namespace: "ns1"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "x"}}}})
	c.set(1, cnp("ns0", "good", httpPolicy(8080, "/v1/.*")))
	c.set(1, cnp("ns0", "typo", `{"endpointSelector":{},"ingress":[{"toPortz":[]}]}`))
	c.set(1, &unstructured.Unstructured{Object: map[string]any{"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
		"metadata": map[string]any{"name": "hosts"},
		"spec":     map[string]any{"nodeSelector": map[string]any{}, "ingress": []any{map[string]any{"fromEntities": []any{"cluster"}}}}}})
	return c
}

func (c *fakeCluster) set(store int, obj any) {
	c.rv++
	if m, ok := obj.(metav1.Object); ok {
		m.SetResourceVersion(strconv.Itoa(c.rv))
	}
	if err := c.stores[store].Update(obj); err != nil {
		c.t.Fatal(err)
	}
	key, _ := cache.MetaNamespaceKeyFunc(obj)
	c.changed[storeKey{store, key}] = true
}

func (c *fakeCluster) delete(store int, key string) {
	obj, ok, _ := c.stores[store].GetByKey(key)
	if !ok {
		return
	}
	if err := c.stores[store].Delete(obj); err != nil {
		c.t.Fatal(err)
	}
	c.changed[storeKey{store, key}] = true
}

func (c *fakeCluster) pod(key string) *corev1.Pod {
	o, ok, _ := c.stores[0].GetByKey(key)
	if !ok {
		return nil
	}
	return o.(*corev1.Pod).DeepCopy()
}

// applyTo brings v up to date with what changed since the last call.
func (c *fakeCluster) applyTo(v *view) {
	var batch []storeKey
	for k := range c.changed {
		batch = append(batch, k)
	}
	clear(c.changed)
	if err := v.apply(batch, func(sk storeKey) (any, bool) {
		o, ok, _ := c.stores[sk.informer].GetByKey(sk.key)
		return o, ok
	}); err != nil {
		c.t.Fatal(err)
	}
}

// documents renders every object, as the source did before the view.
func (c *fakeCluster) documents() []document {
	var pods []*corev1.Pod
	for _, o := range c.stores[0].List() {
		pods = append(pods, o.(*corev1.Pod))
	}
	docs, err := podDocuments(pods)
	if err != nil {
		c.t.Fatal(err)
	}
	for _, o := range c.stores[1].List() {
		d, err := objectDocument(o, nil)
		if err != nil {
			c.t.Fatal(err)
		}
		docs = append(docs, d)
	}
	sortDocuments(docs)
	return docs
}

// checkSameAsDecode compares a view with policy.Decode of every document
// at once, and its digest with a view built from scratch.
func checkSameAsDecode(t *testing.T, docs []document, v *view, everyKind bool) {
	t.Helper()
	objs, errs, _, digest := v.assemble()
	var buf bytes.Buffer
	for _, d := range docs {
		buf.Write(d.json)
		buf.WriteString("\n---\n")
	}
	want, wantErrs := policy.Decode("", buf.Bytes())
	got, exp := reflect.ValueOf(objs).Elem(), reflect.ValueOf(want).Elem()
	for _, f := range objectsFields {
		if !reflect.DeepEqual(got.Field(f).Interface(), exp.Field(f).Interface()) {
			t.Errorf("%s differs from policy.Decode:\n got %+v\nwant %+v", got.Type().Field(f).Name, got.Field(f).Interface(), exp.Field(f).Interface())
		}
	}
	if fmt.Sprint(errs) != fmt.Sprint(wantErrs) {
		t.Errorf("errors %v, want %v", errs, wantErrs)
	}
	if everyKind && (len(want.Pods) == 0 || len(want.Policies) == 0 || len(want.Warnings) == 0 || len(wantErrs) == 0) {
		t.Fatalf("the test's objects lack a kind: %d pods, %d policies, %d warnings, %d errors", len(want.Pods), len(want.Policies), len(want.Warnings), len(wantErrs))
	}
	fresh := newView()
	fresh.replace(docs)
	if _, _, _, d := fresh.assemble(); d != digest {
		t.Error("digest differs from a view built from scratch")
	}
}

// TestViewIncremental: after any sequence of changes, the view updated
// object by object is policy.Decode's view of every object rendered at
// once, and a change decodes only the objects it changed.
func TestViewIncremental(t *testing.T) {
	c := newFakeCluster(t, 60)
	v := newView()
	var all []storeKey
	for i, s := range c.stores {
		for _, k := range s.ListKeys() {
			all = append(all, storeKey{i, k})
		}
	}
	c.applyTo(v)
	checkSameAsDecode(t, c.documents(), v, true)
	_, _, _, first := v.assemble()

	// Nothing changed but every object was reported (a relist): nothing
	// decoded, same digest.
	before := v.decoded
	for _, k := range all {
		c.changed[k] = true
	}
	c.applyTo(v)
	if _, _, _, d := v.assemble(); v.decoded != before || d != first {
		t.Errorf("relist: %d documents decoded, digest changed %v", v.decoded-before, d != first)
	}

	// A pod's status condition: not in its document, nothing decoded.
	p := c.pod("ns1/p00001")
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	c.set(0, p)
	before = v.decoded
	c.applyTo(v)
	if _, _, _, d := v.assemble(); v.decoded != before || d != first {
		t.Errorf("pod condition: %d documents decoded, digest changed %v", v.decoded-before, d != first)
	}

	// One relabel: one decode.
	p = c.pod("ns1/p00004")
	p.Labels["app"] = "moved"
	c.set(0, p)
	before = v.decoded
	c.applyTo(v)
	checkSameAsDecode(t, c.documents(), v, true)
	if got := v.decoded - before; got != 1 {
		t.Errorf("one relabelled pod: %d documents decoded, want 1", got)
	}

	// Random churn, IP handover of terminating pods included.
	rng := rand.New(rand.NewPCG(1, 2))
	now := metav1.NewTime(time.Now())
	for step := range 300 {
		keys := c.stores[0].ListKeys()
		key := keys[rng.IntN(len(keys))]
		switch op := rng.IntN(8); op {
		case 0: // relabel
			p := c.pod(key)
			p.Labels["tier"] = strconv.Itoa(rng.IntN(5))
			c.set(0, p)
		case 1: // start deleting: the IP stays until another pod takes it
			p := c.pod(key)
			p.DeletionTimestamp = &now
			c.set(0, p)
		case 2: // a new pod, sometimes with the IP of another
			ip := fmt.Sprintf("198.19.%d.%d", rng.IntN(4), 1+rng.IntN(250))
			if rng.IntN(2) == 0 {
				if old := c.pod(key); old != nil && len(old.Status.PodIPs) > 0 {
					ip = old.Status.PodIPs[0].IP
				}
			}
			c.set(0, testPod(fmt.Sprintf("n%04d", step), ip, func(p *corev1.Pod) { p.Namespace = "ns2" }))
		case 3: // gone
			c.delete(0, key)
		case 4: // every container exited
			p := c.pod(key)
			if len(p.Status.ContainerStatuses) > 0 {
				p.Status.ContainerStatuses[0].State = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{}}
				c.set(0, p)
			}
		case 5: // a policy changes, or becomes invalid, or returns
			switch rng.IntN(3) {
			case 0:
				c.set(1, cnp("ns0", "good", httpPolicy(8000+rng.IntN(5), "/v1/.*")))
			case 1:
				c.set(1, cnp("ns0", "good", `{"endpointSelector":{},"egresss":[]}`))
			case 2:
				c.delete(1, "ns0/typo")
			}
		case 6: // a namespace's labels
			c.set(1, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ns1", Labels: map[string]string{"team": strconv.Itoa(rng.IntN(3))}}})
		case 7: // several at once
			for range 3 {
				p := c.pod(keys[rng.IntN(len(keys))])
				if p != nil {
					p.Labels["x"] = strconv.Itoa(rng.IntN(9))
					c.set(0, p)
				}
			}
		}
		if step%3 == 0 {
			c.applyTo(v)
			if t.Run("", func(t *testing.T) { checkSameAsDecode(t, c.documents(), v, false) }); t.Failed() {
				t.Fatalf("view diverged at step %d", step)
			}
			c.set(1, cnp("ns0", "typo", `{"endpointSelector":{},"ingress":[{"toPortz":[]}]}`)) // keep an error around
		}
	}
}

// BenchmarkSourceUpdate: 10k pods, one pod relabelled per update; the
// view renders and decodes that pod (incremental), or every object is
// rendered and decoded (full, as before).
func BenchmarkSourceUpdate(b *testing.B) {
	for _, mode := range []string{"incremental", "full"} {
		b.Run(mode, func(b *testing.B) {
			c := newFakeCluster(b, 10000)
			s := &Source{view: newView()}
			c.applyTo(s.view)
			keys := c.stores[0].ListKeys()
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				i++
				p := c.pod(keys[i%len(keys)])
				p.Labels["rev"] = strconv.Itoa(i)
				c.set(0, p)
				if mode == "full" {
					var buf bytes.Buffer
					for _, d := range c.documents() {
						buf.Write(d.json)
						buf.WriteString("\n---\n")
					}
					policy.Decode("", buf.Bytes())
					continue
				}
				c.applyTo(s.view)
				s.viewUpdate()
			}
		})
	}
}
