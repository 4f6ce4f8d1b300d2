package main

import (
	"strings"
	"testing"
)

// TestFamilyRoundsGoal: the IPv6 vs IPv4 goal is the median of the
// per-round ratios against issue 21's 0.95, with every round kept.
func TestFamilyRoundsGoal(t *testing.T) {
	mk := func(v4, v6 []float64) *familyRounds {
		fr := &familyRounds{Path: "l7"}
		for i := range v4 {
			fr.add(&wrkResult{ReqPerSec: v4[i], ProxyCPUPer1000: 0.020}, &wrkResult{ReqPerSec: v6[i], ProxyCPUPer1000: 0.021}, "1.00 1.00 1.00")
		}
		return fr
	}
	for _, tc := range []struct {
		name   string
		fr     *familyRounds
		median float64
		met    string
	}{
		// ratios 1.00, 0.90, 0.97, 1.02, 0.96: median 0.97
		{"within 5 %", mk([]float64{100, 100, 100, 100, 100}, []float64{100, 90, 97, 102, 96}), 0.97, "yes"},
		// ratios 0.93, 0.99, 0.90, 0.94: median (0.93+0.94)/2
		{"beyond 5 %", mk([]float64{100, 100, 100, 100}, []float64{93, 99, 90, 94}), 0.935, "NO"},
		{"not measured", nil, 0, "n/a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &Results{KeepAliveIPv6: tc.fr}
			var got []goal
			r.goalsIPv6(func(name, target, measured, met string) { got = append(got, goal{name, target, measured, met}) })
			if len(got) != 1 || got[0].Met != tc.met || !strings.Contains(got[0].Target, "0.95") {
				t.Fatalf("goal %+v, want met %s against 0.95", got, tc.met)
			}
			if tc.fr == nil {
				return
			}
			if d := tc.fr.Median - tc.median; d > 1e-9 || d < -1e-9 {
				t.Errorf("median %v, want %v", tc.fr.Median, tc.median)
			}
			if len(tc.fr.IPv4) != len(tc.fr.Ratios) || len(tc.fr.IPv6) != len(tc.fr.Ratios) || len(tc.fr.Load) != len(tc.fr.Ratios) {
				t.Errorf("rounds not all kept: %+v", tc.fr)
			}
			if c := tc.fr.CPUMedian; c < 1.049 || c > 1.051 {
				t.Errorf("CPU ratio median %v, want 1.05", c)
			}
			if md := tc.fr.markdown(); strings.Count(md, "\n| ") != len(tc.fr.Ratios) {
				t.Errorf("markdown has not one row per round:\n%s", md)
			}
		})
	}
}

// TestThroughProxy: a run that got non-2xx answers, socket errors, or
// cost the proxy no CPU (the datapath did not redirect it) is refused.
func TestThroughProxy(t *testing.T) {
	good := wrkResult{Requests: 1000, ProxyCPUSec: 0.5}
	if err := throughProxy(&good); err != nil {
		t.Errorf("good run refused: %v", err)
	}
	for name, r := range map[string]wrkResult{
		"no requests": {ProxyCPUSec: 0.5},
		"denied":      {Requests: 1000, Non2xx: 1, ProxyCPUSec: 0.5},
		"errors":      {Requests: 1000, Errors: 3, ProxyCPUSec: 0.5},
		"no proxy":    {Requests: 1000},
	} {
		if err := throughProxy(&r); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestFamilyRoundsDirectControl: the direct path's rounds are shown
// without proxy CPU and named next to the goal as the control.
func TestFamilyRoundsDirectControl(t *testing.T) {
	d := &familyRounds{Path: "direct"}
	d.add(&wrkResult{ReqPerSec: 100, Requests: 1}, &wrkResult{ReqPerSec: 96, Requests: 1}, "1.00 1.00 1.00")
	l7 := &familyRounds{Path: "l7"}
	l7.add(&wrkResult{ReqPerSec: 50, ProxyCPUPer1000: 0.02}, &wrkResult{ReqPerSec: 49, ProxyCPUPer1000: 0.02}, "1.00 1.00 1.00")
	r := &Results{KeepAliveIPv6: l7, KeepAliveIPv6Direct: d}
	var got []goal
	r.goalsIPv6(func(name, target, measured, met string) { got = append(got, goal{name, target, measured, met}) })
	if len(got) != 1 || got[0].Met != "yes" || !strings.Contains(got[0].Measured, "direct path, no proxy, IPv6 / IPv4 0.960") {
		t.Fatalf("goal %+v, want met with the direct control 0.960", got)
	}
	if md := d.markdown(); strings.Contains(md, "CPU") || !strings.Contains(md, "| 1 | 100 | 96 | 0.960 |") {
		t.Errorf("direct rounds:\n%s", md)
	}
	if err := answered(&wrkResult{Requests: 10}); err != nil {
		t.Errorf("direct run without proxy CPU refused: %v", err)
	}
}

func TestMergeDP6(t *testing.T) {
	runs := []dp6Row{
		{Path: "established", NsV4: 100, NsV6: 106, V6VsV4: 1.06},
		{Path: "reply", NsV4: 120, NsV6: 123, V6VsV4: 1.025},
		{Path: "established", NsV4: 98, NsV6: 101, V6VsV4: 1.031},
		{Path: "reply", NsV4: 121, NsV6: 124, V6VsV4: 1.025},
		{Path: "established", NsV4: 99, NsV6: 103, V6VsV4: 1.04},
	}
	got := mergeDP6(runs)
	if len(got) != 2 || got[0].Path != "established" || got[1].Path != "reply" {
		t.Fatalf("paths %+v, want established then reply", got)
	}
	e := got[0]
	if e.V6VsV4 != 1.04 || e.NsV4 != 99 || e.NsV6 != 103 {
		t.Errorf("established medians %v/%v/%v, want 99/103/1.04 (not the first or worst run)", e.NsV4, e.NsV6, e.V6VsV4)
	}
	if len(e.Ratios) != 3 || e.Ratios[0] != 1.06 || e.Ratios[2] != 1.04 {
		t.Errorf("established ratios %v, want every run's in order", e.Ratios)
	}
	if r := got[1]; r.V6VsV4 != 1.025 || r.NsV4 != 120.5 || len(r.Ratios) != 2 {
		t.Errorf("reply %+v, want the mean of the middle two for an even count", r)
	}
}
