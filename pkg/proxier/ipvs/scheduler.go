package ipvs

import (
	"fmt"
	"slices"
	"strings"
)

// DefaultScheduler is the --ipvs-scheduler default, as in kube-proxy.
const DefaultScheduler = "rr"

// schedulers are the --ipvs-scheduler values proxyd accepts, each served by
// the kernel module ip_vs_<name>.
var schedulers = map[string]string{
	"rr":  "round robin",
	"wrr": "weighted round robin",
	"lc":  "least connection",
	"wlc": "weighted least connection",
	"sed": "shortest expected delay",
	"nq":  "never queue",
	"sh":  "source hashing",
	"dh":  "destination hashing",
	"mh":  "maglev hashing",
}

// Schedulers returns the accepted scheduler names, sorted.
func Schedulers() []string {
	out := make([]string, 0, len(schedulers))
	for s := range schedulers {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

// ValidateScheduler checks an --ipvs-scheduler value; "" means the default.
func ValidateScheduler(name string) (string, error) {
	if name == "" {
		return DefaultScheduler, nil
	}
	if _, ok := schedulers[name]; !ok {
		return "", fmt.Errorf("unknown ipvs scheduler %q: want one of %s", name, strings.Join(Schedulers(), ", "))
	}
	return name, nil
}

// schedulerError explains the kernel's ENOENT for a service whose
// scheduler module is neither loaded nor loadable.
func schedulerError(name string, err error) error {
	return fmt.Errorf("ipvs scheduler %q is not available: the kernel has no module ip_vs_%s loaded and could not load it (modprobe ip_vs_%s): %w", name, name, name, err)
}
