// Package model is proxyd's pure core: the plain Go types a node's dataplane
// is made of, Build (informer snapshots + the node's identity → State) and
// Diff (old State → new State). It imports no client-go, no netlink and no
// clock, so every rule a backend writes can be traced back to a value that
// table-driven tests and fuzzing can pin down.
package model
