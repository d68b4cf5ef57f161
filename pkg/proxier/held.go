package proxier

import (
	"maps"
	"slices"
	"time"

	"github.com/proxyd/proxyd/pkg/model"
)

// held are the service ports whose rules the kernel refused (see
// RefusedError). Until its retry is due, a held port is kept back from the
// backend: the State a sync writes has the port as it was in the last
// State the backend took (or no port), so a refusal does not make every
// later sync fail and bisect again. (A backend that left the port out
// entirely has no rules for it; it tells by its own record of what it
// wrote, which the backends plan from, not by the Diff.)
// A held port is retried when its backoff expires (RetryMin doubling to
// MaxInterval), and at once when its desired value changes (the Service was
// fixed).
type held map[model.ServicePortKey]*heldPort

type heldPort struct {
	refused *model.ServicePort // the value the kernel refused
	wait    time.Duration      // the backoff that led to at
	at      time.Time          // when to try it again
}

// withHeld returns the State to write: desired, with every held port whose
// retry is not due and whose desired value is still the refused one
// replaced by its value in applied (or left out, when applied has none);
// and the keys it kept back so. It forgets ports no longer desired.
func (h held) withHeld(desired, applied *model.State, now time.Time) (*model.State, map[model.ServicePortKey]bool) {
	var out *model.State
	kept := map[model.ServicePortKey]bool{}
	for k, hp := range h {
		want := desired.Services[k]
		if want == nil {
			delete(h, k)
			continue
		}
		if !now.Before(hp.at) || !want.Equal(hp.refused) {
			continue
		}
		if out == nil {
			clone := *desired
			clone.Services = maps.Clone(desired.Services)
			out = &clone
		}
		keep(out, applied, k)
		kept[k] = true
	}
	if out == nil {
		return desired, kept
	}
	return out, kept
}

// keep sets port k of s to its value in applied (nil: absent).
func keep(s, applied *model.State, k model.ServicePortKey) {
	var was *model.ServicePort
	if applied != nil {
		was = applied.Services[k]
	}
	if was == nil {
		delete(s.Services, k)
	} else {
		s.Services[k] = was
	}
}

// refuse records that the kernel refused keys of written, and returns the
// State the kernel now has (written with keys as in applied) and the keys
// refused for the first time.
func (h held) refuse(keys []model.ServicePortKey, written, applied *model.State, now time.Time, first, most time.Duration) (*model.State, []model.ServicePortKey) {
	out := *written
	out.Services = maps.Clone(written.Services)
	var fresh []model.ServicePortKey
	for _, k := range keys {
		sp := written.Services[k]
		if sp == nil {
			continue // a backend naming a port it was not given
		}
		keep(&out, applied, k)
		hp, ok := h[k]
		if !ok {
			hp = &heldPort{}
			h[k] = hp
			fresh = append(fresh, k)
		}
		hp.refused = sp
		hp.wait = min(max(2*hp.wait, first), most)
		hp.at = now.Add(hp.wait)
	}
	return &out, fresh
}

// settle forgets, and returns, the held ports a successful sync wrote
// with their desired value: neither kept back nor refused again.
func (h held) settle(kept map[model.ServicePortKey]bool, refused []model.ServicePortKey) []model.ServicePortKey {
	var done []model.ServicePortKey
	for k := range h {
		if !kept[k] && !slices.Contains(refused, k) {
			delete(h, k)
			done = append(done, k)
		}
	}
	return done
}

// due returns when the first held port should be retried (zero: none).
func (h held) due() time.Time {
	var first time.Time
	for _, hp := range h {
		if first.IsZero() || hp.at.Before(first) {
			first = hp.at
		}
	}
	return first
}
