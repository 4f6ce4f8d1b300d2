package proxy

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/l7gate/l7gate/policy"
	l7gatev1 "github.com/l7gate/l7gate/proto/l7gatev1"
	"github.com/l7gate/l7gate/xds"
	"github.com/l7gate/l7gate/xds/client"
	"github.com/l7gate/l7gate/xds/translate"
)

// benchRulesObjects: the make bench control-plane phase's server policy:
// rules HTTP rules with regex paths, plus one extra rule.
func benchRulesObjects(rules int, extra string) string {
	var b strings.Builder
	b.WriteString(`apiVersion: v1
kind: Pod
metadata: {name: server, namespace: bench, labels: {app: bench-server}}
status: {podIP: 198.18.10.2}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: bench, labels: {app: bench-client}}
status: {podIP: 198.18.10.3}
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bench, namespace: bench}
spec:
  endpointSelector: {matchLabels: {app: bench-server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: bench-client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
`)
	fmt.Fprintf(&b, "        - {method: GET, path: %q}\n", extra)
	for i := range rules {
		fmt.Fprintf(&b, "        - {method: GET, path: %q}\n", fmt.Sprintf("/api/v1/r%d/[a-z]+", i))
	}
	return b.String()
}

func benchResources(tb testing.TB, port uint16, rules int, extra string) *client.Resources {
	return benchResourcesPods(tb, port, rules, extra, 0)
}

// benchResourcesPods: benchResources with pods more pods (500 label
// sets), as make bench's control-plane phase adds them: identity
// memberships the proxy receives but a CNP change does not change.
func benchResourcesPods(tb testing.TB, port uint16, rules int, extra string, pods int) *client.Resources {
	text := benchRulesObjects(rules, extra)
	var b strings.Builder
	for i := range pods {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Pod\nmetadata: {name: syn%d, namespace: bench, labels: {app: svc-%d}}\nstatus: {podIP: 198.19.%d.%d}\n", i, i%500, i/250, 1+i%250)
	}
	objs, errs := policy.Decode("bench.yaml", []byte(text+b.String()))
	if len(errs) > 0 {
		tb.Fatal(errs)
	}
	snap, err := policy.Compute(objs, policy.NewIdentityAllocator())
	if err != nil {
		tb.Fatal(err)
	}
	var local []policy.Endpoint
	for _, ep := range snap.Endpoints {
		if ep.Name == "server" {
			local = append(local, ep)
		}
	}
	byType, err := translate.L7ProxyResources("l7proxy~n1", translate.Input{Node: "n1", Snapshot: snap, LocalEndpoints: local,
		Listeners: []translate.ListenerSpec{{Direction: policy.Ingress, Parser: policy.ParserHTTP, ProxyPort: port}}})
	if err != nil {
		tb.Fatal(err)
	}
	r := &client.Resources{Policies: map[string]*l7gatev1.NetworkPolicy{}, Identities: map[string]*l7gatev1.IdentityMembership{}, Listeners: map[string]*l7gatev1.Listener{}}
	for _, m := range byType[xds.TypeNetworkPolicy] {
		r.Policies[m.(*l7gatev1.NetworkPolicy).Name] = m.(*l7gatev1.NetworkPolicy)
	}
	for _, m := range byType[xds.TypeIdentityMembership] {
		r.Identities[m.(*l7gatev1.IdentityMembership).Name] = m.(*l7gatev1.IdentityMembership)
	}
	for _, m := range byType[xds.TypeListener] {
		r.Listeners[m.(*l7gatev1.Listener).Name] = m.(*l7gatev1.Listener)
	}
	return r
}

// BenchmarkConfigFromXDS: the Go proxy's handling of one config change
// (make bench's control-plane phase: one CNP of 101 regex HTTP rules
// whose extra rule changes): building the Config from the resources and
// applying it, without (cache=false: the package's ConfigFromXDS) and
// with the proxy's compiled-expression cache.
func BenchmarkConfigFromXDS(b *testing.B) {
	port := freePortB(b)
	for _, pods := range []int{0, 11000} {
		rs := []*client.Resources{benchResourcesPods(b, port, 100, "/api/v1/cpA/[a-z]+", pods), benchResourcesPods(b, port, 100, "/api/v1/cpB/[a-z]+", pods)}
		// As the xDS client keeps them: the memberships did not change,
		// the second config has the first one's messages.
		rs[1].Identities = rs[0].Identities
		for _, cached := range []bool{false, true} {
			b.Run(fmt.Sprintf("pods=%d/cache=%v", pods, cached), func(b *testing.B) {
				p := New(Options{ListenHost: "127.0.0.1", Transparent: new(bool)})
				defer p.Close()
				b.ReportAllocs()
				for i := range b.N {
					from := ConfigFromXDS
					if cached {
						from = p.ConfigFromXDS
					}
					cfg, err := from(rs[i%2], fmt.Sprint(i))
					if err == nil {
						err = p.Apply(cfg)
					}
					if err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// TestConfigChangeCompilesOnlyNewExpressions: a config from the proxy's
// ConfigFromXDS, applied, compiles only the HTTP expressions the proxy
// has not seen (one changed rule of 101: one regex) and enforces the new
// rules, not the old ones.
func TestConfigChangeCompilesOnlyNewExpressions(t *testing.T) {
	p := New(Options{ListenHost: "127.0.0.1", Transparent: new(bool)})
	defer p.Close()
	port := freePort(t)
	apply := func(extra string) {
		t.Helper()
		cfg, err := p.ConfigFromXDS(benchResources(t, port, 100, extra), extra)
		if err == nil {
			err = p.Apply(cfg)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	allowed := func(path string) bool {
		t.Helper()
		cs, peer, _, err := p.cur.Load().lookup(policy.Ingress, netip.MustParseAddrPort("198.18.10.3:40000"), netip.MustParseAddrPort("198.18.10.2:80"))
		if err != nil {
			t.Fatal(err)
		}
		return cs.http.Match(peer, &policy.HTTPRequest{Method: "GET", Path: path}) >= 0
	}
	apply("/api/v1/cpA/[a-z]+")
	first := p.matchers.Stats().Compiled
	if first != 103 { // GET, 101 paths and the rest they share after their literal prefixes, [a-z]+
		t.Fatalf("first config compiled %d expressions, want 103", first)
	}
	apply("/api/v1/cpB/[0-9]+")
	if n := p.matchers.Stats().Compiled - first; n != 2 {
		t.Errorf("one changed rule: %d expressions compiled, want 2 (its path and the rest after its prefix, [0-9]+)", n)
	}
	if !allowed("/api/v1/cpB/42") || allowed("/api/v1/cpA/abc") || !allowed("/api/v1/r7/abc") || allowed("/api/v1/r7/42") {
		t.Errorf("after the change: cpB %v cpA %v r7/abc %v r7/42 %v, want true false true false",
			allowed("/api/v1/cpB/42"), allowed("/api/v1/cpA/abc"), allowed("/api/v1/r7/abc"), allowed("/api/v1/r7/42"))
	}
	// An invalid expression is NACKed (ConfigFromXDS) and the proxy keeps
	// the config in force.
	bad := benchResources(t, port, 100, "/api/v1/cpC/.*")
	for name, np := range bad.Policies {
		np = proto.Clone(np).(*l7gatev1.NetworkPolicy)
		np.GetIngress().GetL7()[0].GetRules()[0].GetHttp().Path = "/x/[a-"
		bad.Policies[name] = np
	}
	if _, err := p.ConfigFromXDS(bad, "bad"); err == nil || !strings.Contains(err.Error(), "invalid regex") {
		t.Fatalf("invalid regex: %v", err)
	}
	if !allowed("/api/v1/cpB/42") {
		t.Error("the rejected config changed the one in force")
	}
}

// TestConfigFromXDSMembershipMemo: the proxy's ConfigFromXDS converts and
// indexes identity memberships once per resource message, and never
// serves a stale one: random steps (memberships added, removed, changed,
// made invalid; a policy changed alone) each give exactly the Config and
// the address → identity answers of a conversion from scratch. A policy
// change alone reuses the last index (the memo is used).
func TestConfigFromXDSMembershipMemo(t *testing.T) {
	p := New(Options{ListenHost: "127.0.0.1", Transparent: new(bool)})
	defer p.Close()
	port := freePort(t)
	base := benchResources(t, port, 2, "/a")
	other := benchResources(t, port, 2, "/b")
	rng := rand.New(rand.NewPCG(19, 13))
	member := func(id uint32) *l7gatev1.IdentityMembership {
		m := &l7gatev1.IdentityMembership{Name: strconv.FormatUint(uint64(id), 10), Identity: id}
		for range rng.IntN(4) {
			if rng.IntN(4) == 0 {
				m.Prefixes = append(m.Prefixes, fmt.Sprintf("10.%d.0.0/16", rng.IntN(8)))
			} else {
				// few addresses: two identities often claim the same one
				m.Prefixes = append(m.Prefixes, fmt.Sprintf("198.19.0.%d/32", rng.IntN(24)))
			}
		}
		return m
	}
	ids := map[string]*l7gatev1.IdentityMembership{}
	for id := uint32(1000); id < 1010; id++ {
		ids[strconv.Itoa(int(id))] = member(id)
	}
	pols := base.Policies
	var lastIndex *memberIndex
	reused := 0
	for step := range 300 {
		ids = maps.Clone(ids)
		policyOnly := false
		switch rng.IntN(6) {
		case 0: // a new identity
			id := uint32(1000 + rng.IntN(40))
			ids[strconv.Itoa(int(id))] = member(id)
		case 1: // one gone
			for name := range ids {
				delete(ids, name)
				break
			}
		case 2: // one changed
			for name, m := range ids {
				ids[name] = member(m.Identity)
				break
			}
		case 3: // an invalid one (the proxy rejects the config)
			ids["7"] = &l7gatev1.IdentityMembership{Name: "7", Identity: 8}
		default: // the CNP alone
			policyOnly = true
			if step%2 == 0 {
				pols = other.Policies
			} else {
				pols = base.Policies
			}
		}
		r := &client.Resources{Policies: pols, Identities: ids, Listeners: base.Listeners}
		want, wantErr := ConfigFromXDS(r, "v")
		got, err := p.ConfigFromXDS(r, "v")
		if (err != nil) != (wantErr != nil) {
			t.Fatalf("step %d: error %v, from scratch %v", step, err, wantErr)
		}
		if err != nil {
			delete(ids, "7") // as the agent would fix it
			continue
		}
		if !reflect.DeepEqual(got.Members, want.Members) {
			t.Fatalf("step %d: memberships differ from a conversion from scratch", step)
		}
		if err := p.Apply(got); err != nil {
			t.Fatal(err)
		}
		ref, err := compile(want, nil)
		if err != nil {
			t.Fatal(err)
		}
		cur := p.cur.Load()
		for i := range 24 {
			for _, a := range []string{fmt.Sprintf("198.19.0.%d", i), fmt.Sprintf("10.%d.1.1", i%9)} {
				addr := netip.MustParseAddr(a)
				if g, w := cur.identityOf(addr), ref.identityOf(addr); g != w {
					t.Fatalf("step %d: %s is identity %d, from scratch %d", step, addr, g, w)
				}
			}
		}
		if policyOnly && lastIndex != nil {
			if got.index != lastIndex {
				t.Fatalf("step %d: a policy change alone built the membership index again", step)
			}
			reused++
		}
		lastIndex = got.index
	}
	if reused < 20 {
		t.Fatalf("the index was reused in only %d steps", reused)
	}
}
