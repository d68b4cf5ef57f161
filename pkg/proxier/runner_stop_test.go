package proxier

import (
	"context"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/proxyd/proxyd/pkg/model"
)

// blockingBackend's Sync waits until release is closed.
type blockingBackend struct {
	entered chan struct{}
	release chan struct{}
}

func (blockingBackend) Mode() string { return "fake" }
func (b blockingBackend) Sync(context.Context, *model.State, model.Diff) error {
	b.entered <- struct{}{}
	<-b.release
	return nil
}
func (blockingBackend) Cleanup(context.Context) error { return nil }

// Run must return once its context ends, even when a sync is due at that
// moment: a SIGTERM between WaitForSync and Run, or one that arrives during
// a sync while a change waits.
func TestRunReturnsWhenItsContextEndsWhileASyncIsDue(t *testing.T) {
	tests := []struct {
		name string
		// stop ends ctx at the moment the test is about.
		stop func(t *testing.T, r *Runner, b blockingBackend, cancel context.CancelFunc)
	}{
		{name: "the context ended before Run started",
			stop: func(_ *testing.T, _ *Runner, _ blockingBackend, cancel context.CancelFunc) { cancel() }},
		{name: "the context ended during a sync with a change waiting",
			stop: func(t *testing.T, r *Runner, b blockingBackend, cancel context.CancelFunc) {
				go func() {
					select {
					case <-b.entered:
					case <-time.After(5 * time.Second):
						t.Error("the first sync never started")
					}
					r.OnChange("endpoints", time.Time{})
					cancel()
					close(b.release)
				}()
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := blockingBackend{entered: make(chan struct{}, 1), release: make(chan struct{})}
			clock := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
			r := NewRunner(b, Rebuild(func() *model.State { return &model.State{} }), RunnerOptions{
				MinInterval: 0, MaxInterval: 30 * time.Second, Clock: clock})
			ctx, cancel := context.WithCancel(context.Background())
			t.Cleanup(cancel)
			tc.stop(t, r, b, cancel)
			done := make(chan struct{})
			go func() {
				r.Run(ctx)
				close(done)
			}()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				// The fake clock never moved: a Run still going spins.
				t.Fatal("Run did not return within 5s of its context ending")
			}
		})
	}
}
