package conntrack

import (
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/proxyd/proxyd/internal/cttest"
	"github.com/proxyd/proxyd/internal/testns"
	"github.com/proxyd/proxyd/pkg/model"
)

func openTable(t *testing.T, ns *testns.NS) (*cttest.Table, *Reader) {
	t.Helper()
	tab, err := cttest.Open(ns.FD)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tab.Close)
	r, err := NewReader(ns.FD)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return tab, r
}

func TestReaderDecodesEveryEntryOfItsNamespaceAsTheKernelHoldsIt(t *testing.T) {
	ns := testns.New(t, "ct")
	tab, r := openTable(t, ns)
	flows := []cttest.Flow{
		{Proto: unix.IPPROTO_TCP, Src: netip.MustParseAddrPort("10.244.1.100:40000"), Dst: netip.MustParseAddrPort("10.96.0.10:80"),
			Reply: netip.MustParseAddrPort("10.244.1.11:8080"), TCPState: 3, Timeout: 600},
		{Proto: unix.IPPROTO_UDP, Src: netip.MustParseAddrPort("10.244.1.100:5353"), Dst: netip.MustParseAddrPort("10.96.0.10:53"),
			Reply: netip.MustParseAddrPort("10.244.1.12:53"), Timeout: 30},
		{Proto: unix.IPPROTO_TCP, Src: netip.MustParseAddrPort("[fd00:10:244:1::100]:40001"), Dst: netip.MustParseAddrPort("[fd00:10:96::10]:80"),
			Reply: netip.MustParseAddrPort("[fd00:10:244:1::13]:8080"), TCPState: 7, Timeout: 120},
	}
	for _, f := range flows {
		if err := tab.Create(f); err != nil {
			t.Fatal(err)
		}
	}
	var got []Entry
	for _, fam := range []model.IPFamily{model.IPv4, model.IPv6} {
		if err := r.Dump(fam, func(e *Entry) { got = append(got, *e) }); err != nil {
			t.Fatal(err)
		}
	}
	if len(got) != len(flows) {
		t.Fatalf("dumped %d entries, want %d: %+v", len(got), len(flows), got)
	}
	for _, f := range flows {
		var e *Entry
		for i := range got {
			if got[i].Orig.Src == f.Src {
				e = &got[i]
			}
		}
		if e == nil {
			t.Errorf("no entry from %v", f.Src)
			continue
		}
		want := Tuple{Src: f.Reply, Dst: f.Src}
		if e.Proto != f.Proto || e.Orig.Dst != f.Dst || e.Reply != want || e.ID == 0 {
			t.Errorf("entry %+v, want proto %d to %v answered as %v with an id", *e, f.Proto, f.Dst, want)
		}
		if f.Proto == unix.IPPROTO_TCP && e.TCPState != f.TCPState {
			t.Errorf("%v: TCP state %d (%s), want %d", f.Src, e.TCPState, e.State(), f.TCPState)
		}
		if e.Timeout <= 0 || e.Timeout > time.Duration(f.Timeout)*time.Second {
			t.Errorf("%v: timeout %v, want at most %ds", f.Src, e.Timeout, f.Timeout)
		}
	}
}

func TestReaderReportsNewAndDestroyedEntries(t *testing.T) {
	ns := testns.New(t, "ctev")
	tab, r := openTable(t, ns)
	f := cttest.Flow{Proto: unix.IPPROTO_TCP, Src: netip.MustParseAddrPort("10.244.1.100:40000"),
		Dst: netip.MustParseAddrPort("10.96.0.10:80"), Reply: netip.MustParseAddrPort("10.244.1.11:8080"), TCPState: 3}
	type seen struct {
		typ EventType
		src netip.AddrPort
	}
	events := make(chan seen, 10)
	errc := make(chan error, 1)
	go func() {
		sawNew := false
		errc <- r.Listen(false, 1<<20, func(ev *Event) bool {
			events <- seen{ev.Type, ev.Entry.Orig.Src}
			sawNew = sawNew || ev.Type == EventNew
			return !sawNew || ev.Type != EventDestroy
		})
	}()
	// Joining the groups races with the first create; retry until the
	// listener sees one.
	deadline := time.After(5 * time.Second)
	for got := false; !got; {
		if err := tab.Create(f); err != nil {
			t.Fatal(err)
		}
		select {
		case ev := <-events:
			switch {
			case ev.typ == EventDestroy: // of an earlier try
			case ev.typ != EventNew || ev.src != f.Src:
				t.Fatalf("event %+v, want new from %v", ev, f.Src)
			default:
				got = true
			}
		case <-time.After(100 * time.Millisecond):
			if err := tab.Delete(f); err != nil {
				t.Fatal(err)
			}
		case <-deadline:
			t.Fatal("no event for a created entry")
		}
	}
	if err := tab.Delete(f); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-events:
		if ev.typ != EventDestroy || ev.src != f.Src {
			t.Fatalf("event %+v, want destroy of %v", ev, f.Src)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no event for a deleted entry")
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}
