package source

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/l7gate/l7gate/policy"
)

func TestFolder(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	updates := make(chan Update)
	go (&Folder{Dir: dir, Interval: 20 * time.Millisecond}).Run(ctx, updates)
	next := func() Update {
		select {
		case u := <-updates:
			return u
		case <-time.After(5 * time.Second):
			t.Fatal("no update")
		}
		return Update{}
	}
	u1 := next()
	if len(u1.Objects.Namespaces) != 1 {
		t.Fatalf("first update: %+v", u1.Objects)
	}
	write("bad.yaml", "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x}\nspec: {}\n")
	u2 := next()
	if u2.Digest == u1.Digest || len(u2.Errors) != 1 || len(u2.Objects.Namespaces) != 1 {
		t.Fatalf("second update: %d errors, digest changed %v", len(u2.Errors), u2.Digest != u1.Digest)
	}
	select {
	case u := <-updates:
		t.Fatalf("update without a change: %s", u.Digest)
	case <-time.After(100 * time.Millisecond):
	}
}

// TestFolderServices: a folder's Services come with endpoints derived from
// their selector (there is no EndpointSlice controller), and given
// EndpointSlices win.
func TestFolderServices(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("objs.yaml", `apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, labels: {app: web}}
status: {podIP: 198.18.0.2}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 198.19.0.10, selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
`)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	updates := make(chan Update)
	go (&Folder{Dir: dir, Interval: 20 * time.Millisecond}).Run(ctx, updates)
	next := func() Update {
		select {
		case u := <-updates:
			return u
		case <-time.After(5 * time.Second):
			t.Fatal("no update")
		}
		return Update{}
	}
	backends := func(u Update) string {
		fs, _ := policy.ServiceFrontends(u.Objects, "")
		if len(fs) != 1 {
			t.Fatalf("frontends %+v", fs)
		}
		var out []string
		for _, b := range fs[0].Backends {
			out = append(out, b.Address.String())
		}
		return strings.Join(out, " ")
	}
	if got := backends(next()); got != "198.18.0.2:8080" {
		t.Errorf("derived backends %q", got)
	}
	write("slice.yaml", `apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-x, namespace: shop, labels: {kubernetes.io/service-name: web}}
ports: [{port: 9090}]
endpoints: [{addresses: [198.18.0.9]}]
`)
	if got := backends(next()); got != "198.18.0.9:9090" {
		t.Errorf("with a given slice: %q", got)
	}
}
