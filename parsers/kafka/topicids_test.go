package kafka

import (
	"testing"
)

// TestTopicIDsContradictionsStayUnresolved: a broker that remaps an ID to
// another name, or gives a name a second ID, must not move what the table
// resolves: both become unresolved (denied), for good.
func TestTopicIDsContradictionsStayUnresolved(t *testing.T) {
	secret, public, other := [16]byte{1}, [16]byte{2}, [16]byte{3}
	ids := NewTopicIDs(0)
	ids.Learn("secret", secret)
	ids.Learn("public", public)
	ids.Learn("public", secret) // a liar: secret's ID is "public"
	if name, ok := ids.Name(secret); ok {
		t.Errorf("remapped ID resolves to %q", name)
	}
	if name, ok := ids.Name(public); ok {
		t.Errorf("public's ID resolves to %q after public was given a second ID", name)
	}
	ids.Learn("secret", secret) // the truth again changes nothing
	ids.Learn("public", public)
	if _, ok := ids.Name(secret); ok {
		t.Error("a contradicted ID resolves again after the original answer is repeated")
	}
	if _, ok := ids.Name(public); ok {
		t.Error("a contradicted name resolves again after the original answer is repeated")
	}
	// A name that never had a second ID is unaffected.
	ids.Learn("orders", other)
	if name, ok := ids.Name(other); !ok || name != "orders" {
		t.Errorf("orders = %q, %v", name, ok)
	}
	// An ID seen first under a name the liar used: also unresolved.
	fresh := NewTopicIDs(0)
	fresh.Learn("public", secret)
	fresh.Learn("secret", secret)
	if name, ok := fresh.Name(secret); ok {
		t.Errorf("ID seen with two names resolves to %q", name)
	}
}

func TestTopicIDRegistryScopesAndLimits(t *testing.T) {
	reg := NewTopicIDRegistry(TopicIDLimits{Clusters: 3, ClustersPerScope: 2, IDsPerCluster: 2, IDs: 2})
	a := reg.Table("id:400", "cluster-a")
	if a == nil || reg.Table("id:400", "cluster-a") != a {
		t.Fatal("a table is not reused for the same scope and cluster")
	}
	b := reg.Table("id:402", "cluster-a")
	if b == nil || b == a {
		t.Fatal("another scope claiming the same cluster id shares its table")
	}
	b.Learn("public", [16]byte{1})
	if _, ok := a.Name([16]byte{1}); ok {
		t.Error("an ID learned in one scope resolves in another")
	}
	if reg.Table("id:402", "cluster-b") == nil {
		t.Fatal("second cluster of a scope refused")
	}
	if reg.Table("id:402", "cluster-c") != nil {
		t.Error("a scope got more than ClustersPerScope tables")
	}
	if reg.Table("id:403", "cluster-a") != nil {
		t.Error("the registry grew beyond Clusters tables")
	}
	// IDs (2) bounds all tables together: b holds one, a one more.
	a.Learn("x", [16]byte{2})
	a.Learn("y", [16]byte{3})
	if _, ok := a.Name([16]byte{3}); ok {
		t.Error("an ID beyond the registry-wide limit was learned")
	}
	if a.Refused() != 1 {
		t.Errorf("refused = %d, want 1", a.Refused())
	}
}
