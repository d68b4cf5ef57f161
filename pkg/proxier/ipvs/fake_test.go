package ipvs

import (
	"errors"
	"syscall"
	"testing"

	mobyipvs "github.com/moby/ipvs"
)

func svc4(ip string, port uint16, sched string) *mobyipvs.Service {
	return &mobyipvs.Service{Address: ipBytes(addr(ip)), Protocol: syscall.IPPROTO_TCP, Port: port,
		SchedName: sched, AddressFamily: syscall.AF_INET, Netmask: 0xffffffff}
}

func dst(ap string, w int) *mobyipvs.Destination {
	a := addrPort(ap)
	return &mobyipvs.Destination{Address: ipBytes(a.Addr()), Port: a.Port(), Weight: w}
}

func TestFakeBehavesLikeTheKernel(t *testing.T) {
	f := NewFake("rr", "sh")
	s := svc4("10.96.0.10", 80, "rr")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	wantErr := func(err, want error) {
		t.Helper()
		if !errors.Is(err, want) {
			t.Fatalf("got %v, want %v", err, want)
		}
	}

	wantErr(f.NewDestination(s, dst("10.244.1.11:8080", 1)), syscall.ESRCH)
	wantErr(f.UpdateService(s), syscall.ESRCH)
	wantErr(f.DelService(s), syscall.ESRCH)
	wantErr(f.NewService(svc4("10.96.0.10", 80, "mh")), syscall.ENOENT)

	must(f.NewService(s))
	wantErr(f.NewService(s), syscall.EEXIST)
	must(f.NewDestination(s, dst("10.244.1.11:8080", 1)))
	wantErr(f.NewDestination(s, dst("10.244.1.11:8080", 1)), syscall.EEXIST)
	wantErr(f.UpdateDestination(s, dst("10.244.1.12:8080", 1)), syscall.ENOENT)
	wantErr(f.DelDestination(s, dst("10.244.1.12:8080", 1)), syscall.ENOENT)
	wantErr(f.NewDestination(s, &mobyipvs.Destination{Address: ipBytes(addr("fd00::1")), Port: 1, Weight: 1}), syscall.EINVAL)

	// Same address and port, other protocol: another service.
	u := svc4("10.96.0.10", 80, "rr")
	u.Protocol = syscall.IPPROTO_UDP
	must(f.NewService(u))

	got, err := f.GetServices()
	must(err)
	if len(got) != 2 || got[0].Flags&flagHashed == 0 {
		t.Fatalf("services %+v: want 2, hashed", got)
	}
	// No aliasing: changing what was read changes nothing inside.
	got[0].SchedName = "sh"
	got[0].Address[3] = 99
	again, _ := f.GetServices()
	if again[0].SchedName != "rr" || !again[0].Address.Equal(s.Address) {
		t.Fatalf("GetServices aliases the fake's state: %+v", again[0])
	}
	ds, _ := f.GetDestinations(s)
	ds[0].Weight = 7
	ds2, _ := f.GetDestinations(s)
	if ds2[0].Weight != 1 {
		t.Fatal("GetDestinations aliases the fake's state")
	}
	if ds, err := f.GetDestinations(svc4("10.96.0.99", 80, "rr")); err != nil || len(ds) != 0 {
		t.Fatalf("destinations of a missing service: %v, %v; want none, like the kernel's dump", ds, err)
	}

	s.SchedName = "mh"
	wantErr(f.UpdateService(s), syscall.ENOENT)
	s.SchedName = "sh"
	must(f.UpdateService(s))
	must(f.DelService(s))
	if ds, _ := f.GetDestinations(s); len(ds) != 0 {
		t.Fatal("destinations outlived their service")
	}
	must(f.Flush())
	if got, _ := f.GetServices(); len(got) != 0 {
		t.Fatal("Flush left services")
	}
}
