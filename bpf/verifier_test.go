package bpf

import (
	"errors"
	"regexp"
	"strconv"
	"testing"

	"github.com/cilium/ebpf"
)

// TestPrivilegedVerifierBudget loads each program with verifier statistics and
// fails when the verifier walks more than a quarter of its limit of one
// million instructions: each path through the programs costs load time at
// every agent start, and a program near the limit stops loading after a
// small change or on another kernel. (Parts that multiply paths are global
// functions, verified once: decide, check_ip_options, parse_related.)
func TestPrivilegedVerifierBudget(t *testing.T) {
	requireRoot(t)
	const budget = 250_000
	spec, err := loadDatapath()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	re := regexp.MustCompile(`processed (\d+) insns`)
	for name, ps := range spec.Programs {
		coll, err := ebpf.NewCollectionWithOptions(&ebpf.CollectionSpec{Maps: spec.Maps, Programs: map[string]*ebpf.ProgramSpec{name: ps}},
			ebpf.CollectionOptions{Programs: ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats}})
		if err != nil {
			var ve *ebpf.VerifierError
			if errors.As(err, &ve) {
				t.Logf("%s verifier log tail:", name)
				for _, l := range ve.Log[max(0, len(ve.Log)-20):] {
					t.Log(l)
				}
			}
			t.Fatalf("load %s: %v", name, err)
		}
		log := coll.Programs[name].VerifierLog
		coll.Close()
		m := re.FindStringSubmatch(log)
		if m == nil {
			t.Fatalf("%s: no statistics in the verifier log:\n%s", name, log)
		}
		n, _ := strconv.Atoi(m[1])
		t.Logf("%s: %d instructions in the object, verifier processed %d", name, len(ps.Instructions), n)
		if n > budget {
			t.Errorf("%s: the verifier processed %d instructions, budget %d", name, n, budget)
		}
	}
}
