//go:build e2e

package e2e

import (
	"fmt"
	"slices"
	"strings"
)

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

// canonicalNft sorts set elements, which the kernel lists in hash order.
func canonicalNft(listing string) string {
	lines := strings.Split(listing, "\n")
	var out []string
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if !strings.HasPrefix(strings.TrimSpace(l), "elements = {") {
			out = append(out, l)
			continue
		}
		body := strings.TrimPrefix(strings.TrimSpace(l), "elements = { ")
		for !strings.HasSuffix(body, "}") && i+1 < len(lines) {
			i++
			body += " " + strings.TrimSpace(lines[i])
		}
		var elems []string
		for _, e := range strings.Split(strings.TrimSuffix(strings.TrimSpace(body), "}"), ",") {
			elems = append(elems, strings.TrimSpace(e))
		}
		slices.Sort(elems)
		out = append(out, "\t\telements = { "+strings.Join(elems, ",\n\t\t\t     ")+" }")
	}
	return strings.Join(out, "\n")
}
