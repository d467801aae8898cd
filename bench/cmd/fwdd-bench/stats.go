package main

import (
	"math"
	"slices"
)

// summary describes the samples of one measurement.
type summary struct {
	N                int
	Median, Min, Max float64
	Q1, Q3           float64 // quartiles (linear interpolation)
	Samples          []float64
	missing          bool
}

func summarize(xs []float64) summary {
	if len(xs) == 0 {
		return summary{missing: true, Median: math.NaN(), Min: math.NaN(), Max: math.NaN(), Q1: math.NaN(), Q3: math.NaN()}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return summary{
		N:       len(s),
		Median:  quantile(s, 0.5),
		Min:     s[0],
		Max:     s[len(s)-1],
		Q1:      quantile(s, 0.25),
		Q3:      quantile(s, 0.75),
		Samples: xs,
	}
}

// quantile of sorted s, interpolating between neighbours.
func quantile(s []float64, q float64) float64 {
	if len(s) == 1 {
		return s[0]
	}
	pos := q * float64(len(s)-1)
	lo := int(math.Floor(pos))
	hi := min(lo+1, len(s)-1)
	return s[lo] + (pos-float64(lo))*(s[hi]-s[lo])
}

// ratio of two medians; NaN when either is missing.
func ratio(a, b summary) float64 {
	if a.missing || b.missing || b.Median == 0 {
		return math.NaN()
	}
	return a.Median / b.Median
}

// paired summarizes the ratios a[i]/b[i] of samples taken in the same
// round (next to each other, see roundOrder): drift of the shared machine
// between rounds cancels out of each ratio, where a ratio of medians mixes
// rounds with different background load.
func paired(a, b []float64) summary {
	var r []float64
	for i := range min(len(a), len(b)) {
		if b[i] > 0 {
			r = append(r, a[i]/b[i])
		}
	}
	return summarize(r)
}
