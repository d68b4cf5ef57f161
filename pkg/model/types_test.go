package model

import "testing"

func TestProtocolNumbersRoundTrip(t *testing.T) {
	for p, n := range map[Protocol]uint8{TCP: 6, UDP: 17, SCTP: 132} {
		if got := p.Number(); got != n {
			t.Errorf("%s.Number() = %d, want %d", p, got, n)
		}
		if got, ok := ProtocolOf(n); !ok || got != p {
			t.Errorf("ProtocolOf(%d) = %q %v, want %s", n, got, ok, p)
		}
	}
	if _, ok := ProtocolOf(1); ok {
		t.Error("ICMP is not a Service protocol")
	}
	if n := Protocol("ICMP").Number(); n != 0 {
		t.Errorf("an invalid protocol has number %d", n)
	}
}
