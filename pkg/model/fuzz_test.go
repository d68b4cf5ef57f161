package model

import (
	"net/netip"
	"testing"
)

// FuzzBuild feeds Build arbitrary Services and slices: it must never panic,
// and what it returns must keep its invariants.
func FuzzBuild(f *testing.F) {
	f.Add([]byte{10, 96, 0, 10, 1, 0, 80, 10, 0, 0, 1, 31, 144, 1}, uint8(1), uint8(0))
	f.Add([]byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 53}, uint8(6), uint8(2))
	f.Fuzz(func(t *testing.T, data []byte, famByte, protoByte uint8) {
		next := func(n int) []byte {
			if len(data) < n {
				return make([]byte, n)
			}
			b := data[:n]
			data = data[n:]
			return b
		}
		fam := IPv4
		if famByte%2 == 0 {
			fam = IPv6
		}
		proto := []Protocol{TCP, UDP, SCTP, "ICMP"}[protoByte%4]
		addrOf := func() netip.Addr {
			if fam == IPv4 {
				return netip.AddrFrom4([4]byte(next(4)))
			}
			return netip.AddrFrom16([16]byte(next(16)))
		}
		svc := &Service{Namespace: "ns", Name: "s", ClusterIPs: []netip.Addr{addrOf(), addrOf()}}
		for range 2 {
			b := next(3)
			svc.Ports = append(svc.Ports, ServicePortSpec{Name: string(rune('a' + b[0]%3)), Protocol: proto, Port: uint16(b[1])<<8 | uint16(b[2])})
		}
		es := &EndpointSlice{Namespace: "ns", Name: "e", ServiceName: "s", Family: fam}
		for _, p := range svc.Ports {
			es.Ports = append(es.Ports, SlicePort{Name: p.Name, Protocol: p.Protocol, Port: p.Port + 1})
		}
		for len(data) > 0 {
			flags := next(1)[0]
			es.Endpoints = append(es.Endpoints, SliceEndpoint{Addresses: []netip.Addr{addrOf()},
				Ready: flags&1 != 0, Serving: flags&2 != 0, Terminating: flags&4 != 0, NodeName: []string{"n1", "n2"}[flags>>3&1]})
		}
		st := Build(snapshot([]*Service{svc}, es))
		for k, sp := range st.Services {
			if !k.Protocol.Valid() || sp.Port == 0 || len(sp.ClusterIPs) == 0 {
				t.Fatalf("invalid service port %v", sp)
			}
			seen := map[netip.AddrPort]bool{}
			for _, e := range sp.Endpoints {
				if seen[e.AddrPort()] {
					t.Fatalf("duplicate endpoint %v", e)
				}
				seen[e.AddrPort()] = true
			}
			for _, e := range sp.ClusterEndpoints {
				if !seen[e.AddrPort()] {
					t.Fatalf("usable endpoint %v is not an endpoint", e)
				}
				if !e.Ready && !(e.Serving && e.Terminating) {
					t.Fatalf("unusable endpoint %+v selected", e)
				}
			}
		}
		if d := Compute(st, st); !d.Empty() {
			t.Fatalf("a state differs from itself: %+v", d)
		}
	})
}
