package proxier

import (
	"fmt"

	"github.com/proxyd/proxyd/pkg/model"
)

// RefusedError is what Backend.Sync returns when the kernel refused the
// rules of some service ports although the State is valid: the backend
// narrowed the refusal down to Ports, programmed everything else, and left
// Ports as they were before this Sync (their previous rules, or none). The
// Runner then counts the Sync as done for everything else and retries
// Ports with backoff (see Runner).
type RefusedError struct {
	Ports []model.ServicePortKey
	Err   error
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("the kernel refused %d service port(s) %v: %v", len(e.Ports), e.Ports, e.Err)
}

// Unwrap returns the kernel's error.
func (e *RefusedError) Unwrap() error { return e.Err }
