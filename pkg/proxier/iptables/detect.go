package iptables

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"time"
)

// Variant is the iptables backend in the kernel: the xtables "legacy"
// tables or nf_tables through the iptables-nft compatibility layer. Both
// can be in use at once on a node, and rules written with one are
// invisible to the other, so proxyd must use the node's.
type Variant string

// The two variants.
const (
	VariantNFT    Variant = "nft"
	VariantLegacy Variant = "legacy"
)

// Binaries names the programs for one variant; a name without a slash is
// looked up in $PATH.
type Binaries struct {
	Restore, Save, IPTables    string // IPv4
	Restore6, Save6, IP6Tables string // IPv6
}

// DefaultBinaries are the names Debian, Fedora and the iptables upstream
// install for variant v: iptables-nft-restore, ip6tables-legacy-save, ...
func DefaultBinaries(v Variant) Binaries {
	s := string(v)
	return Binaries{
		Restore: "iptables-" + s + "-restore", Save: "iptables-" + s + "-save", IPTables: "iptables-" + s,
		Restore6: "ip6tables-" + s + "-restore", Save6: "ip6tables-" + s + "-save", IP6Tables: "ip6tables-" + s,
	}
}

// merge fills b's empty fields from d.
func (b Binaries) merge(d Binaries) Binaries {
	for _, f := range []struct {
		dst *string
		src string
	}{
		{&b.Restore, d.Restore}, {&b.Save, d.Save}, {&b.IPTables, d.IPTables},
		{&b.Restore6, d.Restore6}, {&b.Save6, d.Save6}, {&b.IP6Tables, d.IP6Tables},
	} {
		if *f.dst == "" {
			*f.dst = f.src
		}
	}
	return b
}

// Detect decides which variant the node uses, as kube-proxy's images do
// (the iptables-wrapper logic): a variant holding the kubelet's hint or
// canary chains wins (nft checked first); otherwise the variant with more
// rules, counting both families; nft when tied or when nothing is there.
// It fails only when no save program of either variant runs.
func Detect() (Variant, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return detect(ctx, runOutput, DefaultBinaries(VariantLegacy), DefaultBinaries(VariantNFT))
}

// runFunc runs a program and returns its standard output.
type runFunc func(ctx context.Context, name string, args ...string) ([]byte, error)

func runOutput(ctx context.Context, name string, args ...string) ([]byte, error) {
	return exec.CommandContext(ctx, name, args...).Output()
}

var hintChains = [][]byte{[]byte(":KUBE-IPTABLES-HINT "), []byte(":KUBE-KUBELET-CANARY ")}

func detect(ctx context.Context, run runFunc, legacy, nft Binaries) (Variant, error) {
	var errs []error
	ran := 0
	dump := func(names []string, args ...string) []byte {
		var all []byte
		for _, n := range names {
			out, err := run(ctx, n, args...)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", n, err))
				continue
			}
			ran++
			all = append(all, out...)
		}
		return all
	}
	hints := func(dump []byte) bool {
		for _, h := range hintChains {
			if bytes.Contains(dump, h) {
				return true
			}
		}
		return false
	}
	// The kubelet creates its hint chain in mangle; listing one table of
	// nft is cheap, while legacy is cheaper listed whole than made to
	// load a table module it may not have.
	nftMangle := dump([]string{nft.Save, nft.Save6}, "-t", "mangle")
	if hints(nftMangle) {
		return VariantNFT, nil
	}
	legacyAll := dump([]string{legacy.Save, legacy.Save6})
	if hints(legacyAll) {
		return VariantLegacy, nil
	}
	nftAll := dump([]string{nft.Save, nft.Save6})
	if ran == 0 {
		return VariantNFT, fmt.Errorf("detect iptables variant: no iptables-save works: %w", errors.Join(errs...))
	}
	if countRules(legacyAll) > countRules(nftAll) {
		return VariantLegacy, nil
	}
	return VariantNFT, nil
}

// countRules counts the rule lines of an iptables-save dump.
func countRules(dump []byte) int {
	n := 0
	for line := range bytes.Lines(dump) {
		if len(line) > 0 && line[0] == '-' {
			n++
		}
	}
	return n
}
