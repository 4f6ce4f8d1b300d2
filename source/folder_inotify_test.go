package source

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/l7gate/l7gate/policy"
)

// TestFolderSeesChangesWithoutPolling: a file written (in the folder, and
// in a sub-folder created after the start) is picked up through inotify
// at once, though the polling interval is an hour.
func TestFolderSeesChangesWithoutPolling(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	updates := make(chan Update)
	go (&Folder{Dir: dir, Interval: time.Hour}).Run(ctx, updates)
	next := func(what string) Update {
		t.Helper()
		select {
		case u := <-updates:
			return u
		case <-time.After(5 * time.Second):
			t.Fatalf("no update after %s (polling every hour)", what)
		}
		return Update{}
	}
	next("the start")
	start := time.Now()
	write("ns2.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n")
	if u := next("a new file"); len(u.Objects.Namespaces) != 2 {
		t.Fatalf("after a new file: %d namespaces", len(u.Objects.Namespaces))
	}
	t.Logf("new file seen after %v", time.Since(start))
	write("sub/ns3.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: c}\n")
	for u := next("a file in a new folder"); len(u.Objects.Namespaces) != 3; u = next("a file in a new folder") {
	}
	if err := os.Remove(filepath.Join(dir, "ns2.yaml")); err != nil {
		t.Fatal(err)
	}
	if u := next("a removal"); len(u.Objects.Namespaces) != 2 {
		t.Fatalf("after a removal: %d namespaces", len(u.Objects.Namespaces))
	}
}

// TestFolderCacheEqualsLoad: after random writes, rewrites, removals and
// invalid files, the per-file cache's load gives exactly what
// policy.LoadObjects (Load without summaries) of the folder gives (objects, errors), decoding only the
// files that changed.
func TestFolderCacheEqualsLoad(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(3, 4))
	docs := func(i int) string {
		switch rng.IntN(5) {
		case 0:
			return "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x, namespace: a}\nspec: {}\n" // invalid
		case 1:
			return fmt.Sprintf("apiVersion: v1\nkind: Pod\nmetadata: {name: dup, namespace: a, labels: {v: \"%d\"}}\nstatus: {podIP: 198.18.0.%d}\n", i, 1+i%200)
		case 2:
			return "not: [yaml"
		}
		return fmt.Sprintf("apiVersion: v1\nkind: Pod\nmetadata: {name: p%d, namespace: a, labels: {app: x%d}}\nstatus: {podIP: 198.18.1.%d}\n---\n"+
			"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: c%d, namespace: a}\nspec:\n  endpointSelector: {matchLabels: {app: x%d}}\n  ingress: [{}]\n", i, i, 1+i%200, i, i)
	}
	names := []string{"a.yaml", "b.yaml", "sub/c.yaml", "sub/d.json", "e.yml"}
	cache := &folderCache{}
	var got *policy.Objects
	var gotErrs []error
	for step := range 60 {
		name := filepath.Join(dir, names[rng.IntN(len(names))])
		if rng.IntN(5) == 0 {
			os.Remove(name)
		} else {
			os.MkdirAll(filepath.Dir(name), 0o755)
			if err := os.WriteFile(name, []byte(docs(step)), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		// every file named, as inotify would after these writes
		all, err := policy.ListFiles(dir)
		if err != nil {
			t.Fatal(err)
		}
		named := map[string]bool{}
		for _, f := range all {
			named[f] = true
		}
		parts, partErrs, _, changed, _, err := cache.load(dir, named, nil, false, time.Now(), time.Hour, nil)
		if err != nil {
			t.Fatal(err)
		}
		if changed {
			// merged as Run merges them (in policy.Load's order)
			var merrs [][]error
			got, merrs = policy.MergeAll(parts...)
			gotErrs = nil
			for i := range parts {
				gotErrs = append(append(gotErrs, partErrs[i]...), merrs[i]...)
			}
		}
		want, wantErrs := policy.LoadObjects(dir) // the folder decodes without summaries
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("step %d: objects differ from policy.Load:\n got %+v\nwant %+v", step, got, want)
		}
		if fmt.Sprint(gotErrs) != fmt.Sprint(wantErrs) {
			t.Fatalf("step %d: errors %v, policy.Load %v", step, gotErrs, wantErrs)
		}
	}
}
