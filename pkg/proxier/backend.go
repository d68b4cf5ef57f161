// Package proxier connects the model to the kernel: the Backend interface
// every dataplane mode implements, and the Runner that decides when a sync
// happens (bounded frequency, retry with backoff) and records the sync
// metrics kube-proxy users already scrape.
package proxier

import (
	"context"
	"errors"

	"github.com/proxyd/proxyd/pkg/model"
)

// Backend programs a State into one kind of kernel dataplane.
type Backend interface {
	// Mode is the --mode value that selects this backend.
	Mode() string
	// Sync makes the kernel match s. d is what changed since the State of
	// the last Sync that returned nil; a backend may ignore it and compare
	// with what it wrote itself. Sync is all or nothing: on error the
	// kernel keeps the previous rules and the next Sync must not trust any
	// incremental view (it rewrites in full).
	Sync(ctx context.Context, s *model.State, d model.Diff) error
	// Cleanup removes everything this backend owns from the kernel. It is
	// safe to call when nothing was ever written.
	Cleanup(ctx context.Context) error
}

// SyncStats is what a backend may report about its last Sync, for logs and
// metrics; a backend that reports nothing returns the zero value.
type SyncStats struct {
	Full       bool // the whole ruleset was rewritten
	KernelOps  int  // objects added, changed or deleted in the kernel
	Skipped    bool // nothing differed, so nothing was written
	RuleCount  int
	ChainCount int
	// DriftRepairs counts what this sync repaired that someone else had
	// changed (proxyd_drift_repairs_total).
	DriftRepairs int
}

// StatsReporter is implemented by backends that can describe their last Sync.
type StatsReporter interface {
	LastSyncStats() SyncStats
}

// FamilyError is a Sync failure confined to one IP family's rules, so the
// failure metrics can carry kube-proxy's ip_family label.
type FamilyError struct {
	Family model.IPFamily
	Err    error
}

func (e *FamilyError) Error() string { return e.Err.Error() }

// Unwrap returns the failure itself.
func (e *FamilyError) Unwrap() error { return e.Err }

// FailedFamily returns "IPv4" or "IPv6" when err is a FamilyError, else "".
func FailedFamily(err error) string {
	var fe *FamilyError
	if errors.As(err, &fe) {
		return fe.Family.String()
	}
	return ""
}
