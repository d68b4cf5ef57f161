package nft

import (
	"fmt"
	"slices"
)

// chooser makes the random choices of one trace.
type chooser interface {
	// choose returns a number in [0, n); numbers in one class of cuts
	// (see Flow.Choose) behave alike.
	choose(n uint32, cuts []uint32) uint32
}

// randomChooser draws from rnd.
type randomChooser func(n uint32) uint32

func (r randomChooser) choose(n uint32, _ []uint32) uint32 {
	if n == 0 {
		return 0
	}
	return r(n)
}

// classes splits [0, n) at cuts into the lower bounds of its classes.
func classes(n uint32, cuts []uint32) []uint32 {
	out := []uint32{0}
	for _, c := range cuts {
		if c > 0 && c < n {
			out = append(out, c)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// scripted takes, at its i-th choice, class plan[i] (the first class past
// the plan), and records every choice it made.
type scripted struct {
	plan []int
	made []made
}

type made struct {
	class, classes int
	weight         float64 // the class's share of [0, n)
}

func (s *scripted) choose(n uint32, cuts []uint32) uint32 {
	if n == 0 {
		return 0
	}
	lows := classes(n, cuts)
	k := 0
	if i := len(s.made); i < len(s.plan) {
		k = s.plan[i]
	}
	high := n
	if k+1 < len(lows) {
		high = lows[k+1]
	}
	s.made = append(s.made, made{class: k, classes: len(lows), weight: float64(high-lows[k]) / float64(n)})
	return lows[k]
}

// Outcome is one possible result of a packet, with its probability.
type Outcome struct {
	Result
	Probability float64
}

// maxOutcomes bounds Enumerate's walk of the choice tree.
const maxOutcomes = 1 << 16

// Enumerate traces p through every combination of random choices (one
// representative of each class of equivalent numbers) and returns the
// distinct results with their probabilities, which sum to 1: `numgen
// random mod 3 0` in front of each of three endpoints gives each a third.
// Results differing only in their path are merged (the first path is
// kept). Dynamic sets see what earlier Trace calls taught them, but learn
// nothing from Enumerate.
func (t *Tracer) Enumerate(p Packet) ([]Outcome, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []Outcome
	var plan []int
	for runs := 0; ; runs++ {
		if runs == maxOutcomes {
			return nil, fmt.Errorf("more than %d combinations of random choices", maxOutcomes)
		}
		s := &scripted{plan: plan}
		r, err := t.trace(p, s, t.mem.clone())
		if err != nil {
			return nil, err
		}
		prob := 1.0
		for _, m := range s.made {
			prob *= m.weight
		}
		if i := slices.IndexFunc(out, func(o Outcome) bool { return sameOutcome(o.Result, r) }); i >= 0 {
			out[i].Probability += prob
		} else {
			out = append(out, Outcome{Result: r, Probability: prob})
		}
		// Next: the deepest choice with a class left to try.
		j := len(s.made) - 1
		for j >= 0 && s.made[j].class+1 >= s.made[j].classes {
			j--
		}
		if j < 0 {
			return out, nil
		}
		plan = make([]int, j+1)
		for i := range j {
			plan[i] = s.made[i].class
		}
		plan[j] = s.made[j].class + 1
	}
}

func sameOutcome(a, b Result) bool {
	return a.Fate == b.Fate && a.Packet == b.Packet && a.DNAT == b.DNAT && a.Masquerade == b.Masquerade
}
