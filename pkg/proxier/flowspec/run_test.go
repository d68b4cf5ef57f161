package flowspec

import (
	"errors"
	"strings"
	"testing"
)

type tracerFunc func(Packet, func(uint32) uint32) Result

func (f tracerFunc) Trace(p Packet, rnd func(uint32) uint32) Result { return f(p, rnd) }

func TestCheckFailsEveryCaseATracerCannotFollow(t *testing.T) {
	confused := tracerFunc(func(Packet, func(uint32) uint32) Result {
		return Result{Verdict: Reject, Err: errors.New("unknown match \"-m bogus\"")}
	})
	cases := Cases()
	failures := Check(confused, cases)
	if len(failures) != len(cases) {
		t.Fatalf("%d failures for %d cases, want every case to fail: %v", len(failures), len(cases), failures)
	}
	for _, f := range failures {
		if !strings.Contains(f.Msg, "cannot follow the rules") || !strings.Contains(f.Msg, "bogus") {
			t.Errorf("failure %q does not say the tracer could not follow the rules", f)
		}
	}
}

func TestCheckNamesTheCasesAWrongVerdictFails(t *testing.T) {
	alwaysReject := tracerFunc(func(Packet, func(uint32) uint32) Result { return Result{Verdict: Reject} })
	cases := Cases()
	want := 0
	for _, c := range cases {
		if c.Want != Reject {
			want++
		}
	}
	if got := len(Check(alwaysReject, cases)); got != want || want == 0 {
		t.Errorf("%d failures, want %d (the cases that do not expect a reject)", got, want)
	}
}
