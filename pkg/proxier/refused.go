package proxier

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/proxyd/proxyd/pkg/model"
)

// RefusedError is what a Backend's Sync returns when the kernel refused
// the rules of some service ports: the backend left those out and
// programmed everything else, so every other Service works. It keeps
// leaving them out, and returning a RefusedError, until their service
// port changes.
type RefusedError struct {
	// Ports are the service ports left out, sorted.
	Ports []model.ServicePortKey
	// Err is the kernel's refusal of the batch that held them.
	Err error
}

func (e *RefusedError) Error() string {
	names := make([]string, len(e.Ports))
	for i, k := range e.Ports {
		names[i] = k.String()
	}
	return fmt.Sprintf("the kernel refused the rules of %s (left out, everything else programmed): %v", strings.Join(names, ", "), e.Err)
}

// Unwrap returns the kernel's refusal.
func (e *RefusedError) Unwrap() error { return e.Err }

// ErrNotReproduced is Bisect's answer when the batch with nothing left out
// succeeds when tried again: the refusal cannot be pinned on service ports.
var ErrNotReproduced = errors.New("the refused batch was accepted when tried again")

// Bisect narrows a batch the kernel refused to the service ports
// responsible. try programs (or test-programs) the batch without the
// service ports in exclude and returns the kernel's verdict; excluding
// more ports must never turn a success into a failure. Bisect returns
// culprits, sorted, such that try(culprits) succeeded, found one at a time
// by halving the candidates: k culprits among n keys cost about
// k·(log2 n + 1) + 2 tries. It returns an error, and no culprits, when
// the batch fails even with every key excluded (the refusal is not the
// service ports' doing) or succeeds with none excluded (ErrNotReproduced).
func Bisect(keys []model.ServicePortKey, try func(exclude []model.ServicePortKey) error) ([]model.ServicePortKey, error) {
	keys = slices.Clone(keys)
	slices.SortFunc(keys, model.ServicePortKey.Compare)
	keys = slices.Compact(keys)
	if err := try(keys); err != nil {
		return nil, fmt.Errorf("refused with every service port left out: %w", err)
	}
	var culprits []model.ServicePortKey
	for {
		err := try(culprits)
		if err == nil {
			if len(culprits) == 0 {
				return nil, ErrNotReproduced
			}
			slices.SortFunc(culprits, model.ServicePortKey.Compare)
			return culprits, nil
		}
		// Find one more culprit. fixed ∪ cands succeeds and fixed fails:
		// halve cands, keeping a half that, excluded, makes it succeed.
		fixed := slices.Clone(culprits)
		cands := slices.DeleteFunc(slices.Clone(keys), func(k model.ServicePortKey) bool { return slices.Contains(culprits, k) })
		for len(cands) > 1 {
			a, b := cands[:len(cands)/2], cands[len(cands)/2:]
			if try(slices.Concat(fixed, a)) == nil {
				cands = a
				continue
			}
			// Excluding a is not enough, so a culprit is in b once a is
			// excluded too.
			fixed = slices.Concat(fixed, a)
			cands = b
		}
		culprits = append(culprits, cands[0])
	}
}
