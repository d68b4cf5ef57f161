package informer

import (
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/proxyd/proxyd/pkg/informer/convert"
)

func TestSelectors(t *testing.T) {
	tests := []struct {
		name   string
		src    source
		slices bool
		want   string
	}{
		{"services of the default source exclude headless and named ones", sourceDefault, false,
			"!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name"},
		{"slices of the default source also need a service name", sourceDefault, true,
			"!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name,kubernetes.io/service-name"},
		{"services of the named source select our proxy name", sourceNamed, false,
			"!service.kubernetes.io/headless,service.kubernetes.io/service-proxy-name=proxyd"},
		{"slices of the named source select our proxy name and need a service name", sourceNamed, true,
			"!service.kubernetes.io/headless,service.kubernetes.io/service-proxy-name=proxyd,kubernetes.io/service-name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := selector(tt.src, "proxyd", tt.slices); got != tt.want {
				t.Errorf("selector = %q, want %q", got, tt.want)
			}
		})
	}
}

// The two sources' selectors together must admit exactly what Admitted
// admits, and each source's client-side filter must agree with its selector.
func TestSelectorsAgreeWithClientSideFilter(t *testing.T) {
	labelSets := []map[string]string{
		{},
		{v1.IsHeadlessService: ""},
		{LabelServiceProxyName: ""},
		{LabelServiceProxyName: "proxyd"},
		{LabelServiceProxyName: "other"},
		{LabelServiceProxyName: "proxyd", v1.IsHeadlessService: ""},
	}
	for _, proxyName := range []string{"", "proxyd"} {
		srcs := []source{sourceDefault}
		if proxyName != "" {
			srcs = append(srcs, sourceNamed)
		}
		for _, ls := range labelSets {
			set := labels.Set(ls)
			any := false
			for _, src := range srcs {
				sel, err := labels.Parse(selector(src, proxyName, false))
				if err != nil {
					t.Fatalf("selector for %v does not parse: %v", src, err)
				}
				m := sel.Matches(set)
				any = any || m
				if m && !src.admits(ls, proxyName) {
					t.Errorf("proxy %q: %v selector matches %v but the client-side filter rejects it", proxyName, src, ls)
				}
			}
			if want := convert.Admitted(ls, proxyName); any != want {
				t.Errorf("proxy %q, labels %v: selectors match = %v, Admitted = %v", proxyName, ls, any, want)
			}
		}
	}
}
