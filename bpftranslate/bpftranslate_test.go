package bpftranslate

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/l7gate/l7gate/bpf"
	"github.com/l7gate/l7gate/internal/testutil"
	"github.com/l7gate/l7gate/policy"
)

// ports is the redirect decision of the golden tests: ingress and egress
// HTTP and ingress Kafka have ACKed listeners; egress Kafka has none, so
// its redirects must become drops.
func ports(_ LocalEndpoint, dir policy.Direction, parser string) (uint16, bool) {
	switch {
	case dir == policy.Ingress && parser == policy.ParserHTTP:
		return 15001, true
	case dir == policy.Egress && parser == policy.ParserHTTP:
		return 15002, true
	case dir == policy.Ingress && parser == policy.ParserKafka:
		return 15003, true
	}
	return 0, false
}

func localOf(snap *policy.Snapshot) []LocalEndpoint {
	var local []LocalEndpoint
	for i, ep := range snap.Endpoints {
		local = append(local, LocalEndpoint{Endpoint: ep, Ifindex: 10 + i, Device: "lxc" + ep.Name})
	}
	return local
}

type golden struct {
	Policies []bpf.EndpointPolicy         `json:"policies"`
	Rules    map[uint32]policy.Provenance `json:"rules"`
	Dropped  []droppedOut                 `json:"dropped,omitempty"`
	IPCache  []bpf.IPCacheEntry           `json:"ipcache"`
}

type droppedOut struct {
	Endpoint  string              `json:"endpoint"`
	Direction policy.Direction    `json:"direction"`
	Parser    string              `json:"parser"`
	Origins   []policy.Provenance `json:"origins"`
}

// TestGolden: testdata/in/X.yaml (objects and policies; every pod local)
// gives testdata/out/X.json. Run with -update to rewrite the outputs.
func TestGolden(t *testing.T) {
	ins, _ := filepath.Glob("testdata/in/*.yaml")
	if len(ins) == 0 {
		t.Fatal("no inputs")
	}
	for _, in := range ins {
		t.Run(filepath.Base(in), func(t *testing.T) {
			objs, errs := policy.Load(in)
			if len(errs) > 0 {
				t.Fatal(errs)
			}
			snap, err := policy.Compute(objs, policy.NewIdentityAllocator())
			if err != nil {
				t.Fatal(err)
			}
			res := Policy(snap, localOf(snap), ports)
			g := golden{Policies: res.Policies, Rules: res.Rules,
				IPCache: IPCache(snap, []netip.Addr{netip.MustParseAddr("198.18.255.254"), netip.MustParseAddr("fd00::1")})}
			for _, d := range res.Dropped {
				g.Dropped = append(g.Dropped, droppedOut{d.Endpoint.Key(), d.Direction, d.Parser, d.Origins})
			}
			got, err := json.MarshalIndent(g, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			out := filepath.Join("testdata/out", strings.TrimSuffix(filepath.Base(in), ".yaml")+".json")
			testutil.Golden(t, out, got)
			// Deterministic: a second run gives the same bytes.
			again, _ := json.MarshalIndent(golden{Policies: Policy(snap, localOf(snap), ports).Policies, Rules: res.Rules, IPCache: g.IPCache, Dropped: g.Dropped}, "", "  ")
			if !bytes.Equal(append(again, '\n'), got) {
				t.Error("second translation differs")
			}
		})
	}
}

// TestRedirectFailsClosed: without a port for the parser every redirect
// becomes a drop, and each one is reported with the rules behind it.
func TestRedirectFailsClosed(t *testing.T) {
	objs, errs := policy.Load("testdata/in/starwars-l7.yaml")
	if len(errs) > 0 {
		t.Fatal(errs)
	}
	snap, err := policy.Compute(objs, policy.NewIdentityAllocator())
	if err != nil {
		t.Fatal(err)
	}
	res := Policy(snap, localOf(snap), func(LocalEndpoint, policy.Direction, string) (uint16, bool) { return 0, false })
	redirects := 0
	for _, p := range res.Policies {
		for _, e := range append(p.Ingress.Entries, p.Egress.Entries...) {
			if e.Verdict == bpf.VerdictRedirect {
				redirects++
			}
		}
	}
	if redirects != 0 {
		t.Errorf("%d redirects without a proxy port", redirects)
	}
	if len(res.Dropped) != 1 || res.Dropped[0].Endpoint.Name != "deathstar" || res.Dropped[0].Parser != policy.ParserHTTP ||
		len(res.Dropped[0].Origins) == 0 || res.Dropped[0].Origins[0].Policy != "default/rule1" {
		t.Errorf("dropped %+v", res.Dropped)
	}
}
