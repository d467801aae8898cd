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
