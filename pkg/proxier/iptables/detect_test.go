package iptables

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/proxyd/proxyd/pkg/proxier"
)

// fakeSaves answers save commands from canned dumps; a program missing
// from the map fails as if not installed.
func fakeSaves(dumps map[string]string) runFunc {
	return func(_ context.Context, name string, args ...string) ([]byte, error) {
		key := name
		if len(args) > 0 {
			key += " " + strings.Join(args, " ")
		}
		if d, ok := dumps[key]; ok {
			return []byte(d), nil
		}
		if d, ok := dumps[name]; ok {
			return []byte(d), nil
		}
		return nil, errors.New("executable file not found")
	}
}

func TestDetect(t *testing.T) {
	rules := func(n int) string { return "*filter\n" + strings.Repeat("-A INPUT -j ACCEPT\n", n) + "COMMIT\n" }
	hint := "*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n"
	for _, tc := range []struct {
		name    string
		dumps   map[string]string
		want    Variant
		wantErr bool
	}{
		{"an empty node uses nft", map[string]string{
			"iptables-legacy-save": "", "ip6tables-legacy-save": "", "iptables-nft-save": "", "ip6tables-nft-save": ""}, VariantNFT, false},
		{"more legacy rules than nft rules means legacy", map[string]string{
			"iptables-legacy-save": rules(5), "ip6tables-legacy-save": rules(1), "iptables-nft-save": rules(3), "ip6tables-nft-save": rules(2)}, VariantLegacy, false},
		{"a tie goes to nft", map[string]string{
			"iptables-legacy-save": rules(3), "iptables-nft-save": rules(3)}, VariantNFT, false},
		{"the kubelet's hint in nft wins over more legacy rules", map[string]string{
			"iptables-legacy-save": rules(50), "iptables-nft-save -t mangle": hint, "iptables-nft-save": hint}, VariantNFT, false},
		{"the kubelet's canary in legacy wins over more nft rules", map[string]string{
			"ip6tables-legacy-save": "*mangle\n:KUBE-KUBELET-CANARY - [0:0]\nCOMMIT\n", "iptables-nft-save": rules(50)}, VariantLegacy, false},
		{"legacy programs missing: nft", map[string]string{"iptables-nft-save": rules(0)}, VariantNFT, false},
		{"nothing runs: an error", map[string]string{}, VariantNFT, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := detect(context.Background(), fakeSaves(tc.dumps), DefaultBinaries(VariantLegacy), DefaultBinaries(VariantNFT))
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("detect = %q, %v; want %q, error %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestNewFailsClearlyWithoutTheBinaries(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := New(proxier.Config{}, WithVariant(VariantNFT), WithBinaries(Binaries{Restore: "iptables-restore"}))
	if err == nil || !strings.Contains(err.Error(), "iptables mode needs iptables-restore: exec: ") || !strings.Contains(err.Error(), "not found") {
		t.Errorf("New error %q, want %q", err, `iptables mode needs iptables-restore: exec: "iptables-restore": executable file not found in $PATH`)
	}
	_, err = New(proxier.Config{}, WithVariant(VariantLegacy))
	if err == nil || !strings.Contains(err.Error(), "iptables mode needs iptables-restore (iptables-legacy-restore): exec: ") {
		t.Errorf("New error %q, want it to name iptables-legacy-restore", err)
	}
}

func TestNewRefusesAnUnknownVariant(t *testing.T) {
	if _, err := New(proxier.Config{}, WithVariant("ebpf")); err == nil {
		t.Error("New accepted variant ebpf")
	}
}

func TestFailedLineQuotesTheInput(t *testing.T) {
	data := []byte("*nat\n:PROXYD-A - [0:0]\n-A PROXYD-A -j PROXYD-MISSING\nCOMMIT\n")
	for _, msg := range []string{"iptables-restore: line 3 failed", "Error occurred at line: 3"} {
		if got := failedLine(msg, data); got != "-A PROXYD-A -j PROXYD-MISSING" {
			t.Errorf("failedLine(%q) = %q", msg, got)
		}
	}
	if got := failedLine("no line here", data); got != "" {
		t.Errorf("failedLine without a line number = %q", got)
	}
}
