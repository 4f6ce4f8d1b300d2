package policy

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"
)

func identitiesByPod(t *testing.T, objs *Objects, a *IdentityAllocator) map[string]Identity {
	t.Helper()
	snap, err := Compute(objs, a)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]Identity{}
	for _, ep := range snap.Endpoints {
		out[ep.Namespace+"/"+ep.Name] = ep.Identity
	}
	return out
}

// TestIdentityStateRestore: an allocator restored from its state (through
// JSON, as the agent persists it) gives every pod the identity it had,
// even when the pods come in another order; a fresh allocator renumbers.
func TestIdentityStateRestore(t *testing.T) {
	objs, errs := Load("../examples/starwars/objects.yaml", "testdata/in/l7.yaml")
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	first := NewIdentityAllocator()
	before := identitiesByPod(t, objs, first)
	if len(before) < 4 {
		t.Fatalf("want several pods, got %v", before)
	}
	data, err := json.Marshal(first.State())
	if err != nil {
		t.Fatal(err)
	}
	reversed := *objs
	reversed.Pods = slices.Clone(objs.Pods)
	slices.Reverse(reversed.Pods)

	if fresh := identitiesByPod(t, &reversed, NewIdentityAllocator()); sameIdentities(fresh, before) {
		t.Fatal("a fresh allocator gave the reversed pods the same identities: the test cannot tell")
	}
	var st IdentityState
	if err := json.Unmarshal(data, &st); err != nil {
		t.Fatal(err)
	}
	restored, err := RestoreIdentityAllocator(st)
	if err != nil {
		t.Fatal(err)
	}
	if after := identitiesByPod(t, &reversed, restored); !sameIdentities(after, before) {
		t.Errorf("identities after restore %v, before %v", after, before)
	}
	// A new label set after the restore gets a number never used before.
	id, err := restored.allocate(Labels{{Source: "k8s", Key: "app", Value: "new"}}, false)
	if err != nil || id != st.NextCluster {
		t.Errorf("new identity %d (%v), want %d", id, err, st.NextCluster)
	}
}

func sameIdentities(a, b map[string]Identity) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestRestoreIdentityAllocatorRejects(t *testing.T) {
	for name, st := range map[string]IdentityState{
		"duplicate id":     {NextCluster: 300, Identities: []AllocatedIdentity{{ID: 256, Key: "a"}, {ID: 256, Key: "b"}}},
		"duplicate labels": {NextCluster: 300, Identities: []AllocatedIdentity{{ID: 256, Key: "a"}, {ID: 257, Key: "a"}}},
		"beyond next":      {NextCluster: 300, Identities: []AllocatedIdentity{{ID: 300, Key: "a"}}},
		"reserved":         {NextCluster: 300, Identities: []AllocatedIdentity{{ID: 2, Key: "a"}}},
		"no labels":        {NextCluster: 300, Identities: []AllocatedIdentity{{ID: 256}}},
		"next too low":     {NextCluster: 5},
	} {
		if _, err := RestoreIdentityAllocator(st); err == nil {
			t.Errorf("%s: restored", name)
		}
	}
}

// TestIdentitySweep: an identity not in use is forgotten only after the
// grace period, and its number is not handed out again.
func TestIdentitySweep(t *testing.T) {
	a := NewIdentityAllocator()
	x, _ := a.allocate(Labels{{Source: "k8s", Key: "app", Value: "x"}}, false)
	y, _ := a.allocate(Labels{{Source: "k8s", Key: "app", Value: "y"}}, false)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if gone := a.Sweep([]Identity{x, y}, t0, time.Minute); len(gone) != 0 {
		t.Fatalf("swept in-use identities %v", gone)
	}
	if gone := a.Sweep([]Identity{x}, t0.Add(30*time.Second), time.Minute); len(gone) != 0 {
		t.Fatalf("swept %v within the grace period", gone)
	}
	if gone := a.Sweep([]Identity{x}, t0.Add(2*time.Minute), time.Minute); !slices.Equal(gone, []Identity{y}) {
		t.Fatalf("swept %v, want [%d]", gone, y)
	}
	y2, _ := a.allocate(Labels{{Source: "k8s", Key: "app", Value: "y"}}, false)
	if y2 == y || y2 == x {
		t.Errorf("label set y came back as %d: a swept number was reused", y2)
	}
	// The state carries last-use times: a restored allocator sweeps alike.
	r, err := RestoreIdentityAllocator(a.State())
	if err != nil {
		t.Fatal(err)
	}
	if gone := r.Sweep(nil, t0.Add(3*time.Minute+time.Second), time.Minute); !slices.Equal(gone, []Identity{x}) {
		t.Errorf("restored allocator swept %v, want [%d] (y2 was never seen in use before)", gone, x)
	}
}

// TestLabelsKeyFormat: the allocator's key (persisted in the state dir)
// is the labels' strings joined by ";", value-less labels included.
func TestLabelsKeyFormat(t *testing.T) {
	for _, ls := range []Labels{
		nil,
		NewLabels(Label{Source: SourceK8s, Key: "app", Value: "web"}),
		NewLabels(Label{Source: SourceK8s, Key: "app", Value: "web"}, Label{Source: SourceReserved, Key: "host"},
			Label{Source: SourceK8s, Key: LabelPodNamespace, Value: "default"}),
	} {
		if got, want := ls.Key(), strings.Join(ls.Strings(), ";"); got != want {
			t.Errorf("Key() = %q, want %q", got, want)
		}
	}
}
