package flowspec

import (
	"math"
	"testing"
)

func TestChiSquarePAgainstKnownValues(t *testing.T) {
	for _, tc := range []struct {
		name   string
		counts []int
		probs  []float64
		want   float64
	}{
		{"counts exactly as predicted fit perfectly", []int{50, 25, 25}, []float64{0.5, 0.25, 0.25}, 1},
		{"one degree of freedom at chi-square 3.841 is the 5% point", []int{60, 40}, []float64{0.5, 0.5}, 0.0455},
		{"two degrees of freedom: chi-square 2 gives exp(-1)", []int{110, 90, 100}, []float64{1.0 / 3, 1.0 / 3, 1.0 / 3}, math.Exp(-1)},
		{"a count where none was predicted rejects", []int{10, 1}, []float64{1, 0}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := ChiSquareP(tc.counts, tc.probs); math.Abs(got-tc.want) > 1e-3 {
				t.Errorf("ChiSquareP(%v, %v) = %v, want %v", tc.counts, tc.probs, got, tc.want)
			}
		})
	}
}
