package source

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// folderRun starts a folder source that polls once an hour, so every
// update a test sees before the deadline came from inotify.
func folderRun(t *testing.T, dir string) func(what string) Update {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	updates := make(chan Update)
	done := make(chan struct{})
	go func() {
		defer close(done)
		(&Folder{Dir: dir, Interval: time.Hour, Settle: time.Hour}).Run(ctx, updates)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return func(what string) Update {
		t.Helper()
		select {
		case u := <-updates:
			return u
		case <-time.After(20 * time.Second):
			t.Fatalf("no update after %s (the folder is polled once an hour)", what)
		}
		return Update{}
	}
}

func podNames(u Update) []string {
	var out []string
	for _, p := range u.Objects.Pods {
		out = append(out, p.Name)
	}
	return out
}

func podsYAML(names ...string) string {
	var b strings.Builder
	for i, n := range names {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Pod\nmetadata: {name: %s, namespace: a}\nstatus: {podIP: 198.18.0.%d}\n", n, i+1)
	}
	return b.String()
}

func mustWrite(t *testing.T, name, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestFolderHoldsHalfWrittenFile: a file a writer has truncated and
// half rewritten (still open, the first half is valid YAML by itself) is
// never applied, though another file's change makes the source read the
// folder meanwhile; the old content stays in force until the writer
// closes the file, then the whole new content applies.
func TestFolderHoldsHalfWrittenFile(t *testing.T) {
	dir := t.TempDir()
	mustWrite(t, filepath.Join(dir, "pods.yaml"), podsYAML("p1", "p2", "p3"))
	next := folderRun(t, dir)
	if got := podNames(next("the start")); !slices.Equal(got, []string{"p1", "p2", "p3"}) {
		t.Fatalf("start: pods %v", got)
	}
	full := podsYAML("p1", "p4", "p5")
	half := full[:strings.Index(full, "---\napiVersion: v1\nkind: Pod\nmetadata: {name: p4")]
	f, err := os.OpenFile(filepath.Join(dir, "pods.yaml"), os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(half); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, filepath.Join(dir, "ns.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n")
	u := next("another file written")
	if len(u.Objects.Namespaces) != 1 {
		t.Fatalf("the other file's change: %d namespaces", len(u.Objects.Namespaces))
	}
	if got := podNames(u); !slices.Equal(got, []string{"p1", "p2", "p3"}) {
		t.Fatalf("pods while pods.yaml is half written: %v, want the last complete version [p1 p2 p3]", got)
	}
	if _, err := f.WriteString(full[len(half):]); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if got := podNames(next("the writer closed the file")); !slices.Equal(got, []string{"p1", "p4", "p5"}) {
		t.Fatalf("after the writer closed: pods %v", got)
	}
}

// TestFolderReplacedDirectory: a sub-folder removed and created again
// under the same name is watched again: a file written there is seen
// without a poll; so are a file deleted and the whole folder renamed
// over by a new one.
func TestFolderReplacedDirectory(t *testing.T) {
	dir := t.TempDir()
	sub := filepath.Join(dir, "sub")
	mustWrite(t, filepath.Join(sub, "pods.yaml"), podsYAML("p1"))
	mustWrite(t, filepath.Join(dir, "top.yaml"), podsYAML("t1")[:0]+"apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n")
	next := folderRun(t, dir)
	u := next("the start")
	if got := podNames(u); !slices.Equal(got, []string{"p1"}) {
		t.Fatalf("start: pods %v", got)
	}
	waitPods := func(what string, want ...string) {
		t.Helper()
		for {
			got := podNames(next(what))
			if slices.Equal(got, want) {
				return
			}
			t.Logf("%s: pods %v (waiting for %v)", what, got, want)
		}
	}
	if err := os.RemoveAll(sub); err != nil {
		t.Fatal(err)
	}
	waitPods("the sub-folder removed")
	mustWrite(t, filepath.Join(sub, "pods.yaml"), podsYAML("p2"))
	waitPods("a file in the re-created sub-folder", "p2")
	mustWrite(t, filepath.Join(sub, "more.yaml"), podsYAML("p3")[:0]+strings.Replace(podsYAML("p3"), "198.18.0.1", "198.18.0.9", 1))
	waitPods("a second file in the re-created sub-folder", "p2", "p3")
	if err := os.Remove(filepath.Join(sub, "pods.yaml")); err != nil {
		t.Fatal(err)
	}
	waitPods("a file deleted", "p3")
	// A new folder renamed over the old one (how a deployment tool swaps
	// a whole tree).
	tmp := filepath.Join(dir, ".new")
	mustWrite(t, filepath.Join(tmp, "x.yaml"), podsYAML("p9"))
	if err := os.RemoveAll(sub); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, sub); err != nil {
		t.Fatal(err)
	}
	waitPods("a folder renamed into place", "p9")
	mustWrite(t, filepath.Join(sub, "y.yaml"), strings.Replace(podsYAML("p10"), "198.18.0.1", "198.18.0.10", 1))
	waitPods("a file in the renamed folder", "p10", "p9")
}

// TestFolderInvalidKeepsLastGood: a file rewritten with an invalid
// field keeps its last valid objects in force; the error names the file
// and the field.
func TestFolderInvalidKeepsLastGood(t *testing.T) {
	dir := t.TempDir()
	pol := func(version, extra string) string {
		return "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: c, namespace: a}\nspec:\n  endpointSelector: {}\n  ingress:\n  - fromEndpoints: [{matchLabels: {version: " + version + "}}]\n" + extra
	}
	mustWrite(t, filepath.Join(dir, "cnp.yaml"), pol("firstversion", ""))
	next := folderRun(t, dir)
	if u := next("the start"); len(u.Objects.Policies) != 1 || len(u.Errors) != 0 {
		t.Fatalf("start: %d policies, errors %v", len(u.Objects.Policies), u.Errors)
	}
	mustWrite(t, filepath.Join(dir, "cnp.yaml"), pol("secondversion", "  bogusField: 1\n"))
	u := next("an invalid rewrite")
	if len(u.Errors) == 0 || !strings.Contains(fmt.Sprint(u.Errors), "cnp.yaml") || !strings.Contains(fmt.Sprint(u.Errors), "bogusField") {
		t.Fatalf("errors %v: want one naming cnp.yaml and bogusField", u.Errors)
	}
	if len(u.Objects.Policies) != 1 || !strings.Contains(fmt.Sprintf("%+v", u.Objects.Policies[0]), "firstversion") || strings.Contains(fmt.Sprintf("%+v", u.Objects.Policies[0]), "secondversion") {
		t.Fatalf("policies after an invalid rewrite: %+v, want the last valid one (firstversion)", u.Objects.Policies)
	}
}

// TestFolderPollingOnly: without inotify, a written file and a removed
// one are seen by polling (a changed file applies once it looked the
// same at two polls).
func TestFolderPollingOnly(t *testing.T) {
	dir := t.TempDir()
	mustWrite(t, filepath.Join(dir, "a.yaml"), podsYAML("p1"))
	ctx, cancel := context.WithCancel(context.Background())
	updates := make(chan Update)
	done := make(chan struct{})
	go func() {
		defer close(done)
		(&Folder{Dir: dir, Interval: 5 * time.Millisecond, NoInotify: true}).Run(ctx, updates)
	}()
	defer func() { cancel(); <-done }()
	next := func(what string) []string {
		t.Helper()
		select {
		case u := <-updates:
			return podNames(u)
		case <-time.After(20 * time.Second):
			t.Fatalf("no update after %s", what)
		}
		return nil
	}
	if got := next("the start"); !slices.Equal(got, []string{"p1"}) {
		t.Fatalf("start: %v", got)
	}
	mustWrite(t, filepath.Join(dir, "b.yaml"), strings.Replace(podsYAML("p2"), "198.18.0.1", "198.18.0.2", 1))
	if got := next("a new file"); !slices.Equal(got, []string{"p1", "p2"}) {
		t.Fatalf("after a new file: %v", got)
	}
	if err := os.Remove(filepath.Join(dir, "a.yaml")); err != nil {
		t.Fatal(err)
	}
	if got := next("a removal"); !slices.Equal(got, []string{"p2"}) {
		t.Fatalf("after a removal: %v", got)
	}
}

// TestFolderDigest: the digest an update carries is FolderDigest of the
// folder it was read from (the soak harness recomputes it).
func TestFolderDigest(t *testing.T) {
	dir := t.TempDir()
	mustWrite(t, filepath.Join(dir, "a.yaml"), podsYAML("p1"))
	mustWrite(t, filepath.Join(dir, "sub", "b.json"), "")
	next := folderRun(t, dir)
	u := next("the start")
	want, err := FolderDigest(dir)
	if err != nil {
		t.Fatal(err)
	}
	if u.Digest != want {
		t.Fatalf("update digest %s, FolderDigest %s", u.Digest, want)
	}
}
