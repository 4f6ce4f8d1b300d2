package policy

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// trackerDoc is one random document of a folder file: a pod (some
// invalid, some defined in two files), a valid or invalid policy, a
// namespace, or a document that does not parse.
func trackerDoc(rng *rand.Rand) string {
	switch rng.IntN(10) {
	case 0, 1, 2, 3:
		ip := fmt.Sprintf("198.19.0.%d", 1+rng.IntN(200))
		if rng.IntN(8) == 0 {
			ip = "not-an-ip" // invalid pod: its last valid version stays
		}
		return fmt.Sprintf("apiVersion: v1\nkind: Pod\nmetadata: {name: p%d, namespace: ns%d, labels: {app: a%d}}\nstatus: {podIP: %s}\n",
			rng.IntN(12), rng.IntN(2), rng.IntN(3), ip)
	case 4, 5, 6:
		sel := fmt.Sprintf("{matchLabels: {app: a%d}}", rng.IntN(3))
		if rng.IntN(6) == 0 {
			sel = "{matchExpressions: [{key: app, operator: Bogus}]}" // invalid policy
		}
		return fmt.Sprintf(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: pol%d, namespace: ns%d}
spec:
  endpointSelector: %s
  ingress:
  - fromEndpoints: [{matchLabels: {app: a%d}}]
    toPorts: [{ports: [{port: "%d", protocol: TCP}]}]
`, rng.IntN(6), rng.IntN(2), sel, rng.IntN(3), 80+rng.IntN(3))
	case 7, 8:
		return fmt.Sprintf("apiVersion: v1\nkind: Namespace\nmetadata: {name: ns%d, labels: {team: t%d}}\n", rng.IntN(3), rng.IntN(2))
	default:
		return "apiVersion: v1\nkind: Pod\nmetadata: [unclosed\n" // the whole file does not parse
	}
}

// TestApplyFilesEqualsApply: random sequences of folder views — files
// rewritten, deleted and created, unchanged files keeping their decoded
// objects as the folder source keeps them, pods-only and policy-only
// files, duplicates across files, invalid pods and policies, files that
// do not parse — give with Tracker.ApplyFiles exactly the objects and
// errors MergeAll followed by Apply gives on a second tracker, and the
// pods' fast path is taken.
func TestApplyFilesEqualsApply(t *testing.T) {
	for seed := range uint64(40) {
		rng := rand.New(rand.NewPCG(seed, 19))
		got, want := NewTracker(), NewTracker()
		names := []string{"a-pods.yaml", "b-mixed.yaml", "c-pods.yaml", "d-policies.yaml", "e-policies.yaml"}
		type file struct {
			objs *Objects
			errs []error
		}
		files := map[string]file{}
		write := func(name string) {
			var docs []string
			for range 1 + rng.IntN(6) {
				d := trackerDoc(rng)
				if strings.Contains(name, "policies") && strings.Contains(d, "kind: Pod") && rng.IntN(4) != 0 {
					continue // policy files hold pods rarely
				}
				docs = append(docs, d)
			}
			o, errs := Decode(name, []byte(strings.Join(docs, "---\n")))
			files[name] = file{o, errs}
		}
		for _, n := range names {
			write(n)
		}
		fast, keptPods := 0, 0
		for step := range 60 {
			switch r := rng.IntN(10); {
			case r < 6: // the usual change: a policy file
				write(names[3+rng.IntN(2)])
			case r < 8:
				write(names[rng.IntN(len(names))])
			case r < 9:
				delete(files, names[rng.IntN(len(names))])
			default:
				// nothing changed (a resync)
			}
			var parts []*Objects
			var partErrs [][]error
			for _, n := range names {
				if f, ok := files[n]; ok {
					parts = append(parts, f.objs)
					partErrs = append(partErrs, f.errs)
				}
			}
			if got.podsMemoHolds(parts) {
				fast++
			}
			gotObjs, gotErrs := got.ApplyFiles(parts, partErrs)
			merged, merrs := MergeAll(parts...)
			wantObjs, wantErrs := want.Apply(merged, joinPartErrs(partErrs, merrs))
			if !want.podsClean() {
				keptPods++ // the last call kept an earlier pod: no fast path after it
			}
			if !reflect.DeepEqual(gotObjs, wantObjs) {
				t.Fatalf("seed %d step %d: objects differ:\n got %+v\nwant %+v", seed, step, gotObjs, wantObjs)
			}
			if fmt.Sprint(gotErrs) != fmt.Sprint(wantErrs) {
				t.Fatalf("seed %d step %d: errors differ:\n got %v\nwant %v", seed, step, gotErrs, wantErrs)
			}
		}
		if fast == 0 || (seed == 1 && keptPods == 0) {
			t.Fatalf("seed %d: %d steps on the pods' fast path, %d keeping an earlier pod", seed, fast, keptPods)
		}
	}
}

// TestApplyFilesOutputIsItsOwn: the caller may modify what ApplyFiles
// returned but the pods (read-only: shared with the tracker), and append
// to the pods (they have no room: an append copies); the next result is
// as if it had not.
func TestApplyFilesOutputIsItsOwn(t *testing.T) {
	pods, errs := Decode("pods.yaml", []byte("apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: web}\nstatus: {podIP: 198.19.0.1}\n"))
	pol1, _ := Decode("pol.yaml", []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: web}\n"))
	pol2, _ := Decode("pol.yaml", []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: db}\n"))
	if len(errs) > 0 || len(pods.Pods) != 1 {
		t.Fatalf("decode: %v", errs)
	}
	tr := NewTracker()
	out1, _ := tr.ApplyFiles([]*Objects{pods, pol1}, [][]error{errs, nil})
	out1.Namespaces[0].Name = "changed"
	out1.Pods = append(out1.Pods, Pod{Name: "appended"})
	if !tr.podsMemoHolds([]*Objects{pods, pol2}) {
		t.Fatal("the pods' fast path is not taken for a namespace change")
	}
	out2, _ := tr.ApplyFiles([]*Objects{pods, pol2}, [][]error{errs, nil})
	if len(out2.Pods) != 1 || out2.Pods[0].Name != "p" || out2.Namespaces[0].Name != "db" {
		t.Fatalf("after the caller modified the last output: pods %+v namespaces %+v", out2.Pods, out2.Namespaces)
	}
	out2.Pods = append(out2.Pods, Pod{Name: "appended"})
	out2.Namespaces[0].Name = "changed"
	out3, _ := tr.ApplyFiles([]*Objects{pods, pol1}, [][]error{errs, nil})
	if len(out3.Pods) != 1 || out3.Pods[0].Name != "p" || len(out3.Namespaces) != 1 || out3.Namespaces[0].Name != "web" {
		t.Fatalf("third view: pods %+v namespaces %+v", out3.Pods, out3.Namespaces)
	}
}

// TestTrackerKeepsInputPods: the tracker keeps as its pods' versions the
// very pods of a folder's pods file (ApplyFiles: parts are never
// modified) and of ApplyView's input, not a copy (~220 B of heap per
// pod), while Apply copies them; the output shares the tracker's pods
// (read-only), with no room to append into.
func TestTrackerKeepsInputPods(t *testing.T) {
	pods, errs := Decode("pods.yaml", []byte(strings.Join([]string{
		"apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: web}\nstatus: {podIP: 198.19.0.2}\n",
		"apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: web}\nstatus: {podIP: 198.19.0.1}\n",
	}, "---\n")))
	pol, _ := Decode("pol.yaml", []byte("apiVersion: v1\nkind: Namespace\nmetadata: {name: web}\n"))
	if len(errs) > 0 || len(pods.Pods) != 2 {
		t.Fatalf("decode: %v", errs)
	}
	shares := func(tr *Tracker, in []Pod) bool { return len(tr.pods) > 0 && &tr.pods[0] == &in[0] }
	tr := NewTracker()
	out, _ := tr.ApplyFiles([]*Objects{pods, pol}, [][]error{errs, nil})
	if !shares(tr, pods.Pods) {
		t.Error("ApplyFiles: the tracker copied the pods file's pods")
	}
	if &out.Pods[0] != &tr.pods[0] || cap(out.Pods) != len(out.Pods) {
		t.Error("ApplyFiles: the output's pods are a copy, or have room to append into")
	}

	view := &Objects{Pods: slices.Clone(pods.Pods)}
	tr = NewTracker()
	out, _ = tr.ApplyView(view, nil)
	if !shares(tr, view.Pods) {
		t.Error("ApplyView: the tracker copied the view's pods")
	}
	if &out.Pods[0] != &view.Pods[0] || cap(out.Pods) != len(out.Pods) {
		t.Error("ApplyView: the output's pods are a copy, or have room to append into")
	}
	tr = NewTracker()
	tr.Apply(view, nil)
	if shares(tr, view.Pods) {
		t.Error("Apply: the tracker kept the caller's pods")
	}
	// unsorted: ApplyView sorts a copy, never the caller's pods
	view = &Objects{Pods: []Pod{view.Pods[1], view.Pods[0]}}
	tr = NewTracker()
	tr.ApplyView(view, nil)
	if shares(tr, view.Pods) || view.Pods[0].Name != "b" {
		t.Errorf("ApplyView of unsorted pods: shared %v, input %s first", shares(tr, view.Pods), view.Pods[0].Name)
	}
}

// TestApplyFilesOneCopyOfPods: where two files hold pods in disjoint
// ranges (a pods file and a few pods of another), ApplyFiles holds one
// copy of each pod: the parts' pods become ranges of the output's array,
// equal to what they were, and a policy change takes the pods' fast path
// with them; pods that interleave across files are left in their parts.
func TestApplyFilesOneCopyOfPods(t *testing.T) {
	pod := func(ns, name, ip string) string {
		return fmt.Sprintf("apiVersion: v1\nkind: Pod\nmetadata: {name: %s, namespace: %s, labels: {app: x}}\nstatus: {podIP: %s}\n", name, ns, ip)
	}
	decode := func(name string, docs ...string) *Objects {
		o, errs := DecodeObjects(name, []byte(strings.Join(docs, "---\n")))
		if len(errs) > 0 {
			t.Fatal(errs)
		}
		return o
	}
	many := decode("pods.yaml", pod("bench", "syn-1", "198.19.0.1"), pod("bench", "syn-2", "198.19.0.2"), pod("bench", "syn-3", "198.19.0.3"))
	few := decode("objects.yaml", pod("bench", "client", "198.18.0.1"), pod("bench", "server", "198.18.0.2"))
	pol1 := decode("policy.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n")
	pol2 := decode("policy.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: bench, labels: {a: b}}\n")
	before := [][]Pod{slices.Clone(few.Pods), slices.Clone(many.Pods)}
	tr := NewTracker()
	parts := []*Objects{few, pol1, many}
	out, errs := tr.ApplyFiles(parts, make([][]error, 3))
	if len(errs) > 0 || len(out.Pods) != 5 {
		t.Fatalf("%d pods, errors %v", len(out.Pods), errs)
	}
	if !reflect.DeepEqual(few.Pods, before[0]) || !reflect.DeepEqual(many.Pods, before[1]) {
		t.Fatal("a part's pods changed")
	}
	if &few.Pods[0] != &out.Pods[0] || &many.Pods[0] != &out.Pods[2] || cap(few.Pods) != 2 || cap(many.Pods) != 3 {
		t.Error("the parts' pods are a copy of their own, not ranges of the merged pods (without room)")
	}
	merged, _ := MergeAll(parts...)
	want, _ := NewTracker().Apply(merged, nil)
	if !reflect.DeepEqual(out, want) {
		t.Fatalf("ApplyFiles differs from Apply:\n got %+v\nwant %+v", out, want)
	}
	parts[1] = pol2
	if !tr.podsMemoHolds(parts) {
		t.Fatal("the pods' fast path is not taken for a namespace change")
	}
	if out2, _ := tr.ApplyFiles(parts, make([][]error, 3)); &out2.Pods[0] != &out.Pods[0] || len(out2.Pods) != 5 {
		t.Error("a namespace change merged the pods again")
	}
	// interleaved: b-1 and b-3 in one file, b-2 in the other
	odd := decode("odd.yaml", pod("b", "b-1", "198.19.1.1"), pod("b", "b-3", "198.19.1.3"))
	even := decode("even.yaml", pod("b", "b-2", "198.19.1.2"))
	oddPods, evenPods := odd.Pods, even.Pods
	out3, _ := NewTracker().ApplyFiles([]*Objects{odd, even}, make([][]error, 2))
	if len(out3.Pods) != 3 || out3.Pods[1].Name != "b-2" || &odd.Pods[0] != &oddPods[0] || &even.Pods[0] != &evenPods[0] {
		t.Fatalf("interleaved pods: %+v", out3.Pods)
	}
}
