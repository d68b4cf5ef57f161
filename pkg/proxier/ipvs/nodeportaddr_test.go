package ipvs

import (
	"net/netip"
	"testing"

	"github.com/proxyd/proxyd/pkg/proxier"
	"github.com/proxyd/proxyd/pkg/proxier/flowspec"
)

func TestNodePortAddressesChooseTheNodePortServers(t *testing.T) {
	st := flowspec.State()
	st.Node.IPs = append(st.Node.IPs, netip.MustParseAddr("192.0.2.99"))
	np := func(cfg proxier.Config) []netip.Addr {
		var out []netip.Addr
		for k := range RenderWith(st, "rr", cfg).Servers {
			if k.Port == 30080 {
				out = append(out, k.Addr)
			}
		}
		return out
	}
	if got := np(proxier.Config{}); len(got) != 2 {
		t.Errorf("unrestricted: NodePort servers on %v, want both node addresses", got)
	}
	if got := np(proxier.Config{NodePortPrimary: true}); len(got) != 1 || got[0] != flowspec.NodeIP {
		t.Errorf("primary: NodePort servers on %v, want only %v", got, flowspec.NodeIP)
	}
	if got := np(proxier.Config{NodePortAddresses: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}}); len(got) != 1 || got[0] != netip.MustParseAddr("192.0.2.99") {
		t.Errorf("192.0.2.0/24: NodePort servers on %v, want only 192.0.2.99", got)
	}
}
