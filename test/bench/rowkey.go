package main

import (
	"fmt"
	"regexp"
	"strconv"
)

// defaultPods is the endpoints per Service of the rows named by N alone.
const defaultPods = 10

// rowKey names one workload: N Services × pods endpoints each.
type rowKey struct{ n, pods int }

// csvName is results-<N>.csv for the ×10 rows (their files keep the names
// older runs gave them) and results-<N>x<pods>.csv for any other, so that
// 5k × 50 never overwrites a 5k × 10 row.
func (k rowKey) csvName() string {
	if k.pods == defaultPods {
		return fmt.Sprintf("results-%d.csv", k.n)
	}
	return fmt.Sprintf("results-%dx%d.csv", k.n, k.pods)
}

// fileTag is the part of the plots' file names that names the row.
func (k rowKey) fileTag() string {
	if k.pods == defaultPods {
		return strconv.Itoa(k.n)
	}
	return fmt.Sprintf("%dx%d", k.n, k.pods)
}

// label is how tables and plots name the row: "10k × 10", "5k × 50".
func (k rowKey) label() string { return fmt.Sprintf("%s × %d", short(k.n), k.pods) }

// short writes 5000 as 5k and 1500 as 1500.
func short(n int) string {
	if n >= 1000 && n%1000 == 0 {
		return fmt.Sprintf("%dk", n/1000)
	}
	return strconv.Itoa(n)
}

var csvNameRE = regexp.MustCompile(`^results-(\d+)(?:x(\d+))?\.csv$`)

// parseCSVName is csvName's inverse; ok is false for other files.
func parseCSVName(name string) (k rowKey, ok bool) {
	m := csvNameRE.FindStringSubmatch(name)
	if m == nil {
		return k, false
	}
	k.n, _ = strconv.Atoi(m[1])
	k.pods = defaultPods
	if m[2] != "" {
		k.pods, _ = strconv.Atoi(m[2])
	}
	return k, k.n > 0 && k.pods > 0
}
