package model_test

import (
	"testing"

	"github.com/proxyd/proxyd/pkg/model"
	"github.com/proxyd/proxyd/pkg/nft"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
	"github.com/proxyd/proxyd/pkg/proxier/iptables"
	"github.com/proxyd/proxyd/pkg/proxier/nftables"
)

// FuzzBuildRenderPlan carries several colliding Services (the generator of
// FuzzBuild) through Build into the renderers: nothing may panic, each
// rendering must be deterministic, every nftables rule must compile to
// kernel expressions and decompile back to itself, a full plan must write
// something, and the iptables restore text must parse in the tracer, which
// refuses anything it does not understand. (The model's own tests, in
// package model, keep to the standard library; only this external test
// reaches the backends.)
func FuzzBuildRenderPlan(f *testing.F) {
	f.Add([]byte{1, 0, 1, 0, 1, 3, 0, 0, 0, 1, 0, 0, 1, 1, 0, 1, 0, 1, 3, 0, 0, 0, 1, 0, 0, 1})
	f.Add([]byte{5, 2, 2, 4, 7, 2, 3, 7, 1, 10, 1, 1, 2, 0, 1, 2, 1, 3, 1, 1, 0, 2, 2, 9, 1, 4, 4})
	cfg := flowspec.Config()
	f.Fuzz(func(t *testing.T, data []byte) {
		st := model.Build(model.FuzzSnapshot(data))
		for _, fam := range []model.IPFamily{model.IPv4, model.IPv6} {
			table := nftables.Render(st, cfg, fam)
			text := table.String()
			if again := nftables.Render(st, cfg, fam).String(); again != text {
				t.Fatalf("%v: two renderings of one State differ:\n%s\n---\n%s", fam, text, again)
			}
			for _, c := range table.Chains {
				for _, r := range c.Rules {
					ex, err := nft.CompileRule(table.Family, r)
					if err != nil {
						t.Fatalf("%v chain %s: rule %q does not compile: %v", fam, c.Name, r.Text(table.Family), err)
					}
					back, err := nft.DecompileRule(table.Family, ex)
					if err != nil {
						t.Fatalf("%v chain %s: rule %q does not decompile: %v", fam, c.Name, r.Text(table.Family), err)
					}
					if got, want := back.Text(table.Family), r.Text(table.Family); got != want {
						t.Fatalf("%v chain %s: rule %q reads back as %q", fam, c.Name, want, got)
					}
				}
			}
			if nftables.FullPlan(fam, table).Empty() {
				t.Fatalf("%v: a full plan writes nothing", fam)
			}
			if a, b := iptables.Render(st, cfg, fam), iptables.Render(st, cfg, fam); string(a) != string(b) {
				t.Fatalf("%v: two iptables renderings of one State differ", fam)
			}
		}
		if _, err := iptables.TracerFor(st, cfg); err != nil {
			t.Fatalf("the iptables rendering does not parse: %v", err)
		}
	})
}
