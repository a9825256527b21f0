//go:build linux

package main

import (
	"testing"
	"time"
)

func TestMedianRatio(t *testing.T) {
	for _, tc := range []struct {
		name string
		a, b []float64
		want float64
		ok   bool
	}{
		{"one", []float64{0.01}, []float64{0.25}, 0.04, true},
		{"odd: the middle ratio, not the ratio of medians", []float64{1, 10, 3}, []float64{10, 20, 100}, 0.1, true},
		{"even: the mean of the middle two", []float64{1, 2, 3, 4}, []float64{10, 10, 10, 10}, 0.25, true},
		{"a zero divisor is left out", []float64{1, 5}, []float64{0, 10}, 0.5, true},
		{"longer a: pairs only", []float64{1, 2, 3}, []float64{4}, 0.25, true},
		{"none", nil, nil, 0, false},
		{"only zero divisors", []float64{1}, []float64{0}, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := medianRatio(tc.a, tc.b)
			if ok != tc.ok || got < tc.want-1e-12 || got > tc.want+1e-12 {
				t.Errorf("medianRatio = %v, %v; want %v, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
	if got := ratio([]time.Duration{3, 1, 2}, []time.Duration{10, 10, 10}); got != "0.20x" {
		t.Errorf("ratio = %q, want 0.20x", got)
	}
	if got := ratio(nil, nil); got != "–" {
		t.Errorf("ratio of nothing = %q, want –", got)
	}
}

func TestModeRunShares(t *testing.T) {
	r := modeRun{window: 30 * time.Second, cpu: 300 * time.Millisecond, bpf: bpfRun{time: 150 * time.Millisecond, runs: 300_000}, events: 300_000}
	for _, tc := range []struct {
		name      string
		got, want float64
	}{
		{"share", r.share(), 0.015},
		{"own share", r.ownShare(), 0.01},
		{"BPF share", r.bpfShare(), 0.005},
		{"events a second", r.eventRate(), 10_000},
		{"ns per run", r.bpf.perRun(), 500},
		{"bytes per socket", perSocket(30<<20, 20<<20, 200_000), float64(10<<20) / 200_000},
		{"no run", modeRun{}.share(), 0},
	} {
		if tc.got < tc.want*(1-1e-12) || tc.got > tc.want*(1+1e-12) {
			t.Errorf("%s = %v, want %v", tc.name, tc.got, tc.want)
		}
	}
}
