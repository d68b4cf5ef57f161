package ipvs

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/proxyd/proxyd/pkg/model"
)

func TestTemplatesAreTheEntriesWithoutAClientPortInATemplateState(t *testing.T) {
	// As ip_vs_conn_seq_show prints them: a template and the connection
	// it placed, a connection in TCP state NONE (a port, so not a
	// template), an IPv6 template, and a fwmark service's (protocol IP).
	table := `Pro FromIP   FPrt ToIP     TPrt DestIP   DPrt State       Expires PEName PEData
TCP 0AF40164 0000 0A60005A 0050 0AF4010D 1F90 NONE          10790
TCP 0AF40164 A1B2 0A60005A 0050 0AF4010D 1F90 ESTABLISHED     899
TCP 0AF40164 A1B3 0A60005A 0050 0AF4010D 1F90 NONE             60
UDP fd00:0010:0244:0001:0000:0000:0000:0100 0000 fd00:0010:0096:0000:0000:0000:0000:0010 0035 fd00:0010:0244:0001:0000:0000:0000:0011 1F90 ASSURED       100
IP  0AF40164 0000 00000001 0000 0AF4010D 0000 NONE            300
`
	got, err := parseTemplates(strings.NewReader(table))
	if err != nil {
		t.Fatal(err)
	}
	want := []Template{
		{VS: VSKey{Addr: netip.MustParseAddr("10.96.0.90"), Protocol: model.TCP, Port: 80}, Client: netip.MustParseAddr("10.244.1.100"),
			RealServer: netip.MustParseAddrPort("10.244.1.13:8080"), Expires: 10790 * time.Second, State: "NONE"},
		{VS: VSKey{Addr: netip.MustParseAddr("fd00:10:96::10"), Protocol: model.UDP, Port: 53}, Client: netip.MustParseAddr("fd00:10:244:1::100"),
			RealServer: netip.MustParseAddrPort("[fd00:10:244:1::11]:8080"), Expires: 100 * time.Second, State: "ASSURED"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("templates\n%+v\nwant\n%+v", got, want)
	}
	if _, err := parseTemplates(strings.NewReader("TCP 0AF40164 0000\n")); err == nil {
		t.Error("a short line was read")
	}
}
