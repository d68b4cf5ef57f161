package proxier

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"

	"github.com/proxyd/proxyd/pkg/model"
)

func keysN(n int) []model.ServicePortKey {
	out := make([]model.ServicePortKey, n)
	for i := range out {
		out[i] = model.ServicePortKey{Namespace: "ns", Name: fmt.Sprintf("svc%03d", i), Protocol: model.TCP}
	}
	return out
}

// kernel is a batch verdict: refuse is called with the ports in the batch.
type kernel struct {
	refuse func(in map[model.ServicePortKey]bool) error
	tries  int
}

func (k *kernel) try(all []model.ServicePortKey) func([]model.ServicePortKey) error {
	return func(exclude []model.ServicePortKey) error {
		k.tries++
		return k.refuse(without(all, exclude))
	}
}

func without(all, exclude []model.ServicePortKey) map[model.ServicePortKey]bool {
	in := map[model.ServicePortKey]bool{}
	for _, x := range all {
		if !slices.Contains(exclude, x) {
			in[x] = true
		}
	}
	return in
}

func TestBisectFindsTheRefusedServicePorts(t *testing.T) {
	keys := keysN(100)
	bad := errors.New("iptables-restore: line 4711 failed")
	for _, tc := range []struct {
		name string
		// refuse says whether a batch with these ports fails.
		refuse  func(in map[model.ServicePortKey]bool) bool
		want    []model.ServicePortKey
		maxTry  int
		wantErr error
	}{
		{"one bad port among a hundred is found in about log2(100) tries",
			func(in map[model.ServicePortKey]bool) bool { return in[keys[42]] },
			[]model.ServicePortKey{keys[42]}, 2 + int(math.Ceil(math.Log2(100))) + 1, nil},
		{"two bad ports are both found",
			func(in map[model.ServicePortKey]bool) bool { return in[keys[3]] || in[keys[97]] },
			[]model.ServicePortKey{keys[3], keys[97]}, 2 + 2*(int(math.Ceil(math.Log2(100)))+1), nil},
		{"of two ports that clash only together, one is left out",
			func(in map[model.ServicePortKey]bool) bool { return in[keys[10]] && in[keys[60]] },
			nil, 30, nil},
		{"a batch refused with every port left out is not the ports' fault",
			func(map[model.ServicePortKey]bool) bool { return true },
			nil, 1, bad},
		{"a batch accepted with nothing left out cannot be narrowed",
			func(map[model.ServicePortKey]bool) bool { return false },
			nil, 2, ErrNotReproduced},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := &kernel{refuse: func(in map[model.ServicePortKey]bool) error {
				if tc.refuse(in) {
					return bad
				}
				return nil
			}}
			got, err := Bisect(keys, k.try(keys))
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) || got != nil {
					t.Fatalf("Bisect = %v, %v; want no culprits and %v", got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Bisect: %v", err)
			}
			if tc.want != nil && !slices.Equal(got, tc.want) {
				t.Errorf("culprits %v, want %v", got, tc.want)
			}
			if tc.want == nil && (len(got) != 1 || (got[0] != keys[10] && got[0] != keys[60])) {
				t.Errorf("culprits %v, want one of %v and %v", got, keys[10], keys[60])
			}
			if k.refuse(without(keys, got)) != nil {
				t.Errorf("the batch without %v is still refused", got)
			}
			if k.tries > tc.maxTry {
				t.Errorf("%d tries, want at most %d", k.tries, tc.maxTry)
			}
		})
	}
}

func TestRefusedErrorNamesThePortsAndUnwraps(t *testing.T) {
	cause := errors.New("line 9 failed")
	err := error(&RefusedError{Ports: keysN(2), Err: cause})
	if !errors.Is(err, cause) {
		t.Error("RefusedError does not unwrap to the kernel's error")
	}
	var re *RefusedError
	if !errors.As(fmt.Errorf("sync: %w", err), &re) || len(re.Ports) != 2 {
		t.Error("a wrapped RefusedError is not found by errors.As")
	}
	if msg := err.Error(); !strings.Contains(msg, "ns/svc000:/TCP") || !strings.Contains(msg, "ns/svc001:/TCP") {
		t.Errorf("message %q does not name the ports", msg)
	}
}
