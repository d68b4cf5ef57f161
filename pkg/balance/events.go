package balance

import (
	"time"

	"github.com/proxyd/proxyd/pkg/model"
)

// maxEventsPerMinute bounds the Events one node posts, whatever the number
// of pinned Services, so that a cluster-wide pattern cannot flood the
// apiserver.
const maxEventsPerMinute = 10

// eventLimiter allows one Event per Service per interval, and at most
// maxEventsPerMinute in any minute.
type eventLimiter struct {
	every  time.Duration
	last   map[model.NamespacedName]time.Time
	recent []time.Time
}

func newEventLimiter(every time.Duration) *eventLimiter {
	return &eventLimiter{every: every, last: map[model.NamespacedName]time.Time{}}
}

func (l *eventLimiter) allow(svc model.NamespacedName, now time.Time) bool {
	if t, ok := l.last[svc]; ok && now.Sub(t) < l.every {
		return false
	}
	kept := l.recent[:0]
	for _, t := range l.recent {
		if now.Sub(t) < time.Minute {
			kept = append(kept, t)
		}
	}
	l.recent = kept
	if len(l.recent) >= maxEventsPerMinute {
		return false
	}
	l.recent = append(l.recent, now)
	l.last[svc] = now
	for name, t := range l.last {
		if now.Sub(t) >= l.every {
			delete(l.last, name)
		}
	}
	return true
}
