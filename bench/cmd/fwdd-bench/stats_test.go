package main

import (
	"math"
	"testing"
)

func TestSummarize(t *testing.T) {
	tests := []struct {
		name                     string
		in                       []float64
		median, min, max, q1, q3 float64
	}{
		{"one", []float64{5}, 5, 5, 5, 5, 5},
		{"odd", []float64{9, 1, 5}, 5, 1, 9, 3, 7},
		{"even", []float64{4, 1, 3, 2}, 2.5, 1, 4, 1.75, 3.25},
	}
	for _, tt := range tests {
		s := summarize(tt.in)
		got := []float64{s.Median, s.Min, s.Max, s.Q1, s.Q3}
		want := []float64{tt.median, tt.min, tt.max, tt.q1, tt.q3}
		for i := range got {
			if math.Abs(got[i]-want[i]) > 1e-9 {
				t.Errorf("%s: median,min,max,q1,q3 = %v, want %v", tt.name, got, want)
				break
			}
		}
	}
	if s := summarize(nil); !s.missing || !math.IsNaN(ratio(s, summarize([]float64{1}))) {
		t.Errorf("empty summary: %+v", s)
	}
}

func TestRoundOrder(t *testing.T) {
	// Every round measures each variant once; neighbours swap places
	// from one round to the next.
	for r := range 6 {
		o := roundOrder(r, 3)
		seen := map[int]bool{}
		for _, k := range o {
			seen[k] = true
		}
		if len(o) != 3 || len(seen) != 3 {
			t.Fatalf("round %d: %v", r, o)
		}
	}
	// Over 2n rounds, of any two variants each runs before the other in
	// half of them.
	for n := 2; n <= 5; n++ {
		before := map[[2]int]int{}
		for r := range 2 * n {
			o := roundOrder(r, n)
			for i := range o {
				for j := i + 1; j < n; j++ {
					before[[2]int{o[i], o[j]}]++
				}
			}
		}
		for p, c := range before {
			if c != n {
				t.Errorf("%d variants: %d before %d in %d of %d rounds", n, p[0], p[1], c, 2*n)
			}
		}
	}
}

func TestPaired(t *testing.T) {
	s := paired([]float64{10, 9, 12}, []float64{10, 10, 10, 99})
	if s.N != 3 || math.Abs(s.Median-1.0) > 1e-9 || math.Abs(s.Min-0.9) > 1e-9 || math.Abs(s.Max-1.2) > 1e-9 {
		t.Errorf("paired: %+v", s)
	}
	if !paired(nil, []float64{1}).missing {
		t.Error("no pairs: not missing")
	}
}
