package ipvs

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/proxyd/proxyd/pkg/model"
)

// conns is what the Fake reports per real server.
type conns map[netip.AddrPort][2]int

func (c conns) of(_ ServiceID, d netip.AddrPort) (int, int) { return c[d][0], c[d][1] }

func TestGracefulRemoval(t *testing.T) {
	two := func(proto model.Protocol) *model.State {
		return state(sp("web", proto, "10.96.0.10", 80, "10.244.1.11:8080", "10.244.1.12:8080"))
	}
	one := func(proto model.Protocol) *model.State {
		return state(sp("web", proto, "10.96.0.10", 80, "10.244.1.12:8080"))
	}
	const (
		bothUp  = "TCP  10.96.0.10:80 rr\n  -> 10.244.1.11:8080 Masq 1\n  -> 10.244.1.12:8080 Masq 1\n"
		drained = "TCP  10.96.0.10:80 rr\n  -> 10.244.1.11:8080 Masq 0\n  -> 10.244.1.12:8080 Masq 1\n"
		gone    = "TCP  10.96.0.10:80 rr\n  -> 10.244.1.12:8080 Masq 1\n"
	)
	pod1 := addrPort("10.244.1.11:8080")

	t.Run("a TCP real server with connections drains at weight 0 until they end", func(t *testing.T) {
		r := newRig(t)
		c := conns{pod1: {3, 1}}
		r.h.Conns = c.of
		r.sync(two(model.TCP))
		r.sync(one(model.TCP))
		if got := r.dump(); got != drained {
			t.Fatalf("after removal:\n%s", got)
		}
		if r.p.Draining() != 1 {
			t.Fatal("not tracked as draining")
		}
		r.clock.Step(time.Minute)
		r.sync(one(model.TCP)) // still 4 connections
		if got := r.dump(); got != drained {
			t.Fatalf("deleted with connections left:\n%s", got)
		}
		c[pod1] = [2]int{0, 2}
		r.sync(one(model.TCP)) // inactive ones count too
		if got := r.dump(); got != drained {
			t.Fatalf("deleted with inactive connections left:\n%s", got)
		}
		c[pod1] = [2]int{0, 0}
		r.sync(one(model.TCP))
		if got := r.dump(); got != gone {
			t.Fatalf("not deleted once idle:\n%s", got)
		}
		if r.p.Draining() != 0 {
			t.Fatal("still tracked")
		}
	})

	t.Run("the grace period ends draining even with connections left", func(t *testing.T) {
		r := newRig(t, WithGracePeriod(10*time.Minute))
		r.h.Conns = conns{pod1: {1, 0}}.of
		r.sync(two(model.TCP))
		r.sync(one(model.TCP))
		r.clock.Step(10*time.Minute - time.Second)
		r.sync(one(model.TCP))
		if got := r.dump(); got != drained {
			t.Fatalf("deleted before the grace period:\n%s", got)
		}
		r.clock.Step(time.Second)
		r.sync(one(model.TCP))
		if got := r.dump(); got != gone {
			t.Fatalf("not deleted after the grace period:\n%s", got)
		}
	})

	t.Run("the default grace period is 15 minutes", func(t *testing.T) {
		r := newRig(t)
		r.h.Conns = conns{pod1: {1, 0}}.of
		r.sync(two(model.TCP))
		r.sync(one(model.TCP))
		r.clock.Step(DefaultGracePeriod - time.Nanosecond)
		r.sync(one(model.TCP))
		if got := r.dump(); got != drained {
			t.Fatalf("got\n%s", got)
		}
		r.clock.Step(time.Nanosecond)
		r.sync(one(model.TCP))
		if got := r.dump(); got != gone {
			t.Fatalf("got\n%s", got)
		}
	})

	t.Run("an endpoint that comes back while draining gets its weight back", func(t *testing.T) {
		r := newRig(t)
		r.h.Conns = conns{pod1: {1, 0}}.of
		r.sync(two(model.TCP))
		r.sync(one(model.TCP))
		r.sync(two(model.TCP))
		if got := r.dump(); got != bothUp {
			t.Fatalf("got\n%s", got)
		}
		if r.p.Draining() != 0 {
			t.Fatal("still draining")
		}
	})

	t.Run("a TCP real server without connections is deleted at once", func(t *testing.T) {
		r := newRig(t)
		r.sync(two(model.TCP))
		r.sync(one(model.TCP))
		if got := r.dump(); got != gone {
			t.Fatalf("got\n%s", got)
		}
	})

	t.Run("UDP and SCTP real servers are deleted at once, connections or not", func(t *testing.T) {
		for _, proto := range []model.Protocol{model.UDP, model.SCTP} {
			r := newRig(t)
			r.h.Conns = conns{pod1: {0, 5}}.of
			r.sync(two(proto))
			r.sync(one(proto))
			if got, want := r.dump(), fmt.Sprintf("%-4s 10.96.0.10:80 rr\n  -> 10.244.1.12:8080 Masq 1\n", proto); got != want {
				t.Fatalf("%s: got\n%s", proto, got)
			}
		}
	})

	t.Run("deleting the Service ends its draining", func(t *testing.T) {
		r := newRig(t)
		r.h.Conns = conns{pod1: {1, 0}}.of
		r.sync(two(model.TCP))
		r.sync(one(model.TCP))
		r.sync(state())
		if got := r.dump(); got != "" || r.p.Draining() != 0 {
			t.Fatalf("got\n%s draining %d", got, r.p.Draining())
		}
	})

	t.Run("a grace period of 0 deletes at once", func(t *testing.T) {
		r := newRig(t, WithGracePeriod(0))
		r.h.Conns = conns{pod1: {1, 0}}.of
		r.sync(two(model.TCP))
		r.sync(one(model.TCP))
		if got := r.dump(); got != gone {
			t.Fatalf("got\n%s", got)
		}
	})
}
