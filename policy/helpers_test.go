package policy

import (
	"net/netip"
	"os"
	"testing"
)

func mustDecode(t testing.TB, doc string) *Objects {
	t.Helper()
	objs, errs := Decode("test.yaml", []byte(doc))
	for _, err := range errs {
		t.Fatalf("decode: %v", err)
	}
	return objs
}

func mustCompute(t testing.TB, objs *Objects) *Snapshot {
	t.Helper()
	snap, err := Compute(objs, NewIdentityAllocator())
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

func writeFile(t testing.TB, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}
