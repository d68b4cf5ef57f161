package nft

import (
	"slices"
	"strings"
)

// CanonicalListing rewrites an `nft list` output with every set's
// elements sorted, one per line, so that two listings of the same table
// compare equal: the kernel lists hash sets in hash order.
func CanonicalListing(listing string) string {
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
