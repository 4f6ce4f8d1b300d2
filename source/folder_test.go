package source

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
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
