package translate

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/l7gate/l7gate/policy"
	"google.golang.org/protobuf/proto"
)

// cacheObjects: pods app0..app<n-1> (two label sets), a server with an L7
// CNP whose extra path is rule, and a namespace-wide L3/L4 CNP.
func cacheObjects(t testing.TB, n, rule int, ipOf func(i int) string) *policy.Objects {
	t.Helper()
	var b strings.Builder
	b.WriteString("apiVersion: v1\nkind: Pod\nmetadata: {name: server, namespace: ns, labels: {app: server}}\nstatus: {podIP: 198.18.0.2}\n---\n")
	for i := range n {
		fmt.Fprintf(&b, "apiVersion: v1\nkind: Pod\nmetadata: {name: p%d, namespace: ns, labels: {app: a%d, tier: t%d}}\nstatus: {podIP: %s}\n---\n", i, i%2, i%2, ipOf(i))
	}
	fmt.Fprintf(&b, `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-l7, namespace: ns}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {tier: t1}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
      rules:
        http: [{method: GET, path: "/"}, {method: GET, path: "/extra/%d"}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ns-l4, namespace: ns}
spec:
  endpointSelector: {}
  ingress:
  - fromEndpoints: [{matchLabels: {tier: t0}}]
    toPorts:
    - ports: [{port: "9090", protocol: TCP}]
`, rule)
	objs, err := policy.Decode("objs.yaml", []byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	return objs
}

func cacheInput(t testing.TB, objs *policy.Objects, alloc *policy.IdentityAllocator, c *Cache) Input {
	t.Helper()
	snap, err := policy.Compute(objs, alloc)
	if err != nil {
		t.Fatal(err)
	}
	in := Input{Node: "n1", Snapshot: snap, LocalEndpoints: snap.Endpoints, Cache: c}
	for i, l := range RequiredListeners(snap, snap.Endpoints) {
		l.ProxyPort = uint16(10000 + i)
		in.Listeners = append(in.Listeners, l)
	}
	return in
}

func equalResources(t *testing.T, step string, got, want *Resources) {
	t.Helper()
	gb, wb := got.ByType(), want.ByType()
	for typ, ws := range wb {
		gs := gb[typ]
		if len(gs) != len(ws) {
			t.Fatalf("%s: %s: %d resources with the cache, %d without", step, typ, len(gs), len(ws))
		}
		for i := range ws {
			if !proto.Equal(gs[i], ws[i]) {
				t.Fatalf("%s: %s[%d] with the cache:\n%v\nwithout:\n%v", step, typ, i, gs[i], ws[i])
			}
		}
	}
}

// TestCacheRendersOnlyWhatChanged: a CNP change that selects one endpoint
// renders that endpoint's NetworkPolicy only; a pod's new IP renders that
// pod's policy and its identity's membership only; everything else is the
// message the previous render returned.
func TestCacheRendersOnlyWhatChanged(t *testing.T) {
	const n = 50
	ip := func(i int) string { return fmt.Sprintf("198.18.1.%d", 1+i) }
	alloc := policy.NewIdentityAllocator()
	c := &Cache{}
	first, err := L7Proxy(cacheInput(t, cacheObjects(t, n, 0, ip), alloc, c))
	if err != nil {
		t.Fatal(err)
	}
	if st := c.Stats(); st.PoliciesRendered != n+1 || st.PoliciesReused != 0 {
		t.Fatalf("first render: %+v, want %d policies rendered", st, n+1)
	}
	prev := map[string]proto.Message{}
	for _, p := range first.Policies {
		prev[p.Name] = p
	}

	// The server's CNP changes.
	second, err := L7Proxy(cacheInput(t, cacheObjects(t, n, 1, ip), alloc, c))
	if err != nil {
		t.Fatal(err)
	}
	st := c.Stats()
	if got := st.PoliciesRendered - (n + 1); got != 1 || st.PoliciesReused != n {
		t.Errorf("after a CNP change that selects one endpoint: %d policies rendered, %d reused; want 1 and %d", got, st.PoliciesReused, n)
	}
	for _, p := range second.Policies {
		same := prev[p.Name] == proto.Message(p)
		if same != (p.Pod != "server") {
			t.Errorf("policy of %s: same message as before = %v", p.Pod, same)
		}
	}
	if st.MembershipsReused != len(first.Identities) {
		t.Errorf("memberships reused %d, want all %d", st.MembershipsReused, len(first.Identities))
	}
	if st.MembershipListsReused != 1 || !slices.Equal(second.Identities, first.Identities) {
		t.Errorf("identities and ipcache unchanged: membership list reused %d times (want 1), same messages %v",
			st.MembershipListsReused, slices.Equal(second.Identities, first.Identities))
	}

	// Pod p7 gets a new IP.
	ip2 := func(i int) string {
		if i == 7 {
			return "198.18.2.7"
		}
		return ip(i)
	}
	before := c.Stats()
	if _, err := L7Proxy(cacheInput(t, cacheObjects(t, n, 1, ip2), alloc, c)); err != nil {
		t.Fatal(err)
	}
	st = c.Stats()
	if got := st.PoliciesRendered - before.PoliciesRendered; got != 1 {
		t.Errorf("after one pod's IP changed: %d policies rendered, want 1", got)
	}
	if got := st.MembershipsRendered - before.MembershipsRendered; got != 1 {
		t.Errorf("after one pod's IP changed: %d memberships rendered, want 1", got)
	}
	if st.MembershipListsReused != before.MembershipListsReused {
		t.Errorf("after one pod's IP changed the membership list was reused")
	}
}

// TestCacheSameAsUncached: after random sequences of CNP and pod changes,
// the cached render equals a render without the cache.
func TestCacheSameAsUncached(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 19))
	alloc := policy.NewIdentityAllocator()
	c := &Cache{}
	n, rule := 20, 0
	moved := map[int]int{}
	ip := func(i int) string { return fmt.Sprintf("198.18.%d.%d", 1+moved[i], 1+i) }
	for step := range 40 {
		switch rng.IntN(4) {
		case 0:
			rule = rng.IntN(3)
		case 1:
			n = 10 + rng.IntN(20)
		case 2:
			moved[rng.IntN(30)] = rng.IntN(3)
		}
		objs := cacheObjects(t, n, rule, ip)
		in := cacheInput(t, objs, alloc, c)
		got, err := L7Proxy(in)
		if err != nil {
			t.Fatal(err)
		}
		in.Cache = nil
		want, err := L7Proxy(in)
		if err != nil {
			t.Fatal(err)
		}
		equalResources(t, fmt.Sprintf("step %d (n=%d rule=%d)", step, n, rule), got, want)
	}
	if st := c.Stats(); st.PoliciesReused == 0 || st.MembershipsReused == 0 {
		t.Errorf("the cache was never used: %+v", st)
	}
}

// BenchmarkL7ProxyRender: one render of 1000 local endpoints with and
// without the cache, after a change of one endpoint's CNP.
func BenchmarkL7ProxyRender(b *testing.B) {
	ip := func(i int) string { return fmt.Sprintf("198.18.%d.%d", 1+i/250, 1+i%250) }
	alloc := policy.NewIdentityAllocator()
	ins := []Input{cacheInput(b, cacheObjects(b, 1000, 0, ip), alloc, nil), cacheInput(b, cacheObjects(b, 1000, 1, ip), alloc, nil)}
	for _, cached := range []bool{false, true} {
		b.Run(fmt.Sprintf("cache=%v", cached), func(b *testing.B) {
			var c *Cache
			if cached {
				c = &Cache{}
			}
			for i := range b.N {
				in := ins[i%2]
				in.Cache = c
				if _, err := L7Proxy(in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
